//! Services under socket-LB: Cilium's kube-proxy replacement rewrites a ClusterIP to a
//! backend inside connect() (TCP, connected UDP) or sendmsg() (unconnected UDP), so no
//! packet carries the VIP. `tf_svc_connect4` and `tf_svc_sendmsg4` are attached to the
//! cgroup that holds the pods, below the root where Cilium's socket-LB sits: cgroup
//! programs of a descendant run before its ancestors', so they see the address the
//! application asked for. The real 4-tuple comes later: `tf_svc_sockops` sees a TCP
//! connection's once TCP has chosen the source port; `tf_svc_egress` sees a UDP datagram's
//! as it leaves the socket. Each records the pair when the destination was rewritten. All
//! only observe: the address hooks allow every call, sock_ops changes nothing, the egress
//! hook passes every packet (a non-UDP packet after two byte loads).

use agent_common::{SvcAddr, SvcTuple};
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    cty::c_void,
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_skb, cgroup_sock_addr, sock_ops},
    programs::{SkBuffContext, SockAddrContext, SockOpsContext},
};

use crate::{
    maps::{SVC_ASKED, SVC_FLOWS},
    parse::{IPPROTO_TCP, IPPROTO_UDP},
};

#[cgroup_sock_addr(connect4)]
pub fn tf_svc_connect4(ctx: SockAddrContext) -> i32 {
    remember_asked(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn tf_svc_sendmsg4(ctx: SockAddrContext) -> i32 {
    remember_asked(&ctx)
}

/// Remember, per socket, the address the application asked for (the latest, for UDP).
#[inline(always)]
fn remember_asked(ctx: &SockAddrContext) -> i32 {
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
            proto: IPPROTO_TCP as u32,
        };
        let _ = SVC_FLOWS.insert(t, asked, 0);
    }
    let _ = SVC_ASKED.remove(cookie);
    1
}

/// Does nothing: the benchmark's floor for the egress hook (dispatch plus stats cost).
#[cgroup_skb]
pub fn tf_svc_noop(_ctx: SkBuffContext) -> i32 {
    1
}

/// A UDP datagram leaving a pod's socket: when its destination differs from what the socket
/// last asked for, socket-LB rewrote it. Anything but IPv4 UDP without IP options passes
/// after two byte loads.
#[cgroup_skb]
pub fn tf_svc_egress(ctx: SkBuffContext) -> i32 {
    let _ = udp_rewritten(&ctx);
    1
}

/// The first `N` bytes of the packet (cgroup_skb data starts at the IP header), read
/// in place: direct packet access costs a load, `bpf_skb_load_bytes` a helper call each.
#[inline(always)]
fn head<const N: usize>(ctx: &SkBuffContext) -> Option<&[u8; N]> {
    // SAFETY: reading the context's data pointers, as the kernel set them.
    let (start, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if start + N > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; byte arrays have alignment 1.
    Some(unsafe { &*(start as *const [u8; N]) })
}

#[inline(always)]
fn udp_rewritten(ctx: &SkBuffContext) -> Option<()> {
    // IPv4 without options (20 bytes), then the UDP ports.
    let h = head::<24>(ctx)?;
    if h[0] != 0x45 || h[9] != IPPROTO_UDP {
        return None;
    }
    // SAFETY: the context pointer the kernel passed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
    // SAFETY: a plain lookup; the value is copied out at once.
    let asked = (unsafe { SVC_ASKED.get(cookie) }).copied()?;
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let port = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]) as u32;
    let t = SvcTuple {
        local: SvcAddr {
            ip4: word(12),
            port: port(20),
        },
        remote: SvcAddr {
            ip4: word(16),
            port: port(22),
        },
        proto: IPPROTO_UDP as u32,
    };
    // Recorded once per flow: a lookup costs less than rewriting the entry every datagram.
    // SAFETY: plain lookups of plain values.
    if t.remote != asked && unsafe { SVC_FLOWS.get(t) }.is_none() {
        let _ = SVC_FLOWS.insert(t, asked, 0);
    }
    Some(())
}
