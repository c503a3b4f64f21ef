//! tenantflow kernel programs.
//!
//! TC classifiers on pod veths and node uplinks count every IP packet into a per-CPU flow
//! cache keyed by (interface, direction, 5-tuple); flows it evicts reach the agent through
//! a ring buffer (see `agent_common::cache`). They are observers: every program returns
//! `TC_ACT_UNSPEC` so the packet continues exactly as if no program were attached (with
//! `TC_ACT_PIPE` a later tcx program on the same hook would not run).
//!
//! Needs: TC clsact (any AKS kernel) or tcx (>= 6.6, chosen by the agent at attach time),
//! `__sk_buff.gso_segs` (>= 4.19). No CO-RE relocations: only the stable `__sk_buff` UAPI
//! and packet bytes are read.
#![no_std]
#![no_main]

mod dns;
mod maps;
mod parse;
mod service;
mod sock;
mod tc;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach this; it exists only to
    // satisfy `no_std`.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
