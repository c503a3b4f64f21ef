//! Flow metrics users dashboard and alert on. Each connection is counted once: `flows_total`
//! when it first appears, bytes and packets by the delta of its once-per-direction counts,
//! labelled with `direction` from the initiator's view (`tx` = initiator → responder,
//! `rx` = the answers). Cardinality is bounded: namespace level by default, workloads opt-in,
//! series of deleted namespaces/workloads dropped after a grace period, and a hard cap per
//! family past which traffic lands in one `_overflow` series (totals stay right).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::{ConnEvent, EventKind};
use crate::{
    classify::{Classification, EndpointIdentity, EndpointKind},
    flow::{ConnId, Counts, FastMap},
    identity::Store,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    Flows,
    Bytes,
    Packets,
    CrossTenant,
    Unmediated,
    Sensitive,
    Attempts,
}

impl Family {
    const ALL: [Family; 7] = [
        Family::Flows,
        Family::Bytes,
        Family::Packets,
        Family::CrossTenant,
        Family::Unmediated,
        Family::Sensitive,
        Family::Attempts,
    ];

    fn name(self) -> &'static str {
        match self {
            Family::Flows => "tenantflow_flows_total",
            Family::Bytes => "tenantflow_flow_bytes_total",
            Family::Packets => "tenantflow_flow_packets_total",
            Family::CrossTenant => "tenantflow_cross_tenant_flows_total",
            Family::Unmediated => "tenantflow_unmediated_egress_flows_total",
            Family::Sensitive => "tenantflow_sensitive_flows_total",
            Family::Attempts => "tenantflow_connection_attempts_total",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Family::Flows => "Connections seen, counted once each when first seen.",
            Family::Bytes => "IP bytes of connections, by direction from the initiator's view (tx: initiator to responder).",
            Family::Packets => "Packets of connections, by direction from the initiator's view (tx: initiator to responder).",
            Family::CrossTenant => "Connections between two different known tenants.",
            Family::Unmediated => "Egress connections that bypassed every approved gateway, proxy and firewall.",
            Family::Sensitive => "Connections to sensitive targets (IMDS, wireserver, kubelet, node SSH).",
            Family::Attempts => "Connection attempts by outcome (established, refused, unanswered, reset, replied, unreplied), counted once when the outcome is first known.",
        }
    }

    fn labels(self, workloads: bool) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = match self {
            Family::Flows | Family::Bytes | Family::Packets => vec![
                "src_namespace",
                "src_tenant",
                "dst_namespace",
                "dst_tenant",
                "flow_class",
                "scope",
                "cross_tenant",
                "egress",
            ],
            Family::CrossTenant => vec![
                "src_namespace",
                "src_tenant",
                "dst_namespace",
                "dst_tenant",
                "flow_class",
            ],
            Family::Unmediated => vec!["src_namespace", "src_tenant", "flow_class", "scope"],
            // The node name is bounded by the cluster size; IMDS/wireserver are fixed.
            Family::Sensitive => vec![
                "src_namespace",
                "src_tenant",
                "flow_class",
                "target",
                "dst_node",
            ],
            // Destination tenant and kind, not namespace: a scan's fan-out must not multiply
            // series.
            Family::Attempts => vec![
                "src_namespace",
                "src_tenant",
                "dst_tenant",
                "dst_kind",
                "cross_tenant",
                "outcome",
            ],
        };
        if workloads {
            v.push("src_workload");
            if matches!(
                self,
                Family::Flows | Family::Bytes | Family::Packets | Family::CrossTenant
            ) {
                v.push("dst_workload");
            }
        }
        if matches!(self, Family::Bytes | Family::Packets) {
            v.push("direction");
        }
        v
    }
}

/// What a series refers to, so it can be dropped when that is deleted.
#[derive(Clone, Debug, Default)]
struct Refs {
    namespaces: Vec<String>,
    workloads: Vec<(String, String)>,
    gone_since: Option<Instant>,
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
    /// Byte and packet series of open connections, looked up once.
    handles: FastMap<ConnId, Handles>,
    /// Bumped whenever series are dropped: cached handles older than this are re-resolved.
    gen: u64,
}

/// A connection's counters per direction (tx, rx), looked up when first needed.
struct Handles {
    gen: u64,
    dirs: [Dir; 2],
}

enum Dir {
    Unresolved,
    /// Past the family's cap: counted through the overflow series.
    Capped,
    /// (packets, bytes)
    Series(IntCounter, IntCounter),
}

/// Add `delta` to the series `h` holds; returns the directions with traffic whose family
/// is capped (counted through [`FlowMetrics::inc`] by the caller).
fn count(h: &Handles, delta: [Counts; 2]) -> [bool; 2] {
    let mut capped = [false; 2];
    for (i, (dir, d)) in h.dirs.iter().zip(delta).enumerate() {
        match dir {
            _ if d.is_zero() => {}
            Dir::Series(packets, bytes) => {
                packets.inc_by(d.packets);
                bytes.inc_by(d.bytes);
            }
            _ => capped[i] = true,
        }
    }
    capped
}

fn label(v: Option<&str>) -> String {
    v.unwrap_or_default().to_owned()
}

impl FlowMetrics {
    pub fn new(r: &Registry, cfg: FlowMetricsConfig) -> Self {
        let mut vecs = HashMap::new();
        for f in Family::ALL {
            let v = IntCounterVec::new(
                Opts::new(f.name(), f.help()),
                &f.labels(cfg.workload_labels),
            )
            .expect("static metric definition");
            r.register(Box::new(v.clone()))
                .expect("metric registered once");
            vecs.insert(f, v);
        }
        let overflow = IntCounterVec::new(
            Opts::new(
                "tenantflow_metric_series_overflow_total",
                "Increments that went to the _overflow series because the family hit --metrics-max-series.",
            ),
            &["family"],
        )
        .expect("static metric definition");
        r.register(Box::new(overflow.clone()))
            .expect("metric registered once");
        // Exported at 0 from the start, so rate() and alerts see the series before trouble.
        for f in Family::ALL {
            overflow.with_label_values(&[f.name()]);
        }
        let series_gauge = IntGauge::new(
            "tenantflow_metric_series",
            "Flow metric series currently exported (all families).",
        )
        .expect("static metric definition");
        r.register(Box::new(series_gauge.clone()))
            .expect("metric registered once");
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
                self.flagged(k);
            }
            if let (true, Some(outcome)) = (ev.decided, ev.outcome) {
                self.attempt(k, outcome);
            }
            let (fwd, rep) = ev.delta;
            if !(fwd.is_zero() && rep.is_zero()) {
                self.add_traffic(ev, k, [fwd, rep]);
            }
            if ev.kind.is_final() {
                self.handles.remove(&ev.id);
            }
        }
        if self
            .last_gc
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.gc(store, now);
            self.last_gc = Some(now);
        }
        self.series_gauge.set(self.series.len() as i64);
    }

    /// Add a connection's new packets and bytes to its series, resolving the handles it
    /// lacks: the steady state (handles current, every direction with traffic resolved) is
    /// one map lookup per event.
    fn add_traffic(&mut self, ev: &ConnEvent, k: &Classification, delta: [Counts; 2]) {
        const DIRS: [&str; 2] = ["tx", "rx"];
        let gen = self.gen;
        let current = |h: &Handles| h.gen == gen && !ev.reclassified;
        let ready = |h: &Handles| {
            current(h)
                && (0..2).all(|i| delta[i].is_zero() || !matches!(h.dirs[i], Dir::Unresolved))
        };
        let capped = match self.handles.get(&ev.id).filter(|h| ready(h)) {
            Some(h) => count(h, delta),
            None => {
                let mut h = self
                    .handles
                    .remove(&ev.id)
                    .filter(|h| current(h))
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
                self.handles.insert(ev.id, h);
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

    /// The packets and bytes series of one direction of a connection with this
    /// classification, registered now; `Capped` where a family is past its cap (those go
    /// through [`Self::inc`], which counts the overflow).
    fn resolve(&mut self, k: &Classification, dir: &str) -> Dir {
        let mut l = self.base(k);
        l.0.push(dir.to_owned());
        let capped = |f: Family, me: &Self| {
            !me.series.contains_key(&(f, l.0.clone()))
                && me.lens.get(&f).copied().unwrap_or(0) >= me.cfg.max_series
        };
        if capped(Family::Packets, self) || capped(Family::Bytes, self) {
            return Dir::Capped;
        }
        match (
            self.series_counter(Family::Packets, l.clone()),
            self.series_counter(Family::Bytes, l),
        ) {
            (Some(p), Some(b)) => Dir::Series(p, b),
            _ => Dir::Capped,
        }
    }

    /// The counter of this series, registered if new; `None` past the family's cap.
    fn series_counter(
        &mut self,
        f: Family,
        (values, refs): (Vec<String>, Refs),
    ) -> Option<IntCounter> {
        let key = (f, values);
        if !self.series.contains_key(&key) {
            if self.lens.get(&f).copied().unwrap_or(0) >= self.cfg.max_series {
                return None;
            }
            self.series.insert(key.clone(), refs);
            *self.lens.entry(f).or_default() += 1;
        }
        let v: Vec<&str> = key.1.iter().map(String::as_str).collect();
        Some(self.vecs[&f].with_label_values(&v))
    }

    /// Labels of the flows/bytes/packets families (without direction) and what they refer to.
    fn base(&self, k: &Classification) -> (Vec<String>, Refs) {
        let src = &k.src_identity;
        let far = far_end(k);
        let mut l = vec![
            label(src.namespace.as_deref()),
            label(src.tenant.as_deref()),
            label(far.namespace.as_deref()),
            label(far.tenant.as_deref()),
            k.flow_class.as_str().to_owned(),
            k.scope.as_str().to_owned(),
            k.cross_tenant.to_string(),
            k.egress.as_str().to_owned(),
        ];
        if self.cfg.workload_labels {
            l.push(label(src.workload.as_deref()));
            l.push(label(far.workload.as_deref()));
        }
        (l, refs(&[src, far]))
    }

    fn flagged(&mut self, k: &Classification) {
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

    fn inc(&mut self, f: Family, (values, refs): (Vec<String>, Refs), by: u64) {
        if by == 0 {
            return;
        }
        let key = (f, values);
        let values = if self.series.contains_key(&key) {
            key.1
        } else if self.lens.get(&f).copied().unwrap_or(0) < self.cfg.max_series {
            self.series.insert(key.clone(), refs);
            *self.lens.entry(f).or_default() += 1;
            key.1
        } else {
            self.overflow.with_label_values(&[f.name()]).inc_by(by);
            // Same arity; direction (last label of bytes/packets) is kept.
            let mut v = vec![OVERFLOW.to_owned(); key.1.len()];
            if matches!(f, Family::Bytes | Family::Packets) {
                *v.last_mut().expect("direction label") = key.1.last().cloned().unwrap_or_default();
            }
            self.series.entry((f, v.clone())).or_default();
            v
        };
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        self.vecs[&f].with_label_values(&refs).inc_by(by);
    }

    /// Drop series whose namespace or workload has been gone longer than the grace period.
    /// One lookup per series (bounded by --metrics-max-series), never a walk over the
    /// inventory: at 200k pods that walk cost more than the harvest.
    fn gc(&mut self, store: &Store, now: Instant) {
        if store.is_empty() {
            // No identity source (or not loaded yet): nothing can be known to be deleted.
            return;
        }
        let grace = self.cfg.grace;
        let mut drop = Vec::new();
        for (key, r) in self.series.iter_mut() {
            let gone = r.namespaces.iter().any(|n| store.namespace(n).is_none())
                || (self.cfg.workload_labels
                    && r.workloads.iter().any(|(n, w)| !store.has_workload(n, w)));
            match (gone, r.gone_since) {
                (false, _) => r.gone_since = None,
                (true, None) => r.gone_since = Some(now),
                (true, Some(t)) if now.duration_since(t) >= grace => drop.push(key.clone()),
                (true, Some(_)) => {}
            }
        }
        if !drop.is_empty() {
            self.gen += 1;
        }
        for key in drop {
            let refs: Vec<&str> = key.1.iter().map(String::as_str).collect();
            let _ = self.vecs[&key.0].remove_label_values(&refs);
            self.series.remove(&key);
            if let Some(n) = self.lens.get_mut(&key.0) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// The end that decides the destination's namespace and tenant: a Service's backend pod
/// when DNAT told us which, else the destination as addressed.
fn far_end(k: &Classification) -> &EndpointIdentity {
    match (&k.dst_identity.kind, &k.backend_identity) {
        (EndpointKind::Service, Some(b)) if b.kind == EndpointKind::Pod => b,
        _ => &k.dst_identity,
    }
}

fn refs(ids: &[&EndpointIdentity]) -> Refs {
    let mut r = Refs::default();
    for id in ids {
        if let Some(ns) = &id.namespace {
            r.namespaces.push(ns.to_string());
            if let Some(w) = &id.workload {
                r.workloads.push((ns.to_string(), w.to_string()));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        classify::classify,
        config::Config,
        flow::{Connection, Counts, FlowTuple, PROTO_TCP},
        identity::{snapshot, Change, Kind},
    };

    fn inventory(namespaces: &[&str]) -> Store {
        let mut items = String::from("kind: List\nitems:\n");
        for (i, ns) in namespaces.iter().enumerate() {
            let tenant = ns.split('-').next().unwrap();
            items += &format!(
                "- {{apiVersion: v1, kind: Namespace, metadata: {{name: {ns}, labels: {{tenant: {tenant}}}}}}}\n\
                 - {{apiVersion: v1, kind: Pod, metadata: {{name: p{i}, namespace: {ns}, ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: rs{i}, uid: u, controller: true}}]}}, spec: {{nodeName: n1, containers: []}}, status: {{podIP: 10.244.1.{}}}}}\n",
                i + 10
            );
        }
        Store::from_objects(snapshot::parse(&items).unwrap())
    }

    /// Connection `id` from pod .`src` to pod .`dst`, classified against `store`.
    fn conn(store: &Store, src: u8, dst: u8) -> (Connection, Classification) {
        let c = Connection::new(FlowTuple {
            proto: PROTO_TCP,
            src: format!("10.244.1.{src}").parse().unwrap(),
            sport: 40000,
            dst: format!("10.244.1.{dst}").parse().unwrap(),
            dport: 80,
        });
        let k = classify(&Config::default(), store, &c);
        (c, k)
    }

    /// An event of `c` (as connection `id`) carrying these deltas.
    fn ev<'a>(
        (c, k): &'a (Connection, Classification),
        kind: EventKind,
        id: u64,
        fwd: (u64, u64),
        rev: (u64, u64),
    ) -> ConnEvent<'a> {
        let counts = |(packets, bytes)| Counts { packets, bytes };
        ConnEvent {
            kind,
            id,
            conn: c,
            class: k,
            process: None,
            reclassified: false,
            delta: (counts(fwd), counts(rev)),
            outcome: None,
            decided: false,
            new_edge: false,
        }
    }

    /// Name and label set of one exposition line (labels in any order).
    fn parse_series(s: &str) -> (String, std::collections::BTreeMap<String, String>) {
        let (name, rest) = s.split_once('{').unwrap_or((s, "}"));
        let labels = rest
            .trim_end_matches('}')
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once("=\"").unwrap();
                (k.to_owned(), v.trim_end_matches('"').to_owned())
            })
            .collect();
        (name.to_owned(), labels)
    }

    /// The value of `series` (name plus labels, any order), if exported.
    fn value(r: &Registry, series: &str) -> Option<u64> {
        let want = parse_series(series);
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&r.gather(), &mut text)
            .unwrap();
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (parse_series(s) == want).then(|| v.parse().unwrap())
        })
    }

    const BASE: &str = r#"src_namespace="alpha-web",src_tenant="alpha",dst_namespace="beta-api",dst_tenant="beta",flow_class="pod_to_pod",scope="same_node",cross_tenant="true",egress="none""#;

    /// An attempt counts once, when its outcome is first known; a later change (established
    /// then reset) does not count it again.
    #[test]
    fn an_attempt_counts_once_by_outcome() {
        use crate::flow::Outcome;
        let r = Registry::new();
        let store = inventory(&["alpha-web", "beta-api"]);
        let mut m = FlowMetrics::new(&r, FlowMetricsConfig::default());
        let a = conn(&store, 10, 11);
        let with = |kind, outcome, decided| {
            let mut e = ev(&a, kind, 1, (1, 60), (0, 0));
            e.outcome = outcome;
            e.decided = decided;
            e
        };
        let t0 = Instant::now();
        m.observe(&[with(EventKind::Start, None, false)], &store, t0);
        let series = |o: &str| {
            format!(
                "tenantflow_connection_attempts_total{{src_namespace=\"alpha-web\",src_tenant=\"alpha\",dst_tenant=\"beta\",dst_kind=\"pod\",cross_tenant=\"true\",outcome=\"{o}\"}}"
            )
        };
        assert_eq!(value(&r, &series("unanswered")), None, "not known yet");
        m.observe(
            &[with(EventKind::Update, Some(Outcome::Established), true)],
            &store,
            t0,
        );
        m.observe(
            &[with(EventKind::End, Some(Outcome::Reset), false)],
            &store,
            t0,
        );
        assert_eq!(value(&r, &series("established")), Some(1));
        assert_eq!(value(&r, &series("reset")), None);
        // Established and reset within one harvest: first known as reset, counted as
        // the established attempt it was.
        m.observe(
            &[with(EventKind::End, Some(Outcome::Reset), true)],
            &store,
            t0,
        );
        assert_eq!(value(&r, &series("established")), Some(2));
        assert_eq!(value(&r, &series("reset")), None);
    }

    #[test]
    fn each_connection_counts_once_and_bytes_by_delta() {
        let r = Registry::new();
        let store = inventory(&["alpha-web", "beta-api"]);
        let mut m = FlowMetrics::new(&r, FlowMetricsConfig::default());
        let t0 = Instant::now();
        let a = conn(&store, 10, 11);
        m.observe(
            &[ev(&a, EventKind::Start, 1, (3, 300), (2, 200))],
            &store,
            t0,
        );
        m.observe(
            &[ev(&a, EventKind::Update, 1, (2, 200), (0, 0))],
            &store,
            t0,
        );
        assert_eq!(
            value(&r, &format!("tenantflow_flows_total{{{BASE}}}")),
            Some(1)
        );
        assert_eq!(
            value(
                &r,
                &format!("tenantflow_flow_bytes_total{{{BASE},direction=\"tx\"}}")
            ),
            Some(500)
        );
        assert_eq!(
            value(
                &r,
                &format!("tenantflow_flow_bytes_total{{{BASE},direction=\"rx\"}}")
            ),
            Some(200)
        );
        assert_eq!(
            value(
                &r,
                &format!("tenantflow_flow_packets_total{{{BASE},direction=\"tx\"}}")
            ),
            Some(5)
        );
        assert_eq!(
            value(
                &r,
                r#"tenantflow_cross_tenant_flows_total{src_namespace="alpha-web",src_tenant="alpha",dst_namespace="beta-api",dst_tenant="beta",flow_class="pod_to_pod"}"#
            ),
            Some(1)
        );
        // Ended, then the same tuple again: a new connection.
        let end = ev(&a, EventKind::End, 1, (0, 0), (0, 0));
        let again = ev(&a, EventKind::Start, 2, (1, 60), (0, 0));
        m.observe(&[end, again], &store, t0);
        assert_eq!(
            value(&r, &format!("tenantflow_flows_total{{{BASE}}}")),
            Some(2)
        );
        assert_eq!(
            value(
                &r,
                &format!("tenantflow_flow_bytes_total{{{BASE},direction=\"tx\"}}")
            ),
            Some(560)
        );
    }

    #[test]
    fn the_series_cap_sends_the_rest_to_overflow_with_totals_intact() {
        let r = Registry::new();
        let names: Vec<String> = (0..200).map(|i| format!("t{i}-ns")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let store = inventory(&refs);
        let cfg = FlowMetricsConfig {
            max_series: 50,
            ..Default::default()
        };
        let mut m = FlowMetrics::new(&r, cfg);
        // A flood: 200 namespaces each talk to t0-ns, 200 distinct flows_total series wanted.
        let conns: Vec<_> = (0..200u8).map(|i| conn(&store, 10 + i, 10)).collect();
        let events: Vec<_> = conns
            .iter()
            .enumerate()
            .map(|(i, c)| ev(c, EventKind::Start, i as u64, (1, 100), (0, 0)))
            .collect();
        m.observe(&events, &store, Instant::now());
        let o = OVERFLOW;
        let overflow = format!(
            "tenantflow_flows_total{{src_namespace=\"{o}\",src_tenant=\"{o}\",dst_namespace=\"{o}\",dst_tenant=\"{o}\",flow_class=\"{o}\",scope=\"{o}\",cross_tenant=\"{o}\",egress=\"{o}\"}}"
        );
        assert_eq!(value(&r, &overflow), Some(150));
        assert_eq!(
            value(
                &r,
                r#"tenantflow_metric_series_overflow_total{family="tenantflow_flows_total"}"#
            ),
            Some(150)
        );
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&r.gather(), &mut text)
            .unwrap();
        let flows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tenantflow_flows_total{"))
            .collect();
        assert_eq!(flows.len(), 51, "fifty real series and the overflow");
        let total: u64 = flows
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 200);
    }

    #[test]
    fn series_of_a_deleted_namespace_go_after_the_grace_period() {
        let r = Registry::new();
        let mut store = inventory(&["alpha-web", "beta-api"]);
        let cfg = FlowMetricsConfig {
            grace: Duration::from_secs(60),
            ..Default::default()
        };
        let mut m = FlowMetrics::new(&r, cfg);
        let t0 = Instant::now();
        let a = conn(&store, 10, 11);
        m.observe(
            &[ev(&a, EventKind::Start, 1, (1, 100), (1, 100))],
            &store,
            t0,
        );
        let flows = format!("tenantflow_flows_total{{{BASE}}}");
        store.apply(Change::Replace(Kind::Namespace, vec![]));
        m.observe(&[], &store, t0 + Duration::from_secs(1));
        m.observe(&[], &store, t0 + Duration::from_secs(30));
        assert_eq!(value(&r, &flows), Some(1), "still inside the grace period");
        m.observe(&[], &store, t0 + Duration::from_secs(62));
        assert_eq!(value(&r, &flows), None);
        assert_eq!(
            value(
                &r,
                &format!("tenantflow_flow_bytes_total{{{BASE},direction=\"tx\"}}")
            ),
            None
        );
        assert_eq!(value(&r, "tenantflow_metric_series"), Some(0));
    }

    #[test]
    fn series_of_a_deleted_workload_go_after_the_grace_period() {
        let r = Registry::new();
        let mut store = inventory(&["alpha-web", "beta-api"]);
        let cfg = FlowMetricsConfig {
            workload_labels: true,
            grace: Duration::from_secs(10),
            ..Default::default()
        };
        let mut m = FlowMetrics::new(&r, cfg);
        let t0 = Instant::now();
        let a = conn(&store, 10, 11);
        m.observe(&[ev(&a, EventKind::Start, 1, (1, 100), (0, 0))], &store, t0);
        let flows = format!("tenantflow_flows_total{{{BASE},src_workload=\"ReplicaSet/rs0\",dst_workload=\"ReplicaSet/rs1\"}}");
        assert_eq!(value(&r, &flows), Some(1));
        // The destination's pods are gone (ReplicaSet deleted); the namespace stays.
        let keep: Vec<_> = store
            .pods()
            .filter(|p| &*p.name != "p1")
            .cloned()
            .map(crate::identity::Object::Pod)
            .collect();
        store.apply(Change::Replace(Kind::Pod, keep));
        m.observe(&[], &store, t0 + Duration::from_secs(2));
        assert_eq!(value(&r, &flows), Some(1), "inside the grace period");
        m.observe(&[], &store, t0 + Duration::from_secs(13));
        assert_eq!(value(&r, &flows), None);
    }

    #[test]
    fn a_direction_without_traffic_exports_no_series() {
        let r = Registry::new();
        let store = inventory(&["alpha-web", "beta-api"]);
        let mut m = FlowMetrics::new(&r, FlowMetricsConfig::default());
        let a = conn(&store, 10, 11);
        m.observe(
            &[ev(&a, EventKind::Start, 1, (1, 100), (0, 0))],
            &store,
            Instant::now(),
        );
        m.observe(
            &[ev(&a, EventKind::Update, 1, (2, 200), (0, 0))],
            &store,
            Instant::now(),
        );
        let rx = format!("tenantflow_flow_bytes_total{{{BASE},direction=\"rx\"}}");
        assert_eq!(value(&r, &rx), None);
        let tx = format!("tenantflow_flow_bytes_total{{{BASE},direction=\"tx\"}}");
        assert_eq!(value(&r, &tx), Some(300));
        m.observe(
            &[ev(&a, EventKind::End, 1, (0, 0), (1, 50))],
            &store,
            Instant::now(),
        );
        assert_eq!(value(&r, &rx), Some(50));
    }

    #[test]
    fn workload_labels_are_opt_in() {
        let r = Registry::new();
        let store = inventory(&["alpha-web", "beta-api"]);
        let cfg = FlowMetricsConfig {
            workload_labels: true,
            ..Default::default()
        };
        let mut m = FlowMetrics::new(&r, cfg);
        m.observe(
            &[ev(
                &conn(&store, 10, 11),
                EventKind::Start,
                1,
                (1, 100),
                (0, 0),
            )],
            &store,
            Instant::now(),
        );
        assert_eq!(
            value(&r, &format!("tenantflow_flows_total{{{BASE},src_workload=\"ReplicaSet/rs0\",dst_workload=\"ReplicaSet/rs1\"}}")),
            Some(1)
        );
    }
}
