//! Userspace flow state: per-observation totals from kernel deltas, and the connection
//! table that owns every connection from first sighting to end.

mod connection;
mod initiator;
mod outcome;
mod table;
mod tracker;
mod view;

pub use connection::{Connection, Counts, Sighting};
pub use outcome::{decide as decide_outcome, Outcome, Seen, ANSWER_WITHIN_NS};
pub use table::FlowEntry;
pub use tracker::{
    ConnId, ConnTable, MissReason, NewFlows, Settled, Sightings, TableStats, Tracked, JOIN_WINDOW,
    RESYNC_HOLD, WARM_AHEAD,
};
pub use view::FlowView;
