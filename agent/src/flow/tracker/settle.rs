//! Settling a harvest: which connections start, change and end, which uplink-only halves
//! are held for their join or paired with their pod's, and the user-facing connection
//! rebuilt from its observation points.

use super::*;

impl<A: Default> ConnTable<A> {
    pub(super) fn expects_join(&self, t: &Tracked<A>) -> bool {
        let local = |ip: &std::net::IpAddr| match ip {
            std::net::IpAddr::V4(v) => v.is_link_local() || v.is_multicast() || v.is_broadcast(),
            std::net::IpAddr::V6(v) => v.is_multicast() || v.is_unicast_link_local(),
        };
        let c = &t.conn;
        self.nat_source
            && (c.tuple.proto == PROTO_TCP || c.tuple.proto == PROTO_UDP)
            && !local(&c.tuple.src)
            && !local(&c.tuple.dst)
            && t.at_pod()
    }

    /// Held back: it may be the post-SNAT half of a pod's connection.
    pub(super) fn held(&self, t: &Tracked<A>) -> bool {
        self.nat_source
            && !t.conn.nat_joined
            && (t.conn.tuple.proto == PROTO_TCP || t.conn.tuple.proto == PROTO_UDP)
            && !t.at_pod()
    }

    /// Close a harvest: report what may be reported, refresh what changed, end what went
    /// idle (a connection is never ended before it has been reported).
    pub fn settle(
        &mut self,
        now_ns: u64,
        idle_ns: u64,
        iface: impl Fn(u32) -> Option<Name>,
    ) -> Settled {
        let mut out = Settled::default();
        let limit = if self.resync_pending {
            RESYNC_HOLD
        } else {
            JOIN_WINDOW
        };
        let mut overdue = Vec::new();
        let mut pending: Vec<ConnId> = self.unreported.iter().copied().collect();
        pending.sort_unstable();
        for id in pending {
            let t = &self.conns[&id];
            if self.held(t) {
                if self.round - t.first_round < limit {
                    continue;
                }
                overdue.push(id);
            } else {
                self.report(id, &mut out);
            }
        }
        self.pair_overdue(overdue, &mut out);
        self.refresh_changed(&mut out, &iface);
        let mut orphans: HashSet<ConnId> = self.orphans.drain(..).collect();
        out.ending.extend(orphans.iter().copied());
        for id in self.end_retired(&orphans) {
            orphans.insert(id);
            out.misses.extend(self.miss(&self.conns[&id]));
            out.ending.push(id);
        }
        let mut idle = Vec::new();
        let mut stats = TableStats::default();
        let mut ahead = self.conns.values().skip(super::prefetch::AHEAD);
        for t in self.conns.values() {
            if let Some(next) = ahead.next() {
                super::prefetch::warm_tracked(next);
            }
            stats.points += t.points.len();
            if !t.reported {
                stats.held += 1;
                continue;
            }
            stats.reported += 1;
            if !t.conn.nat_joined
                && self.round - t.first_round >= JOIN_WINDOW
                && self.expects_join(t)
            {
                stats.unjoined += 1;
            }
            if now_ns.saturating_sub(t.conn.last_seen_ns) > idle_ns && !orphans.contains(&t.id) {
                idle.push(t.id);
            }
        }
        out.stats = stats;
        idle.sort_unstable();
        for id in idle {
            out.misses.extend(self.miss(&self.conns[&id]));
            out.ending.push(id);
        }
        self.round += 1;
        self.epoch_older = self.epoch_before;
        self.epoch_before = self.loss_epoch;
        out
    }

    /// The agent is stopping: everything open is reported and ends.
    pub fn drain(&mut self, iface: impl Fn(u32) -> Option<Name>) -> Settled {
        let mut out = Settled::default();
        let mut pending: Vec<ConnId> = self.unreported.iter().copied().collect();
        pending.sort_unstable();
        for id in pending {
            self.report(id, &mut out);
        }
        self.refresh_changed(&mut out, &iface);
        self.orphans.clear();
        self.retired.clear();
        let mut all: Vec<ConnId> = self.conns.keys().copied().collect();
        all.sort_unstable();
        for id in all {
            out.misses.extend(self.miss(&self.conns[&id]));
            out.ending.push(id);
        }
        out
    }

    /// Put a connection on the list of those to refresh at the next settle.
    pub(super) fn touch(&mut self, id: ConnId) {
        if let Some(t) = self.conns.get_mut(&id) {
            if !t.dirty {
                t.dirty = true;
                self.changed.push(id);
            }
        }
    }

    /// Rebuild changed connections; reported ones that did not just start are updates.
    pub(super) fn refresh_changed(
        &mut self,
        out: &mut Settled,
        iface: &impl Fn(u32) -> Option<Name>,
    ) {
        let started: HashSet<ConnId> = out.started.iter().copied().collect();
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        for (i, &id) in changed.iter().enumerate() {
            self.warm_ahead(&changed, i);
            let Some(t) = self.conns.get_mut(&id) else {
                continue;
            };
            t.dirty = false;
            refresh(t, iface);
            if t.reported && !started.contains(&id) {
                out.updated.push(id);
            }
        }
    }

    pub(super) fn report(&mut self, id: ConnId, out: &mut Settled) {
        self.unreported.remove(&id);
        if let Some(t) = self.conns.get_mut(&id) {
            t.reported = true;
            self.touch(id);
            out.started.push(id);
        }
    }

    pub(super) fn miss(&self, t: &Tracked<A>) -> Option<MissReason> {
        if !self.expects_join(t) {
            return None;
        }
        match t.joined_round {
            Some(j) if t.late || j >= t.first_round + JOIN_WINDOW => Some(MissReason::Late),
            Some(_) => None,
            None if t.loss_epoch != self.loss_epoch => Some(MissReason::Lost),
            None => Some(MissReason::None),
        }
    }

    /// Held connections whose join never came: pair each with the unjoined pod
    /// connection it belongs to (the same TCP SYN sequence number, which NAT keeps; else
    /// the same source port, which masquerade keeps when it can; else the only one with
    /// the same forward count), or report it as what it is.
    pub(super) fn pair_overdue(&mut self, overdue: Vec<ConnId>, out: &mut Settled) {
        if overdue.is_empty() {
            return;
        }
        let mut candidates: HashMap<(u8, std::net::IpAddr, u16), Vec<ConnId>> = HashMap::default();
        for t in self.conns.values() {
            if !t.conn.nat_joined && t.at_pod() && !t.points.iter().any(|p| p.post_nat) {
                let k = (t.conn.tuple.proto, t.conn.tuple.dst, t.conn.tuple.dport);
                candidates.entry(k).or_default().push(t.id);
            }
        }
        for id in overdue {
            let held = &self.conns[&id];
            let tu = held.conn.tuple;
            let (fwd, seq) = (forward_counts(held), syn_seq(held));
            let pick = candidates
                .get_mut(&(tu.proto, tu.dst, tu.dport))
                .and_then(|ids| {
                    let conns = &self.conns;
                    // Pairing never crosses connections of a reused tuple.
                    let unique = |f: &dyn Fn(&Tracked<A>) -> bool| {
                        let hits: Vec<usize> = (0..ids.len())
                            .filter(|&i| {
                                let c = &conns[&ids[i]];
                                generation::compatible(c.generation, held.generation) && f(c)
                            })
                            .collect();
                        (hits.len() == 1).then(|| hits[0])
                    };
                    let by_seq = || unique(&|c| seq != 0 && syn_seq(c) == seq);
                    let by_port = || {
                        unique(&|c| c.conn.tuple.sport == tu.sport && c.conn.tuple.src != tu.src)
                    };
                    let by_count = || unique(&|c| forward_counts(c) == fwd);
                    let i = by_seq().or_else(by_port).or_else(by_count)?;
                    Some(ids.swap_remove(i))
                });
            match pick {
                Some(pod) => self.pair(id, pod),
                None => self.report(id, out),
            }
        }
    }

    /// `held` is the post-SNAT half of `pod`: its points become `pod`'s post-NAT points
    /// and its source becomes `pod`'s inferred SNAT.
    pub(super) fn pair(&mut self, held: ConnId, pod: ConnId) {
        let post = self.conns[&held].conn.tuple;
        self.absorb(held, pod);
        let t = self.conns.get_mut(&pod).expect("connection exists");
        for p in &mut t.points {
            if FlowTuple::from(&p.key) == post
                || post
                    .reversed()
                    .is_some_and(|r| r == FlowTuple::from(&p.key))
            {
                p.post_nat = true;
            }
        }
        let c = &mut t.conn;
        if (post.src, post.sport) != (c.tuple.src, c.tuple.sport) {
            c.snat = Some((post.src, post.sport));
            c.snat_inferred = true;
            t.nat_changed = true;
        }
    }
}

pub(super) fn forward_counts<A>(t: &Tracked<A>) -> Counts {
    t.points
        .iter()
        .filter(|p| p.forward)
        .min_by_key(|p| {
            rank(
                p.role,
                p.key.direction == Direction::Ingress as u8,
                p.key.ifindex,
            )
        })
        .map(|p| Counts {
            packets: p.entry.packets,
            bytes: p.entry.bytes,
        })
        .unwrap_or_default()
}

/// The opening SYN's sequence number, as the initiator's side saw it (0: unknown).
pub(super) fn syn_seq<A>(t: &Tracked<A>) -> u32 {
    t.points
        .iter()
        .find(|p| p.forward && p.entry.syn_seq != 0)
        .map_or(0, |p| p.entry.syn_seq)
}

/// Rebuild the user-facing connection from its observation points: each direction counted
/// at its preferred point, times and flags over all of them. A point first settled here
/// takes its interface's name now.
pub(super) fn refresh<A>(t: &mut Tracked<A>, iface: &impl Fn(u32) -> Option<Name>) {
    let mut first = u64::MAX;
    let mut last = 0;
    let mut flags = 0;
    let (mut fwd_flags, mut rep_flags, mut rep_icmp_error) = (0u8, 0u8, false);
    let mut best: [Option<(u8, u32)>; 2] = [None, None];
    let mut counts = [Counts::default(); 2];
    for p in &mut t.points {
        if p.iface.is_none() {
            p.iface = iface(p.key.ifindex);
        }
        first = first.min(p.entry.first_seen_ns);
        last = last.max(p.entry.last_seen_ns);
        flags |= p.entry.tcp_flags;
        if p.forward {
            fwd_flags |= p.entry.tcp_flags;
        } else {
            rep_flags |= p.entry.tcp_flags;
            rep_icmp_error |= p.entry.icmp_error;
        }
        let dir = usize::from(!p.forward);
        let r = rank(
            p.role,
            p.key.direction == Direction::Ingress as u8,
            p.key.ifindex,
        );
        if best[dir].is_none_or(|b| r < b) {
            best[dir] = Some(r);
            counts[dir] = Counts {
                packets: p.entry.packets,
                bytes: p.entry.bytes,
            };
        }
    }
    let c = &mut t.conn;
    [c.forward, c.reply] = counts;
    (c.first_seen_ns, c.last_seen_ns) = (first, last);
    c.tcp_flags = flags;
    (c.fwd_flags, c.rep_flags) = (fwd_flags, rep_flags);
    c.rep_icmp_error = rep_icmp_error;
}
