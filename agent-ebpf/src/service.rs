//! Services under socket-LB: Cilium's kube-proxy replacement rewrites a ClusterIP to a
//! backend inside connect() (TCP, connected UDP) or sendmsg() (unconnected UDP), so no
//! packet carries the VIP. `tf_svc_connect{4,6}` and `tf_svc_sendmsg{4,6}` are attached to the
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

const AF_INET6: u32 = 10;

#[cgroup_sock_addr(connect4)]
pub fn tf_svc_connect4(ctx: SockAddrContext) -> i32 {
    remember_asked4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn tf_svc_sendmsg4(ctx: SockAddrContext) -> i32 {
    remember_asked4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn tf_svc_connect6(ctx: SockAddrContext) -> i32 {
    remember_asked6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn tf_svc_sendmsg6(ctx: SockAddrContext) -> i32 {
    remember_asked6(&ctx)
}

/// The port as the context holds it: network byte order in the low 16 bits.
#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u32 {
    // SAFETY: a valid bpf_sock_addr; user_port is readable in every address hook.
    u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16) as u32
}

#[inline(always)]
fn remember_asked4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: a valid bpf_sock_addr for connect4/sendmsg4; user_ip4 is readable.
    let ip4 = unsafe { (*ctx.sock_addr).user_ip4 };
    remember_asked(ctx, SvcAddr::v4(ip4, user_port(ctx)))
}

#[inline(always)]
fn remember_asked6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: a valid bpf_sock_addr for connect6/sendmsg6; user_ip6 is readable word by
    // word (the verifier allows 4-byte loads of it).
    let ip6 = unsafe {
        let a = &(*ctx.sock_addr).user_ip6;
        [a[0], a[1], a[2], a[3]]
    };
    remember_asked(ctx, SvcAddr::v6(ip6, user_port(ctx)))
}

/// Remember, per socket, the address the application asked for (the latest, for UDP).
#[inline(always)]
fn remember_asked(ctx: &SockAddrContext, asked: SvcAddr) -> i32 {
    // SAFETY: the context pointer the kernel passed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    if cookie != 0 {
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
    // Network byte order in the upper 16 bits (little-endian hosts).
    let remote_port = u16::from_be((ctx.remote_port() >> 16) as u16) as u32;
    let (local, remote) = if ctx.family() == AF_INET6 {
        (
            SvcAddr::v6(ctx.local_ip6(), ctx.local_port()),
            SvcAddr::v6(ctx.remote_ip6(), remote_port),
        )
    } else {
        (
            SvcAddr::v4(ctx.local_ip4(), ctx.local_port()),
            SvcAddr::v4(ctx.remote_ip4(), remote_port),
        )
    };
    if remote != asked {
        let t = SvcTuple {
            local,
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
/// last asked for, socket-LB rewrote it. Anything but IPv4 UDP without IP options or IPv6
/// UDP without extension headers passes after two byte loads.
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
    // Every packet worth a look has 24 bytes (an IPv4 UDP header ends there; IPv6 needs
    // more); a one-byte bound check compiles to a form the verifier does not accept.
    let h = head::<24>(ctx)?;
    let (local, remote) = if h[0] == 0x45 {
        // IPv4 without options (20 bytes), then the UDP ports.
        if h[9] != IPPROTO_UDP {
            return None;
        }
        (
            SvcAddr::v4(word(h, 12), port(h, 20)),
            SvcAddr::v4(word(h, 16), port(h, 22)),
        )
    } else if h[0] >> 4 == 6 {
        // IPv6 (40 bytes) with UDP as its next header, then the ports.
        let h = head::<44>(ctx)?;
        if h[6] != IPPROTO_UDP {
            return None;
        }
        let addr = |i: usize| [word(h, i), word(h, i + 4), word(h, i + 8), word(h, i + 12)];
        (
            SvcAddr::v6(addr(8), port(h, 40)),
            SvcAddr::v6(addr(24), port(h, 42)),
        )
    } else {
        return None;
    };
    // SAFETY: the context pointer the kernel passed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
    // SAFETY: a plain lookup; the value is copied out at once.
    let asked = (unsafe { SVC_ASKED.get(cookie) }).copied()?;
    let t = SvcTuple {
        local,
        remote,
        proto: IPPROTO_UDP as u32,
    };
    // Recorded once per flow: a lookup costs less than rewriting the entry every datagram.
    // SAFETY: plain lookups of plain values.
    if t.remote != asked && unsafe { SVC_FLOWS.get(t) }.is_none() {
        let _ = SVC_FLOWS.insert(t, asked, 0);
    }
    Some(())
}

/// Four bytes of `h` from `i`, as the native word of their wire order.
#[inline(always)]
fn word<const N: usize>(h: &[u8; N], i: usize) -> u32 {
    u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]])
}

/// The big-endian port in `h` at `i`, in host order.
#[inline(always)]
fn port<const N: usize>(h: &[u8; N], i: usize) -> u32 {
    u16::from_be_bytes([h[i], h[i + 1]]) as u32
}
