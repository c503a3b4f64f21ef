//! Every known conntrack entry, indexed by each tuple its packets can carry.
//!
//! Packets before translation carry the original tuple or its reverse, found in the table
//! itself; after translation they carry the reply tuple or its reverse, so one more index
//! by reply tuple finds them, needed only for entries that translate (most on a node
//! translate nothing: pod-to-pod on the same network).

use super::{NatEntry, Side};
use crate::flow::{FastMap as HashMap, FastSet, FlowTuple};

#[derive(Debug)]
struct State {
    /// The reply tuple (the original one is the key).
    reply: FlowTuple,
    /// Monotonic ns of the DESTROY event: kept a while so late harvests still join.
    destroyed_at: Option<u64>,
    /// From a source other than conntrack (Cilium's maps, socket-LB): a conntrack resync
    /// says nothing about it.
    external: bool,
}

/// Conntrack entries by original tuple, plus a lookup from the translated tuples.
#[derive(Debug, Default)]
pub struct NatTable {
    by_orig: HashMap<FlowTuple, State>,
    /// Reply tuple → original tuple, for entries whose reply is not the original reversed.
    by_reply: HashMap<FlowTuple, FlowTuple>,
    /// Entries added or changed since [`NatTable::take_fresh`]: the connection table
    /// joins exactly these, not the whole table, each harvest.
    fresh: Vec<NatEntry>,
}

impl NatTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.by_orig.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_orig.is_empty()
    }

    /// Add or refresh an entry (NEW event or dump).
    pub fn insert(&mut self, entry: NatEntry) {
        self.insert_from(entry, false);
    }

    /// Add or refresh an entry from a source other than conntrack.
    pub fn insert_external(&mut self, entry: NatEntry) {
        self.insert_from(entry, true);
    }

    fn insert_from(&mut self, entry: NatEntry, external: bool) {
        if entry.sightings().is_none() {
            return;
        }
        if let Some(old) = self.by_orig.remove(&entry.orig) {
            self.unindex(&entry.orig, &old.reply);
        }
        if entry.translates() {
            self.by_reply.insert(entry.reply, entry.orig);
        }
        self.by_orig.insert(
            entry.orig,
            State {
                reply: entry.reply,
                destroyed_at: None,
                external,
            },
        );
        self.fresh.push(entry);
    }

    /// Entries added or changed since the last call.
    pub fn take_fresh(&mut self) -> Vec<NatEntry> {
        std::mem::take(&mut self.fresh)
    }

    /// A DESTROY event: the mapping stays until [`NatTable::gc`] drops it.
    pub fn destroy(&mut self, orig: &FlowTuple, now_ns: u64) {
        if let Some(s) = self.by_orig.get_mut(orig) {
            s.destroyed_at.get_or_insert(now_ns);
        }
    }

    /// Replace the whole table with a fresh dump (after lost events). Entries missing from
    /// the dump were destroyed while we were not listening.
    pub fn resync(&mut self, entries: Vec<NatEntry>, now_ns: u64) {
        let fresh: FastSet<FlowTuple> = entries.iter().map(|e| e.orig).collect();
        let gone: Vec<FlowTuple> = self
            .by_orig
            .iter()
            .filter(|(k, s)| !s.external && !fresh.contains(*k))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.destroy(&k, now_ns);
        }
        for e in entries {
            self.insert(e);
        }
    }

    /// Forget entries destroyed more than `keep_ns` ago.
    pub fn gc(&mut self, now_ns: u64, keep_ns: u64) {
        let old: Vec<FlowTuple> = self
            .by_orig
            .iter()
            .filter(|(_, s)| {
                s.destroyed_at
                    .is_some_and(|d| now_ns.saturating_sub(d) > keep_ns)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            if let Some(s) = self.by_orig.remove(&k) {
                self.unindex(&k, &s.reply);
            }
        }
    }

    fn unindex(&mut self, orig: &FlowTuple, reply: &FlowTuple) {
        if self.by_reply.get(reply) == Some(orig) {
            self.by_reply.remove(reply);
        }
    }

    /// The entry a packet with this tuple belongs to, and on which side it was seen.
    pub fn lookup(&self, tuple: &FlowTuple) -> Option<(NatEntry, Side)> {
        let entry = |orig: &FlowTuple| {
            self.by_orig.get(orig).map(|s| NatEntry {
                orig: *orig,
                reply: s.reply,
            })
        };
        let rev = tuple.reversed();
        if let Some(e) = entry(tuple) {
            return Some((e, Side::ForwardPre));
        }
        if let Some(e) = rev.as_ref().and_then(entry) {
            return Some((e, Side::ReplyPre));
        }
        if let Some(e) = self.by_reply.get(tuple).and_then(entry) {
            return Some((e, Side::ReplyPost));
        }
        let e = rev.and_then(|r| self.by_reply.get(&r)).and_then(entry)?;
        Some((e, Side::ForwardPost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::PROTO_UDP;

    fn t(src: &str, sport: u16, dst: &str, dport: u16) -> FlowTuple {
        FlowTuple {
            proto: PROTO_UDP,
            src: src.parse().unwrap(),
            sport,
            dst: dst.parse().unwrap(),
            dport,
        }
    }

    fn snat() -> NatEntry {
        NatEntry {
            orig: t("10.244.1.10", 5000, "203.0.113.10", 53),
            reply: t("203.0.113.10", 53, "10.224.0.4", 5001),
        }
    }

    #[test]
    fn every_sighting_finds_the_entry_with_its_side() {
        let mut nt = NatTable::new();
        nt.insert(snat());
        let at = |tuple| nt.lookup(&tuple).map(|(e, s)| (e.orig, s));
        let o = snat().orig;
        assert_eq!(at(o), Some((o, Side::ForwardPre)));
        assert_eq!(
            at(t("203.0.113.10", 53, "10.244.1.10", 5000)),
            Some((o, Side::ReplyPre))
        );
        assert_eq!(
            at(t("10.224.0.4", 5001, "203.0.113.10", 53)),
            Some((o, Side::ForwardPost))
        );
        assert_eq!(
            at(t("203.0.113.10", 53, "10.224.0.4", 5001)),
            Some((o, Side::ReplyPost))
        );
        assert_eq!(at(t("10.224.0.4", 5002, "203.0.113.10", 53)), None);
    }

    #[test]
    fn an_untranslated_entry_is_seen_before_nat_only() {
        let mut nt = NatTable::new();
        let o = t("10.244.1.10", 5000, "10.244.2.20", 80);
        nt.insert(NatEntry {
            orig: o,
            reply: t("10.244.2.20", 80, "10.244.1.10", 5000),
        });
        let at = |tuple| nt.lookup(&tuple).map(|(e, s)| (e.orig, s));
        assert_eq!(at(o), Some((o, Side::ForwardPre)));
        assert_eq!(
            at(t("10.244.2.20", 80, "10.244.1.10", 5000)),
            Some((o, Side::ReplyPre))
        );
        assert!(nt.by_reply.is_empty());
    }

    #[test]
    fn replacing_an_entry_drops_its_old_translation() {
        let mut nt = NatTable::new();
        nt.insert(snat());
        let mut moved = snat();
        moved.reply = t("203.0.113.10", 53, "10.224.0.4", 6001);
        nt.insert(moved);
        assert!(nt
            .lookup(&t("10.224.0.4", 5001, "203.0.113.10", 53))
            .is_none());
        assert_eq!(
            nt.lookup(&t("10.224.0.4", 6001, "203.0.113.10", 53))
                .map(|(_, s)| s),
            Some(Side::ForwardPost)
        );
        assert_eq!(nt.by_reply.len(), 1);
    }

    #[test]
    fn destroyed_entries_linger_until_gc() {
        let mut nt = NatTable::new();
        nt.insert(snat());
        nt.destroy(&snat().orig, 100);
        nt.gc(150, 100);
        assert_eq!(nt.len(), 1);
        nt.gc(201, 100);
        assert!(nt.is_empty());
        assert!(nt.lookup(&snat().orig).is_none());
    }

    #[test]
    fn resync_marks_vanished_entries_destroyed() {
        let mut nt = NatTable::new();
        nt.insert(snat());
        let other = NatEntry {
            orig: t("10.244.1.11", 6000, "203.0.113.10", 53),
            reply: t("203.0.113.10", 53, "10.224.0.4", 6000),
        };
        nt.resync(vec![other], 10);
        nt.gc(20, 5);
        assert_eq!(nt.len(), 1);
        assert!(nt.lookup(&other.orig).is_some());
    }

    #[test]
    fn a_conntrack_resync_leaves_other_sources_entries_alone() {
        let mut nt = NatTable::new();
        nt.insert_external(snat());
        nt.resync(vec![], 10);
        nt.gc(100, 5);
        assert_eq!(nt.len(), 1, "Cilium's mapping is not conntrack's to drop");
    }
}
