//! Intake: a harvest's deltas folded into the table. Known observation points add up (the
//! slot hint skips the key lookup), new ones attach to their connection through conntrack's
//! tuples or the tuple and its reverse, and the rest become connections.

use super::*;

/// Deltas whose connections are fetched into cache together before they are applied.
const LOOKAHEAD: usize = 16;

impl<A: Default> ConnTable<A> {
    /// Fold one harvest's deltas in: known observation points add up, new ones attach to
    /// their connection (through conntrack's tuples, or the tuple and its reverse), and
    /// flows that belong to nothing yet become connections.
    pub fn apply(&mut self, deltas: &[Delta], nat: &NatTable, role: impl Fn(u32) -> Option<Role>) {
        let mut unknown = NewFlows::default();
        self.apply_known(deltas, &mut unknown);
        self.place_unknown(&mut unknown, nat, role);
    }

    /// Known observation points add up; deltas of flows no connection has yet go to
    /// `unknown` (merged per flow there), to be placed together once the whole harvest is read
    /// ([`ConnTable::place_unknown`]). Called a batch at a time while the kernel cache is
    /// read, so a node's active points never sit in one vector.
    pub fn apply_known(&mut self, deltas: &[Delta], unknown: &mut NewFlows) {
        for group in deltas.chunks(LOOKAHEAD) {
            self.prefetch_hinted(group);
            self.apply_group(group, unknown);
        }
    }

    /// Start loading the connections a group of deltas' hints name. The lookups are
    /// independent of each other, so the CPU overlaps their cache misses here instead of
    /// taking them one after another in [`Self::apply_group`] (at node scale every delta's
    /// connection is a miss: the table is far larger than the cache).
    /// An eviction record's slot has usually changed hands since it was read, so its hint
    /// rarely names its flow: its connection is found through the key index, warmed here
    /// the same way.
    fn prefetch_hinted(&self, group: &[Delta]) {
        for d in group {
            let hinted = self.hints.get(d.slot as usize).copied().unwrap_or(0);
            if hinted != 0 && !d.evicted {
                self.warm(hinted >> 8);
            } else if let Some(&id) = self.by_key.get(&d.key) {
                self.warm(id);
            }
        }
    }

    fn apply_group(&mut self, deltas: &[Delta], unknown: &mut NewFlows) {
        for d in deltas {
            let hinted = self.hints.get(d.slot as usize).copied().unwrap_or(0);
            let (id, point) = (hinted >> 8, (hinted & 0xff) as usize);
            // The slot's flow went here last time: check the key where it points instead
            // of looking it up (one table walk fewer per delta at node scale).
            let hit = (hinted != 0)
                .then(|| self.conns.get_mut(&id))
                .flatten()
                .filter(|t| t.points.get(point).is_some_and(|p| p.key == d.key));
            let (id, t, i) = match hit {
                Some(t) => (id, t, point),
                None => {
                    let Some(&id) = self.by_key.get(&d.key) else {
                        unknown.push(d);
                        continue;
                    };
                    let t = self.conns.get_mut(&id).expect("indexed connection");
                    let Some(i) = t.points.iter().position(|p| p.key.same_place(&d.key)) else {
                        continue;
                    };
                    (id, t, i)
                }
            };
            t.points[i].entry.add(&d.stats);
            if !t.dirty {
                t.dirty = true;
                self.changed.push(id);
            }
            if d.slot != NO_SLOT && !d.evicted && i < 0x100 {
                let slot = d.slot as usize;
                if slot >= self.hints.len() {
                    self.hints.resize(slot + 1, 0);
                }
                self.hints[slot] = id << 8 | i as u64;
            }
        }
    }

    /// A whole harvest's flows no connection had ([`NewFlows`]: each once, merged), joined
    /// to their connections or placed as new ones, both directions decided together.
    /// Points of a known generation first: a point of unknown generation (its entry was
    /// taken) may hold a connection's end, and must join that connection, not found one
    /// that its own start would then supersede.
    pub fn place_unknown(
        &mut self,
        unknown: &mut NewFlows,
        nat: &NatTable,
        role: impl Fn(u32) -> Option<Role>,
    ) {
        let mut loose: HashMap<(FlowTuple, u32), Loose> = HashMap::default();
        for (key, entry) in unknown.take_for_placing() {
            let tuple = FlowTuple::from(&key);
            let r = role(key.ifindex);
            let generation = key.generation;
            if let Some((e, side)) = nat.lookup(&tuple) {
                let id = self.joined(&e, generation, &entry);
                self.attach(id, key, entry, r, side);
            } else if let Some(&head) = self.by_tuple.get(&tuple) {
                let id = self.member(head, generation, &entry);
                self.attach(id, key, entry, r, Side::ForwardPre);
            } else if let Some(&head) = tuple.reversed().and_then(|rv| self.by_tuple.get(&rv)) {
                let id = self.member(head, generation, &entry);
                self.attach(id, key, entry, r, Side::ReplyPre);
            } else {
                loose
                    .entry((tuple, generation))
                    .or_default()
                    .push((key, entry));
            }
        }
        self.place_new(loose, role);
    }

    /// New connections: both directions seen in this harvest are decided together. Several
    /// connections of one tuple in one harvest (a port reused within the interval) are
    /// placed oldest first, so the newest holds the tuple.
    pub(super) fn place_new(
        &mut self,
        mut loose: HashMap<(FlowTuple, u32), Loose>,
        role: impl Fn(u32) -> Option<Role>,
    ) {
        // (Of one tuple and first-seen tick, unknown generation last, as in `apply`.)
        let mut groups: Vec<(FlowTuple, u64, bool, u32)> = loose
            .iter()
            .map(|(&(t, g), ps)| {
                let first = ps.iter().map(|p| p.1.first_seen_ns).min().unwrap_or(0);
                (t, first, g == 0, g)
            })
            .collect();
        groups.sort();
        for (t, _, _, g) in groups {
            let Some(points) = loose.remove(&(t, g)) else {
                continue; // taken as the reverse of an earlier one
            };
            let rev = t.reversed();
            let rev_points = rev.and_then(|r| loose.remove(&(r, g))).unwrap_or_default();
            // An earlier group of this harvest placed a connection on the tuple.
            let head = [Some(t), rev]
                .into_iter()
                .flatten()
                .find_map(|x| self.by_tuple.get(&x).copied());
            if let Some(head) = head {
                self.place_generation(head, g, points, rev_points, &role);
                continue;
            }
            let merged = |ps: &[(FlowKey, FlowEntry)]| {
                ps.iter().fold(FlowEntry::default(), |mut acc, (_, e)| {
                    acc.merge(e);
                    acc
                })
            };
            let rev_entry = (!rev_points.is_empty()).then(|| merged(&rev_points));
            let (t_opens, _) = initiator::decide(&t, &merged(&points), rev_entry.as_ref());
            let tuple = match (t_opens, rev) {
                (false, Some(r)) => r,
                _ => t,
            };
            let id = self.create(tuple, g);
            for (key, entry, fwd) in points
                .into_iter()
                .map(|(k, e)| (k, e, tuple == t))
                .chain(rev_points.into_iter().map(|(k, e)| (k, e, tuple != t)))
            {
                let side = if fwd {
                    Side::ForwardPre
                } else {
                    Side::ReplyPre
                };
                self.attach(id, key, entry, role(key.ifindex), side);
            }
        }
    }

    /// A new connection that holds `tuple` from now on (superseding the one that held it).
    pub(super) fn create(&mut self, tuple: FlowTuple, generation: u32) -> ConnId {
        if let Some(&head) = self.by_tuple.get(&tuple) {
            self.supersede(head);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(
            id,
            Box::new(Tracked {
                id,
                conn: Connection::new(tuple),
                extra: A::default(),
                nat_changed: false,
                generation,
                points: SmallVec::new(),
                reported: false,
                first_round: self.round,
                joined_round: None,
                loss_epoch: self.epoch_older,
                exported: Default::default(),
                late: false,
                dirty: false,
            }),
        );
        self.by_tuple.insert(tuple, id);
        self.unreported.insert(id);
        id
    }

    pub(super) fn attach(
        &mut self,
        id: ConnId,
        key: FlowKey,
        entry: FlowEntry,
        role: Option<Role>,
        side: Side,
    ) {
        let t = self.conns.get_mut(&id).expect("connection exists");
        if let Some(p) = t.points.iter_mut().find(|p| p.key.same_place(&key)) {
            p.entry.merge(&entry);
        } else {
            t.points.push(Point {
                key,
                entry,
                iface: None,
                role,
                forward: side.is_forward(),
                post_nat: matches!(side, Side::ForwardPost | Side::ReplyPost),
            });
        }
        self.by_key.insert(key, id);
        self.touch(id);
    }
}
