//! Deltas of flows no connection has yet, held until a harvest places them together
//! ([`super::ConnTable::place_unknown`]): merged per key in place whenever they have grown
//! by half, so what they cost is bounded by the flows, not by how often each one was seen.
//! An agent starting on a node with 100k connections sees every one of them here, from
//! every CPU's slot and from eviction records folded in over a whole harvest interval
//! (at a 5 s interval that was 187 MiB of peak RSS before they were merged). They are
//! handed to placing one at a time and their memory given back as they go, so the
//! connections they become do not sit beside a full copy of them.

use agent_common::FlowKey;

use crate::{datapath::Delta, flow::FlowEntry};

/// Held entries below this are never merged early (~5.5 MiB of them); also the step by
/// which [`Placing`] gives memory back.
const MERGE_FROM: usize = 65_536;

#[derive(Debug, Default)]
pub struct NewFlows {
    points: Vec<(FlowKey, FlowEntry)>,
    /// Merge when this many are held.
    merge_at: usize,
}

impl NewFlows {
    pub fn push(&mut self, d: &Delta) {
        let mut e = FlowEntry::default();
        e.add(&d.stats);
        self.points.push((d.key, e));
        if self.points.len() >= self.merge_at.max(MERGE_FROM) {
            self.merge();
            // Half again, not double: what is resident is what was pushed, and a burst of
            // 200k flows would otherwise grow to 400k entries (35 MiB) before merging.
            let held = self.points.len();
            self.merge_at = held + (held / 2).max(MERGE_FROM);
        }
    }

    /// Sort into placing order, reversed (see [`Placing`]) and fold every key's entries
    /// into one. Merging is what placing does anyway (one flow seen on several CPUs, or in
    /// several eviction records, is one point), so merging early changes nothing placed.
    fn merge(&mut self) {
        self.points
            .sort_unstable_by_key(|p| std::cmp::Reverse(placing_rank(&p.0)));
        self.points.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1.merge(&later.1);
            }
            same
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.points.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Every held flow once, merged, in the order placing needs. Leaves this empty.
    pub fn take_for_placing(&mut self) -> Placing {
        self.merge();
        self.merge_at = 0;
        Placing {
            reversed: std::mem::take(&mut self.points),
        }
    }
}

/// The order placing needs: points of a known generation first, then those of unknown
/// generation (see `place_unknown`), each in key order.
fn placing_rank(key: &FlowKey) -> (bool, FlowKey) {
    (key.generation == 0, *key)
}

/// Merged new flows in placing order. Held reversed and popped, and the memory of those
/// handed out given back every [`MERGE_FROM`], so a burst's copy shrinks while its
/// connections are built (a large vector is its own mapping: shrinking it is a `mremap`,
/// not a copy).
#[derive(Debug)]
pub struct Placing {
    reversed: Vec<(FlowKey, FlowEntry)>,
}

impl Iterator for Placing {
    type Item = (FlowKey, FlowEntry);

    fn next(&mut self) -> Option<Self::Item> {
        let p = self.reversed.pop()?;
        if self.reversed.len().is_multiple_of(MERGE_FROM) {
            self.reversed.shrink_to_fit();
        }
        Some(p)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.reversed.len(), Some(self.reversed.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{stats, udp_key};

    fn delta(port: u16, generation: u32, packets: u64, first: u64) -> Delta {
        let mut key = udp_key(port);
        key.generation = generation;
        Delta {
            key,
            stats: stats(packets, packets * 100, first, first + 5, 0),
            slot: 0,
            evicted: true,
        }
    }

    #[test]
    fn each_flow_comes_out_once_with_all_it_was_seen_with() {
        let mut n = NewFlows::default();
        for d in [
            delta(2, 0, 1, 30),
            delta(1, 7, 2, 20),
            delta(2, 0, 3, 10),
            delta(1, 7, 4, 40),
        ] {
            n.push(&d);
        }
        let out: Vec<_> = n
            .take_for_placing()
            .map(|(k, e)| {
                (
                    k.src_port,
                    k.generation,
                    e.packets,
                    e.bytes,
                    e.first_seen_ns,
                    e.last_seen_ns,
                )
            })
            .collect();
        // Known generation first.
        assert_eq!(out, [(1, 7, 6, 600, 20, 45), (2, 0, 4, 400, 10, 35)]);
        assert!(n.is_empty());
    }

    #[test]
    fn a_burst_is_merged_as_it_grows_and_its_totals_stay_exact() {
        let mut n = NewFlows::default();
        let flows = 1_000u16;
        let rounds = 200u64;
        for r in 0..rounds {
            for f in 0..flows {
                n.push(&delta(f, 0, 1, 10 + r));
            }
            assert!(
                n.len() < usize::from(flows) + MERGE_FROM,
                "held {}",
                n.len()
            );
        }
        let out: Vec<_> = n.take_for_placing().collect();
        assert_eq!(out.len(), usize::from(flows));
        assert!(out
            .iter()
            .all(|(_, e)| e.packets == rounds && e.bytes == rounds * 100));
        assert!(out
            .iter()
            .all(|(_, e)| e.first_seen_ns == 10 && e.last_seen_ns == 10 + rounds - 1 + 5));
    }

    #[test]
    fn a_burst_is_held_within_half_again_and_handed_back_as_placed() {
        let mut n = NewFlows::default();
        let flows = 100_000u64;
        let mut most = 0;
        for _round in 0..3 {
            for f in 0..flows {
                let mut d = delta(0, 0, 1, 10);
                d.key.src_addr[0] = f;
                n.push(&d);
                most = most.max(n.len());
            }
        }
        // Merged at 65,536 and at 131,072 (to 100,000), then whenever 65,536 more (at
        // least half again) are held; the most seen is one short of that. Doubling would
        // have held 199,999.
        assert_eq!(most, 100_000 + MERGE_FROM - 1);
        let mut placing = n.take_for_placing();
        assert_eq!(placing.size_hint(), (100_000, Some(100_000)));
        let held = placing.reversed.capacity();
        let mut next_key = 0;
        let mut take = |placing: &mut Placing, count: usize| {
            for _ in 0..count {
                let (k, e) = placing.next().expect("held");
                assert_eq!(
                    (k.src_addr[0], e.packets),
                    (next_key, 3),
                    "key order, merged"
                );
                next_key += 1;
            }
        };
        take(&mut placing, 100_000 - MERGE_FROM - 1);
        assert_eq!(placing.reversed.capacity(), held, "not yet a step");
        take(&mut placing, 1);
        assert_eq!(placing.reversed.capacity(), MERGE_FROM, "given back");
        take(&mut placing, MERGE_FROM);
        assert!(placing.next().is_none());
    }
}
