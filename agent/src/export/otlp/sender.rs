//! The sender task: batches what the harvest queued, sends it, retries what the collector
//! could take later, and accounts for every record. One request is in flight at a time:
//! a node's records are a few hundred per second at most, and one request never reorders
//! another's records.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value::Value as Av, AnyValue, InstrumentationScope, KeyValue},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use prost::Message as _;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{metrics::OtlpMetrics, transport::Transport, OtlpConfig};
use crate::backoff::Backoff;

/// Retries back off to at most this: a collector that returns is used within it.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct Task {
    transport: Transport,
    /// Encoded LogRecords, decoded a batch at a time.
    rx: mpsc::Receiver<Bytes>,
    metrics: OtlpMetrics,
    closing: CancellationToken,
    resource: Resource,
    batch: usize,
    shutdown_timeout: Duration,
}

impl Task {
    pub fn new(
        cfg: &OtlpConfig,
        transport: Transport,
        rx: mpsc::Receiver<Bytes>,
        metrics: OtlpMetrics,
        closing: CancellationToken,
    ) -> Self {
        let resource = Resource {
            attributes: cfg
                .resource
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(AnyValue {
                        value: Some(Av::StringValue(v.clone())),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Self {
            transport,
            rx,
            metrics,
            closing,
            resource,
            batch: cfg.batch.max(1),
            shutdown_timeout: cfg.shutdown_timeout,
        }
    }

    pub async fn run(mut self) {
        let mut backoff = Backoff::up_to(MAX_BACKOFF);
        // Set once closing: sending stops there and what is left counts as dropped.
        let mut deadline: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.closing.cancelled(), if deadline.is_none() => {
                    deadline = Some(self.close());
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < self.batch {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            // Encoded by this process a moment ago: decoding does not fail, and if it
            // ever did the record would be counted, not lost silently.
            let records: Vec<LogRecord> = batch
                .iter()
                .filter_map(|b| LogRecord::decode(b.as_ref()).ok())
                .collect();
            self.dropped((batch.len() - records.len()) as u64, "rejected");
            drop(batch);
            let n = records.len() as u64;
            if n == 0 {
                continue;
            }
            let req = self.request(records);
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    self.lost(n);
                    break;
                }
                let attempt = self.transport.export(req.clone());
                let result = match deadline {
                    Some(d) => tokio::time::timeout_at(d, attempt).await.ok(),
                    None => Some(attempt.await),
                };
                match result {
                    None => {
                        self.lost(n);
                        break;
                    }
                    Some(Ok(rejected)) => {
                        backoff.reset();
                        let rejected = rejected.min(n);
                        self.metrics.exported.inc_by(n - rejected);
                        self.metrics.queued.sub((n - rejected) as i64);
                        self.dropped(rejected, "rejected");
                        if rejected > 0 {
                            warn!(rejected, "OTLP collector rejected part of a batch");
                        }
                        break;
                    }
                    Some(Err(f)) => {
                        self.metrics.failure(f.retryable).inc();
                        if !f.retryable {
                            warn!(records = n, reason = %f.reason, "OTLP collector refused a batch; dropped");
                            self.dropped(n, "rejected");
                            break;
                        }
                        let wait = backoff.delay();
                        warn!(records = n, reason = %f.reason, retry_in = ?wait, "OTLP export failed; will retry");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.closing.cancelled(), if deadline.is_none() => {
                                deadline = Some(self.close());
                            }
                        }
                    }
                }
            }
        }
        info!(
            exported = self.metrics.exported.get(),
            "OTLP sender stopped"
        );
    }

    /// The agent is stopping: nothing more is queued, and sending ends at the returned
    /// deadline.
    fn close(&mut self) -> Instant {
        self.rx.close();
        Instant::now() + self.shutdown_timeout
    }

    /// `n` records the stopping agent could not send in time.
    fn lost(&mut self, n: u64) {
        warn!(
            records = n,
            "agent stopping: OTLP records not sent in time are dropped"
        );
        self.dropped(n, "shutdown");
    }

    /// `n` queued records that will not be sent, counted under `reason`.
    fn dropped(&self, n: u64, reason: &str) {
        self.metrics.dropped(reason).inc_by(n);
        self.metrics.queued.sub(n as i64);
    }

    fn request(&self, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "tenantflow".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}
