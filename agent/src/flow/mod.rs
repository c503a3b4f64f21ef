//! Userspace flow state: per-observation totals from kernel deltas, and the connection
//! table that owns every connection from first sighting to end.

mod clock;
mod connection;
mod initiator;
mod table;
mod tracker;
mod tuple;
mod view;

pub use clock::{monotonic_ns, WallClock};
pub use connection::{Connection, Counts, Sighting};
pub use initiator::Evidence;
pub use table::FlowEntry;
pub use tracker::{ConnId, ConnTable, MissReason, Settled, Tracked, JOIN_WINDOW, RESYNC_HOLD};
#[cfg(test)]
pub use tuple::t as test_tuple;
pub use tuple::{FlowTuple, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
pub use view::{FlowView, Protocol};
