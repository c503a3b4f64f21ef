//! Userspace flow state: turns cumulative kernel counters into per-flow totals that survive
//! kernel-map deletion, and decides when a flow is finished.

mod clock;
mod table;
mod view;

pub use clock::{monotonic_ns, WallClock};
pub use table::{FlowEntry, FlowTable};
pub use view::{FlowView, Protocol};
