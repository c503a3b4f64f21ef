//! State the datapath loop publishes and the HTTP handlers read.
//!
//! Records for `/flows` and `/observations` are built only while someone asks for them:
//! on a busy node (100k connections) building every record every harvest would cost more
//! than the harvest itself. A request marks demand for [`DEMAND`]; while it lasts, each
//! harvest publishes; a request that finds no fresh snapshot waits for the next harvest.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{AgentMetrics, ConnectionView};
use crate::flow::FlowView;

/// How long one request keeps the harvest publishing records.
pub const DEMAND: Duration = Duration::from_secs(60);
/// How long a request waits for a harvest to publish before it is answered with what there is.
const WAIT: Duration = Duration::from_secs(5);

pub struct Shared {
    ready: AtomicBool,
    flows: RwLock<Vec<Arc<ConnectionView>>>,
    observations: RwLock<Vec<FlowView>>,
    /// Milliseconds since `epoch` of the last request for records.
    wanted_at_ms: AtomicU64,
    epoch: Instant,
    /// Bumped at each publication.
    published: watch::Sender<u64>,
    /// Milliseconds since `epoch` when the last harvest finished (0: not started).
    harvested_at_ms: AtomicU64,
    /// A harvest older than this means the loop is stuck: /healthz fails.
    stall_after_ms: AtomicU64,
    /// Tenant → its namespaces, for `?tenant=` requests of namespace-scoped readers.
    tenant_namespaces: RwLock<std::collections::BTreeMap<String, Vec<String>>>,
    pub metrics: AgentMetrics,
}

impl Shared {
    pub fn new(metrics: AgentMetrics) -> Self {
        Self {
            ready: AtomicBool::new(false),
            flows: RwLock::new(Vec::new()),
            observations: RwLock::new(Vec::new()),
            wanted_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            published: watch::Sender::new(0),
            harvested_at_ms: AtomicU64::new(0),
            stall_after_ms: AtomicU64::new(u64::MAX),
            tenant_namespaces: RwLock::new(Default::default()),
            metrics,
        }
    }

    /// How old the last harvest may get before /healthz reports the agent stuck.
    pub fn set_stall_limit(&self, limit: Duration) {
        self.stall_after_ms
            .store(limit.as_millis() as u64, Ordering::Release);
    }

    /// A harvest finished (or the loop started): the agent is alive.
    pub fn mark_harvest(&self) {
        self.harvested_at_ms.store(self.now_ms(), Ordering::Release);
    }

    /// None when healthy; else how long the harvest has been stuck.
    pub fn stalled_for(&self) -> Option<Duration> {
        stalled(
            self.now_ms(),
            self.harvested_at_ms.load(Ordering::Acquire),
            self.stall_after_ms.load(Ordering::Acquire),
        )
    }

    /// Ready once the programs are attached (and, later, metadata is loaded).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.metrics.ready.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        // +1 so a request in the first millisecond still counts as one.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Should this harvest publish records?
    pub fn records_wanted(&self) -> bool {
        let at = self.wanted_at_ms.load(Ordering::Acquire);
        at != 0 && self.now_ms().saturating_sub(at) <= DEMAND.as_millis() as u64
    }

    /// A handler is about to read records: mark demand, and if none was marked (so the
    /// snapshot is stale or empty) wait for the next harvest to publish one.
    pub async fn fresh_records(&self) {
        let stale = !self.records_wanted();
        let mut rx = self.published.subscribe();
        self.wanted_at_ms.store(self.now_ms(), Ordering::Release);
        if stale {
            let _ = tokio::time::timeout(WAIT, rx.changed()).await;
        }
    }

    /// Replace the published snapshots (connections and per-hook observations).
    pub fn publish(&self, flows: Vec<Arc<ConnectionView>>, observations: Vec<FlowView>) {
        // A poisoned lock only means a reader panicked; the data is still a whole snapshot.
        *self.flows.write().unwrap_or_else(|p| p.into_inner()) = flows;
        *self.observations.write().unwrap_or_else(|p| p.into_inner()) = observations;
        self.published.send_modify(|n| *n += 1);
    }

    pub fn flows<R>(&self, f: impl FnOnce(&[Arc<ConnectionView>]) -> R) -> R {
        f(&self.flows.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn set_tenant_namespaces(&self, m: std::collections::BTreeMap<String, Vec<String>>) {
        *self
            .tenant_namespaces
            .write()
            .unwrap_or_else(|p| p.into_inner()) = m;
    }

    pub fn namespaces_of(&self, tenant: &str) -> Vec<String> {
        self.tenant_namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    pub fn observations<R>(&self, f: impl FnOnce(&[FlowView]) -> R) -> R {
        f(&self.observations.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Stuck when a harvest was seen and the last one is older than `limit_ms`.
fn stalled(now_ms: u64, last_ms: u64, limit_ms: u64) -> Option<Duration> {
    let age = now_ms.saturating_sub(last_ms);
    (last_ms != 0 && age > limit_ms).then(|| Duration::from_millis(age))
}

#[cfg(test)]
mod stall_tests {
    use super::stalled;
    use std::time::Duration;

    #[test]
    fn a_harvest_older_than_the_limit_is_a_stall() {
        assert_eq!(stalled(10_000, 0, 5_000), None, "not started yet");
        assert_eq!(stalled(10_000, 6_000, 5_000), None);
        assert_eq!(stalled(10_000, 5_000, 5_000), None, "at the limit");
        assert_eq!(
            stalled(10_001, 5_000, 5_000),
            Some(Duration::from_millis(5_001))
        );
    }
}
