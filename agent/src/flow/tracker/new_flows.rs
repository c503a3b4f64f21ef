//! Deltas of flows no connection has yet, held until a harvest places them together
//! ([`super::ConnTable::place_unknown`]): merged per key in place whenever they have
//! doubled, so what they cost is bounded by the flows, not by how often each one was seen.
//! An agent starting on a node with 100k connections sees every one of them here, from
//! every CPU's slot and from eviction records folded in over a whole harvest interval
//! (at a 5 s interval that was 187 MiB of peak RSS before they were merged).

use agent_common::FlowKey;

use crate::{datapath::Delta, flow::FlowEntry};

/// Held entries below this are never merged early (~5.5 MiB of them).
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
            self.merge_at = self.points.len() * 2;
        }
    }

    /// Sort by key and fold every key's entries into one. Merging is what placing does
    /// anyway (one flow seen on several CPUs, or in several eviction records, is one
    /// point), so merging early changes nothing placed.
    fn merge(&mut self) {
        self.points.sort_unstable_by_key(|p| p.0);
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

    /// Every held flow once, merged, in key order. Leaves this empty.
    pub fn take_merged(&mut self) -> Vec<(FlowKey, FlowEntry)> {
        self.merge();
        self.merge_at = 0;
        std::mem::take(&mut self.points)
    }

    /// `merged` (from [`Self::take_merged`]) in the order placing needs: points of a known
    /// generation first, then those of unknown generation (see `place_unknown`), each in
    /// key order. Two passes, not a stable sort: that would copy half of a burst.
    pub fn placing_order(
        merged: &[(FlowKey, FlowEntry)],
    ) -> impl Iterator<Item = (FlowKey, FlowEntry)> + '_ {
        let known = merged.iter().filter(|p| p.0.generation != 0);
        let unknown = merged.iter().filter(|p| p.0.generation == 0);
        known.chain(unknown).copied()
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
        let merged = n.take_merged();
        let out: Vec<_> = NewFlows::placing_order(&merged)
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
            assert!(n.len() < MERGE_FROM, "held {}", n.len());
        }
        let out = n.take_merged();
        assert_eq!(out.len(), usize::from(flows));
        assert!(out
            .iter()
            .all(|(_, e)| e.packets == rounds && e.bytes == rounds * 100));
        assert!(out
            .iter()
            .all(|(_, e)| e.first_seen_ns == 10 && e.last_seen_ns == 10 + rounds - 1 + 5));
    }
}
