//! Totals of one flow at one observation point, folded from successive harvests.

use agent_common::{FlowStats, MARK_ICMP_ERROR, MARK_OPENED};

/// Totals of one flow at one observation point, as userspace knows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u8,
    /// A TCP SYN without ACK passed here: this direction opened the connection.
    pub opened: bool,
    /// That SYN's sequence number (0: none seen).
    pub syn_seq: u32,
    /// An ICMP error answering this flow passed here (counted in its packets).
    pub icmp_error: bool,
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
            opened: tcp_flags & 0x12 == 0x02,
            syn_seq: 0,
            icmp_error: false,
        }
    }

    /// Fold in another entry of the same flow (another observation of one direction).
    pub fn merge(&mut self, o: &FlowEntry) {
        if self.packets == 0 {
            self.first_seen_ns = o.first_seen_ns;
        } else if o.packets != 0 {
            self.first_seen_ns = self.first_seen_ns.min(o.first_seen_ns);
        }
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.last_seen_ns = self.last_seen_ns.max(o.last_seen_ns);
        self.tcp_flags |= o.tcp_flags;
        self.opened |= o.opened;
        self.icmp_error |= o.icmp_error;
        if o.syn_seq != 0 {
            self.syn_seq = o.syn_seq;
        }
    }

    /// Fold in one delta (one flow on one CPU since the last harvest).
    pub fn add(&mut self, k: &FlowStats) {
        self.merge(&FlowEntry {
            packets: k.packets,
            bytes: k.bytes,
            first_seen_ns: k.first_seen_ns,
            last_seen_ns: k.last_seen_ns,
            tcp_flags: k.tcp_flags,
            opened: k.marks & MARK_OPENED != 0,
            syn_seq: k.syn_seq,
            icmp_error: k.marks & MARK_ICMP_ERROR != 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(packets: u64, bytes: u64, first: u64, last: u64, flags: u8) -> FlowStats {
        crate::test_support::stats(packets, bytes, first, last, flags)
    }

    #[test]
    fn deltas_add_up_to_exact_totals() {
        let mut e = FlowEntry::default();
        e.add(&s(2, 200, 10, 20, 0x02));
        e.add(&s(3, 360, 10, 50, 0x10));
        assert_eq!(
            (
                e.packets,
                e.bytes,
                e.first_seen_ns,
                e.last_seen_ns,
                e.tcp_flags,
                e.opened
            ),
            (5, 560, 10, 50, 0x12, true)
        );
    }

    #[test]
    fn cpus_of_one_flow_merge_into_one_entry() {
        let mut e = FlowEntry::default();
        e.add(&s(3, 180, 500, 900, 0));
        e.add(&s(2, 2960, 400, 1000, 0));
        assert_eq!(
            (
                e.packets,
                e.bytes,
                e.first_seen_ns,
                e.last_seen_ns,
                e.opened
            ),
            (5, 3140, 400, 1000, false)
        );
    }

    #[test]
    fn a_syn_ack_does_not_make_its_direction_the_opener() {
        let mut e = FlowEntry::default();
        e.add(&s(1, 60, 1, 1, 0x12));
        e.add(&s(1, 52, 2, 2, 0x10));
        assert!(!e.opened);
    }
}
