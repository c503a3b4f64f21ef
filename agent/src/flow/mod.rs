//! Userspace flow state: turns cumulative kernel counters into per-flow totals that survive
//! kernel-map deletion, and decides when a flow is finished.

mod clock;
mod connection;
mod record;
mod table;
mod tuple;
mod view;

pub use clock::{monotonic_ns, WallClock};
pub use connection::{build as build_connections, Connection, Counts, Observation, Sighting};
pub use record::{ConnectionView, Endpoint, SightingView};
pub use table::{FlowEntry, FlowTable};
#[cfg(test)]
pub use tuple::t as test_tuple;
pub use tuple::{FlowTuple, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
pub use view::{FlowView, Protocol};
