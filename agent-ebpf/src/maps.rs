//! Maps shared with the agent. Names are part of the agent's contract (it looks them up).

use agent_common::{
    counters::COUNTER_SLOTS, Counter, FlowKey, FlowStats, SockOwner, MAX_FLOWS, MAX_SOCKETS,
};
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
};

/// Per-CPU values make the counters exact without atomics (which this target lacks); LRU
/// keeps the map bounded if the agent falls behind.
#[map(name = "TF_FLOWS")]
pub static FLOWS: LruPerCpuHashMap<FlowKey, FlowStats> =
    LruPerCpuHashMap::with_max_entries(MAX_FLOWS, 0);

/// Socket cookie → the process that connected or sent on it (cgroup hooks).
#[map(name = "TF_SOCKS")]
pub static SOCKS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Flow key → cookie of the local socket that sent it (TC egress, first packet per CPU).
#[map(name = "TF_SOCK_FLOWS")]
pub static SOCK_FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Health counters indexed by [`Counter`].
#[map(name = "TF_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}
