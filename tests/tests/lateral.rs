//! Lateral movement in the lab: a compromised pod (web-1, tenant alpha) scans a pod of
//! another tenant, tries ports a policy drops and knocks on a kubelet, next to normal
//! traffic from other namespaces. Every attempt's outcome is exact, fan-out counts each
//! destination, the scan alerts fire on the real Prometheus for that namespace only, and
//! new edges are flagged exactly once, also across an agent restart. A source reaching
//! 10,000 destinations keeps its fan-out state within its documented size.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use tenantflow_tests::{
    eventually, finish, lab, lab_agent, prometheus::Prometheus, traffic, traffic_bg, traffic_bin,
    Agent, LabGuard,
};
use xtask::lab::compromise::{self, DROPPED, KUBELET, OPEN, SCAN};

/// `connections` from `src` once every one has an outcome, keyed by (destination, port).
fn outcomes_from(agent: &Agent, src: &str, want: usize) -> BTreeMap<(String, u64), Value> {
    let mut seen = Vec::new();
    eventually(Duration::from_secs(15), || {
        seen = agent
            .connections(&format!("?ip={src}"))
            .into_iter()
            .filter(|c| c["src"] == src)
            .collect();
        (seen.len() >= want && seen.iter().all(|c| c["outcome"].is_string())).then_some(())
    });
    let by_dst: BTreeMap<(String, u64), Value> = seen
        .iter()
        .map(|c| {
            let key = (
                c["dst"].as_str().unwrap().to_owned(),
                c["dst_port"].as_u64().unwrap(),
            );
            (key, c.clone())
        })
        .collect();
    assert_eq!(by_dst.len(), seen.len(), "one record per attempt");
    by_dst
}

/// Normal traffic: `from` pods each open `n` connections to web-2:8080.
fn normal(lab: &LabGuard, from: &[(&str, u32)]) {
    let t = &lab.topo;
    let web2 = t.pod("web-2");
    let to = format!("{}:8080", web2.ip());
    let total: u32 = from.iter().map(|f| f.1).sum();
    let sink = traffic_bg(
        &t.pod_ns(web2),
        &["tcp-sink", &to, "--conns", &total.to_string()],
    );
    for (pod, n) in from {
        for _ in 0..*n {
            traffic(&t.pod_ns(t.pod(pod)), &["tcp-send", &to, "100"]);
        }
    }
    finish(sink);
}

fn new_edges(agent: &Agent, src: &str, dst: &str, cross: bool) -> Option<f64> {
    agent.metric(&format!(
        "tenantflow_new_edges_total{{cross_tenant=\"{cross}\",dst_tenant=\"{dst}\",src_tenant=\"{src}\"}}"
    ))
}

#[test]
fn a_compromised_pod_is_seen_probing_and_new_edges_are_flagged_once() {
    let lab = lab("lm");
    let t = &lab.topo;
    let edge_file = std::env::temp_dir().join(format!("{}-edges", t.prefix));
    let _ = std::fs::remove_file(&edge_file);
    let flags = [
        "--edge-learning",
        "0s",
        "--edge-file",
        edge_file.to_str().unwrap(),
    ];
    let mut agent = lab_agent(&lab, 1, &flags);
    let prom = Prometheus::start(
        &t.node_ns(1),
        "127.0.0.1:9990",
        &[tenantflow_tests::chart::rules_file()],
    );
    let tf = traffic_bin();
    let tf = [tf.to_str().unwrap()];
    let (web1, api1, api2) = (
        t.pod("web-1").ip(),
        t.pod("api-1").ip(),
        t.pod("api-2").ip(),
    );
    let node2 = t.node(2).ip();

    normal(&lab, &[("api-1", 2), ("jobs-1", 1)]);
    let _prepared = compromise::prepare(t, &tf, true).unwrap();
    let said = compromise::probe(t, &tf).unwrap();
    assert_eq!(
        said,
        [
            "connected=3 refused=97 timeout=0",
            "connected=0 refused=0 timeout=5",
            "connected=1 refused=0 timeout=0"
        ]
    );

    // Each attempt once, with the outcome the probe saw.
    let got = outcomes_from(&agent, &web1, 106);
    let mut want: BTreeMap<(String, u64), &str> = BTreeMap::new();
    for p in SCAN {
        let o = if OPEN.contains(&p) {
            "established"
        } else {
            "refused"
        };
        want.insert((api2.clone(), p as u64), o);
    }
    for p in DROPPED {
        want.insert((api1.clone(), p as u64), "unanswered");
    }
    want.insert((node2.clone(), KUBELET as u64), "established");
    let got_outcomes: BTreeMap<(String, u64), &str> = got
        .iter()
        .map(|(k, c)| (k.clone(), c["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(got_outcomes, want);

    let attempts = |dst_tenant: &str, kind: &str, cross: bool, outcome: &str| {
        agent.metric(&format!(
            "tenantflow_connection_attempts_total{{cross_tenant=\"{cross}\",dst_kind=\"{kind}\",dst_tenant=\"{dst_tenant}\",outcome=\"{outcome}\",src_namespace=\"alpha-web\",src_tenant=\"alpha\"}}"
        ))
    };
    assert_eq!(attempts("beta", "pod", true, "refused"), Some(97.0));
    assert_eq!(attempts("beta", "pod", true, "established"), Some(3.0));
    assert_eq!(attempts("beta", "pod", true, "unanswered"), Some(5.0));
    assert_eq!(attempts("", "node", false, "established"), Some(1.0));
    let fanout = |ns: &str, tenant: &str| {
        agent.metric(&format!(
            "tenantflow_fanout_destinations{{src_namespace=\"{ns}\",src_tenant=\"{tenant}\"}}"
        ))
    };
    assert_eq!(fanout("alpha-web", "alpha"), Some(106.0));
    assert_eq!(fanout("beta-api", "beta"), Some(1.0));
    assert_eq!(fanout("alpha-jobs", "alpha"), Some(1.0));

    // New edges: the first answered connection on each path, once.
    let flagged: Vec<(String, String, u64)> = agent
        .connections("")
        .into_iter()
        .filter(|c| c["new_edge"] == true)
        .map(|c| {
            (
                c["src"].as_str().unwrap().to_owned(),
                c["dst"].as_str().unwrap().to_owned(),
                c["dst_port"].as_u64().unwrap(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (web2, jobs1) = (t.pod("web-2").ip(), t.pod("jobs-1").ip());
    let mut expected = vec![
        (api1.clone(), web2.clone(), 8080),
        (jobs1.clone(), web2.clone(), 8080),
        (web1.clone(), node2.clone(), KUBELET as u64),
    ];
    expected.extend(OPEN.iter().map(|&p| (web1.clone(), api2.clone(), p as u64)));
    expected.sort();
    assert_eq!(flagged, expected);
    let flagged_conns = agent
        .connections("")
        .into_iter()
        .filter(|c| c["new_edge"] == true)
        .count();
    assert_eq!(flagged_conns, 6, "api-1's second connection is not new");
    assert_eq!(new_edges(&agent, "alpha", "beta", true), Some(3.0));
    assert_eq!(new_edges(&agent, "beta", "alpha", true), Some(1.0));
    assert_eq!(new_edges(&agent, "alpha", "alpha", false), Some(1.0));
    assert_eq!(new_edges(&agent, "alpha", "", false), Some(1.0));

    // The lateral-movement alerts fire for the compromised namespace only.
    let mut firing = Vec::new();
    eventually(Duration::from_secs(20), || {
        firing = prom
            .alerts()
            .into_iter()
            .filter(|(name, state, _)| {
                state == "firing"
                    && [
                        "TenantflowPossibleScan",
                        "TenantflowFanoutJump",
                        "TenantflowUnansweredCrossTenant",
                        "TenantflowNewCrossTenantEdge",
                    ]
                    .contains(&name.as_str())
            })
            .map(|(name, _, l)| {
                format!(
                    "{name} {} {}>{}",
                    l["src_namespace"], l["src_tenant"], l["dst_tenant"]
                )
            })
            .collect();
        firing.sort();
        (firing.len() >= 5).then_some(())
    });
    assert_eq!(
        firing,
        [
            r#"TenantflowFanoutJump "alpha-web" "alpha">null"#,
            r#"TenantflowNewCrossTenantEdge null "alpha">"beta""#,
            r#"TenantflowNewCrossTenantEdge null "beta">"alpha""#,
            r#"TenantflowPossibleScan "alpha-web" "alpha">null"#,
            r#"TenantflowUnansweredCrossTenant "alpha-web" "alpha">"beta""#,
        ]
    );

    // Restarted, the agent knows every edge: walking them again flags nothing, and only
    // a path never walked is new.
    assert_eq!(agent.stop_with(libc::SIGTERM), Some(0));
    let agent = lab_agent(&lab, 1, &flags);
    normal(&lab, &[("api-1", 1)]);
    let web1_ns = t.pod_ns(t.pod("web-1"));
    let again = format!("{api2}:{}", OPEN[0]);
    assert_eq!(traffic(&web1_ns, &["tcp-try", &again]).trim(), "connected");
    let jobs_ns = t.pod_ns(t.pod("jobs-1"));
    let fresh = format!("{api2}:{}", OPEN[1]);
    assert_eq!(traffic(&jobs_ns, &["tcp-try", &fresh]).trim(), "connected");
    let after: Vec<(String, bool)> = {
        let mut v = Vec::new();
        eventually(Duration::from_secs(10), || {
            v = agent
                .connections("")
                .into_iter()
                .filter(|c| c["outcome"].is_string())
                .map(|c| {
                    (
                        format!("{}>{}:{}", c["src"], c["dst"], c["dst_port"]),
                        c["new_edge"] == true,
                    )
                })
                .collect();
            (v.len() >= 3).then_some(())
        });
        v.sort();
        v
    };
    let key = |s: &str, d: &str, p: u64| format!("\"{s}\">\"{d}\":{p}");
    let mut want = vec![
        (key(&api1, &web2, 8080), false),
        (key(&jobs1, &api2, OPEN[1] as u64), true),
        (key(&web1, &api2, OPEN[0] as u64), false),
    ];
    want.sort();
    assert_eq!(after, want);
    assert_eq!(new_edges(&agent, "alpha", "beta", true), Some(1.0));
    assert_eq!(new_edges(&agent, "beta", "alpha", true), None);
    let _ = std::fs::remove_file(&edge_file);
}

#[test]
fn fan_out_of_ten_thousand_destinations_stays_within_its_size() {
    let lab = lab("fo");
    let t = &lab.topo;
    let agent = lab_agent(&lab, 1, &[]);
    let web1 = t.pod("web-1");
    let web2 = t.pod("web-2");
    traffic(
        &t.pod_ns(web1),
        &[
            "udp-spray",
            &format!("{}:20000", web2.ip()),
            "10000",
            "1",
            "--bind",
            &format!("{}:5000", web1.ip()),
        ],
    );
    let series = "tenantflow_fanout_destinations{src_namespace=\"alpha-web\",src_tenant=\"alpha\"}";
    // Settled: the same estimate in two reads a harvest apart.
    let mut last = None;
    let estimate = eventually(Duration::from_secs(30), || {
        let now = agent.metric(series);
        agent.wait_harvests(1);
        let settled = now.is_some() && now == agent.metric(series) && now == last;
        last = now;
        now.filter(|_| settled)
    })
    .expect("fan-out settled");
    // One standard error is 3.25 %: three of them.
    assert!(
        (estimate - 10_000.0).abs() <= 0.0975 * 10_000.0,
        "estimate {estimate}"
    );
    let bytes = agent.metric("tenantflow_fanout_state_bytes").unwrap();
    // docs/metrics.md: six slots of at most 1 KiB each per source.
    assert!(bytes <= 6.0 * 1024.0, "{bytes} bytes");
    assert_eq!(agent.metric("tenantflow_fanout_sources"), Some(1.0));
}
