//! TC classifier entry points: thin wrappers that never influence the packet's fate.

use agent_common::{Counter, Direction, FlowStats};
use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    cty::c_void,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_coarse_ns},
    macros::classifier,
    programs::TcContext,
};

use crate::{
    maps::{bump, FLOWS, SOCK_FLOWS},
    parse::{parse, Outcome, Parsed},
};

/// Attached at TC ingress of pod veths and uplinks.
#[classifier]
pub fn tf_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

/// Attached at TC egress of pod veths and uplinks.
#[classifier]
pub fn tf_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

/// A packet a local socket sends (host process, hostNetwork pod) carries its socket; a
/// forwarded pod packet does not (veths orphan it), so this costs one helper call on a
/// flow's first packet per CPU and nothing afterwards.
#[inline(always)]
fn remember_socket(ctx: &TcContext, key: &agent_common::FlowKey) {
    // SAFETY: the context pointer the kernel passed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
    if cookie != 0 {
        let _ = SOCK_FLOWS.insert(key, cookie, 0);
    }
}

/// Does nothing: the benchmark's floor (dispatch plus kernel stats cost).
#[classifier]
pub fn tf_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe(ctx: &TcContext, dir: Direction) {
    bump(Counter::Packets);
    match parse(ctx) {
        Outcome::Flow(p) => record(ctx, dir, p),
        Outcome::NotIp => bump(Counter::NonIp),
        Outcome::Unparsable => bump(Counter::Unparsable),
    }
}

#[inline(always)]
fn record(ctx: &TcContext, dir: Direction, mut p: Parsed) {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context pointer the kernel passed in; these UAPI fields are readable.
    let (ifindex, len, gso_segs) = unsafe { ((*skb).ifindex, (*skb).len, (*skb).gso_segs) };
    p.key.ifindex = ifindex;
    p.key.direction = dir as u8;
    // A GSO super-packet stands for `segs` wire packets, each carrying its own copy of the
    // IP + transport headers; count them the way the wire will see them.
    let segs = if gso_segs > 1 { gso_segs as u64 } else { 1 };
    let l3_len = (len as u64).saturating_sub(p.l3_off as u64);
    let bytes = l3_len + (segs - 1) * p.hdr_len as u64;
    // Jiffy resolution is plenty for first/last seen, and the precise clock measured
    // ~30 ns/packet here. Needs kernel 5.11 (AKS nodes run 5.15+).
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    if let Some(stats) = FLOWS.get_ptr_mut(p.key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        let s = unsafe { &mut *stats };
        if s.packets == 0 {
            s.first_seen_ns = now;
        }
        s.packets += segs;
        s.bytes += bytes;
        s.last_seen_ns = now;
        s.tcp_flags |= p.tcp_flags;
        return;
    }
    if dir == Direction::Egress {
        remember_socket(ctx, &p.key);
    }
    let fresh = FlowStats {
        packets: segs,
        bytes,
        first_seen_ns: now,
        last_seen_ns: now,
        tcp_flags: p.tcp_flags,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
    // BPF_ANY on a per-CPU LRU map writes only this CPU's slot if another CPU inserted the
    // key meanwhile, so a race cannot overwrite another CPU's counts.
    if FLOWS.insert(p.key, fresh, 0).is_err() {
        bump(Counter::InsertFailures);
    }
}
