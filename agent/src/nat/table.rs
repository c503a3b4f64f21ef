//! Every known conntrack entry, indexed by each tuple its packets can carry.
//!
//! Packets before translation carry the original tuple or its reverse, found in the table
//! itself; after translation they carry the reply tuple or its reverse, so one more index
//! by reply tuple finds them, needed only for entries that translate (most on a node
//! translate nothing: pod-to-pod on the same network).
//!
//! Entries live once, in a slab; both indexes hold 4-byte slot numbers (at 100k
//! masqueraded connections 14 MiB instead of 24 with tuple-keyed maps).

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::{NatEntry, Side};
use crate::net::{FastSet, FlowTuple};

#[derive(Debug)]
struct Slot {
    orig: FlowTuple,
    reply: FlowTuple,
    /// Monotonic ns of the DESTROY event: kept a while so late harvests still join.
    destroyed_at: Option<u64>,
    /// From a source other than conntrack (Cilium's maps, socket-LB): a conntrack resync
    /// says nothing about it.
    external: bool,
}

impl Slot {
    fn entry(&self) -> NatEntry {
        NatEntry {
            orig: self.orig,
            reply: self.reply,
        }
    }
}

/// Conntrack entries by original tuple, plus a lookup from the translated tuples.
#[derive(Debug, Default)]
pub struct NatTable {
    slots: Vec<Option<Slot>>,
    /// Empty slots, reused before the slab grows.
    free: Vec<u32>,
    by_orig: HashTable<u32>,
    /// Reply tuple → slot, for entries whose reply is not the original reversed.
    by_reply: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Slots added or changed since [`NatTable::take_fresh`]: the connection table joins
    /// exactly these, not the whole table, each harvest. Slot numbers, not copies: a
    /// start-up dump or a storm of new connections puts every entry here until the next
    /// harvest (at 100k entries 0.4 MiB instead of 8).
    fresh: Vec<u32>,
}

/// The entries a [`NatTable`] added or changed since the last harvest took them.
#[derive(Debug, Default)]
pub struct Fresh(Vec<u32>);

impl Fresh {
    /// Each entry as the table holds it now (a slot changed twice is joined as it ended
    /// up, twice). Slots are only emptied by [`NatTable::gc`], which a harvest runs after
    /// its join; one emptied anyway is skipped.
    pub fn entries<'a>(&'a self, nat: &'a NatTable) -> impl Iterator<Item = NatEntry> + 'a {
        self.0.iter().filter_map(|&i| {
            nat.slots
                .get(i as usize)
                .and_then(Option::as_ref)
                .map(Slot::entry)
        })
    }
}

/// Which tuple of a slot an index keys on.
#[derive(Clone, Copy)]
enum By {
    Orig,
    Reply,
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

    fn slot(&self, i: u32) -> &Slot {
        self.slots[i as usize]
            .as_ref()
            .expect("indexed slot is live")
    }

    fn find(&self, by: By, t: &FlowTuple) -> Option<u32> {
        let (index, h) = (self.index(by), self.hasher.hash_one(t));
        index
            .find(h, |&i| match by {
                By::Orig => self.slot(i).orig == *t,
                By::Reply => self.slot(i).reply == *t,
            })
            .copied()
    }

    fn index(&self, by: By) -> &HashTable<u32> {
        match by {
            By::Orig => &self.by_orig,
            By::Reply => &self.by_reply,
        }
    }

    /// Index slot `i` under its `by` tuple.
    fn link(&mut self, by: By, i: u32) {
        let Self {
            slots,
            by_orig,
            by_reply,
            hasher,
            ..
        } = self;
        let key = |j: u32| {
            let s = slots[j as usize].as_ref().expect("indexed slot is live");
            match by {
                By::Orig => s.orig,
                By::Reply => s.reply,
            }
        };
        let index = match by {
            By::Orig => by_orig,
            By::Reply => by_reply,
        };
        index.insert_unique(hasher.hash_one(key(i)), i, |&j| hasher.hash_one(key(j)));
    }

    /// Drop slot `i` from the `by` index under tuple `t`, if it is there.
    fn unlink(&mut self, by: By, i: u32, t: &FlowTuple) {
        let h = self.hasher.hash_one(t);
        let index = match by {
            By::Orig => &mut self.by_orig,
            By::Reply => &mut self.by_reply,
        };
        if let Ok(e) = index.find_entry(h, |&j| j == i) {
            e.remove();
        }
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
        let slot = Slot {
            orig: entry.orig,
            reply: entry.reply,
            destroyed_at: None,
            external,
        };
        let i = match self.find(By::Orig, &entry.orig) {
            Some(i) => {
                let old = self.slot(i).reply;
                self.unlink(By::Reply, i, &old);
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slots[i as usize] = Some(slot);
                        i
                    }
                    None => {
                        self.slots.push(Some(slot));
                        u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 entries")
                    }
                };
                self.link(By::Orig, i);
                i
            }
        };
        if entry.translates() {
            // The newest entry owns a reply tuple (conntrack reuses one only after the
            // old entry is gone).
            if let Some(j) = self.find(By::Reply, &entry.reply) {
                self.unlink(By::Reply, j, &entry.reply);
            }
            self.link(By::Reply, i);
        }
        self.fresh.push(i);
    }

    /// Entries added or changed since the last call.
    pub fn take_fresh(&mut self) -> Fresh {
        Fresh(std::mem::take(&mut self.fresh))
    }

    /// A DESTROY event: the mapping stays until [`NatTable::gc`] drops it.
    pub fn destroy(&mut self, orig: &FlowTuple, now_ns: u64) {
        if let Some(i) = self.find(By::Orig, orig) {
            if let Some(s) = self.slots[i as usize].as_mut() {
                s.destroyed_at.get_or_insert(now_ns);
            }
        }
    }

    /// Replace the whole table with a fresh dump (after lost events). Entries missing from
    /// the dump were destroyed while we were not listening.
    pub fn resync(&mut self, entries: Vec<NatEntry>, now_ns: u64) {
        let fresh: FastSet<FlowTuple> = entries.iter().map(|e| e.orig).collect();
        let gone: Vec<FlowTuple> = self
            .slots
            .iter()
            .flatten()
            .filter(|s| !s.external && !fresh.contains(&s.orig))
            .map(|s| s.orig)
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
        for i in 0..self.slots.len() {
            let Some(s) = &self.slots[i] else {
                continue;
            };
            if s.destroyed_at
                .is_none_or(|d| now_ns.saturating_sub(d) <= keep_ns)
            {
                continue;
            }
            let (orig, reply) = (s.orig, s.reply);
            let i = i as u32;
            self.unlink(By::Orig, i, &orig);
            self.unlink(By::Reply, i, &reply);
            self.slots[i as usize] = None;
            self.free.push(i);
        }
    }

    /// The entry a packet with this tuple belongs to, and on which side it was seen.
    pub fn lookup(&self, tuple: &FlowTuple) -> Option<(NatEntry, Side)> {
        let at = |by, t: &FlowTuple| self.find(by, t).map(|i| self.slot(i).entry());
        let rev = tuple.reversed();
        if let Some(e) = at(By::Orig, tuple) {
            return Some((e, Side::ForwardPre));
        }
        if let Some(e) = rev.as_ref().and_then(|r| at(By::Orig, r)) {
            return Some((e, Side::ReplyPre));
        }
        if let Some(e) = at(By::Reply, tuple) {
            return Some((e, Side::ReplyPost));
        }
        let e = rev.and_then(|r| at(By::Reply, &r))?;
        Some((e, Side::ForwardPost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::PROTO_UDP;

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

    /// Another pod's masqueraded flow to the same server.
    fn other_snat() -> NatEntry {
        NatEntry {
            orig: t("10.244.1.11", 6000, "203.0.113.10", 53),
            reply: t("203.0.113.10", 53, "10.224.0.4", 6000),
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
    fn a_slot_freed_by_gc_serves_the_next_entry_and_only_it() {
        let mut nt = NatTable::new();
        nt.insert(snat());
        nt.destroy(&snat().orig, 0);
        nt.gc(10, 5);
        let next = NatEntry {
            orig: t("10.244.1.12", 7000, "203.0.113.10", 53),
            reply: t("203.0.113.10", 53, "10.224.0.4", 7000),
        };
        nt.insert(next);
        assert_eq!(
            (nt.len(), nt.slots.len()),
            (1, 1),
            "the freed slot was reused"
        );
        for gone in [snat().orig, snat().reply] {
            assert!(nt.lookup(&gone).is_none());
        }
        assert_eq!(nt.lookup(&next.reply), Some((next, Side::ReplyPost)));
    }

    #[test]
    fn resync_marks_vanished_entries_destroyed() {
        let mut nt = NatTable::new();
        nt.insert(snat());
        let other = other_snat();
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

    #[test]
    fn fresh_entries_are_read_as_the_table_holds_them_when_joined() {
        let mut nt = NatTable::new();
        nt.insert(snat());
        let other = other_snat();
        nt.insert(other);
        let mut moved = snat();
        moved.reply = t("203.0.113.10", 53, "10.224.0.4", 6001);
        nt.insert(moved);
        let fresh = nt.take_fresh();
        // The refreshed entry twice, as it ended up.
        assert_eq!(
            fresh.entries(&nt).collect::<Vec<_>>(),
            [moved, other, moved]
        );
        assert_eq!(nt.take_fresh().entries(&nt).count(), 0, "taken once");
        // A slot emptied before the join (not what a harvest does) is skipped.
        nt.destroy(&other.orig, 10);
        nt.gc(100, 5);
        assert_eq!(fresh.entries(&nt).collect::<Vec<_>>(), [moved, moved]);
    }
}
