//! What leaves the agent: Prometheus metrics and the HTTP API. Sinks read shared state and
//! never reach back into the datapath.

mod flow_log;
mod flow_metrics;
pub mod guarded;
mod http;
mod json_stream;
pub mod listener;
mod metrics;
mod namespace_series;
mod nat_mappings;
pub mod otlp;
mod record;
mod selection;
mod state;

pub use flow_log::{FlowLog, FlowLogConfig};
pub use flow_metrics::{FlowMetrics, FlowMetricsConfig, OVERFLOW};
pub use http::{
    bind, metrics_route, public_router, records_router, serve, serve_records, FlowQuery,
    MAX_RECORDS, NEXT_AFTER,
};
pub use metrics::AgentMetrics;
pub use namespace_series::NamespaceSeries;
pub use nat_mappings::NatMappings;
pub use record::{ConnectionView, Endpoint, SightingView};
pub use selection::{LogFilter, RecordType, Selection};
pub use state::Shared;
