//! Per-observation-point flow totals built from successive harvests.

use std::collections::HashMap;

use agent_common::{FlowKey, FlowStats};

/// Totals of one flow at one observation point, as userspace knows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u8,
    /// The kernel's cumulative counters at the last harvest: the baseline for the next delta.
    kernel_packets: u64,
    kernel_bytes: u64,
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
            kernel_packets: packets,
            kernel_bytes: bytes,
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

    /// Fold one harvest in. `removed` keys were deleted from the kernel after being read, so
    /// their next kernel entry starts from zero again.
    pub fn apply(&mut self, flows: &[(FlowKey, FlowStats)], removed: &[FlowKey]) {
        for (key, k) in flows {
            let e = self.entries.entry(*key).or_default();
            // A kernel entry smaller than our baseline was evicted and recreated (LRU):
            // everything it holds is new.
            let (dp, db) = if k.packets >= e.kernel_packets && k.bytes >= e.kernel_bytes {
                (k.packets - e.kernel_packets, k.bytes - e.kernel_bytes)
            } else {
                (k.packets, k.bytes)
            };
            if e.packets == 0 {
                e.first_seen_ns = k.first_seen_ns;
            }
            e.packets += dp;
            e.bytes += db;
            e.last_seen_ns = e.last_seen_ns.max(k.last_seen_ns);
            e.tcp_flags |= k.tcp_flags;
            e.kernel_packets = k.packets;
            e.kernel_bytes = k.bytes;
        }
        for key in removed {
            if let Some(e) = self.entries.get_mut(key) {
                e.kernel_packets = 0;
                e.kernel_bytes = 0;
            }
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

    fn key(port: u16) -> FlowKey {
        FlowKey {
            ifindex: 3,
            direction: 0,
            family: 4,
            proto: 17,
            _pad0: 0,
            src_addr: [0x0100_000a, 0],
            dst_addr: [0x0200_000a, 0],
            src_port: port,
            dst_port: 53,
            _pad1: 0,
        }
    }

    fn k(packets: u64, bytes: u64, first: u64, last: u64) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            first_seen_ns: first,
            last_seen_ns: last,
            tcp_flags: 0,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }

    #[test]
    fn cumulative_kernel_counters_become_exact_totals() {
        let mut t = FlowTable::new();
        t.apply(&[(key(1), k(2, 200, 10, 20))], &[]);
        t.apply(&[(key(1), k(5, 560, 10, 50))], &[]);
        let e = t.iter().next().unwrap().1;
        assert_eq!(
            (e.packets, e.bytes, e.first_seen_ns, e.last_seen_ns),
            (5, 560, 10, 50)
        );
    }

    #[test]
    fn kernel_deletion_resets_the_baseline_without_losing_counts() {
        let mut t = FlowTable::new();
        t.apply(&[(key(1), k(4, 400, 10, 20))], &[key(1)]);
        t.apply(&[(key(1), k(1, 100, 90, 90))], &[]);
        let e = t.iter().next().unwrap().1;
        assert_eq!(
            (e.packets, e.bytes, e.first_seen_ns, e.last_seen_ns),
            (5, 500, 10, 90)
        );
    }

    #[test]
    fn lru_eviction_and_recreation_is_counted_as_new() {
        let mut t = FlowTable::new();
        t.apply(&[(key(1), k(10, 1000, 10, 20))], &[]);
        // Evicted without our knowledge; the new entry is smaller than the baseline.
        t.apply(&[(key(1), k(3, 300, 30, 40))], &[]);
        let e = t.iter().next().unwrap().1;
        assert_eq!((e.packets, e.bytes), (13, 1300));
    }

    #[test]
    fn expiry_takes_only_idle_flows() {
        let mut t = FlowTable::new();
        t.apply(
            &[(key(1), k(1, 10, 0, 100)), (key(2), k(1, 10, 0, 900))],
            &[],
        );
        let gone = t.expire(1000, 500);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, key(1));
        assert_eq!(t.len(), 1);
    }
}
