//! Flow metrics users dashboard and alert on. Each connection is counted once: `flows_total`
//! when it first appears, bytes and packets by the delta of its once-per-direction counts,
//! labelled with `direction` from the initiator's view (`tx` = initiator → responder,
//! `rx` = the answers). Cardinality is bounded: namespace level by default, workloads opt-in,
//! series of deleted namespaces/workloads dropped after a grace period, and a hard cap per
//! family past which traffic lands in one `_overflow` series (totals stay right).

mod family;
mod series;
#[cfg(test)]
mod tests;

use family::Family;
use series::{count, far_end, label, refs, Dir, Handles, Refs};

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::event::{ConnEvent, EventKind};
use crate::metric::{register, STATIC};
use crate::{
    classify::{Classification, EndpointIdentity, EndpointKind},
    flow::Counts,
    identity::Store,
    net::FastMap,
};

/// Label value for series past the cap.
pub const OVERFLOW: &str = "_overflow";

#[derive(Clone, Debug)]
pub struct FlowMetricsConfig {
    /// Add `src_workload`/`dst_workload` labels (owner Kind/name). Multiplies series.
    pub workload_labels: bool,
    /// Most series per family; more go to the `_overflow` series.
    pub max_series: usize,
    /// How long series of a deleted namespace (or workload) stay before they are dropped.
    pub grace: Duration,
}

impl Default for FlowMetricsConfig {
    fn default() -> Self {
        Self {
            workload_labels: false,
            max_series: 10_000,
            grace: Duration::from_secs(300),
        }
    }
}

pub struct FlowMetrics {
    cfg: FlowMetricsConfig,
    vecs: HashMap<Family, IntCounterVec>,
    series: HashMap<(Family, Vec<String>), Refs>,
    /// Series per family, not counting the overflow series.
    lens: HashMap<Family, usize>,
    overflow: IntCounterVec,
    series_gauge: IntGauge,
    last_gc: Option<Instant>,
    /// Byte and packet series per classification, looked up once: every connection with
    /// the same classification counts into the same series, and connections share their
    /// classification ([`crate::classify::SharedClasses`]), so this is a handful of
    /// entries where one per connection was 6 MiB and a cache miss per event at 100k.
    /// Keyed by the shared copy's address; the weak reference keeps that allocation (not
    /// the classification) alive, so the address cannot be reused by another one while
    /// the entry exists.
    handles: FastMap<usize, (Weak<Classification>, Handles)>,
    /// Bumped whenever series are dropped: cached handles older than this are re-resolved.
    gen: u64,
}

impl FlowMetrics {
    pub fn new(r: &Registry, cfg: FlowMetricsConfig) -> Self {
        let mut vecs = HashMap::new();
        for f in Family::ALL {
            let v = register(
                r,
                IntCounterVec::new(
                    Opts::new(f.name(), f.help()),
                    &f.labels(cfg.workload_labels),
                ),
            )
            .expect(STATIC);
            vecs.insert(f, v);
        }
        let overflow = register(
        r,
        IntCounterVec::new(
            Opts::new(
                "tenantflow_metric_series_overflow_total",
                "Increments that went to the _overflow series because the family hit --metrics-max-series.",
            ),
            &["family"],
        ),
    )
        .expect(STATIC);
        // Exported at 0 from the start, so rate() and alerts see the series before trouble.
        for f in Family::ALL {
            overflow.with_label_values(&[f.name()]);
        }
        let series_gauge = register(
            r,
            IntGauge::new(
                "tenantflow_metric_series",
                "Flow metric series currently exported (all families).",
            ),
        )
        .expect(STATIC);
        Self {
            cfg,
            vecs,
            series: HashMap::new(),
            lens: HashMap::new(),
            overflow,
            series_gauge,
            last_gc: None,
            handles: FastMap::default(),
            gen: 0,
        }
    }

    /// How long series of a deleted namespace stay: the agent's other namespace-labelled
    /// series ([`super::NamespaceSeries`]) keep them as long.
    pub fn grace(&self) -> Duration {
        self.cfg.grace
    }

    /// Fold one harvest's connection events into the counters: a start counts the
    /// connection (and its flags), every event adds the packets and bytes it carries.
    /// A connection's byte and packet series are looked up once (and again only when its
    /// classification changes or series were dropped), not for every event.
    pub fn observe(&mut self, events: &[ConnEvent], store: &Store, now: Instant) {
        for ev in events {
            let k = ev.class;
            if ev.kind == EventKind::Start {
                let base = self.base(k);
                self.inc(Family::Flows, base, 1);
                self.flagged(k, ev.dst_fqdn.map(|n| &**n));
            }
            if let (true, Some(outcome)) = (ev.decided, ev.outcome) {
                self.attempt(k, outcome);
            }
            let (fwd, rep) = ev.delta;
            if !(fwd.is_zero() && rep.is_zero()) {
                self.add_traffic(ev.class, [fwd, rep]);
            }
        }
        if self
            .last_gc
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.gc(store, now);
            let gen = self.gen;
            self.handles
                .retain(|_, (k, h)| k.strong_count() > 0 && h.gen == gen);
            self.last_gc = Some(now);
        }
        self.series_gauge.set(self.series.len() as i64);
    }

    /// Add a connection's new packets and bytes to its classification's series, resolving
    /// the handles it lacks: the steady state (handles current, every direction with
    /// traffic resolved) is one lookup in a map of a few entries per event.
    fn add_traffic(&mut self, k: &Arc<Classification>, delta: [Counts; 2]) {
        const DIRS: [&str; 2] = ["tx", "rx"];
        let gen = self.gen;
        let at = Arc::as_ptr(k) as usize;
        let ready = |h: &Handles| {
            h.gen == gen
                && (0..2).all(|i| delta[i].is_zero() || !matches!(h.dirs[i], Dir::Unresolved))
        };
        let capped = match self.handles.get(&at).filter(|(_, h)| ready(h)) {
            Some((_, h)) => count(h, delta),
            None => {
                let mut h = self
                    .handles
                    .remove(&at)
                    .map(|(_, h)| h)
                    .filter(|h| h.gen == gen)
                    .unwrap_or(Handles {
                        gen,
                        dirs: [Dir::Unresolved, Dir::Unresolved],
                    });
                for i in 0..2 {
                    if !delta[i].is_zero() && matches!(h.dirs[i], Dir::Unresolved) {
                        h.dirs[i] = self.resolve(k, DIRS[i]);
                    }
                }
                let capped = count(&h, delta);
                self.handles.insert(at, (Arc::downgrade(k), h));
                capped
            }
        };
        for i in (0..2).filter(|&i| capped[i]) {
            let mut l = self.base(k);
            l.0.push(DIRS[i].to_owned());
            self.inc(Family::Packets, l.clone(), delta[i].packets);
            self.inc(Family::Bytes, l, delta[i].bytes);
        }
    }

    fn flagged(&mut self, k: &Classification, dst_fqdn: Option<&str>) {
        let src = &k.src_identity;
        let w = self.cfg.workload_labels;
        let ns = label(src.namespace.as_deref());
        let tenant = label(src.tenant.as_deref());
        let class = k.flow_class.as_str().to_owned();
        if k.cross_tenant {
            let far = far_end(k);
            let mut l = vec![
                ns.clone(),
                tenant.clone(),
                label(far.namespace.as_deref()),
                label(far.tenant.as_deref()),
                class.clone(),
            ];
            if w {
                l.push(label(src.workload.as_deref()));
                l.push(label(far.workload.as_deref()));
            }
            self.inc(Family::CrossTenant, (l, refs(&[src, far])), 1);
        }
        if k.egress == crate::classify::Egress::Unmediated {
            let mut l = vec![
                ns.clone(),
                tenant.clone(),
                class.clone(),
                k.scope.as_str().to_owned(),
            ];
            if w {
                l.push(label(src.workload.as_deref()));
            }
            self.inc(Family::Unmediated, (l, refs(&[src])), 1);
            if let Some(name) = dst_fqdn {
                let mut l = vec![ns.clone(), tenant.clone(), name.to_owned()];
                if w {
                    l.push(label(src.workload.as_deref()));
                }
                self.inc(Family::UnmediatedNames, (l, refs(&[src])), 1);
            }
        }
        if let Some(target) = &k.sensitive {
            let node = match k.dst_identity.kind {
                EndpointKind::Node => label(k.dst_identity.node.as_deref()),
                _ => String::new(),
            };
            let mut l = vec![ns, tenant, class, target.clone(), node];
            if w {
                l.push(label(src.workload.as_deref()));
            }
            self.inc(Family::Sensitive, (l, refs(&[src])), 1);
        }
    }

    fn attempt(&mut self, k: &Classification, outcome: crate::flow::Outcome) {
        // An attempt is counted by how it was answered. A connection established and reset
        // within one harvest is first known as `reset`, but the attempt was established.
        let outcome = match outcome {
            crate::flow::Outcome::Reset => crate::flow::Outcome::Established,
            o => o,
        };
        let src = &k.src_identity;
        let far = far_end(k);
        let mut l = vec![
            label(src.namespace.as_deref()),
            label(src.tenant.as_deref()),
            label(far.tenant.as_deref()),
            far.kind.as_str().to_owned(),
            k.cross_tenant.to_string(),
            outcome.as_str().to_owned(),
        ];
        if self.cfg.workload_labels {
            l.push(label(src.workload.as_deref()));
        }
        self.inc(Family::Attempts, (l, refs(&[src])), 1);
    }
}
