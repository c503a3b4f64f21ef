//! OTLP export against a real receiver (the OpenTelemetry protobuf definitions over gRPC
//! and HTTP, decoding what the agent sends): every record of known lab traffic arrives
//! once and equals the flow log's; a collector away for 30 s gets the queue afterwards and
//! what did not fit is counted exactly; a collector that never answers costs nothing but
//! counted drops.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use serde_json::Value;
use tenantflow_tests::{
    agent::counts,
    agent::LISTEN,
    certs, chart, eventually, lab, lab_agent,
    otlp_receiver::{silent, Inbox, Options, Received, Receiver},
    traffic, udp_from_pod, Agent, LabGuard,
};
use xtask::lab::topology::INTERNET_HOST;

const GRPC: &str = "127.0.0.1:4317";
const HTTP: &str = "127.0.0.1:4318";

fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metric(agent: &Agent, name: &str) -> u64 {
    agent
        .metric(name)
        .unwrap_or_else(|| panic!("{name} not exported")) as u64
}

/// The OTLP accounting from one scrape, so the values belong to the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Accounts {
    written: u64,
    exported: u64,
    queued: u64,
    queue_full: u64,
    other_drops: u64,
}

fn accounts(agent: &Agent) -> Accounts {
    let (_, body) = agent.get("/metrics").unwrap();
    let get = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not exported")) as u64
    };
    Accounts {
        written: get("tenantflow_flow_log_records_total"),
        exported: get("tenantflow_otlp_records_exported_total"),
        queued: get("tenantflow_otlp_queue_records"),
        queue_full: get("tenantflow_otlp_records_dropped_total{reason=\"queue_full\"}"),
        other_drops: get("tenantflow_otlp_records_dropped_total{reason=\"rejected\"}")
            + get("tenantflow_otlp_records_dropped_total{reason=\"shutdown\"}"),
    }
}

/// Every record the flow log wrote was offered to OTLP: it is exported, queued or
/// counted as dropped.
fn balanced(a: Accounts) -> bool {
    a.exported + a.queued + a.queue_full + a.other_drops == a.written
}

/// Ended flow-log records from pod port `sport`.
fn ends(log: &Path, sport: u64) -> Vec<Value> {
    read_log(log)
        .into_iter()
        .filter(|r| r["src_port"] == sport && r["type"] == "end")
        .collect()
}

/// The agent on node 1 with a flow log (the oracle for what OTLP must carry) and `extra`.
fn start(lab: &LabGuard, log: &Path, extra: &[&str]) -> Agent {
    let _ = std::fs::remove_file(log);
    let mut args = vec![
        "--flow-log",
        log.to_str().unwrap(),
        "--idle-timeout",
        "1s",
        "--cluster-name",
        "lab",
    ];
    args.extend_from_slice(extra);
    lab_agent(lab, 1, &args)
}

/// `one datagram each to `flows` ports from pod `pod`'s port `sport`: `flows` records.
fn spray(lab: &LabGuard, pod: &str, sport: u16, first_port: u16, flows: u16) {
    let t = &lab.topo;
    let p = t.pod(pod);
    traffic(
        &t.pod_ns(p),
        &[
            "udp-spray",
            &format!("{INTERNET_HOST}:{first_port}"),
            &flows.to_string(),
            "10",
            "--bind",
            &format!("{}:{sport}", p.ip()),
        ],
    );
}

/// A flow-log record's fields as OTLP attribute names (docs/otlp.md): the 5-tuple under
/// semantic-convention names, every other field as `tenantflow.<path>`.
fn expected_attributes(rec: &Value) -> BTreeMap<String, Value> {
    fn walk(out: &mut BTreeMap<String, Value>, key: String, v: &Value) {
        match v {
            Value::Null => {}
            Value::Object(m) => {
                for (k, v) in m {
                    walk(out, format!("{key}.{k}"), v);
                }
            }
            other => {
                out.insert(key, other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (k, v) in rec.as_object().unwrap() {
        let name = match k.as_str() {
            "time" | "node" => continue,
            "src" => "source.address".to_owned(),
            "src_port" => "source.port".to_owned(),
            "dst" => "destination.address".to_owned(),
            "dst_port" => "destination.port".to_owned(),
            "proto" => "network.transport".to_owned(),
            other => format!("tenantflow.{other}"),
        };
        walk(&mut out, name, v);
    }
    out
}

/// The received record for flow-log record `rec` (same type, id and counts), checked to
/// be there exactly once and to carry every one of the flow log's fields.
fn matching<'a>(got: &'a [Received], rec: &Value) -> &'a Received {
    let want = expected_attributes(rec);
    let same: Vec<&Received> = got
        .iter()
        .filter(|r| {
            r.attributes.get("tenantflow.id") == want.get("tenantflow.id")
                && r.attributes.get("tenantflow.type") == want.get("tenantflow.type")
                && r.attributes.get("tenantflow.forward.packets")
                    == want.get("tenantflow.forward.packets")
        })
        .collect();
    assert_eq!(same.len(), 1, "exactly one OTLP record for {rec}");
    let r = same[0];
    for (k, v) in &want {
        assert_eq!(r.attributes.get(k), Some(v), "attribute {k} of {rec}");
    }
    r
}

#[test]
fn every_record_of_known_traffic_arrives_once_over_grpc_with_the_flow_logs_fields() {
    let lab = lab("ot");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let inbox = Inbox::default();
    let _rx = Receiver::start(&node, addr(GRPC), addr(HTTP), inbox.clone());
    let log = std::env::temp_dir().join(format!("{}-flows.json", t.prefix));
    // The chart's own OTLP flags, as a DaemonSet with these values would run.
    let endpoint = format!("agent.otlp.endpoint=http://{GRPC}");
    let docs = chart::documents(&chart::template(&[
        "--set",
        &endpoint,
        "--set",
        "agent.otlp.filter=all",
    ]));
    let otlp_args: Vec<String> = chart::agent_args(&docs)
        .into_iter()
        .filter(|a| a.starts_with("--otlp-"))
        .collect();
    assert_eq!(otlp_args.len(), 6, "{otlp_args:?}");
    let otlp_args: Vec<&str> = otlp_args.iter().map(String::as_str).collect();
    let agent = start(&lab, &log, &otlp_args);
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
    let ended = |port: u64| {
        read_log(&log)
            .iter()
            .any(|r| r["src_port"] == port && r["type"] == "end")
    };
    let settled = eventually(Duration::from_secs(15), || {
        let written = metric(&agent, "tenantflow_flow_log_records_total");
        (ended(7101)
            && ended(7102)
            && metric(&agent, "tenantflow_otlp_queue_records") == 0
            && metric(&agent, "tenantflow_otlp_records_exported_total") == written)
            .then_some(written)
    });
    let written = settled.expect("both flows ended and every record exported");
    let records = read_log(&log);
    assert_eq!(records.len() as u64, written);
    let got = inbox.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        records.len(),
        "one OTLP record per flow-log record"
    );
    for rec in &records {
        let r = matching(&got, rec);
        assert_eq!(r.event_name, "tenantflow.flow");
        assert_eq!(r.scope, "tenantflow");
        assert_eq!(r.resource["k8s.node.name"], rec["node"]);
        assert_eq!(r.resource["k8s.cluster.name"], "lab");
        assert_eq!(r.resource["service.name"], "tenantflow");
    }
    let egress = records
        .iter()
        .find(|r| r["src_port"] == 7101 && r["type"] == "end")
        .unwrap();
    let e = &matching(&got, egress).attributes;
    assert_eq!(counts(egress, "forward"), (5, 640));
    assert_eq!(e["tenantflow.forward.packets"], 5);
    assert_eq!(e["tenantflow.forward.bytes"], 640);
    assert_eq!(e["source.address"], t.pod("jobs-1").ip());
    assert_eq!(e["destination.address"], INTERNET_HOST);
    assert_eq!(e["destination.port"], 5353);
    assert_eq!(e["network.transport"], "udp");
    assert_eq!(e["network.type"], "ipv4");
    assert_eq!(e["k8s.pod.name"], "jobs-1");
    assert_eq!(
        e["tenantflow.snat.ip"],
        t.node(1).ip(),
        "the post-SNAT side"
    );
    assert_eq!(e["tenantflow.egress"], "unmediated");
    let cross = records
        .iter()
        .find(|r| r["src_port"] == 7102 && r["type"] == "end")
        .unwrap();
    let c = matching(&got, cross);
    assert_eq!(c.attributes["tenantflow.cross_tenant"], true);
    assert_eq!(c.attributes["tenantflow.dst_identity.pod"], "api-2");
    assert_eq!(c.severity, "WARN", "flagged records are warnings");
    assert_eq!(
        c.body,
        format!(
            "udp {}:7102 -> {}:7000 pod_to_pod",
            t.pod("web-1").ip(),
            api2.ip()
        )
    );
    assert_eq!(
        metric(
            &agent,
            "tenantflow_otlp_records_dropped_total{reason=\"queue_full\"}"
        ),
        0
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_collector_away_for_thirty_seconds_gets_the_queue_and_what_did_not_fit_is_counted() {
    let lab = lab("oo");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let inbox = Inbox::default();
    let mut rx = Receiver::start(&node, addr(GRPC), addr(HTTP), inbox.clone());
    let log = std::env::temp_dir().join(format!("{}-flows.json", t.prefix));
    let agent = start(
        &lab,
        &log,
        &[
            "--otlp-endpoint",
            &format!("http://{HTTP}"),
            "--otlp-protocol",
            "http-protobuf",
            "--otlp-queue",
            "5",
            "--otlp-batch",
            "2",
            // The same selection on both sinks, and none of the lab's own start-up chatter
            // (router solicitations, MLD reports) in it: every record is this test's.
            "--otlp-filter",
            "flagged",
            "--flow-log-filter",
            "flagged",
        ],
    );
    spray(&lab, "jobs-1", 7201, 6000, 2);
    eventually(Duration::from_secs(15), || {
        let a = accounts(&agent);
        (ends(&log, 7201).len() == 2 && a.queued == 0 && a.exported == a.written).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "delivered while the collector is up: {:?}",
            accounts(&agent)
        )
    });

    let before = accounts(&agent);
    rx.stop();
    let away = std::time::Instant::now();
    spray(&lab, "jobs-1", 7202, 6100, 12);
    eventually(Duration::from_secs(15), || {
        (ends(&log, 7202).len() == 12).then_some(())
    })
    .expect("twelve more records written while the collector is away");
    // The harvest goes on: the flow log has every record while OTLP waits.
    agent.wait_harvests(3);
    let during = accounts(&agent);
    assert!(balanced(during), "{during:?}");
    assert!(
        during.queued <= 5 + 2,
        "the queue plus one batch in flight at most: {during:?}"
    );
    assert!(
        during.queue_full >= 12 - 7,
        "what did not fit is counted: {during:?}"
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(away.elapsed()));

    let _rx = Receiver::start(&node, addr(GRPC), addr(HTTP), inbox.clone());
    let after = eventually(Duration::from_secs(30), || {
        let a = accounts(&agent);
        (a.queued == 0).then_some(a)
    })
    .expect("the queue drains once the collector is back");
    assert!(
        balanced(after),
        "each record delivered or counted lost: {after:?}"
    );
    assert_eq!(after.other_drops, 0);
    let got = inbox.lock().unwrap().clone();
    assert_eq!(
        got.len() as u64,
        after.exported,
        "the receiver has exactly what was exported"
    );
    let mut ids: Vec<i64> = got
        .iter()
        .map(|r| r.attributes["tenantflow.id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "no record twice");
    let records = read_log(&log);
    for r in &got {
        matching(
            std::slice::from_ref(r),
            records
                .iter()
                .find(|rec| {
                    rec["id"] == r.attributes["tenantflow.id"]
                        && rec["type"] == r.attributes["tenantflow.type"]
                })
                .expect("a received record is a flow-log record"),
        );
    }
    let late = got
        .iter()
        .filter(|r| r.attributes["source.port"] == 7202)
        .count() as u64;
    assert!(
        late >= 1,
        "records queued during the outage arrive afterwards"
    );
    assert!(
        after.queue_full - before.queue_full >= 12 - late,
        "each of the twelve that did not arrive is counted: {late} arrived, {before:?} → {after:?}"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_collector_that_never_answers_costs_counted_drops_and_nothing_else() {
    let lab = lab("os");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let _silent = silent(&node, addr(GRPC));
    let log = std::env::temp_dir().join(format!("{}-flows.json", t.prefix));
    let mut agent = start(
        &lab,
        &log,
        &[
            "--otlp-endpoint",
            &format!("http://{GRPC}"),
            "--otlp-queue",
            "8",
            "--otlp-batch",
            "4",
            "--otlp-timeout",
            "2s",
            "--otlp-shutdown-timeout",
            "1s",
        ],
    );
    spray(&lab, "jobs-1", 7301, 6200, 40);
    let records = eventually(Duration::from_secs(15), || {
        let e = ends(&log, 7301);
        (e.len() == 40).then_some(e)
    })
    .expect("every flow recorded while the collector hangs");
    // Counts stay exact: each flow one datagram of 10 bytes.
    assert!(records.iter().all(|r| counts(r, "forward") == (1, 38)));
    for _ in 0..3 {
        agent.wait_harvests(2);
        let a = accounts(&agent);
        assert_eq!(a.exported, 0);
        assert!(
            a.queued <= 8 + 4,
            "memory bound: queue plus one batch, {a:?}"
        );
        assert!(
            balanced(a),
            "every record queued or counted as dropped: {a:?}"
        );
        assert!(a.queue_full >= 40 - 12, "{a:?}");
    }
    let retried = eventually(Duration::from_secs(15), || {
        let n = metric(
            &agent,
            "tenantflow_otlp_export_failures_total{retryable=\"true\"}",
        );
        (n >= 2).then_some(n)
    });
    assert!(
        retried.is_some(),
        "the hanging request timed out (2 s) and was tried again"
    );
    assert_eq!(
        agent.stop_with(libc::SIGTERM),
        Some(0),
        "a hanging collector does not hold the agent"
    );
    assert!(
        agent
            .log_text()
            .contains("OTLP records not sent in time are dropped"),
        "what could not be sent is said"
    );
    let _ = std::fs::remove_file(&log);
}

/// The agent on node 1 with OTLP headers from the environment, as the chart passes a
/// Secret's value, and flagged records only on both sinks.
fn start_with_headers(lab: &LabGuard, log: &Path, headers: &str, extra: &[&str]) -> Agent {
    let _ = std::fs::remove_file(log);
    let cfg = xtask::lab::manifest::config_path(&lab.topo.prefix);
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "--flow-log",
        log.to_str().unwrap(),
        "--flow-log-filter",
        "flagged",
        "--otlp-filter",
        "flagged",
        "--idle-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    Agent::start_env(
        &lab.topo.node_ns(1),
        LISTEN,
        "200ms",
        &args,
        &[("TENANTFLOW_OTLP_HEADERS", headers)],
    )
}

#[test]
fn tls_and_a_bearer_header_reach_the_collector_and_a_wrong_token_is_counted_as_rejected() {
    let lab = lab("ok");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let dir = std::env::temp_dir().join(format!("{}-otlp-tls", t.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certs::certificate(&dir, &lab);
    let inbox = Inbox::default();
    let _rx = Receiver::start_with(
        &node,
        addr(GRPC),
        addr(HTTP),
        inbox.clone(),
        Options {
            tls: Some((
                std::fs::read_to_string(&cert).unwrap(),
                std::fs::read_to_string(&key).unwrap(),
            )),
            require: Some(("authorization".into(), "Bearer lab-token".into())),
        },
    );
    let log = std::env::temp_dir().join(format!("{}-flows.json", t.prefix));
    let tls = [
        "--otlp-endpoint",
        "https://127.0.0.1:4317",
        "--otlp-ca",
        &ca,
    ];
    let mut agent = start_with_headers(&lab, &log, "authorization=Bearer lab-token", &tls);
    spray(&lab, "jobs-1", 7401, 6300, 3);
    let delivered = eventually(Duration::from_secs(15), || {
        let a = accounts(&agent);
        (ends(&log, 7401).len() == 3 && a.queued == 0 && a.exported == a.written).then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "delivered over TLS: {:?}\n{}",
            accounts(&agent),
            agent.log_text()
        )
    });
    assert_eq!(
        delivered.written, 3,
        "the three flagged records: {delivered:?}"
    );
    let got = inbox.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    let mut ports: Vec<i64> = got
        .iter()
        .map(|r| r.attributes["destination.port"].as_i64().unwrap())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [6300, 6301, 6302]);
    agent.stop_with(libc::SIGTERM);

    // A wrong token: the collector refuses, the records are counted, never retried forever.
    let agent = start_with_headers(&lab, &log, "authorization=Bearer stale", &tls);
    spray(&lab, "jobs-1", 7402, 6400, 3);
    let refused = eventually(Duration::from_secs(15), || {
        let a = accounts(&agent);
        (ends(&log, 7402).len() == 3 && a.queued == 0).then_some(a)
    })
    .unwrap_or_else(|| panic!("refused records counted: {:?}", accounts(&agent)));
    assert_eq!(refused.exported, 0);
    assert_eq!(refused.other_drops, 3, "rejected: {refused:?}");
    assert!(
        metric(
            &agent,
            "tenantflow_otlp_export_failures_total{retryable=\"false\"}"
        ) >= 1
    );
    assert_eq!(inbox.lock().unwrap().len(), 3, "nothing more arrived");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}

/// docs/otlp.md's Collector configuration hangs together: every pipeline component is
/// defined, and its OTLP receiver listens where the agent sends by default.
#[test]
fn the_documented_collector_config_is_complete() {
    let doc = include_str!("../../docs/otlp.md");
    let yaml = doc
        .split("```yaml\n")
        .find(|b| b.starts_with("receivers:"))
        .and_then(|b| b.split("```").next())
        .expect("a Collector config in docs/otlp.md");
    let cfg: Value = serde_norway::from_str(yaml).unwrap();
    let logs = &cfg["service"]["pipelines"]["logs"];
    for kind in ["receivers", "processors", "exporters"] {
        let used = logs[kind].as_array().unwrap();
        assert!(!used.is_empty(), "{kind}");
        for c in used {
            let name = c.as_str().unwrap();
            assert!(
                !cfg[kind][name].is_null(),
                "{kind}.{name} used but not defined"
            );
        }
    }
    assert_eq!(
        cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        "0.0.0.0:4317"
    );
    assert_eq!(
        logs["exporters"],
        serde_json::json!(["azuremonitor", "file"])
    );
}
