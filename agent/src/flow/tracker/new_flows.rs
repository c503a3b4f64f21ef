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

/// Held entries below this are never merged early (~5.5 MiB of them).
const MERGE_FROM: usize = 65_536;

/// [`Placing`] gives memory back whenever this many more (1.4 MiB) have been handed out.
const GIVE_BACK: usize = 16_384;

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
/// generation (see `place_unknown`). Within each, by the connection's ports (the higher,
/// then the lower) before the rest of the key, so a connection's points mostly come
/// together: NAT keeps the client's port (masquerade keeps the source port unless it
/// clashes, DNAT keeps the client's), and a connection's sightings on both pods' veths
/// carry the same ports. Its memory is then given back while the connections it becomes
/// are built, not after the last of them (in plain key order every uplink point, which
/// founds a connection, came before every pod point, which joins one).
fn placing_rank(key: &FlowKey) -> (bool, u8, u16, u16, FlowKey) {
    let (a, b) = (key.src_port, key.dst_port);
    (key.generation == 0, key.proto, a.max(b), a.min(b), *key)
}

/// Merged new flows in placing order. Held reversed and popped, and the memory of those
/// handed out given back every [`GIVE_BACK`], so a burst's copy shrinks while its
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
        if self.reversed.len().is_multiple_of(GIVE_BACK) {
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
        let step = 100_000 / GIVE_BACK * GIVE_BACK;
        take(&mut placing, 100_000 - step - 1);
        assert_eq!(placing.reversed.capacity(), held, "not yet a step");
        take(&mut placing, 1);
        assert_eq!(placing.reversed.capacity(), step, "given back");
        take(&mut placing, step - GIVE_BACK);
        assert_eq!(placing.reversed.capacity(), GIVE_BACK, "given back again");
        take(&mut placing, GIVE_BACK);
        assert!(placing.next().is_none());
    }

    #[test]
    fn a_masqueraded_connections_points_are_placed_together() {
        // Two connections from a pod's port 40000 and 40001 to 443, each seen at the pod's
        // veth (ifindex 10) and, after masquerade kept its port, at the uplink (ifindex 2,
        // the node's address): in key order both uplink points would come first.
        let point = |ifindex: u32, src: u64, port: u16| {
            let mut d = delta(port, 0, 1, 10);
            d.key.ifindex = ifindex;
            d.key.src_addr[0] = src;
            d.key.dst_port = 443;
            d
        };
        let (pod, node) = (0x0a01_f40a, 0x0400_e00a);
        let mut n = NewFlows::default();
        for d in [
            point(10, pod, 40001),
            point(2, node, 40000),
            point(2, node, 40001),
            point(10, pod, 40000),
        ] {
            n.push(&d);
        }
        let order: Vec<_> = n
            .take_for_placing()
            .map(|(k, _)| (k.src_port, k.ifindex))
            .collect();
        assert_eq!(order, [(40000, 2), (40000, 10), (40001, 2), (40001, 10)]);
    }
}
