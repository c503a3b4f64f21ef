//! The one owner of connection state. A connection gets a stable id when first sighted and
//! keeps it until it ends; every observation point (pod veth, uplink; before and after
//! NAT) attaches to it; NAT information that arrives later re-keys or merges it *before*
//! any sink has reported the unjoined half; and the initiator is decided once.
//!
//! Sinks never diff their own copies: each harvest ends with [`ConnTable::settle`], which
//! says which connections started (first reported), changed and ended, and each
//! connection hands out exactly the counts it has not reported yet ([`ConnTable::take_delta`]).
//!
//! Why connections are held: a pod's egress leaves the uplink under the node's address.
//! Until conntrack says whose it is, that sighting looks like the node's own connection.
//! A connection seen only at the uplink, not yet joined, is therefore held back for
//! [`JOIN_WINDOW`] harvests (longer while a conntrack resync is pending). If its join
//! still has not come, it is paired with the unjoined pod connection it must belong to
//! (same destination, same source port or the same packet count), or else reported as
//! what it is.

use agent_common::{Direction, FlowKey};
use smallvec::SmallVec;

use super::{
    connection::rank, initiator, Connection, Counts, FastMap as HashMap, FastSet as HashSet,
    FlowEntry, FlowTuple, Sighting, PROTO_TCP, PROTO_UDP,
};
use crate::{
    datapath::{Delta, Role, NO_SLOT},
    identity::Name,
    nat::{NatEntry, NatTable, Side},
};

/// Stable for the life of a connection; never reused by this agent process.
pub type ConnId = u64;

/// Harvests an uplink-only, unjoined connection waits for its conntrack entry; also the
/// lag after which a join counts as late (events are asynchronous: one harvest is normal).
pub const JOIN_WINDOW: u64 = 2;
/// Harvests such a connection may wait while a conntrack resync (after lost events) is
/// still on its way.
pub const RESYNC_HOLD: u64 = 10;

/// Why a pod connection that crossed netfilter ended without a timely conntrack join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MissReason {
    /// Joined, but only after it had been reported unjoined for [`JOIN_WINDOW`] harvests.
    Late,
    /// Never joined, and conntrack events were lost (ENOBUFS) during its life.
    Lost,
    /// Never joined, no event lost: conntrack does not see it (notrack, eBPF NAT).
    None,
}

impl MissReason {
    pub const ALL: [MissReason; 3] = [MissReason::Late, MissReason::Lost, MissReason::None];

    pub fn as_str(self) -> &'static str {
        match self {
            MissReason::Late => "late",
            MissReason::Lost => "lost",
            MissReason::None => "none",
        }
    }
}

/// Observation points of one new tuple in one harvest: inline, as a burst of new
/// connections (an agent starting on a busy node) brings one or two per tuple by the
/// hundred thousand.
type Loose = SmallVec<[(FlowKey, FlowEntry); 1]>;

/// One observation point of a connection and its totals.
#[derive(Clone, Debug)]
struct Point {
    key: FlowKey,
    entry: FlowEntry,
    role: Option<Role>,
    forward: bool,
    post_nat: bool,
}

/// A connection and what the table knows about reporting it. `A` is what the pipeline
/// attaches (classification, the published view); the table never looks inside it.
#[derive(Debug)]
pub struct Tracked<A> {
    pub id: ConnId,
    pub conn: Connection,
    pub extra: A,
    /// Its NAT translation changed since the last settle: classification inputs changed.
    pub nat_changed: bool,
    /// Inline: nearly every connection has one or two (pod veth, uplink).
    points: SmallVec<[Point; 2]>,
    reported: bool,
    first_round: u64,
    joined_round: Option<u64>,
    loss_epoch: u64,
    exported: (Counts, Counts),
    /// A reported half of it had to be merged in after the fact.
    late: bool,
    /// On the table's `changed` list.
    dirty: bool,
}

impl<A> Tracked<A> {
    /// The counts not yet handed to sinks (forward, reply); afterwards they are.
    pub fn take_delta(&mut self) -> (Counts, Counts) {
        let (f, r) = self.exported;
        let d = (self.conn.forward.since(f), self.conn.reply.since(r));
        self.exported = (f.max(self.conn.forward), r.max(self.conn.reply));
        d
    }

    /// Totals per observation point: the `/observations` view.
    pub fn observations(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> {
        self.points.iter().map(|p| (&p.key, &p.entry))
    }

    fn at_pod(&self) -> bool {
        self.points.iter().any(|p| p.role == Some(Role::Pod))
    }
}

/// What one harvest changed, by connection id. Ids in `ending` are still in the table
/// until [`ConnTable::remove_ended`], so sinks can read their last state.
#[derive(Debug, Default)]
pub struct Settled {
    /// Reported for the first time (may also be in `ending`).
    pub started: Vec<ConnId>,
    /// Reported before; counts, sightings or NAT changed.
    pub updated: Vec<ConnId>,
    /// Idle past the timeout (or the agent is stopping): final.
    pub ending: Vec<ConnId>,
    /// Misses of the connections in `ending`.
    pub misses: Vec<MissReason>,
    /// The table after this harvest (before `ending` is removed).
    pub stats: TableStats,
}

/// Sizes for the agent's own metrics, counted in the settle's one pass over the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub reported: usize,
    pub held: usize,
    /// Observation points of every connection.
    pub points: usize,
    /// Reported pod connections past their join window without a join.
    pub unjoined: usize,
}

pub struct ConnTable<A> {
    /// Boxed: a table slot then costs a pointer, not a whole connection, while empty.
    conns: HashMap<ConnId, Box<Tracked<A>>>,
    by_key: HashMap<FlowKey, ConnId>,
    by_tuple: HashMap<FlowTuple, ConnId>,
    /// Per cache slot (dense, as [`Delta::slot`]): the connection and point index its
    /// flow was last added to, packed `id << 8 | index` (0: none). Checked, never trusted.
    hints: Vec<u64>,
    unreported: HashSet<ConnId>,
    /// Connections whose `dirty` flag is set (a list, not a set: the flag dedups).
    changed: Vec<ConnId>,
    /// Reported connections merged into another: they end with the next settle.
    orphans: Vec<ConnId>,
    next_id: ConnId,
    round: u64,
    /// A NAT source (conntrack) is active: hold uplink-only halves and count misses.
    nat_source: bool,
    loss_epoch: u64,
    /// `loss_epoch` when the previous harvest closed: a connection first harvested now
    /// may have opened (and lost its NEW event) any time since.
    epoch_before: u64,
    resync_pending: bool,
}

impl<A: Default> ConnTable<A> {
    pub fn new(nat_source: bool) -> Self {
        Self {
            conns: HashMap::default(),
            by_key: HashMap::default(),
            by_tuple: HashMap::default(),
            hints: Vec::new(),
            unreported: HashSet::default(),
            changed: Vec::new(),
            orphans: Vec::new(),
            next_id: 1,
            round: 0,
            nat_source,
            loss_epoch: 0,
            epoch_before: 0,
            resync_pending: false,
        }
    }

    /// Conntrack events were lost: connections alive now may never be joined.
    pub fn nat_lost(&mut self) {
        self.loss_epoch += 1;
        self.resync_pending = true;
    }

    /// The dump answering lost events has been applied.
    pub fn nat_resynced(&mut self) {
        self.resync_pending = false;
    }

    pub fn get(&self, id: ConnId) -> Option<&Tracked<A>> {
        self.conns.get(&id).map(|t| &**t)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Tracked<A>> {
        self.conns.get_mut(&id).map(|t| &mut **t)
    }

    /// Every connection, reported or held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connections sinks know about (reported, not yet ended).
    pub fn reported(&self) -> impl Iterator<Item = &Tracked<A>> {
        self.conns.values().map(|t| &**t).filter(|t| t.reported)
    }

    pub fn reported_mut(&mut self) -> impl Iterator<Item = &mut Tracked<A>> {
        self.conns
            .values_mut()
            .map(|t| &mut **t)
            .filter(|t| t.reported)
    }

    /// Every connection with its observation points (held ones too).
    pub fn all(&self) -> impl Iterator<Item = &Tracked<A>> {
        self.conns.values().map(|t| &**t)
    }

    /// Fold one harvest's deltas in: known observation points add up, new ones attach to
    /// their connection (through conntrack's tuples, or the tuple and its reverse), and
    /// flows that belong to nothing yet become connections.
    pub fn apply(&mut self, deltas: &[Delta], nat: &NatTable, role: impl Fn(u32) -> Option<Role>) {
        // Deltas of flows no connection has yet: gathered, then sorted and merged per key
        // below (a burst of new connections costs one flat vector, not a growing map).
        let mut unknown: Vec<&Delta> = Vec::new();
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
                    let Some(i) = t.points.iter().position(|p| p.key == d.key) else {
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
        let mut fresh: Vec<(FlowKey, FlowEntry)> = Vec::with_capacity(unknown.len());
        fresh.extend(unknown.iter().map(|d| {
            let mut e = FlowEntry::default();
            e.add(&d.stats);
            (d.key, e)
        }));
        fresh.sort_unstable_by_key(|f| f.0);
        // One flow on several CPUs: one entry.
        fresh.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1.merge(&later.1);
            }
            same
        });
        let mut loose: HashMap<FlowTuple, Loose> = HashMap::default();
        for (key, entry) in fresh {
            let tuple = FlowTuple::from(&key);
            let r = role(key.ifindex);
            if let Some((e, side)) = nat.lookup(&tuple) {
                let id = self.joined(&e);
                self.attach(id, key, entry, r, side);
            } else if let Some(&id) = self.by_tuple.get(&tuple) {
                self.attach(id, key, entry, r, Side::ForwardPre);
            } else if let Some(&id) = tuple.reversed().and_then(|rv| self.by_tuple.get(&rv)) {
                self.attach(id, key, entry, r, Side::ReplyPre);
            } else {
                loose.entry(tuple).or_default().push((key, entry));
            }
        }
        self.place_new(loose, role);
    }

    /// New connections: both directions seen in this harvest are decided together.
    fn place_new(
        &mut self,
        mut loose: HashMap<FlowTuple, Loose>,
        role: impl Fn(u32) -> Option<Role>,
    ) {
        let mut tuples: Vec<FlowTuple> = loose.keys().copied().collect();
        tuples.sort();
        for t in tuples {
            let Some(points) = loose.remove(&t) else {
                continue; // taken as the reverse of an earlier one
            };
            let rev = t.reversed();
            let rev_points = rev.and_then(|r| loose.remove(&r)).unwrap_or_default();
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
            let id = self.create(tuple);
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

    fn create(&mut self, tuple: FlowTuple) -> ConnId {
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(
            id,
            Box::new(Tracked {
                id,
                conn: Connection::new(tuple),
                extra: A::default(),
                nat_changed: false,
                points: SmallVec::new(),
                reported: false,
                first_round: self.round,
                joined_round: None,
                loss_epoch: self.epoch_before,
                exported: Default::default(),
                late: false,
                dirty: false,
            }),
        );
        self.by_tuple.insert(tuple, id);
        self.unreported.insert(id);
        id
    }

    fn attach(
        &mut self,
        id: ConnId,
        key: FlowKey,
        entry: FlowEntry,
        role: Option<Role>,
        side: Side,
    ) {
        let t = self.conns.get_mut(&id).expect("connection exists");
        t.points.push(Point {
            key,
            entry,
            role,
            forward: side.is_forward(),
            post_nat: matches!(side, Side::ForwardPost | Side::ReplyPost),
        });
        self.by_key.insert(key, id);
        self.touch(id);
    }

    /// The connection conntrack's entry names (created under its original tuple if new).
    fn joined(&mut self, e: &NatEntry) -> ConnId {
        let id = match self.by_tuple.get(&e.orig) {
            Some(&id) => id,
            None => self.create(e.orig),
        };
        self.mark_joined(id, e);
        id
    }

    fn mark_joined(&mut self, id: ConnId, e: &NatEntry) {
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
    pub fn join(&mut self, fresh: &[NatEntry], nat: &NatTable) {
        for e in fresh {
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
                self.absorb(id, target);
            }
            self.mark_joined(target, e);
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

    fn rekey(&mut self, id: ConnId, tuple: FlowTuple) {
        let t = self.conns.get_mut(&id).expect("connection exists");
        if self.by_tuple.get(&t.conn.tuple) == Some(&id) {
            self.by_tuple.remove(&t.conn.tuple);
        }
        t.conn.tuple = tuple;
        self.by_tuple.insert(tuple, id);
        self.touch(id);
    }

    /// Move `from`'s observation points into `into`. A `from` already reported cannot be
    /// taken back: it ends as it is, and `into` counts a late join.
    fn absorb(&mut self, from: ConnId, into: ConnId) {
        let Some(src) = self.conns.get_mut(&from) else {
            return;
        };
        let points = std::mem::take(&mut src.points);
        let (src_tuple, src_reported, src_round, src_epoch) = (
            src.conn.tuple,
            src.reported,
            src.first_round,
            src.loss_epoch,
        );
        if self.by_tuple.get(&src_tuple) == Some(&from) {
            self.by_tuple.remove(&src_tuple);
        }
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
        self.touch(into);
    }

    fn expects_join(&self, t: &Tracked<A>) -> bool {
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
    fn held(&self, t: &Tracked<A>) -> bool {
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
        let orphans: HashSet<ConnId> = self.orphans.drain(..).collect();
        out.ending.extend(orphans.iter().copied());
        let mut idle = Vec::new();
        let mut stats = TableStats::default();
        for t in self.conns.values() {
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
        let mut all: Vec<ConnId> = self.conns.keys().copied().collect();
        all.sort_unstable();
        for id in all {
            out.misses.extend(self.miss(&self.conns[&id]));
            out.ending.push(id);
        }
        out
    }

    /// Put a connection on the list of those to refresh at the next settle.
    fn touch(&mut self, id: ConnId) {
        if let Some(t) = self.conns.get_mut(&id) {
            if !t.dirty {
                t.dirty = true;
                self.changed.push(id);
            }
        }
    }

    /// Rebuild changed connections; reported ones that did not just start are updates.
    fn refresh_changed(&mut self, out: &mut Settled, iface: &impl Fn(u32) -> Option<Name>) {
        let started: HashSet<ConnId> = out.started.iter().copied().collect();
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        for id in changed {
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

    fn report(&mut self, id: ConnId, out: &mut Settled) {
        self.unreported.remove(&id);
        if let Some(t) = self.conns.get_mut(&id) {
            t.reported = true;
            self.touch(id);
            out.started.push(id);
        }
    }

    fn miss(&self, t: &Tracked<A>) -> Option<MissReason> {
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
    fn pair_overdue(&mut self, overdue: Vec<ConnId>, out: &mut Settled) {
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
                    let unique = |f: &dyn Fn(&Tracked<A>) -> bool| {
                        let hits: Vec<usize> =
                            (0..ids.len()).filter(|&i| f(&conns[&ids[i]])).collect();
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
    fn pair(&mut self, held: ConnId, pod: ConnId) {
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

    /// The counts not yet handed to sinks (forward, reply); afterwards they are.
    pub fn take_delta(&mut self, id: ConnId) -> (Counts, Counts) {
        self.conns
            .get_mut(&id)
            .map(|t| t.take_delta())
            .unwrap_or_default()
    }

    /// Forget connections that ended (after sinks have read them); returns their
    /// observation points' keys.
    pub fn remove_ended(&mut self, ended: &[ConnId]) -> Vec<FlowKey> {
        let mut keys = Vec::new();
        for id in ended {
            let Some(t) = self.conns.remove(id) else {
                continue;
            };
            if self.by_tuple.get(&t.conn.tuple) == Some(id) {
                self.by_tuple.remove(&t.conn.tuple);
            }
            for p in t.points {
                if self.by_key.get(&p.key) == Some(id) {
                    self.by_key.remove(&p.key);
                    keys.push(p.key);
                }
            }
            self.unreported.remove(id);
        }
        keys
    }
}

fn forward_counts<A>(t: &Tracked<A>) -> Counts {
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
fn syn_seq<A>(t: &Tracked<A>) -> u32 {
    t.points
        .iter()
        .find(|p| p.forward && p.entry.syn_seq != 0)
        .map_or(0, |p| p.entry.syn_seq)
}

/// Rebuild the user-facing connection from its observation points: counts in place when
/// the points are the ones it already shows (the common case), the sightings anew when
/// points were added or moved.
fn refresh<A>(t: &mut Tracked<A>, iface: &impl Fn(u32) -> Option<Name>) {
    let mut first = u64::MAX;
    let mut last = 0;
    let mut flags = 0;
    let same = t.conn.sightings.len() == t.points.len()
        && t.conn.sightings.iter().zip(&t.points).all(|(s, p)| {
            s.ifindex == p.key.ifindex && s.ingress == (p.key.direction == Direction::Ingress as u8)
        });
    if !same {
        t.conn.sightings = t
            .points
            .iter()
            .map(|p| Sighting {
                ifindex: p.key.ifindex,
                iface: iface(p.key.ifindex).unwrap_or_else(|| Name::from("")),
                role: p.role,
                ingress: p.key.direction == Direction::Ingress as u8,
                forward: p.forward,
                post_nat: p.post_nat,
                counts: Counts::default(),
            })
            .collect();
    }
    let (mut fwd_flags, mut rep_flags, mut rep_icmp_error) = (0u8, 0u8, false);
    for (s, p) in t.conn.sightings.iter_mut().zip(&t.points) {
        first = first.min(p.entry.first_seen_ns);
        last = last.max(p.entry.last_seen_ns);
        flags |= p.entry.tcp_flags;
        if p.forward {
            fwd_flags |= p.entry.tcp_flags;
        } else {
            rep_flags |= p.entry.tcp_flags;
            rep_icmp_error |= p.entry.icmp_error;
        }
        s.forward = p.forward;
        s.post_nat = p.post_nat;
        s.counts = Counts {
            packets: p.entry.packets,
            bytes: p.entry.bytes,
        };
    }
    t.conn.settle((first, last), flags);
    (t.conn.fwd_flags, t.conn.rep_flags) = (fwd_flags, rep_flags);
    t.conn.rep_icmp_error = rep_icmp_error;
}

#[cfg(test)]
mod tests;
