//! What users look at: a real Prometheus scraping the agent in the lab (exact values for
//! known traffic, verdict series, `promtool check metrics` clean), the JSON flow log with
//! both NAT sides, series of a deleted namespace dropped after the grace period, the series
//! cap, and `/flows` / CLI filters.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};
use tenantflow_tests::{
    agent::{counts, wait_connection},
    agent_bin, eventually, in_ns, lab, lab_agent,
    prometheus::{which, Prometheus},
    udp_from_pod, Agent, LabGuard,
};
use xtask::lab::{
    manifest,
    topology::{IMDS, INTERNET_HOST},
};

fn start_agent(lab: &LabGuard, extra: &[&str]) -> Agent {
    lab_agent(lab, 1, extra)
}

#[test]
fn prometheus_scrapes_exact_flow_metrics_and_verdicts() {
    let lab = lab("px");
    let t = &lab.topo;
    let agent = start_agent(&lab, &[]);
    let prom = Prometheus::start(&t.node_ns(1), "127.0.0.1:9990", &[]);
    let api2 = t.pod("api-2");
    udp_from_pod(
        &lab,
        "web-1",
        7001,
        &t.pod_ns(api2),
        &format!("{}:7000", api2.ip()),
        4,
        100,
    );
    udp_from_pod(
        &lab,
        "jobs-1",
        7002,
        &t.internet_ns(),
        &format!("{INTERNET_HOST}:5353"),
        5,
        100,
    );
    udp_from_pod(
        &lab,
        "jobs-1",
        7003,
        &t.vnet_ns(),
        &format!("{IMDS}:80"),
        1,
        60,
    );

    let cross = prom.expect_one(
        r#"tenantflow_flow_bytes_total{src_namespace="alpha-web",dst_namespace="beta-api",direction="tx"}"#,
        512.0,
    );
    assert_eq!(
        (
            &cross["src_tenant"],
            &cross["dst_tenant"],
            &cross["flow_class"],
            &cross["scope"],
            &cross["cross_tenant"],
            &cross["egress"]
        ),
        (
            &json!("alpha"),
            &json!("beta"),
            &json!("pod_to_pod"),
            &json!("cross_node"),
            &json!("true"),
            &json!("none")
        )
    );
    prom.expect_one(r#"tenantflow_flow_packets_total{src_namespace="alpha-web",dst_namespace="beta-api",direction="tx"}"#, 4.0);
    prom.expect_one(
        r#"tenantflow_flows_total{src_namespace="alpha-web",dst_namespace="beta-api"}"#,
        1.0,
    );
    prom.expect_one(r#"tenantflow_cross_tenant_flows_total{src_tenant="alpha",dst_tenant="beta",flow_class="pod_to_pod"}"#, 1.0);
    prom.expect_one(r#"sum(tenantflow_cross_tenant_flows_total)"#, 1.0);

    let egress = prom.expect_one(
        r#"tenantflow_flow_bytes_total{src_namespace="alpha-jobs",scope="internet",direction="tx"}"#,
        640.0,
    );
    assert_eq!(
        (&egress["egress"], &egress["flow_class"]),
        (&json!("unmediated"), &json!("pod_to_egress"))
    );
    prom.expect_one(
        r#"tenantflow_unmediated_egress_flows_total{src_namespace="alpha-jobs",scope="internet"}"#,
        1.0,
    );
    prom.expect_one(r#"tenantflow_unmediated_egress_flows_total{src_namespace="alpha-jobs",scope="azure_platform"}"#, 1.0);
    let imds = prom.expect_one(r#"tenantflow_sensitive_flows_total{target="imds"}"#, 1.0);
    assert_eq!(
        (&imds["src_namespace"], &imds["src_tenant"]),
        (&json!("alpha-jobs"), &json!("alpha"))
    );
    prom.expect_one(r#"tenantflow_flow_bytes_total{src_namespace="alpha-jobs",scope="azure_platform",direction="tx"}"#, 88.0);
    prom.expect_one(
        r#"tenantflow_metadata_objects{kind="pod",source="snapshot"}"#,
        8.0,
    );
    prom.expect_one(r#"tenantflow_nat_mechanism{mechanism="conntrack"}"#, 1.0);
    prom.expect_one(r#"tenantflow_attached_interfaces{role="pod"}"#, 5.0);

    // The exposition passes Prometheus's own linter.
    let (_, body) = agent.get("/metrics").unwrap();
    let mut lint = Command::new(which("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        (out.status.code(), report.as_str()),
        (Some(0), ""),
        "promtool check metrics"
    );
}

fn read_log(path: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn flow_log_carries_both_nat_sides_and_deleted_namespaces_leave_the_metrics() {
    let lab = lab("pl");
    let t = &lab.topo;
    let log = std::env::temp_dir().join(format!("{}-flows.json", t.prefix));
    let _ = std::fs::remove_file(&log);
    let agent = start_agent(
        &lab,
        &[
            "--flow-log",
            log.to_str().unwrap(),
            "--idle-timeout",
            "1s",
            "--metrics-grace",
            "1s",
        ],
    );
    let jobs = t.pod("jobs-1");
    udp_from_pod(
        &lab,
        "jobs-1",
        7101,
        &t.internet_ns(),
        &format!("{INTERNET_HOST}:5353"),
        5,
        100,
    );
    let api2 = t.pod("api-2");
    udp_from_pod(
        &lab,
        "web-1",
        7102,
        &t.pod_ns(api2),
        &format!("{}:7000", api2.ip()),
        2,
        10,
    );

    let rec = eventually(Duration::from_secs(10), || {
        read_log(&log)
            .into_iter()
            .find(|r| r["src_port"] == 7101 && r["type"] == "end")
    })
    .unwrap_or_else(|| panic!("no end record for the egress flow in {}", log.display()));
    assert_eq!(rec["src"], jobs.ip());
    assert_eq!(rec["dst"], INTERNET_HOST);
    assert_eq!(
        rec["snat"]["ip"],
        t.node(1).ip(),
        "post-SNAT address on the same record"
    );
    assert_eq!(rec["src_identity"]["pod"], "jobs-1");
    assert_eq!(rec["egress"], "unmediated");
    assert_eq!(counts(&rec, "forward"), (5, 640));
    assert_eq!(rec["node"].as_str().map(str::is_empty), Some(false));
    // The documented example has exactly the fields of a real record.
    let doc = include_str!("../../docs/flow-log.md");
    let example: Value = serde_json::from_str(
        doc.split("```json\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap(),
    )
    .expect("docs/flow-log.md example is JSON");
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&rec),
        keys(&example),
        "docs/flow-log.md example fields"
    );
    for nested in ["snat", "forward", "src_identity", "dst_identity"] {
        assert_eq!(
            keys(&rec[nested]),
            keys(&example[nested]),
            "docs/flow-log.md {nested}"
        );
    }
    assert_eq!(keys(&rec["sightings"][0]), keys(&example["sightings"][0]));
    let ends = read_log(&log)
        .into_iter()
        .filter(|r| r["src_port"] == 7101)
        .count();
    assert_eq!(ends, 1, "one record per finished flow");

    // The cross-tenant series exists…
    let beta_lines = |agent: &Agent| {
        let (_, body) = agent.get("/metrics").unwrap();
        body.lines()
            .filter(|l| l.contains("namespace=\"beta-api\""))
            .count()
    };
    assert!(eventually(Duration::from_secs(5), || (beta_lines(&agent) == 4).then_some(())).is_some(),
        "flows_total, bytes and packets (tx) and cross_tenant_flows_total for alpha-web -> beta-api: got {}", beta_lines(&agent));
    // …until beta-api is deleted from the cluster and the grace period passes.
    manifest::write_without_namespace(t, "beta-api").unwrap();
    let gone = eventually(Duration::from_secs(10), || {
        (beta_lines(&agent) == 0).then_some(())
    });
    let (_, body) = agent.get("/metrics").unwrap();
    assert!(gone.is_some(), "beta-api series still exported:\n{body}");
    assert_eq!(
        agent.metric("tenantflow_metadata_objects{kind=\"namespace\",source=\"snapshot\"}"),
        Some(4.0)
    );
    std::fs::remove_file(&log).unwrap();
}

#[test]
fn the_series_cap_holds_and_overflow_is_counted() {
    let lab = lab("pc");
    let t = &lab.topo;
    let agent = start_agent(&lab, &["--metrics-max-series", "3"]);
    let pods = ["web-1", "jobs-1", "api-1", "coredns-1", "egress-gw-1"];
    for (i, p) in pods.iter().enumerate() {
        udp_from_pod(
            &lab,
            p,
            7200 + i as u16,
            &t.internet_ns(),
            &format!("{INTERNET_HOST}:{}", 6000 + i),
            1,
            10,
        );
    }
    // Five namespaces, each with its own flows_total series wanted; three fit.
    let series = || -> Vec<(String, f64)> {
        let (_, body) = agent.get("/metrics").unwrap();
        body.lines()
            .filter(|l| l.starts_with("tenantflow_flows_total{"))
            .map(|l| {
                let (s, v) = l.rsplit_once(' ').unwrap();
                (s.to_owned(), v.parse().unwrap())
            })
            .collect()
    };
    let conns = eventually(Duration::from_secs(6), || {
        let all = agent.connections("");
        let ours = all
            .iter()
            .filter(|c| (7200..7205).contains(&c["src_port"].as_u64().unwrap_or(0)))
            .count();
        let total: f64 = series().iter().map(|s| s.1).sum();
        (ours == 5 && total == all.len() as f64).then_some(all.len())
    })
    .expect("every connection counted in flows_total");
    let s = series();
    assert_eq!(s.len(), 4, "three series and the overflow series: {s:#?}");
    let overflow: f64 = s
        .iter()
        .filter(|(k, _)| k.contains("_overflow"))
        .map(|x| x.1)
        .sum();
    assert_eq!(
        overflow,
        conns as f64
            - s.iter()
                .filter(|(k, _)| !k.contains("_overflow"))
                .map(|x| x.1)
                .sum::<f64>()
    );
    assert!(
        overflow >= 2.0,
        "at least two namespaces did not fit: {s:#?}"
    );
    assert_eq!(
        agent.metric("tenantflow_metric_series_overflow_total{family=\"tenantflow_flows_total\"}"),
        Some(overflow)
    );
}

#[test]
fn flows_filters_and_the_cli() {
    let lab = lab("pf");
    let t = &lab.topo;
    let agent = start_agent(&lab, &[]);
    let api2 = t.pod("api-2");
    udp_from_pod(
        &lab,
        "web-1",
        7301,
        &t.pod_ns(api2),
        &format!("{}:7000", api2.ip()),
        2,
        10,
    );
    udp_from_pod(
        &lab,
        "jobs-1",
        7302,
        &t.internet_ns(),
        &format!("{INTERNET_HOST}:5353"),
        3,
        10,
    );
    let web1 = t.pod("web-1").ip();
    let jobs = t.pod("jobs-1").ip();
    wait_connection(
        &agent,
        |c| c["src_port"] == 7301,
        |c| counts(c, "forward") == (2, 76),
    );
    wait_connection(
        &agent,
        |c| c["src_port"] == 7302,
        |c| counts(c, "forward") == (3, 114),
    );

    let ports = |q: &str| -> Vec<u64> {
        let mut v: Vec<u64> = agent
            .connections(q)
            .iter()
            .filter_map(|c| c["src_port"].as_u64())
            .filter(|p| (7301..=7302).contains(p))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(ports("?tenant=beta"), [7301]);
    assert_eq!(ports("?namespace=alpha-jobs"), [7302]);
    assert_eq!(ports("?cross_tenant=true"), [7301]);
    assert_eq!(ports("?class=pod_to_egress&egress=unmediated"), [7302]);
    assert_eq!(ports("?class=pod_to_pod&tenant=alpha"), [7301]);
    assert_eq!(ports("?egress=exempt"), Vec::<u64>::new());
    for (q, reason) in [
        ("?egress=sometimes", "unknown variant `sometimes`"),
        ("?cross_tenant=maybe", "cross_tenant"),
        ("?colour=red", "unknown field `colour`"),
    ] {
        let (status, body) = agent.get_records(&format!("/flows{q}")).unwrap();
        assert_eq!(status, 400, "{q}: {body}");
        assert!(
            body.contains(reason) && body.contains("accepted parameters"),
            "{q}: {body}"
        );
    }
    let (status, body) = agent.get_records("/observations?tenant=beta").unwrap();
    assert_eq!(status, 400, "{body}");

    // The CLI asks the same agent, the way `hubble observe` users expect.
    let bin = agent_bin();
    let out = in_ns(
        &t.node_ns(1),
        &[
            bin.to_str().unwrap(),
            "flows",
            "--cross-tenant",
            "-o",
            "json",
        ],
    );
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(v.len(), 1, "{out}");
    assert_eq!(
        (&v[0]["src"], &v[0]["src_port"]),
        (&json!(web1), &json!(7301))
    );
    let out = in_ns(
        &t.node_ns(1),
        &[
            bin.to_str().unwrap(),
            "flows",
            "--egress",
            "unmediated",
            "--namespace",
            "alpha-jobs",
        ],
    );
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].starts_with("PROTO") && rows[0].contains("VERDICTS"),
        "{out}"
    );
    assert!(
        rows[1].contains(&format!("{jobs}:7302"))
            && rows[1].contains("alpha:alpha-jobs/jobs-1")
            && rows[1].contains("egress=unmediated"),
        "{out}"
    );
    let bad = Command::new("ip")
        .args(["netns", "exec", &t.node_ns(1)])
        .arg(&bin)
        .args(["flows", "--egress", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("400"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
