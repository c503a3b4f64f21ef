//! The OTLP exporter's metrics: every record it was given is exported, dropped (by
//! reason) or still queued, so `queued + exported + dropped` equals the records offered.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::metric::register;

#[derive(Clone)]
pub struct OtlpMetrics {
    pub exported: IntCounter,
    dropped: IntCounterVec,
    /// Records queued or in a request not yet answered.
    pub queued: IntGauge,
    pub queue_capacity: IntGauge,
    failures: IntCounterVec,
}

/// Every reason a record is dropped, so each series exists (at 0) from the start.
pub const DROP_REASONS: [&str; 3] = ["queue_full", "rejected", "shutdown"];

impl OtlpMetrics {
    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            exported: register(
                r,
                IntCounter::new(
                    "tenantflow_otlp_records_exported_total",
                    "Flow records the OTLP collector accepted.",
                ),
            )?,
            dropped: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tenantflow_otlp_records_dropped_total",
                        "Flow records not delivered over OTLP: the queue was full \
                         (collector slow or down), the collector rejected them, or the \
                         agent stopped before they could be sent.",
                    ),
                    &["reason"],
                ),
            )?,
            queued: register(
                r,
                IntGauge::new(
                    "tenantflow_otlp_queue_records",
                    "Flow records waiting for the OTLP collector (queued or in a request).",
                ),
            )?,
            queue_capacity: register(
                r,
                IntGauge::new(
                    "tenantflow_otlp_queue_capacity",
                    "Flow records the OTLP queue holds at most (--otlp-queue).",
                ),
            )?,
            failures: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tenantflow_otlp_export_failures_total",
                        "OTLP requests that failed; retryable ones are sent again after \
                         a backoff.",
                    ),
                    &["retryable"],
                ),
            )?,
        };
        for reason in DROP_REASONS {
            m.dropped(reason);
        }
        m.failure(true);
        m.failure(false);
        Ok(m)
    }

    pub fn dropped(&self, reason: &str) -> IntCounter {
        self.dropped.with_label_values(&[reason])
    }

    pub fn failure(&self, retryable: bool) -> IntCounter {
        self.failures
            .with_label_values(&[if retryable { "true" } else { "false" }])
    }
}
