//! State the datapath loop publishes and the HTTP handlers read.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, RwLock,
};

use super::{AgentMetrics, ConnectionView};
use crate::flow::FlowView;

pub struct Shared {
    ready: AtomicBool,
    flows: RwLock<Vec<Arc<ConnectionView>>>,
    observations: RwLock<Vec<FlowView>>,
    pub metrics: AgentMetrics,
}

impl Shared {
    pub fn new(metrics: AgentMetrics) -> Self {
        Self {
            ready: AtomicBool::new(false),
            flows: RwLock::new(Vec::new()),
            observations: RwLock::new(Vec::new()),
            metrics,
        }
    }

    /// Ready once the programs are attached (and, later, metadata is loaded).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.metrics.ready.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Replace the published snapshots (connections and per-hook observations).
    pub fn publish(&self, flows: Vec<Arc<ConnectionView>>, observations: Vec<FlowView>) {
        // A poisoned lock only means a reader panicked; the data is still a whole snapshot.
        *self.flows.write().unwrap_or_else(|p| p.into_inner()) = flows;
        *self.observations.write().unwrap_or_else(|p| p.into_inner()) = observations;
    }

    pub fn flows<R>(&self, f: impl FnOnce(&[Arc<ConnectionView>]) -> R) -> R {
        f(&self.flows.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn observations<R>(&self, f: impl FnOnce(&[FlowView]) -> R) -> R {
        f(&self.observations.read().unwrap_or_else(|p| p.into_inner()))
    }
}
