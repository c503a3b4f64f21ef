//! OTLP export of flow records (the logs signal), to an OpenTelemetry Collector or any
//! OTLP endpoint: the way records reach the stores security teams already search
//! (Azure Monitor, Azure Data Explorer, Loki, Elasticsearch, ClickHouse).
//!
//! The harvest only converts and enqueues (never waits): a bounded queue of encoded records
//! (about 1.5 KiB each, a third of the decoded structures) sits between it and the sender
//! task, which batches, retries with backoff and counts every record as exported, dropped
//! (with the reason) or still queued. A slow or dead collector fills the queue and then
//! costs dropped records, counted, never the harvest or memory.

mod metrics;
mod record;
mod sender;
mod transport;

use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use clap::ValueEnum;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use metrics::OtlpMetrics;
pub use record::{log_record, EVENT_NAME, PREFIX};

use super::{selection::is_flagged, ConnectionView, LogFilter, Selection};
use crate::{event::ConnEvent, net::WallClock};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (the collector's port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path /v1/logs).
    HttpProtobuf,
}

#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Sent with every request (e.g. `authorization: Bearer …`, an API key).
    pub headers: Vec<(String, String)>,
    /// PEM bundle the collector's certificate must chain to (https only).
    pub ca: Option<PathBuf>,
    pub filter: LogFilter,
    pub update_interval: Duration,
    /// Records waiting to be sent, at most (the memory bound).
    pub queue: usize,
    /// Records per request, at most.
    pub batch: usize,
    /// One request's time limit.
    pub timeout: Duration,
    /// How long a stopping agent keeps trying to send what is queued.
    pub shutdown_timeout: Duration,
    /// Resource attributes: `k8s.node.name`, `k8s.cluster.name`, `service.name`, and the
    /// user's own.
    pub resource: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("--otlp-endpoint {0}: {1}")]
    Endpoint(String, String),
    #[error("--otlp-ca {path}: {1}", path = .0.display())]
    Ca(PathBuf, String),
    #[error("--otlp-header {0}: {1}; give NAME=VALUE with a valid header name and value")]
    Header(String, String),
}

/// The harvest's side: picks records like the flow log and enqueues them.
pub struct Otlp {
    selection: Selection,
    /// Encoded LogRecords.
    tx: mpsc::Sender<Bytes>,
    metrics: OtlpMetrics,
}

/// The sender's side, run by [`Sender::run`] until its [`Sender::closer`] is cancelled and
/// the queue is sent (or the shutdown timeout passes).
pub struct Sender {
    task: sender::Task,
    closing: CancellationToken,
}

/// An exporter's settings with its transport built (endpoint, CA file and headers
/// checked): made before the agent attaches, so bad flags are named first.
pub struct Prepared {
    cfg: OtlpConfig,
    transport: transport::Transport,
}

/// Checks `cfg` and builds its transport; nothing connects yet.
pub fn prepare(cfg: OtlpConfig) -> Result<Prepared, OtlpError> {
    let transport = transport::Transport::new(&cfg)?;
    Ok(Prepared { cfg, transport })
}

impl Prepared {
    pub fn endpoint(&self) -> &str {
        &self.cfg.endpoint
    }
}

impl Otlp {
    /// The producer and the sender task; nothing is sent until the task runs.
    pub fn new(prepared: Prepared, metrics: OtlpMetrics) -> (Self, Sender) {
        let Prepared { cfg, transport } = prepared;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        metrics.queue_capacity.set(cfg.queue as i64);
        let closing = CancellationToken::new();
        let task = sender::Task::new(&cfg, transport, rx, metrics.clone(), closing.clone());
        let otlp = Self {
            selection: Selection::new(cfg.filter, cfg.update_interval),
            tx,
            metrics,
        };
        (otlp, Sender { task, closing })
    }

    /// One harvest's events: each record is converted and queued, or counted as dropped
    /// when the queue is full.
    pub fn observe(&mut self, events: &[ConnEvent], now: Instant, clock: &WallClock) {
        let time = SystemTime::now();
        for (kind, ev) in self.selection.pick(events, now) {
            // Full (the collector is away): not even converted.
            if self.tx.capacity() == 0 {
                self.metrics.dropped("queue_full").inc();
                continue;
            }
            let view = ConnectionView::of_event(ev, clock);
            let rec = log_record(kind, &view, is_flagged(ev), time).encode_to_vec();
            match self.tx.try_send(Bytes::from(rec)) {
                Ok(()) => self.metrics.queued.inc(),
                Err(_) => self.metrics.dropped("queue_full").inc(),
            }
        }
    }
}

impl Sender {
    /// A handle that makes the task stop once the queue is sent or the shutdown timeout
    /// has passed (taken before [`Sender::run`] consumes the sender).
    pub fn closer(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Send until closed and drained.
    pub async fn run(self) {
        self.task.run().await
    }
}
