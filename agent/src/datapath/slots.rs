//! Turn what the kernel flow cache shows into exact per-flow deltas.
//!
//! The kernel keeps cumulative counters per occupied slot and never lets userspace write:
//! a harvest reads every slot, and a slot taken over by another flow arrives once more as
//! an eviction record with its final counters. This module remembers, per slot, the
//! occupation (sequence number) and counters last seen, so every packet is counted exactly
//! once whichever way (slot read or eviction record, in either order) it reaches us.
//!
//! Pure: no maps, so the bookkeeping is tested without a kernel.

use agent_common::{Evicted, FlowKey, FlowSlot, FlowStats};

use crate::net::FastMap as HashMap;

/// Harvests a displaced occupation waits for its eviction record before it is dropped: the
/// record is lost only if the kernel says so (`evictions_lost`), which it already counts.
const DISPLACED_ROUNDS: u32 = 8;

/// (CPU, slot index) of one cache slot.
type SlotId = (u32, u32);

/// What we last saw of one occupation of one slot: 24 bytes, as one exists per cache slot
/// of every CPU (262,144 of them on a two-CPU node sized for 100k connections, twice that
/// when every CPU has room for every flow).
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// The occupation's sequence number, low half: a slot is not re-occupied 2^32 times
    /// between two harvests.
    seq: u32,
    /// A fingerprint of the flow's key, not the key: behind the sequence numbers it only
    /// has to tell the rare torn copy from the real one.
    key: u32,
    /// 0: nothing seen (an occupied slot always shows at least one packet).
    packets: u64,
    bytes: u64,
}

impl Seen {
    fn is_empty(&self) -> bool {
        self.packets == 0
    }
}

/// New traffic of one flow at one observation point since we last looked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    pub key: FlowKey,
    /// `packets` and `bytes` are the increase; first/last seen and TCP flags are the slot's
    /// (first seen = when this occupation, or its return from idle, began).
    pub stats: FlowStats,
    /// The cache slot (CPU × slot, dense), so the consumer can remember where the flow
    /// went and skip its key lookup next time ([`NO_SLOT`]: none).
    pub slot: u32,
    /// From an eviction record: the slot holds, or will hold, another flow, so where this
    /// one went says nothing about the slot's next delta.
    pub evicted: bool,
}

/// A delta with no slot to remember.
pub const NO_SLOT: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct SlotDeltas {
    /// What we last saw per slot, indexed by `cpu * per_cpu + slot`: every slot is read
    /// every harvest, so a dense table beats hashing ids.
    current: Vec<Seen>,
    per_cpu: usize,
    occupied: usize,
    /// Occupations a slot read showed replaced before their eviction record arrived.
    /// With the harvest round they were displaced in (aged out by [`SlotDeltas::end_round`]).
    displaced: HashMap<(SlotId, u32), (Seen, u32)>,
    round: u32,
}

impl SlotDeltas {
    /// `per_cpu`: slots per CPU (sets × ways).
    pub fn new(per_cpu: usize) -> Self {
        Self {
            per_cpu: per_cpu.max(1),
            ..Self::default()
        }
    }

    /// The slot's number across all CPUs: its place in `current`, and what deltas carry.
    fn index(&self, (cpu, slot): SlotId) -> usize {
        cpu as usize * self.per_cpu + slot as usize
    }

    /// As deltas carry it.
    fn dense(&self, id: SlotId) -> u32 {
        u32::try_from(self.index(id)).unwrap_or(NO_SLOT)
    }

    fn cell(&mut self, id: SlotId) -> &mut Seen {
        let i = self.index(id);
        if i >= self.current.len() {
            self.current.resize(i + 1, Seen::default());
        }
        &mut self.current[i]
    }

    /// One slot as read from CPU `cpu`. `None` for an empty slot, a copy torn by a
    /// concurrent occupation (read again next harvest), or no new traffic.
    pub fn observed(&mut self, cpu: u32, slot: u32, s: &FlowSlot) -> Option<Delta> {
        if s.stats.packets == 0 || s.seq_begin != s.seq_end {
            return None;
        }
        let id = (cpu, slot);
        let dense = self.dense(id);
        let key = fingerprint(&s.key);
        let seq = s.seq_begin as u32;
        let round = self.round;
        let cell = self.cell(id);
        let old = *cell;
        let base = if !old.is_empty() && old.seq == seq {
            if old.key != key {
                // Same occupation, other key: a torn copy; the next read settles it.
                return None;
            }
            Some(old)
        } else {
            None
        };
        *cell = Seen {
            seq,
            key,
            packets: s.stats.packets,
            bytes: s.stats.bytes,
        };
        if old.is_empty() {
            self.occupied += 1;
        } else if old.seq != seq {
            self.displaced.insert((id, old.seq), (old, round));
        }
        delta(s.key, key, &s.stats, base.as_ref(), dense, false)
    }

    /// Start loading what [`Self::evicted`] will read for `e`: eviction records come in
    /// no slot order, so each is a cache miss on its slot's bookkeeping otherwise.
    pub fn warm(&self, e: &Evicted) {
        if let Some(seen) = self.current.get(self.index((e.cpu, e.slot))) {
            crate::prefetch::prefetch(std::ptr::from_ref(seen).cast());
        }
    }

    /// A slot's final counters, sent by the kernel when another flow took the slot.
    pub fn evicted(&mut self, e: &Evicted) -> Option<Delta> {
        let id = (e.cpu, e.slot);
        let seq = e.seq as u32;
        let cell = self.cell(id);
        let base = if !cell.is_empty() && cell.seq == seq {
            let seen = std::mem::take(cell);
            self.occupied -= 1;
            Some(seen)
        } else {
            self.displaced.remove(&(id, seq)).map(|(seen, _)| seen)
        };
        let dense = self.dense(id);
        delta(
            e.key,
            fingerprint(&e.key),
            &e.stats,
            base.as_ref(),
            dense,
            true,
        )
    }

    /// Close a harvest: forget displaced occupations whose record never came.
    pub fn end_round(&mut self) {
        let round = self.round;
        self.displaced
            .retain(|_, (_, at)| (round + 1).wrapping_sub(*at) < DISPLACED_ROUNDS);
        self.round = self.round.wrapping_add(1);
    }

    /// Slots holding a flow at the last read.
    pub fn occupied(&self) -> usize {
        self.occupied
    }
}

fn fingerprint(key: &FlowKey) -> u32 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(key) as u32
}

/// `fingerprint`: of `key`, computed once by the caller.
fn delta(
    key: FlowKey,
    fingerprint: u32,
    now: &FlowStats,
    base: Option<&Seen>,
    slot: u32,
    evicted: bool,
) -> Option<Delta> {
    let (packets, bytes) = match base {
        Some(b) if b.key == fingerprint => (
            now.packets.saturating_sub(b.packets),
            now.bytes.saturating_sub(b.bytes),
        ),
        _ => (now.packets, now.bytes),
    };
    if packets == 0 && bytes == 0 {
        return None;
    }
    Some(Delta {
        key,
        stats: FlowStats {
            packets,
            bytes,
            ..*now
        },
        slot,
        evicted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::udp_key as key;

    fn stats(packets: u64, bytes: u64, first: u64, last: u64) -> FlowStats {
        crate::test_support::stats(packets, bytes, first, last, 0)
    }

    fn slot(seq: u64, port: u16, packets: u64, bytes: u64) -> FlowSlot {
        FlowSlot {
            seq_end: seq,
            key: key(port),
            stats: stats(packets, bytes, 10, 10 + packets),
            seq_begin: seq,
        }
    }

    fn evicted(
        cpu: u32,
        slot_index: u32,
        seq: u64,
        port: u16,
        packets: u64,
        bytes: u64,
    ) -> Evicted {
        Evicted {
            key: key(port),
            stats: stats(packets, bytes, 10, 10 + packets),
            seq,
            cpu,
            slot: slot_index,
        }
    }

    #[test]
    fn deltas_name_their_slot_and_whether_it_was_evicted() {
        let mut t = SlotDeltas::new(16);
        let at = |d: Option<Delta>| d.map(|d| (d.slot, d.evicted));
        assert_eq!(at(t.observed(1, 4, &slot(1, 1, 2, 200))), Some((20, false)));
        assert_eq!(
            at(t.evicted(&evicted(1, 4, 1, 1, 3, 300))),
            Some((20, true))
        );
    }

    #[test]
    fn a_slot_costs_24_bytes_of_bookkeeping() {
        // One per cache slot of every CPU: 6 MiB on a two-CPU node sized for 100k.
        assert_eq!(size_of::<Seen>(), 24);
    }

    fn counts(d: Option<Delta>) -> Option<(u16, u64, u64)> {
        d.map(|d| (d.key.src_port, d.stats.packets, d.stats.bytes))
    }

    #[test]
    fn successive_reads_give_increases_and_nothing_when_idle() {
        let mut t = SlotDeltas::new(16);
        assert_eq!(
            counts(t.observed(0, 7, &slot(1, 1, 2, 200))),
            Some((1, 2, 200))
        );
        assert_eq!(
            counts(t.observed(0, 7, &slot(1, 1, 5, 560))),
            Some((1, 3, 360))
        );
        assert_eq!(counts(t.observed(0, 7, &slot(1, 1, 5, 560))), None);
        assert_eq!(t.occupied(), 1);
    }

    #[test]
    fn eviction_after_a_read_delivers_only_the_remainder() {
        let mut t = SlotDeltas::new(16);
        t.observed(1, 4, &slot(1, 1, 2, 200));
        assert_eq!(
            counts(t.evicted(&evicted(1, 4, 1, 1, 9, 900))),
            Some((1, 7, 700))
        );
        // The new occupant is new traffic in full.
        assert_eq!(
            counts(t.observed(1, 4, &slot(2, 2, 3, 30))),
            Some((2, 3, 30))
        );
    }

    #[test]
    fn slot_read_before_the_eviction_record_keeps_the_old_baseline() {
        let mut t = SlotDeltas::new(16);
        t.observed(0, 4, &slot(1, 1, 2, 200));
        // The next read already shows the new occupant; the record comes a harvest later.
        t.end_round();
        assert_eq!(
            counts(t.observed(0, 4, &slot(2, 2, 1, 10))),
            Some((2, 1, 10))
        );
        t.end_round();
        assert_eq!(
            counts(t.evicted(&evicted(0, 4, 1, 1, 6, 600))),
            Some((1, 4, 400))
        );
        // The new occupant's baseline is untouched by the old one's record.
        assert_eq!(
            counts(t.observed(0, 4, &slot(2, 2, 3, 30))),
            Some((2, 2, 20))
        );
    }

    #[test]
    fn occupations_never_read_arrive_whole_through_records() {
        let mut t = SlotDeltas::new(16);
        t.observed(0, 9, &slot(1, 1, 1, 100));
        assert_eq!(
            counts(t.evicted(&evicted(0, 9, 1, 1, 2, 200))),
            Some((1, 1, 100))
        );
        assert_eq!(
            counts(t.evicted(&evicted(0, 9, 2, 2, 4, 40))),
            Some((2, 4, 40))
        );
        assert_eq!(counts(t.observed(0, 9, &slot(3, 3, 1, 1))), Some((3, 1, 1)));
    }

    #[test]
    fn cpus_are_separate_slots() {
        let mut t = SlotDeltas::new(16);
        assert_eq!(
            counts(t.observed(0, 1, &slot(1, 1, 2, 20))),
            Some((1, 2, 20))
        );
        assert_eq!(
            counts(t.observed(1, 1, &slot(1, 1, 3, 30))),
            Some((1, 3, 30))
        );
        assert_eq!(t.occupied(), 2);
    }

    #[test]
    fn torn_copies_are_skipped_and_counted_on_the_next_read() {
        let mut t = SlotDeltas::new(16);
        t.observed(0, 2, &slot(1, 1, 2, 200));
        let mut torn = slot(2, 2, 1, 10);
        torn.seq_end = 1;
        assert_eq!(counts(t.observed(0, 2, &torn)), None);
        // Same occupation number but another key: also torn.
        let mut torn = slot(1, 2, 1, 10);
        torn.seq_begin = 1;
        assert_eq!(counts(t.observed(0, 2, &torn)), None);
        assert_eq!(
            counts(t.observed(0, 2, &slot(1, 1, 4, 400))),
            Some((1, 2, 200))
        );
    }

    #[test]
    fn empty_slots_are_nothing() {
        let mut t = SlotDeltas::new(16);
        let empty = FlowSlot {
            seq_end: 0,
            key: key(0),
            stats: FlowStats::default(),
            seq_begin: 0,
        };
        assert_eq!(t.observed(0, 0, &empty), None);
        assert_eq!(t.occupied(), 0);
    }

    #[test]
    fn displaced_occupations_are_forgotten_once_their_record_is_overdue() {
        // Every harvest drains the ring before reading slots, so a record is at most one
        // harvest late; one still missing after several was lost (the kernel counts that).
        let mut t = SlotDeltas::new(16);
        t.observed(0, 4, &slot(1, 1, 2, 200));
        t.observed(0, 4, &slot(2, 2, 1, 10));
        assert_eq!(t.displaced.len(), 1);
        for _ in 0..DISPLACED_ROUNDS - 1 {
            t.end_round();
        }
        assert_eq!(t.displaced.len(), 1);
        t.end_round();
        assert_eq!(t.displaced.len(), 0);
    }

    #[test]
    fn first_and_last_seen_and_flags_come_from_the_slot() {
        let mut t = SlotDeltas::new(16);
        let mut s = slot(1, 1, 2, 200);
        s.stats.tcp_flags = 0x12;
        let d = t.observed(0, 0, &s).unwrap();
        assert_eq!(
            (
                d.stats.first_seen_ns,
                d.stats.last_seen_ns,
                d.stats.tcp_flags
            ),
            (10, 12, 0x12)
        );
    }
}
