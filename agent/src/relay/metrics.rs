//! The relay's metrics, on the index's /metrics.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

use super::NodeStatus;
use crate::metric::register;

#[derive(Clone)]
pub struct RelayMetrics {
    queries: IntCounterVec,
    nodes: IntCounterVec,
    pub duration: Histogram,
}

/// Every outcome of a relayed query, so each series exists from the start.
const RESULTS: [&str; 4] = ["answered", "no_token", "busy", "no_nodes"];

impl RelayMetrics {
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            queries: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tenantflow_relay_queries_total",
                        "Queries over every node (/v1/flows): answered, or refused for no \
                         token, too many in flight (busy) or no nodes known yet.",
                    ),
                    &["result"],
                ),
            )?,
            nodes: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tenantflow_relay_node_answers_total",
                        "Nodes asked by relayed queries, by how each answered: ok, denied \
                         (the caller's token), timeout, failed.",
                    ),
                    &["status"],
                ),
            )?,
            duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tenantflow_relay_query_duration_seconds",
                        "Time to answer one relayed query (bounded by --relay-timeout per \
                         batch of --relay-concurrency nodes).",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                ),
            )?,
        };
        for r in RESULTS {
            m.queries.with_label_values(&[r]);
        }
        for s in [
            NodeStatus::Ok,
            NodeStatus::Denied,
            NodeStatus::Timeout,
            NodeStatus::Failed,
        ] {
            m.nodes.with_label_values(&[s.as_str()]);
        }
        Ok(m)
    }

    pub fn query(&self, result: &str) {
        self.queries.with_label_values(&[result]).inc();
    }

    pub fn node(&self, status: NodeStatus) {
        self.nodes.with_label_values(&[status.as_str()]).inc();
    }
}
