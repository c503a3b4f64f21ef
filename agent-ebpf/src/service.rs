//! Services under socket-LB: Cilium's kube-proxy replacement rewrites a ClusterIP to a
//! backend inside connect(), so no packet carries the VIP. `tf_svc_connect4` is attached to
//! the cgroup that holds the pods, below the root where Cilium's socket-LB sits: cgroup
//! programs of a descendant run before its ancestors', so it sees the address the
//! application asked for. `tf_svc_sockops` sees the connection's real 4-tuple once TCP has
//! chosen the source port and records the pair when the destination was rewritten. Both
//! only observe: the connect hook allows every call, sock_ops changes nothing.

use agent_common::{SvcAddr, SvcTuple};
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    cty::c_void,
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};

use crate::maps::{SVC_ASKED, SVC_FLOWS};

#[cgroup_sock_addr(connect4)]
pub fn tf_svc_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer the kernel passed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // SAFETY: a valid bpf_sock_addr for connect4; user_ip4/user_port are readable.
    let (ip4, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    if cookie != 0 {
        let asked = SvcAddr {
            ip4,
            // Network byte order in the low 16 bits.
            port: u16::from_be(port as u16) as u32,
        };
        let _ = SVC_ASKED.insert(cookie, asked, 0);
    }
    1
}

#[sock_ops]
pub fn tf_svc_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    // SAFETY: the context pointer the kernel passed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    // SAFETY: a plain lookup; the value is copied out at once.
    let Some(asked) = (unsafe { SVC_ASKED.get(cookie) }).copied() else {
        return 1;
    };
    let remote = SvcAddr {
        ip4: ctx.remote_ip4(),
        // Network byte order in the upper 16 bits (little-endian hosts).
        port: u16::from_be((ctx.remote_port() >> 16) as u16) as u32,
    };
    if remote != asked {
        let t = SvcTuple {
            local: SvcAddr {
                ip4: ctx.local_ip4(),
                port: ctx.local_port(),
            },
            remote,
        };
        let _ = SVC_FLOWS.insert(t, asked, 0);
    }
    let _ = SVC_ASKED.remove(cookie);
    1
}
