//! Exact under connection churn: thousands of short TCP connections (connect, 300 bytes,
//! close) from several pods to the internet through the node's masquerade, each compared
//! with conntrack's own per-connection accounting in the node (an independent counter at
//! netfilter's hooks: `nf_conntrack_acct`). Every connection must appear exactly once,
//! under its pod, with the initiator's direction, the SNAT address the far end saw, and
//! packets and bytes per direction equal to conntrack's — also when the flow cache is
//! shrunk so every connection is evicted mid-flight, when conntrack events come late,
//! and when its event socket overflows.

use std::{collections::HashMap, time::Duration};

use serde_json::Value;
use tenantflow_tests::{
    agent::ended_records, eventually, finish, in_ns, lab, traffic_bg, Agent, LabGuard, Topology,
};
use xtask::lab::topology::INTERNET_HOST;

const PORT: u16 = 9100;
const NODE1: &str = "10.224.0.4";
const CLIENTS: [&str; 3] = ["web-1", "jobs-1", "api-1"];

/// One connection as conntrack accounted it at the node.
#[derive(Debug, PartialEq, Eq)]
struct Accounted {
    forward: (u64, u64),
    reply: (u64, u64),
    /// Where the far end sent its answers: the post-SNAT source.
    snat: String,
}

/// `conntrack -L` of the churn's connections, by the pod's (address, port).
fn conntrack(node: &str) -> HashMap<(String, u64), Accounted> {
    let out = in_ns(
        node,
        &["conntrack", "-L", "-p", "tcp", "--dport", &PORT.to_string()],
    );
    let mut all = HashMap::new();
    for line in out.lines().filter(|l| l.starts_with("tcp")) {
        let kv: Vec<(&str, &str)> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let get = |k: &str, nth: usize| -> &str {
            kv.iter()
                .filter(|(key, _)| *key == k)
                .nth(nth)
                .unwrap_or_else(|| panic!("no {k} #{nth} in conntrack line: {line}"))
                .1
        };
        let num = |k: &str, nth: usize| get(k, nth).parse::<u64>().expect("number");
        let key = (get("src", 0).to_owned(), num("sport", 0));
        let acc = Accounted {
            forward: (num("packets", 0), num("bytes", 0)),
            reply: (num("packets", 1), num("bytes", 1)),
            snat: format!("{}:{}", get("dst", 1), get("dport", 1)),
        };
        assert!(
            all.insert(key, acc).is_none(),
            "one conntrack entry per tuple"
        );
    }
    all
}

fn counts(r: &Value, dir: &str) -> (u64, u64) {
    (
        r[dir]["packets"].as_u64().unwrap(),
        r[dir]["bytes"].as_u64().unwrap(),
    )
}

/// Sum of every sample of a metric family whose labels contain each of `labels`. The
/// family must be exported (its HELP line): an absent one fails instead of reading as 0.
fn metric_sum(agent: &Agent, family: &str, labels: &[&str]) -> u64 {
    let (_, body) = agent.get("/metrics").expect("metrics");
    assert!(
        body.lines()
            .any(|l| l.starts_with(&format!("# HELP {family} "))),
        "{family} is not exported"
    );
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && labels.iter().all(|x| l.contains(x)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

struct Churn {
    agent: Agent,
    records: Vec<Value>,
    accounted: HashMap<(String, u64), Accounted>,
    _lab: LabGuard,
}

/// A lab whose node 1 keeps conntrack's own per-connection accounting (the reference).
fn accounting_lab(tag: &str) -> LabGuard {
    let lab = lab(tag);
    in_ns(
        &lab.topo.node_ns(1),
        &["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"],
    );
    lab
}

/// The agent on node 1 with the lab's config, a 1 s harvest, `idle` and a flow log at `log`.
fn node_agent(t: &Topology, log: &std::path::Path, idle: &str, extra: &[&str]) -> Agent {
    let cfg = xtask::lab::manifest::config_path(&t.prefix);
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "--idle-timeout",
        idle,
        "--flow-log",
        log.to_str().unwrap(),
        "--flow-log-max-bytes",
        "1000000000",
    ];
    args.extend_from_slice(extra);
    Agent::start_harvesting_every(&t.node_ns(1), "1s", &args)
}

/// The internet host's sink for `per_pod` connections from each of `pods`, and one client
/// per pod running `client` (a tf-traffic command whose first argument follows the target).
fn clients(
    t: &Topology,
    pods: &[&str],
    per_pod: u32,
    client: &[&str],
) -> (std::process::Child, Vec<std::process::Child>) {
    let to = format!("{INTERNET_HOST}:{PORT}");
    let total = (per_pod as usize * pods.len()).to_string();
    let sink = traffic_bg(&t.internet_ns(), &["tcp-sink", &to, "--conns", &total]);
    let n = per_pod.to_string();
    let started = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ns = t.pod_ns(t.pod(p));
            disjoint_ports(&ns, i);
            let mut args = vec![client[0], &to, &n];
            args.extend_from_slice(&client[1..]);
            traffic_bg(&ns, &args)
        })
        .collect();
    (sink, started)
}

/// Gives the `i`th client pod its own 10,000 ephemeral ports. Two pods connecting from
/// the same port at the same moment can race in the node's masquerade: both unconfirmed
/// conntrack entries pick the same mapping and the kernel drops the loser's SYN at
/// confirmation, taking its conntrack entry (and that SYN's count) with it, while the agent
/// rightly counted it. Disjoint ranges keep every original port unique on the node, so
/// the masquerade keeps it and never races (a real cluster sees this race as
/// `insert_failed` in `conntrack -S`).
fn disjoint_ports(pod_ns: &str, i: usize) {
    let low = 30_000 + 10_000 * i;
    let range = format!("net.ipv4.ip_local_port_range={low} {}", low + 9_999);
    in_ns(pod_ns, &["sysctl", "-qw", &range]);
}

/// What the conntrack oracle cannot see, shown when counts differ: packets the node
/// dropped after the agent counted them (`insert_failed`, `drop`), and SYNs the pods
/// retransmitted (conntrack does not account a retransmitted SYN; the agent counts every
/// packet the pod sent), with the listen drops that usually cause them.
fn oracle_blind_spots(t: &Topology) -> String {
    let nstat = |ns: &str, counter: &str| {
        let out = in_ns(ns, &["nstat", "-az", counter]);
        let n = out
            .lines()
            .find_map(|l| l.strip_prefix(counter))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_owned();
        format!("{ns} {counter}={n}\n")
    };
    let mut out = format!(
        "node conntrack -S:\n{}",
        in_ns(&t.node_ns(1), &["conntrack", "-S"])
    );
    for pod in &t.pods {
        out += &nstat(&t.pod_ns(pod), "TcpExtTCPSynRetrans");
    }
    out + &nstat(&t.internet_ns(), "TcpExtListenDrops")
}

/// A record's (pod address, pod port): what conntrack's entries are keyed by.
fn key(r: &Value) -> (String, u64) {
    (
        r["src"].as_str().unwrap().to_owned(),
        r["src_port"].as_u64().unwrap(),
    )
}

/// `per_pod` connections from each client pod at once, with the agent on node 1 started
/// with `idle` as its idle timeout and `extra`; waits until the flow log has ended every
/// one of them.
fn churn(tag: &str, per_pod: u32, idle: &str, extra: &[&str]) -> Churn {
    let lab = accounting_lab(tag);
    let t = &lab.topo;
    let node = t.node_ns(1);
    let log = std::env::temp_dir().join(format!("{}-churn.json", t.prefix));
    let _ = std::fs::remove_file(&log);
    let agent = node_agent(t, &log, idle, extra);
    let total = per_pod * CLIENTS.len() as u32;
    let (sink, clients) = clients(t, &CLIENTS, per_pod, &["tcp-churn", "300"]);
    for c in clients {
        assert_eq!(finish(c).trim(), per_pod.to_string());
    }
    finish(sink);
    let accounted = conntrack(&node);
    assert_eq!(
        accounted.len(),
        total as usize,
        "conntrack kept every entry"
    );
    let mut records = Vec::new();
    eventually(Duration::from_secs(120), || {
        records = ended_records(&log, PORT);
        (records.len() >= total as usize).then_some(())
    });
    // One more idle period and harvest: anything extra (a phantom) would show by now.
    let idle_s: u64 = idle
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .expect("idle timeout in whole seconds, e.g. 3s");
    agent.wait_harvests(idle_s + 2);
    records = ended_records(&log, PORT);
    if std::env::var_os("TF_KEEP_LOG").is_none() {
        let _ = std::fs::remove_file(&log);
    }
    Churn {
        agent,
        records,
        accounted,
        _lab: lab,
    }
}

impl Churn {
    /// Every connection once, under its pod, initiator first, SNAT and counts exactly as
    /// conntrack accounted them; metrics agree. Returns records whose SNAT was inferred.
    fn assert_exact(&self) -> usize {
        let pods: Vec<String> = CLIENTS.iter().map(|p| self._lab.topo.pod(p).ip()).collect();
        let mut seen = HashMap::new();
        let mut wrong = Vec::new();
        for r in &self.records {
            let key = (
                r["src"].as_str().unwrap().to_owned(),
                r["src_port"].as_u64().unwrap(),
            );
            *seen.entry(key.clone()).or_insert(0) += 1;
            let Some(acc) = self.accounted.get(&key) else {
                wrong.push(format!("no such connection: {r}"));
                continue;
            };
            let snat = format!(
                "{}:{}",
                r["snat"]["ip"].as_str().unwrap_or("-"),
                r["snat"]["port"]
            );
            let got = Accounted {
                forward: counts(r, "forward"),
                reply: counts(r, "reply"),
                snat,
            };
            if &got != acc || r["dst"] != INTERNET_HOST {
                wrong.push(format!("{key:?}: agent {got:?}, conntrack {acc:?}"));
            }
        }
        let shown: Vec<_> = wrong.iter().take(5).collect();
        assert!(
            wrong.is_empty(),
            "{} records differ, e.g. {shown:#?}\n{}",
            wrong.len(),
            oracle_blind_spots(&self._lab.topo)
        );
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            twice.is_empty(),
            "connections recorded more than once: {twice:?}"
        );
        assert_eq!(
            seen.len(),
            self.accounted.len(),
            "every connection recorded"
        );
        assert!(
            seen.keys().all(|(ip, _)| pods.contains(ip)),
            "only the pods initiate"
        );
        let sum = |f: fn(&Accounted) -> u64| self.accounted.values().map(f).sum::<u64>();
        let m = |family: &str, labels: &[&str]| metric_sum(&self.agent, family, labels);
        let egress = "flow_class=\"pod_to_egress\"";
        assert_eq!(m("tenantflow_flows_total", &[egress]), seen.len() as u64);
        assert_eq!(
            m("tenantflow_flows_total", &["flow_class=\"node_to_egress\""]),
            0
        );
        assert_eq!(
            m("tenantflow_flows_total", &["flow_class=\"external_to"]),
            0
        );
        let (tx, rx) = ([egress, "direction=\"tx\""], [egress, "direction=\"rx\""]);
        assert_eq!(
            m("tenantflow_flow_packets_total", &tx),
            sum(|a| a.forward.0)
        );
        assert_eq!(m("tenantflow_flow_bytes_total", &tx), sum(|a| a.forward.1));
        assert_eq!(m("tenantflow_flow_packets_total", &rx), sum(|a| a.reply.0));
        assert_eq!(m("tenantflow_flow_bytes_total", &rx), sum(|a| a.reply.1));
        assert_eq!(
            self.agent
                .metric("tenantflow_datapath_evictions_lost_total"),
            Some(0.0)
        );
        self.records
            .iter()
            .filter(|r| r["snat_inferred"] == true)
            .count()
    }

    fn misses(&self, reason: &str) -> u64 {
        let series = format!("tenantflow_nat_join_misses_total{{reason=\"{reason}\"}}");
        self.agent.metric(&series).expect("miss metric exported") as u64
    }
}

#[test]
fn six_thousand_short_connections_are_each_recorded_once_and_exactly() {
    let c = churn("ch6", 2_000, "3s", &[]);
    assert_eq!(c.assert_exact(), 0, "conntrack joined every one");
    for reason in ["late", "lost", "none"] {
        assert_eq!(c.misses(reason), 0, "misses {reason}");
    }
    assert!(c.records.iter().all(|r| r["snat"]["ip"] == NODE1));
}

#[test]
fn twenty_thousand_from_three_pods_at_once_are_each_recorded_once_and_exactly() {
    let c = churn("ch20", 6_667, "3s", &[]);
    assert_eq!(c.assert_exact(), 0);
    assert_eq!(c.misses("none") + c.misses("lost") + c.misses("late"), 0);
}

#[test]
fn a_cache_of_two_slots_per_cpu_evicts_every_connection_mid_flight_and_loses_nothing() {
    let c = churn("chev", 1_000, "3s", &["--flow-cache-sets", "1"]);
    assert_eq!(c.assert_exact(), 0);
    let evictions = c
        .agent
        .metric("tenantflow_datapath_evictions_total")
        .unwrap() as u64;
    // Each connection has ≥ 9 packets over four observation points: far more evictions
    // than connections.
    assert!(
        evictions > 4 * 3_000,
        "{evictions} evictions: the cache was not overrun"
    );
}

#[test]
fn conntrack_events_later_than_two_harvests_still_give_one_record_per_pod_connection() {
    // Events 3.5 s late with a 1 s harvest: every uplink half outlives its join window.
    let c = churn("chlt", 500, "8s", &["--test-conntrack-delay", "3500ms"]);
    let inferred = c.assert_exact();
    assert_eq!(
        inferred, 0,
        "the late events joined every one before it ended"
    );
    assert_eq!(
        c.misses("late"),
        1_500,
        "each joined after its window, once"
    );
    assert_eq!(c.misses("none") + c.misses("lost"), 0);
}

#[test]
fn an_overflowing_conntrack_socket_is_resynced_and_no_pod_traffic_becomes_the_nodes() {
    let c = churn("chnb", 1_000, "3s", &["--test-conntrack-rcvbuf", "4096"]);
    assert!(
        c.agent.metric("tenantflow_nat_events_lost_total").unwrap() > 0.0,
        "the fault must have happened for this test to mean anything"
    );
    let inferred = c.assert_exact() as u64;
    let missed = c.misses("late") + c.misses("lost") + c.misses("none");
    let unjoined = c
        .records
        .iter()
        .filter(|r| r["nat_joined"] == false)
        .count() as u64;
    assert_eq!(
        inferred, unjoined,
        "every unjoined one was paired with its uplink half"
    );
    assert_eq!(
        c.misses("none"),
        0,
        "events were lost: no miss is unexplained"
    );
    assert!(
        missed >= unjoined,
        "every unjoined connection is a counted miss"
    );
}

/// Long-lived connections that outlive their agent: the next agent picks each up once,
/// under its pod, and counts exactly what passed after it started (conntrack's counters
/// then minus conntrack's counters when the old agent stopped, with no traffic in between).
/// With SIGTERM the old agent's `shutdown` records equal what it had seen.
fn restart_mid_connection(tag: &str, signal: i32) {
    let lab = accounting_lab(tag);
    let t = &lab.topo;
    let node = t.node_ns(1);
    let tmp = |name: &str| std::env::temp_dir().join(format!("{}-{name}", t.prefix));
    let (log_a, log_b, go) = (tmp("a.json"), tmp("b.json"), tmp("go"));
    for f in [&log_a, &log_b, &go] {
        let _ = std::fs::remove_file(f);
    }
    let mut a = node_agent(t, &log_a, "3s", &[]);
    let per_pod = 100u32;
    let pods = ["web-1", "jobs-1"];
    let total = per_pod as usize * pods.len();
    let go_arg = go.to_str().unwrap();
    let (sink, clients) = clients(t, &pods, per_pod, &["tcp-hold", "300", "--go", go_arg]);
    // Phase one done and quiet: every connection open, its first 300 bytes acknowledged.
    let mut before = HashMap::new();
    eventually(Duration::from_secs(30), || {
        let now = conntrack(&node);
        let settled = now.len() == total && now == before;
        before = now;
        std::thread::sleep(Duration::from_millis(300));
        settled.then_some(())
    });
    assert_eq!(before.len(), total, "every connection open");
    eventually(Duration::from_secs(10), || {
        (a.connections(&format!("?port={PORT}")).len() == total).then_some(())
    });
    a.stop_with(signal);
    let b = node_agent(t, &log_b, "3s", &[]);
    std::fs::write(&go, b"").unwrap();
    for c in clients {
        assert_eq!(finish(c).trim(), per_pod.to_string());
    }
    finish(sink);
    let after = conntrack(&node);
    let mut records = Vec::new();
    eventually(Duration::from_secs(30), || {
        records = ended_records(&log_b, PORT);
        (records.len() >= total).then_some(())
    });
    // One more idle period (3 s) and harvest: a record twice would show by now.
    b.wait_harvests(5);
    records = ended_records(&log_b, PORT);
    assert_eq!(
        records.len(),
        total,
        "each connection once in the new agent's log"
    );
    let sub = |x: (u64, u64), y: (u64, u64)| (x.0 - y.0, x.1 - y.1);
    for r in &records {
        let key = key(r);
        let (now, then) = (&after[&key], &before[&key]);
        assert_eq!(r["flow_class"], "pod_to_egress", "{r}");
        assert_eq!(r["nat_joined"], true, "joined from the start-up dump: {r}");
        assert_eq!(
            format!(
                "{}:{}",
                r["snat"]["ip"].as_str().unwrap(),
                r["snat"]["port"]
            ),
            now.snat
        );
        let stats = || oracle_blind_spots(t);
        assert_eq!(
            counts(r, "forward"),
            sub(now.forward, then.forward),
            "{key:?}\n{}",
            stats()
        );
        assert_eq!(
            counts(r, "reply"),
            sub(now.reply, then.reply),
            "{key:?}\n{}",
            stats()
        );
    }
    assert_eq!(
        metric_sum(
            &b,
            "tenantflow_flows_total",
            &["flow_class=\"node_to_egress\""]
        ),
        0
    );
    let old: Vec<Value> = std::fs::read_to_string(&log_a)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["dst_port"] == PORT)
        .collect();
    if signal == libc::SIGTERM {
        assert_eq!(
            old.len(),
            total,
            "a clean stop writes every open connection"
        );
        for r in &old {
            let key = key(r);
            assert_eq!(r["type"], "shutdown");
            let stats = || oracle_blind_spots(t);
            assert_eq!(
                counts(r, "forward"),
                before[&key].forward,
                "{key:?}\n{}",
                stats()
            );
            assert_eq!(
                counts(r, "reply"),
                before[&key].reply,
                "{key:?}\n{}",
                stats()
            );
        }
    } else {
        assert!(old.is_empty(), "kill -9 writes nothing: {}", old.len());
    }
    for f in [&log_a, &log_b, &go] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn an_agent_restarted_mid_connection_counts_each_once_from_where_the_last_left_off() {
    restart_mid_connection("chrs", libc::SIGTERM);
}

#[test]
fn an_agent_killed_mid_connection_is_followed_by_one_that_counts_each_once() {
    restart_mid_connection("chkl", libc::SIGKILL);
}
