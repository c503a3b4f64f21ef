//! NAT joins: conntrack's (or Cilium's, or socket-LB's) entries re-key a connection to the
//! initiator's pre-NAT tuple, or merge its halves, before any sink reported the unjoined one.

use super::*;

impl<A: Default> ConnTable<A> {
    /// The connection conntrack's entry names (created under its original tuple if new),
    /// of the generation a new observation point `entry` carries.
    pub(super) fn joined(&mut self, e: &NatEntry, generation: u32, entry: &FlowEntry) -> ConnId {
        let id = match self.by_tuple.get(&e.orig) {
            Some(&head) => self.member(head, generation, entry),
            None => self.create(e.orig, generation),
        };
        self.mark_joined(id, e);
        id
    }

    pub(super) fn mark_joined(&mut self, id: ConnId, e: &NatEntry) {
        let round = self.round;
        let t = self.conns.get_mut(&id).expect("connection exists");
        let c = &mut t.conn;
        if !c.nat_joined || c.snat != e.snat() || c.dnat != e.dnat() {
            c.nat_joined = true;
            c.snat_inferred = false;
            c.snat = e.snat();
            c.dnat = e.dnat();
            t.nat_changed = true;
            t.joined_round.get_or_insert(round);
            self.touch(id);
        }
    }

    /// Conntrack entries that arrived since the last harvest: connections placed under any
    /// of their tuples before conntrack spoke are re-keyed to the original tuple, merged,
    /// and their observation points re-sided.
    pub fn join(&mut self, fresh: &Fresh, nat: &NatTable) {
        for e in fresh.entries(nat) {
            let Some(sightings) = e.sightings() else {
                continue;
            };
            let mut found: Vec<ConnId> = Vec::new();
            for (tuple, _) in sightings {
                if let Some(&id) = self.by_tuple.get(&tuple) {
                    if !found.contains(&id) {
                        found.push(id);
                    }
                }
            }
            let Some(&first) = found.first() else {
                continue;
            };
            let target = match self.by_tuple.get(&e.orig) {
                Some(&id) => id,
                None => {
                    self.rekey(first, e.orig);
                    first
                }
            };
            for id in found.into_iter().filter(|id| *id != target) {
                // Another connection of the tuple (a reused port): its own join, or, if its
                // generation is gone, the pairing of overdue halves, places it.
                if let Some(into) = self.same_generation(id, target, e.orig) {
                    self.absorb(id, into);
                }
            }
            self.mark_joined(target, &e);
            let t = self.conns.get_mut(&target).expect("connection exists");
            for p in &mut t.points {
                if let Some((pe, side)) = nat.lookup(&FlowTuple::from(&p.key)) {
                    if pe.orig == e.orig {
                        p.forward = side.is_forward();
                        p.post_nat = matches!(side, Side::ForwardPost | Side::ReplyPost);
                    }
                }
            }
        }
    }

    pub(super) fn rekey(&mut self, id: ConnId, tuple: FlowTuple) {
        self.unindex(id);
        let t = self.conns.get_mut(&id).expect("connection exists");
        t.conn.tuple = tuple;
        self.by_tuple.insert(tuple, id);
        self.touch(id);
    }

    /// Forget where `id` is found by tuple (as the newest or a superseded one).
    pub(super) fn unindex(&mut self, id: ConnId) {
        let Some(t) = self.conns.get(&id) else {
            return;
        };
        let (tuple, generation) = (t.conn.tuple, t.generation);
        if self.by_tuple.get(&tuple) == Some(&id) {
            self.by_tuple.remove(&tuple);
        }
        if self.older.get(&(tuple, generation)) == Some(&id) {
            self.older.remove(&(tuple, generation));
        }
    }

    /// Move `from`'s observation points into `into`. A `from` already reported cannot be
    /// taken back: it ends as it is, and `into` counts a late join.
    pub(super) fn absorb(&mut self, from: ConnId, into: ConnId) {
        let Some(src) = self.conns.get_mut(&from) else {
            return;
        };
        let points = std::mem::take(&mut src.points);
        let (src_reported, src_round, src_epoch, src_generation) = (
            src.reported,
            src.first_round,
            src.loss_epoch,
            src.generation,
        );
        self.unindex(from);
        self.unreported.remove(&from);
        if src_reported {
            self.orphans.push(from);
        } else {
            self.conns.remove(&from);
        }
        for p in &points {
            self.by_key.insert(p.key, into);
        }
        let dst = self.conns.get_mut(&into).expect("connection exists");
        dst.points.extend(points);
        dst.first_round = dst.first_round.min(src_round);
        dst.loss_epoch = dst.loss_epoch.min(src_epoch);
        dst.late |= src_reported;
        if dst.generation == 0 {
            dst.generation = src_generation;
        }
        self.touch(into);
    }
}
