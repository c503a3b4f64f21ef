//! Userspace flow state: per-observation totals from kernel deltas, and the connection
//! table that owns every connection from first sighting to end.

mod clock;
mod connection;
mod initiator;
mod outcome;
mod table;
mod tracker;
mod tuple;
mod view;

pub use clock::{monotonic_ns, unix_seconds, WallClock};
pub use connection::{Connection, Counts, Sighting};
pub use outcome::{decide as decide_outcome, Outcome, Seen, ANSWER_WITHIN_NS};
pub use table::FlowEntry;
pub use tracker::{
    ConnId, ConnTable, MissReason, Settled, TableStats, Tracked, JOIN_WINDOW, RESYNC_HOLD,
};
#[cfg(test)]
pub use tuple::t as test_tuple;
pub use tuple::{FlowTuple, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
pub use view::{FlowView, Protocol};

/// Hash maps on the per-harvest path (flow keys, tuples, connection ids): foldhash is
/// several times faster than SipHash on 48-byte keys and still seeded per process, so
/// senders cannot precompute colliding flows.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
