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

use super::{connection::rank, initiator, Connection, Counts, FlowEntry, Sighting};
use crate::net::{FastMap as HashMap, FastSet as HashSet, FlowTuple, PROTO_TCP, PROTO_UDP};
use crate::{
    datapath::{Delta, Role, NO_SLOT},
    identity::Name,
    nat::{Fresh, NatEntry, NatTable, Side},
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

/// One observation point of a connection and its totals. Keys of the same place that
/// differ only in generation (see [`FlowKey::generation`]) fold into one point.
#[derive(Clone, Debug)]
struct Point {
    key: FlowKey,
    entry: FlowEntry,
    /// The interface's name when the point was first settled (shared with every point on
    /// it); `None` until then.
    iface: Option<Name>,
    role: Option<Role>,
    forward: bool,
    post_nat: bool,
}

impl Point {
    fn sighting(&self) -> Sighting {
        Sighting {
            ifindex: self.key.ifindex,
            iface: self.iface.clone().unwrap_or_else(|| Name::from("")),
            role: self.role,
            ingress: self.key.direction == Direction::Ingress as u8,
            forward: self.forward,
            post_nat: self.post_nat,
            counts: Counts {
                packets: self.entry.packets,
                bytes: self.entry.bytes,
            },
        }
    }
}

/// A connection's observation points as users see them: built only when a record is (a
/// copy kept per connection cost ~100 bytes each at node scale).
#[derive(Clone, Copy, Debug)]
pub struct Sightings<'a>(&'a [Point]);

impl<'a> Sightings<'a> {
    /// For records built without a table (tests).
    pub const NONE: Sightings<'static> = Sightings(&[]);

    pub fn iter(self) -> impl Iterator<Item = Sighting> + 'a {
        self.0.iter().map(Point::sighting)
    }
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
    /// TCP: the initiator's ISN that tells this connection from others on its tuple (0:
    /// unknown). See [`generation`].
    generation: u32,
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

    /// Its observation points as the record shows them.
    pub fn sightings(&self) -> Sightings<'_> {
        Sightings(&self.points)
    }

    /// Totals per observation point: the `/observations` view.
    pub fn observations(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> {
        self.points.iter().map(|p| (&p.key, &p.entry))
    }

    /// The pod interface the initiator sent from (its veth's host-side ingress), when a
    /// pod opened the connection on this node.
    pub fn initiator_pod_ifindex(&self) -> Option<u32> {
        self.points
            .iter()
            .find(|p| {
                p.role == Some(Role::Pod)
                    && p.forward
                    && p.key.direction == Direction::Ingress as u8
            })
            .map(|p| p.key.ifindex)
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
    /// Every observation point key (each generation of a place too) → its connection.
    by_key: KeyIndex,
    /// The newest connection of each tuple.
    by_tuple: HashMap<FlowTuple, ConnId>,
    /// Connections a newer one on their tuple superseded, until they are removed: late
    /// deltas of their generation still find them.
    older: HashMap<(FlowTuple, u32), ConnId>,
    /// Superseded connections not yet ended.
    retired: Vec<ConnId>,
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
    /// `loss_epoch` when the previous harvest closed, and the one before: a connection
    /// first harvested now may have opened (and lost its NEW event) any time since the
    /// older one. One harvest of slack: the conntrack reader learns of an overflow only at
    /// its next read, and a busy node's harvest reads the cache set by set, so a loss can
    /// be noticed a harvest before the first sighting of a connection it hit.
    epoch_before: u64,
    epoch_older: u64,
    resync_pending: bool,
}

impl<A: Default> ConnTable<A> {
    pub fn new(nat_source: bool) -> Self {
        Self {
            conns: HashMap::default(),
            by_key: KeyIndex::default(),
            by_tuple: HashMap::default(),
            older: HashMap::default(),
            retired: Vec::new(),
            hints: Vec::new(),
            unreported: HashSet::default(),
            changed: Vec::new(),
            orphans: Vec::new(),
            next_id: 1,
            round: 0,
            nat_source,
            loss_epoch: 0,
            epoch_before: 0,
            epoch_older: 0,
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
            self.unindex(*id);
            let Some(t) = self.conns.remove(id) else {
                continue;
            };
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

mod generation;
mod intake;
mod join;
mod key_index;
mod new_flows;
mod prefetch;
mod settle;

use key_index::KeyIndex;
pub use new_flows::NewFlows;
pub use prefetch::AHEAD as WARM_AHEAD;
#[cfg(test)]
mod tests;
