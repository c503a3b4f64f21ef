//! The kernel flow cache: a set-associative array of flow slots with one row of sets per
//! CPU, each row written only by its CPU, read by the agent in place (mapped).
//!
//! Why not a hash map: a per-CPU LRU hash lookup/update measured 70–100 ns per packet here,
//! most of the programs' cost. An array slot chosen by hashing the key costs a handful of
//! instructions (the array lookup is inlined by the verifier) and a key compare. A full set
//! evicts its least recently seen way into a ring buffer, so no count is lost when flows
//! outnumber slots; userspace never writes the array, so the kernel never races it.
//!
//! Slot protocol (userspace reads slots while the kernel updates them):
//! - a slot with `stats.packets == 0` is empty;
//! - on (re)occupation the kernel writes `seq_begin`, then key and stats, then `seq_end`,
//!   each store volatile so they stay in that order; the agent reads `seq_end` first, then
//!   key and stats, then `seq_begin` (volatile, with acquire fences between): a copy with
//!   `seq_begin == seq_end` was not torn by an occupation (on hosts that keep stores in
//!   order: x86-64 TSO; elsewhere a rare torn copy is caught by the delta checks);
//! - the sequence numbers count occupations of the slot: they tell userspace whether the
//!   flow it saw last harvest still owns the slot.

use crate::{FlowKey, FlowStats};

/// Sets per CPU as a power of two (the hash's top bits pick the set). 4,096 sets × 2 ways =
/// 8,192 flows per CPU before eviction; 832 KiB per CPU.
pub const CACHE_SET_BITS: u32 = 12;
pub const CACHE_SETS: u32 = 1 << CACHE_SET_BITS;
/// Ways per set: two halve the evictions of flows that collide in a direct-mapped cache.
pub const CACHE_WAYS: usize = 2;
/// Entries of the TCP connection-generation table (a shared, not per-CPU, array): a SYN or
/// SYN-ACK writes the connection's initiator ISN under a hash of its key, and every later
/// packet of that key reads it into [`crate::FlowKey::generation`]. 64 Ki entries (512 KiB):
/// many more than live handshakes, so a long connection's entry is rarely taken by another
/// SYN (when it is, its later packets count under generation 0 and the agent folds them
/// into the connection that holds the tuple).
pub const CONN_GEN_ENTRIES: u32 = 1 << 16;

/// Ring buffer for evicted slots: 4 MiB holds ~37,000 records (112 bytes each with the
/// ring's header). Once the cache is warm every new flow evicts one per observation point.
/// Not larger: the agent maps the ring's pages twice (8 MiB of its RSS), and a thread of
/// its own empties the ring whenever the kernel wakes it (below) or 100 ms have passed, so
/// the ring only has to cover that thread's latency (a thrashing cache measured 140,000
/// records/s: ~15,000 in 100 ms).
pub const EVICTIONS_BYTES: u32 = 4 << 20;
/// Pending bytes at which an eviction wakes the agent's thread to empty the ring
/// (512 KiB: ~4,700 records, an eighth of the ring).
pub const EVICTIONS_WAKE_BYTES: u32 = 512 << 10;

/// How often the agent writes CLOCK_MONOTONIC into the kernel's clock map: the resolution
/// of first/last seen.
pub const CLOCK_TICK_MS: u64 = 100;

/// One flow's cumulative counters on one CPU since it took this slot.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSlot {
    /// Occupation number, written last (read first by userspace).
    pub seq_end: u64,
    pub key: FlowKey,
    pub stats: FlowStats,
    /// Occupation number, written first (read last by userspace).
    pub seq_begin: u64,
}

/// One set: the key's hash picks the set, a key compare picks the way.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSet {
    pub ways: [FlowSlot; CACHE_WAYS],
}

/// A slot's final counters, sent through the ring buffer when another flow takes the slot.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evicted {
    pub key: FlowKey,
    pub stats: FlowStats,
    /// The occupation number the slot had while this flow held it.
    pub seq: u64,
    pub cpu: u32,
    /// `set * CACHE_WAYS + way`.
    pub slot: u32,
}
