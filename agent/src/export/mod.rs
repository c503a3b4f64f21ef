//! What leaves the agent: Prometheus metrics and the HTTP API. Sinks read shared state and
//! never reach back into the datapath.

mod http;
mod metrics;
mod state;

pub use http::{bind, serve, FlowQuery};
pub use metrics::AgentMetrics;
pub use state::Shared;
