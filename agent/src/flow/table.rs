//! Per-observation-point flow totals built from successive harvests.

use std::collections::HashMap;

use agent_common::FlowKey;

use crate::datapath::Delta;

/// Totals of one flow at one observation point, as userspace knows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u8,
}

impl FlowEntry {
    /// An entry as if harvested once with these totals (for tests of code built on it).
    #[cfg(test)]
    pub(crate) fn observed(packets: u64, bytes: u64, first: u64, last: u64, tcp_flags: u8) -> Self {
        Self {
            packets,
            bytes,
            first_seen_ns: first,
            last_seen_ns: last,
            tcp_flags,
        }
    }
}

/// All flows seen since start (minus expired ones).
#[derive(Debug, Default)]
pub struct FlowTable {
    entries: HashMap<FlowKey, FlowEntry>,
}

impl FlowTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fold one harvest's deltas in (one per flow and CPU that carried new traffic).
    pub fn apply(&mut self, deltas: &[Delta]) {
        for d in deltas {
            let e = self.entries.entry(d.key).or_default();
            let k = &d.stats;
            if e.packets == 0 {
                e.first_seen_ns = k.first_seen_ns;
            } else {
                e.first_seen_ns = e.first_seen_ns.min(k.first_seen_ns);
            }
            e.packets += k.packets;
            e.bytes += k.bytes;
            e.last_seen_ns = e.last_seen_ns.max(k.last_seen_ns);
            e.tcp_flags |= k.tcp_flags;
        }
    }

    /// Remove and return flows silent for longer than `idle_ns` at `now_ns`.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> Vec<(FlowKey, FlowEntry)> {
        let stale: Vec<FlowKey> = self
            .entries
            .iter()
            .filter(|(_, e)| now_ns.saturating_sub(e.last_seen_ns) > idle_ns)
            .map(|(k, _)| *k)
            .collect();
        stale
            .into_iter()
            .filter_map(|k| self.entries.remove(&k).map(|e| (k, e)))
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::udp_key as key;

    fn d(port: u16, packets: u64, bytes: u64, first: u64, last: u64, flags: u8) -> Delta {
        Delta {
            key: key(port),
            stats: crate::test_support::stats(packets, bytes, first, last, flags),
        }
    }

    #[test]
    fn deltas_add_up_to_exact_totals() {
        let mut t = FlowTable::new();
        t.apply(&[d(1, 2, 200, 10, 20, 0x02)]);
        t.apply(&[d(1, 3, 360, 10, 50, 0x10)]);
        let e = t.iter().next().unwrap().1;
        assert_eq!(
            (
                e.packets,
                e.bytes,
                e.first_seen_ns,
                e.last_seen_ns,
                e.tcp_flags
            ),
            (5, 560, 10, 50, 0x12)
        );
    }

    #[test]
    fn cpus_of_one_flow_merge_into_one_entry() {
        let mut t = FlowTable::new();
        t.apply(&[d(1, 3, 180, 500, 900, 0), d(1, 2, 2960, 400, 1000, 0)]);
        assert_eq!(t.len(), 1);
        let e = t.iter().next().unwrap().1;
        assert_eq!(
            (e.packets, e.bytes, e.first_seen_ns, e.last_seen_ns),
            (5, 3140, 400, 1000)
        );
    }

    #[test]
    fn expiry_takes_only_idle_flows() {
        let mut t = FlowTable::new();
        t.apply(&[d(1, 1, 10, 0, 100, 0), d(2, 1, 10, 0, 900, 0)]);
        let gone = t.expire(1000, 500);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, key(1));
        assert_eq!(t.len(), 1);
    }
}
