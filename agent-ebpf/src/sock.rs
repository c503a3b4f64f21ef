//! Process attribution: cgroup socket-address hooks on the node's root cgroup record who
//! connects or sends on each socket, keyed by socket cookie. They only observe: every hook
//! returns 1 (allow) and never rewrites the address.

use agent_common::SockOwner;
use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_socket_cookie,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::maps::SOCKS;

/// Allow the syscall: these hooks must never change what the socket does.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn tf_connect4(ctx: SockAddrContext) -> i32 {
    remember(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn tf_connect6(ctx: SockAddrContext) -> i32 {
    remember(&ctx);
    ALLOW
}

/// Unconnected UDP (sendto) never calls connect().
#[cgroup_sock_addr(sendmsg4)]
pub fn tf_sendmsg4(ctx: SockAddrContext) -> i32 {
    remember(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn tf_sendmsg6(ctx: SockAddrContext) -> i32 {
    remember(&ctx);
    ALLOW
}

#[inline(always)]
fn remember(ctx: &SockAddrContext) {
    // SAFETY: the context pointer the kernel passed in; the helpers take no other input.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    if cookie == 0 {
        return;
    }
    // SAFETY: helpers without preconditions.
    let (pid_tgid, cgroup_id) =
        unsafe { (bpf_get_current_pid_tgid(), bpf_get_current_cgroup_id()) };
    let owner = SockOwner {
        pid: (pid_tgid >> 32) as u32,
        _pad0: 0,
        cgroup_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let _ = SOCKS.insert(cookie, owner, 0);
}
