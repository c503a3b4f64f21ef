//! Maps shared with the agent. Names are part of the agent's contract (it looks them up).

use agent_common::{counters::COUNTER_SLOTS, Counter, FlowKey, FlowStats, MAX_FLOWS};
use aya_ebpf::{
    macros::map,
    maps::{LruPerCpuHashMap, PerCpuArray},
};

/// Per-CPU values make the counters exact without atomics (which this target lacks); LRU
/// keeps the map bounded if the agent falls behind.
#[map(name = "TF_FLOWS")]
pub static FLOWS: LruPerCpuHashMap<FlowKey, FlowStats> =
    LruPerCpuHashMap::with_max_entries(MAX_FLOWS, 0);

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
