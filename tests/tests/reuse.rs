//! One 5-tuple, many connections: a pod pins its source port and opens 50 connections
//! one after another to one internet address through the node's masquerade, half ended
//! with FINs, half aborted with a RST, some within one harvest interval. Each must be its
//! own record with its own counts and outcome.
//!
//! The oracle is independent of the agent: connection i carries DSCP i+1 (the far end
//! reflects it), and an iptables counter per DSCP value and direction in the node's FORWARD
//! chain counts each connection's packets and IP bytes, which is exactly what the agent
//! counts at the pod's veth.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use tenantflow_tests::{
    agent::{counts, ended_records},
    eventually, finish, in_ns, lab, traffic, traffic_bg, Agent,
};
use xtask::lab::topology::INTERNET_HOST;

const CONNS: u32 = 50;
const PORT: u16 = 9200;
const SPORT: u16 = 41000;
const CHAIN: &str = "TFREUSE";

/// (forward packets, forward bytes, reply packets, reply bytes).
type Counts = (u64, u64, u64, u64);

/// Counting rules for connection i (DSCP i+1) in each direction, in that order.
fn count_rules(node: &str, pod: &str) {
    in_ns(node, &["iptables", "-N", CHAIN]);
    in_ns(node, &["iptables", "-I", "FORWARD", "1", "-j", CHAIN]);
    let (sport, pod32) = (SPORT.to_string(), format!("{pod}/32"));
    for dscp in 1..=CONNS {
        let dscp = dscp.to_string();
        for (addr, port) in [("-s", "--sport"), ("-d", "--dport")] {
            in_ns(
                node,
                &[
                    "iptables", "-A", CHAIN, addr, &pod32, "-p", "tcp", port, &sport, "-m", "dscp",
                    "--dscp", &dscp,
                ],
            );
        }
    }
}

/// Connection i's counts as the rules saw them.
fn counted(node: &str) -> Vec<Counts> {
    let out = in_ns(node, &["iptables", "-L", CHAIN, "-v", "-x", "-n"]);
    let rows: Vec<(u64, u64)> = out
        .lines()
        .skip(2)
        .map(|l| {
            let mut w = l
                .split_whitespace()
                .map(|x| x.parse::<u64>().expect("counter"));
            (w.next().unwrap(), w.next().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 2 * CONNS as usize, "{out}");
    rows.chunks(2)
        .map(|c| (c[0].0, c[0].1, c[1].0, c[1].1))
        .collect()
}

/// A record's packets and bytes each way, in the oracle's order.
fn counts_of(r: &Value) -> Counts {
    let ((fp, fb), (rp, rb)) = (counts(r, "forward"), counts(r, "reply"));
    (fp, fb, rp, rb)
}

#[test]
fn fifty_connections_on_one_reused_source_port_are_fifty_exact_records() {
    let lab = lab("ru");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let pod = t.pod("web-1");
    let pod_ip = pod.ip();
    count_rules(&node, &pod_ip);
    // The far end answers with the DSCP the client chose, so both directions are counted.
    in_ns(
        &t.internet_ns(),
        &["sysctl", "-qw", "net.ipv4.tcp_reflect_tos=1"],
    );
    let log = std::env::temp_dir().join(format!("{}-reuse.json", t.prefix));
    let _ = std::fs::remove_file(&log);
    let cfg = xtask::lab::manifest::config_path(&t.prefix);
    let agent = Agent::start_harvesting_every(
        &node,
        "1s",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--idle-timeout",
            "3s",
            "--flow-log",
            log.to_str().unwrap(),
        ],
    );
    let to = format!("{INTERNET_HOST}:{PORT}");
    let server = traffic_bg(
        &t.internet_ns(),
        &["tcp-reuse-serve", &to, &CONNS.to_string()],
    );
    let bind = format!("{pod_ip}:{SPORT}");
    // Ten at a time, well within one harvest, then a pause longer than one.
    let done = traffic(
        &t.pod_ns(pod),
        &[
            "tcp-reuse",
            &to,
            &CONNS.to_string(),
            "100",
            "--bind",
            &bind,
            "--pause-every",
            "10",
            "--pause-ms",
            "1500",
        ],
    );
    assert_eq!(done.trim(), CONNS.to_string());
    finish(server);
    let oracle = counted(&node);

    let mut records = Vec::new();
    eventually(Duration::from_secs(60), || {
        records = ended_records(&log, PORT);
        (records.len() >= CONNS as usize).then_some(())
    });
    // Past the idle timeout and a few more harvests: a phantom record would be out by now.
    let seen = agent.harvests();
    eventually(Duration::from_secs(30), || {
        (agent.harvests() >= seen + 5).then_some(())
    })
    .expect("the agent keeps harvesting");
    records = ended_records(&log, PORT);
    assert_eq!(records.len(), CONNS as usize, "one record per connection");

    let mut by_counts: BTreeMap<Counts, &Value> = BTreeMap::new();
    for r in &records {
        assert_eq!(r["src"], pod_ip.as_str(), "{r}");
        assert_eq!(r["src_port"], SPORT, "{r}");
        assert_eq!(r["dst"], INTERNET_HOST, "{r}");
        assert_eq!(r["nat_joined"], true, "{r}");
        assert_eq!(r["snat"]["ip"], t.node(1).ip().as_str(), "{r}");
        assert!(
            by_counts.insert(counts_of(r), r).is_none(),
            "two records with the same counts: {r}"
        );
    }
    for (i, want) in oracle.iter().enumerate() {
        let r = by_counts
            .get(want)
            .unwrap_or_else(|| panic!("connection {i}: no record with counts {want:?}"));
        let outcome = if i % 2 == 0 { "established" } else { "reset" };
        assert_eq!(r["outcome"], outcome, "connection {i}: {r}");
    }
    let total = |f: fn(&Counts) -> u64| oracle.iter().map(f).sum::<u64>();
    let got = |f: fn(&Counts) -> u64| records.iter().map(|r| f(&counts_of(r))).sum::<u64>();
    for f in [
        |c: &Counts| c.0,
        |c: &Counts| c.1,
        |c: &Counts| c.2,
        |c: &Counts| c.3,
    ] {
        assert_eq!(got(f), total(f));
    }
    let _ = std::fs::remove_file(&log);
}
