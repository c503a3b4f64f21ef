//! Every query of every dashboard panel (and every template variable) returns data from a
//! real Prometheus scraping the agent in the lab while the lab carries each kind of
//! traffic the dashboards show.

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use tenantflow_tests::{
    dns_server::{resolv_conf, resolve, Dns},
    eventually, finish, in_ns, lab, lab_agent,
    prometheus::Prometheus,
    traffic, traffic_bg, udp_from_pod, LabGuard,
};
use xtask::lab::topology::{IMDS, INTERNET_HOST, PRIVATE_ENDPOINT};

fn dashboards() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

/// Grafana's variables as a dashboard opened with its defaults would expand them.
fn expand(expr: &str) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__range", "10m");
    for var in [
        "$cluster",
        "$tenant",
        "$namespace",
        "$instance",
        "$snat_ip",
        "$snat_port",
        "$dst_ip",
    ] {
        e = e.replace(var, ".*");
    }
    assert!(!e.contains('$'), "unexpanded variable in {expr}");
    e
}

/// `label_values(metric{…}, label)` as the PromQL Grafana runs for it.
fn variable_query(q: &str) -> String {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .expect("label_values()");
    let (metric, label) = inner.rsplit_once(',').unwrap();
    expand(&format!("group by ({}) ({})", label.trim(), metric.trim()))
}

fn udp(lab: &LabGuard, from: &str, sport: u16, rx_ns: &str, to: &str) {
    udp_from_pod(lab, from, sport, rx_ns, to, 3, 100);
}

fn tcp(lab: &LabGuard, from: &str, server_ns: &str, to: &str) {
    let t = &lab.topo;
    let srv = traffic_bg(server_ns, &["tcp-serve", to, "500"]);
    traffic(&t.pod_ns(t.pod(from)), &["tcp-send", to, "300"]);
    finish(srv);
}

/// Cross-tenant, unmediated, exempt, IMDS, kubelet, a Service, egress via the gateway, and
/// two failed cross-tenant attempts (one refused, one dropped).
fn every_kind_of_traffic(lab: &LabGuard) {
    let t = &lab.topo;
    let api2 = t.pod("api-2");
    let web1 = t.pod_ns(t.pod("web-1"));
    assert_eq!(
        traffic(&web1, &["tcp-try", &format!("{}:7002", api2.ip())]).trim(),
        "refused"
    );
    in_ns(
        &t.pod_ns(api2),
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "7003", "-j", "DROP",
        ],
    );
    let dropped = &format!("{}:7003", api2.ip());
    assert_eq!(
        traffic(&web1, &["tcp-try", dropped, "--timeout-ms", "1500"]).trim(),
        "timeout"
    );
    udp(
        lab,
        "web-1",
        7501,
        &t.pod_ns(api2),
        &format!("{}:7000", api2.ip()),
    );
    udp(
        lab,
        "jobs-1",
        7502,
        &t.internet_ns(),
        &format!("{INTERNET_HOST}:5353"),
    );
    udp(
        lab,
        "jobs-1",
        7503,
        &t.vnet_ns(),
        &format!("{PRIVATE_ENDPOINT}:443"),
    );
    udp(lab, "jobs-1", 7504, &t.vnet_ns(), &format!("{IMDS}:80"));
    tcp(
        lab,
        "api-1",
        &t.node_ns(2),
        &format!("{}:10250", t.node(2).ip()),
    );
    let svc = &t.services[0];
    let servers: Vec<_> = svc
        .backends
        .iter()
        .map(|name| {
            let backend = t.pod(name);
            traffic_bg(
                &t.pod_ns(backend),
                &[
                    "tcp-serve",
                    &format!("{}:{}", backend.ip(), svc.target_port),
                    "200",
                    "--conns",
                    "100",
                ],
            )
        })
        .collect();
    traffic(
        &t.pod_ns(t.pod("api-1")),
        &["tcp-send", &format!("{}:{}", svc.vip, svc.port), "100"],
    );
    for c in servers {
        // SAFETY: signalling our own children (servers waiting for more connections).
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let _ = c.wait_with_output();
    }
    let gw = t.pod("egress-gw-1");
    let upstream = format!("{INTERNET_HOST}:443");
    let up = traffic_bg(&t.internet_ns(), &["tcp-serve", &upstream, "700"]);
    let relay = traffic_bg(
        &t.pod_ns(gw),
        &["relay", &format!("{}:3128", gw.ip()), &upstream],
    );
    traffic(
        &t.pod_ns(t.pod("jobs-1")),
        &["tcp-send", &format!("{}:3128", gw.ip()), "900"],
    );
    finish(relay);
    finish(up);
}

#[test]
fn every_panel_query_returns_data_from_the_lab() {
    let lab = lab("db");
    let t = &lab.topo;
    // Every path is new: no learning period. The NAT lookup dashboard needs the SNAT
    // mappings, which name pods: accepted here, on a lab node no tenant can reach.
    let _agent = lab_agent(
        &lab,
        1,
        &["--edge-learning", "0s", "--metrics-public-names"],
    );
    let rules = tenantflow_tests::chart::rules_file();
    let prom = Prometheus::start(&t.node_ns(1), "127.0.0.1:9990", &[rules]);
    every_kind_of_traffic(&lab);
    // DNS for the lateral-movement dashboard's DNS panels: a name that does not exist, and
    // a query to a resolver outside the cluster.
    let _dns = Dns::start(&lab);
    assert_eq!(resolve(&lab, "web-1", "nope.example.test"), None);
    resolv_conf(
        &lab,
        "jobs-1",
        &format!("nameserver {INTERNET_HOST}\noptions timeout:1 attempts:1\n"),
    );
    assert_eq!(resolve(&lab, "jobs-1", "api.example.test"), None);
    // Let rate() windows hold a few scrapes of the new counters.
    eventually(Duration::from_secs(20), || {
        let r = prom
            .query(r#"count_over_time(tenantflow_flow_bytes_total{egress="mediated"}[1m]) >= 3"#);
        (!r.is_empty()).then_some(())
    })
    .expect("mediated egress scraped three times");

    let mut failures = Vec::new();
    let mut checked = 0;
    for file in dashboards() {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                let q = variable_query(v["query"]["query"].as_str().unwrap());
                checked += 1;
                if prom.query(&q).is_empty() {
                    failures.push(format!("{name} variable {}: {q}", v["name"]));
                }
            }
        }
        for p in d["panels"].as_array().unwrap() {
            for target in p["targets"].as_array().unwrap() {
                let q = expand(target["expr"].as_str().unwrap());
                checked += 1;
                if prom.query(&q).is_empty() {
                    failures.push(format!("{name} panel {:?}: {q}", p["title"]));
                }
            }
        }
    }
    // The shipped alert rules fire on the real metrics, with the labels to act on.
    let mut firing = Vec::new();
    eventually(Duration::from_secs(15), || {
        firing = prom
            .alerts()
            .into_iter()
            .filter(|(_, state, _)| state == "firing")
            .map(|(name, _, l)| {
                format!(
                    "{name} {} {} {} {} {}>{}",
                    l["src_namespace"],
                    l["dst_namespace"],
                    l["scope"],
                    l["target"],
                    l["src_tenant"],
                    l["dst_tenant"]
                )
            })
            .collect();
        firing.sort();
        (firing.len() >= 9).then_some(())
    });
    assert_eq!(
        firing,
        [
            r#"TenantflowCrossTenantTraffic "alpha-web" "beta-api" null null "alpha">"beta""#,
            // api-1 -> the web Service: the backend's tenant counts.
            r#"TenantflowCrossTenantTraffic "beta-api" "alpha-web" null null "beta">"alpha""#,
            // The same path is new (no learning period); alpha -> beta only ever failed.
            r#"TenantflowNewCrossTenantEdge null null null null "beta">"alpha""#,
            r#"TenantflowSensitiveTargetAccess "alpha-jobs" null null "imds" "alpha">null"#,
            r#"TenantflowSensitiveTargetAccess "beta-api" null null "kubelet" "beta">null"#,
            r#"TenantflowUnansweredCrossTenant "alpha-web" null null null "alpha">"beta""#,
            r#"TenantflowUnmediatedDns "alpha-jobs" null null null "alpha">null"#,
            r#"TenantflowUnmediatedEgress "alpha-jobs" null "azure_platform" null "alpha">null"#,
            r#"TenantflowUnmediatedEgress "alpha-jobs" null "internet" null "alpha">null"#,
        ]
    );
    assert!(
        failures.is_empty(),
        "queries without data:\n{}",
        failures.join("\n")
    );
    // 46 panel targets and 15 template variables across the five dashboards.
    assert_eq!(
        checked, 61,
        "queries checked (update when dashboards change)"
    );
}
