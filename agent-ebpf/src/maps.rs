//! Maps shared with the agent. Names are part of the agent's contract (it looks them up).

use agent_common::{
    counters::COUNTER_SLOTS, Counter, Evicted, FlowKey, FlowSet, SockOwner, SvcAddr, SvcTuple,
    CACHE_SETS, CONN_GEN_ENTRIES, DNS_RING_BYTES, EVICTIONS_BYTES, EVICTIONS_WAKE_BYTES,
    MAX_SERVICE_SOCKETS, MAX_SOCKETS,
};
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};

/// The flow cache (see `agent_common::cache`): one row of sets per CPU, each written only
/// by its CPU, so counters are exact without atomics; an array so the lookup is an inlined
/// address computation; mappable, so the agent reads it in place instead of having the
/// kernel copy every slot out through a syscall (a quarter of its CPU at 100k flows).
/// The agent sizes it to sets × possible CPUs.
#[map(name = "TF_FLOW_CACHE")]
pub static FLOW_CACHE: Array<FlowSet> = Array::with_max_entries(CACHE_SETS, BPF_F_MMAPABLE);

/// TCP connection generations (see `agent_common::CONN_GEN_ENTRIES`): `tag << 32 | isn`
/// under a hash of the flow key. Shared by all CPUs, because one connection's packets land
/// on several: each must find the generation its SYN wrote wherever it runs.
#[map(name = "TF_CONN_GEN")]
pub static CONN_GEN: Array<u64> = Array::with_max_entries(CONN_GEN_ENTRIES, 0);

/// Final counters of slots taken over by another flow.
#[map(name = "TF_EVICTIONS")]
pub static EVICTIONS: RingBuf = RingBuf::with_byte_size(EVICTIONS_BYTES, 0);

/// DNS messages (port 53) for the agent to name pods' flows with (`agent_common::dns`).
#[map(name = "TF_DNS")]
pub static DNS: RingBuf = RingBuf::with_byte_size(DNS_RING_BYTES, 0);

/// Socket cookie → the process that connected or sent on it (cgroup hooks).
#[map(name = "TF_SOCKS")]
pub static SOCKS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Flow key → cookie of the local socket that sent it (TC egress, first packet per CPU).
#[map(name = "TF_SOCK_FLOWS")]
pub static SOCK_FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Socket cookie → the address its connect() asked for (before socket-LB rewrote it).
#[map(name = "TF_SVC_ASKED")]
pub static SVC_ASKED: LruHashMap<u64, SvcAddr> =
    LruHashMap::with_max_entries(MAX_SERVICE_SOCKETS, 0);

/// A TCP connection's real 4-tuple → the address it asked for, where they differ.
#[map(name = "TF_SVC_FLOWS")]
pub static SVC_FLOWS: LruHashMap<SvcTuple, SvcAddr> =
    LruHashMap::with_max_entries(MAX_SERVICE_SOCKETS, 0);

/// Health counters indexed by [`Counter`].
#[map(name = "TF_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// CLOCK_MONOTONIC ns, written by the agent every [`agent_common::CLOCK_TICK_MS`]: reading
/// it is an inlined array load, where `bpf_ktime_get_coarse_ns` measured ~12 ns per packet.
#[map(name = "TF_CLOCK")]
pub static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// Set by the agent at load: makes set selection unpredictable to senders who would craft
/// colliding flows to force evictions.
#[unsafe(no_mangle)]
static TF_HASH_SEED: u64 = 0;

/// Set by the agent at load (its idle timeout): a slot silent for longer starts a new flow
/// record when its flow comes back, as the agent's table has expired the old one.
#[unsafe(no_mangle)]
static TF_IDLE_NS: u64 = u64::MAX;

/// Set by the agent at load: the cache's sets minus one (a mask over the set index); the
/// agent sizes the map to match (`--flow-cache-sets`).
#[unsafe(no_mangle)]
static TF_SET_MASK: u32 = CACHE_SETS - 1;

/// The agent's clock (see [`CLOCK`]); 0 only before the agent's first tick.
#[inline(always)]
pub fn now() -> u64 {
    CLOCK.get(0).copied().unwrap_or(0)
}

#[inline(always)]
pub fn hash_seed() -> u64 {
    // SAFETY: a plain read; volatile so the compiler keeps the load the loader patched.
    unsafe { core::ptr::read_volatile(&TF_HASH_SEED) }
}

#[inline(always)]
pub fn set_mask() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&TF_SET_MASK) }
}

#[inline(always)]
pub fn idle_ns() -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&TF_IDLE_NS) }
}

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Send a slot's final counters to userspace; a full ring loses them (counted). The agent
/// is woken only once [`EVICTIONS_WAKE_BYTES`] are waiting (and drains at every harvest),
/// so heavy churn costs one wakeup per few thousand records, not one per record.
#[inline(always)]
pub fn evict(record: &Evicted) {
    let flags = if EVICTIONS.query(BPF_RB_AVAIL_DATA as u64) >= EVICTIONS_WAKE_BYTES as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVICTIONS.output::<Evicted>(record, flags as u64).is_ok() {
        bump(Counter::Evictions);
    } else {
        bump(Counter::EvictionsLost);
    }
}
