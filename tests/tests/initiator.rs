//! The initiator of a TCP connection is decided once and never flips: the client is the
//! source in every harvest, with the server's port above the client's (so no port rule
//! can be what gets it right), on the same node, across nodes, and for a connection that
//! was already open when the agent started.

use std::time::{Duration, Instant};

use serde_json::Value;
use tenantflow_tests::{finish, lab, notrack, traffic_bg, Agent, Topology};

/// Poll `/flows?port=PORT` while `client` runs; every snapshot holds at most one record of
/// the connection, and each says `src` → `dst`. Returns how many snapshots showed it.
fn watch(agent: &Agent, port: u16, src: (&str, u16), client: std::process::Child) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut shown = 0;
    let mut client = Some(client);
    let mut done_at = None;
    while Instant::now() < deadline {
        let records: Vec<Value> = agent.connections(&format!("?port={port}"));
        assert!(
            records.len() <= 1,
            "one connection, one record: {records:#?}"
        );
        if let Some(r) = records.first() {
            shown += 1;
            assert_eq!(
                (r["src"].as_str().unwrap(), r["src_port"].as_u64().unwrap()),
                (src.0, src.1 as u64),
                "the client is the initiator in every harvest: {r}"
            );
            assert_eq!(r["dst_port"], port);
        }
        if let Some(c) = client.as_mut() {
            if c.try_wait().unwrap().is_some() {
                finish(client.take().unwrap());
                done_at = Some(Instant::now());
            }
        }
        // Watch a few more harvests after the close.
        if done_at.is_some_and(|t| t.elapsed() > Duration::from_millis(800)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    assert!(client.is_none(), "client did not finish");
    shown
}

/// web-1 serves on `port`; `pod` connects to it from `from_port`, waits `hold_ms`, then
/// sends. Returns the server, the client and the client's address.
fn exchange(
    t: &Topology,
    pod: &str,
    from_port: u16,
    port: u16,
    hold_ms: u32,
) -> (std::process::Child, std::process::Child, String) {
    let server = t.pod("web-1");
    let srv = traffic_bg(
        &t.pod_ns(server),
        &["tcp-serve", &format!("{}:{port}", server.ip()), "5000"],
    );
    let p = t.pod(pod);
    let client = traffic_bg(
        &t.pod_ns(p),
        &[
            "tcp-send",
            &format!("{}:{port}", server.ip()),
            "2000",
            "--bind",
            &format!("{}:{from_port}", p.ip()),
            "--hold-ms",
            &hold_ms.to_string(),
        ],
    );
    (srv, client, p.ip())
}

#[test]
fn the_client_stays_the_initiator_with_the_server_port_above_its_own() {
    let lab = lab("in");
    let t = &lab.topo;
    let node = t.node_ns(1);
    // Conntrack must not decide for the agent here: only the kernel's opener bit can.
    for dir in ["--dport", "--sport"] {
        notrack(&node, "tcp", dir, 45000);
    }
    let agent = Agent::start(&node, &[]);
    // Same node (jobs-1:3000 → web-1:45000), then across nodes (web-2:3001 → web-1:45001).
    for (pod, from, port) in [("jobs-1", 3000, 45000), ("web-2", 3001, 45001)] {
        let (srv, c, ip) = exchange(t, pod, from, port, 1500);
        let shown = watch(&agent, port, (&ip, from), c);
        assert!(
            shown >= 5,
            "{pod}: seen over several harvests ({shown} snapshots)"
        );
        finish(srv);
        if port == 45000 {
            let r = &agent.connections("?port=45000")[0];
            assert_eq!(r["nat_joined"], false, "decided without conntrack");
        }
    }
}

#[test]
fn a_connection_open_before_the_agent_started_keeps_its_client_as_initiator() {
    let lab = lab("ib");
    let t = &lab.topo;
    // Connected (SYN long gone) before the agent exists; data flows after it starts.
    let (srv, c, ip) = exchange(t, "jobs-1", 3002, 45002, 4000);
    let agent = Agent::start(&t.node_ns(1), &[]);
    let shown = watch(&agent, 45002, (&ip, 3002), c);
    assert!(shown >= 3, "seen over several harvests ({shown} snapshots)");
    finish(srv);
}
