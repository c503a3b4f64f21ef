//! Flow metrics counted once per connection, capped, and dropped after the grace period.
use super::*;
use crate::{
    classify::classify,
    config::Config,
    flow::{Connection, Counts},
    identity::{snapshot, Change, Kind},
    net::{FlowTuple, PROTO_TCP},
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
fn conn(store: &Store, src: u8, dst: u8) -> (Connection, Arc<Classification>) {
    let c = Connection::new(FlowTuple {
        proto: PROTO_TCP,
        src: format!("10.244.1.{src}").parse().unwrap(),
        sport: 40000,
        dst: format!("10.244.1.{dst}").parse().unwrap(),
        dport: 80,
    });
    let k = classify(&Config::default(), store, &c);
    (c, Arc::new(k))
}

/// An event of `c` (as connection `id`) carrying these deltas.
fn ev<'a>(
    (c, k): &'a (Connection, Arc<Classification>),
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
        sightings: crate::flow::Sightings::NONE,
        class: k,
        process: None,
        reclassified: false,
        delta: (counts(fwd), counts(rev)),
        outcome: None,
        decided: false,
        new_edge: false,
        dst_fqdn: None,
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
fn connections_sharing_a_classification_share_one_cached_lookup_until_it_is_dropped() {
    let r = Registry::new();
    let store = inventory(&["alpha-web", "beta-api"]);
    let mut m = FlowMetrics::new(&r, FlowMetricsConfig::default());
    let t0 = Instant::now();
    let a = conn(&store, 10, 11);
    // A second connection with the same (shared) classification, another tuple.
    let mut c2 = a.0.clone();
    c2.tuple.sport = 40001;
    let b = (c2, a.1.clone());
    m.observe(
        &[
            ev(&a, EventKind::Start, 1, (3, 300), (1, 100)),
            ev(&b, EventKind::Start, 2, (2, 200), (0, 0)),
        ],
        &store,
        t0,
    );
    m.observe(
        &[ev(&b, EventKind::Update, 2, (1, 10), (4, 40))],
        &store,
        t0,
    );
    assert_eq!(m.handles.len(), 1);
    let bytes = |dir: &str| {
        value(
            &r,
            &format!("tenantflow_flow_bytes_total{{{BASE},direction=\"{dir}\"}}"),
        )
    };
    assert_eq!((bytes("tx"), bytes("rx")), (Some(510), Some(140)));
    // Another classification gets its own; once no connection holds one, the next
    // collection (at most once a second) forgets it.
    let other = conn(&store, 10, 12);
    m.observe(
        &[ev(&other, EventKind::Start, 3, (1, 1), (0, 0))],
        &store,
        t0,
    );
    assert_eq!(m.handles.len(), 2);
    drop(other);
    m.observe(&[], &store, t0 + Duration::from_secs(2));
    assert_eq!(m.handles.len(), 1);
    assert_eq!((bytes("tx"), bytes("rx")), (Some(510), Some(140)));
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

/// Unmediated egress with a resolved name gets one series per (namespace, name); with
/// workload labels the series carries the source workload too (same arity as registered).
#[test]
fn unmediated_egress_is_counted_by_name_too() {
    let store = inventory(&["alpha-web"]);
    let config = Config::parse(
        "network: {pod_cidrs: [10.244.0.0/16], service_cidrs: [10.0.0.0/16]}\n",
        "test",
    )
    .unwrap();
    let c = Connection::new(FlowTuple {
        proto: PROTO_TCP,
        src: "10.244.1.10".parse().unwrap(),
        sport: 40000,
        dst: "203.0.113.10".parse().unwrap(),
        dport: 443,
    });
    let k = classify(&config, &store, &c);
    assert_eq!(k.egress, crate::classify::Egress::Unmediated);
    let pair = (c, Arc::new(k));
    let name: std::sync::Arc<str> = "api.example.test".into();
    for workloads in [false, true] {
        let r = Registry::new();
        let mut m = FlowMetrics::new(
            &r,
            FlowMetricsConfig {
                workload_labels: workloads,
                ..Default::default()
            },
        );
        let mut e = ev(&pair, EventKind::Start, 1, (1, 60), (0, 0));
        e.dst_fqdn = Some(&name);
        m.observe(&[e], &store, Instant::now());
        let want = if workloads {
            "tenantflow_unmediated_egress_names_total{dst_fqdn=\"api.example.test\",src_namespace=\"alpha-web\",src_tenant=\"alpha\",src_workload=\"ReplicaSet/rs0\"}"
        } else {
            "tenantflow_unmediated_egress_names_total{dst_fqdn=\"api.example.test\",src_namespace=\"alpha-web\",src_tenant=\"alpha\"}"
        };
        assert_eq!(value(&r, want), Some(1), "workloads={workloads}");
    }
}
