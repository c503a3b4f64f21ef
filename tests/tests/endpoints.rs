//! Who can read what: with the chart's listeners (metrics on every node address, records on
//! loopback), a pod reaches the node's metrics but not one flow record, while the node
//! itself (`kubectl exec`, `kubectl port-forward`) reads them; exposing records on a
//! non-loopback address is refused.

use std::process::Command;

use tenantflow_tests::{
    agent::{counts, wait_connection, RECORDS},
    agent_bin, lab, netns_http, udp_from_pod, Agent,
};

#[test]
fn a_pod_reaches_the_nodes_metrics_but_no_flow_record() {
    let lab = lab("ep");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let cfg = xtask::lab::manifest::config_path(&t.prefix);
    let agent = Agent::start_on(
        &node,
        "0.0.0.0:9990",
        "200ms",
        &["--config", cfg.to_str().unwrap()],
    );
    let web2 = t.pod("web-2");
    let sent = udp_from_pod(
        &lab,
        "web-1",
        4200,
        &t.pod_ns(web2),
        &format!("{}:5000", web2.ip()),
        2,
        10,
    );
    let alpha = "/flows?namespace=alpha-web";
    // The node: the record is there, exact.
    let c = wait_connection(
        &agent,
        |c| c["src_port"] == 4200,
        |c| counts(c, "forward") == sent,
    );
    assert_eq!(counts(&c, "forward"), sent);

    // A pod of tenant beta, towards its node's gateway address and the node's VNet address.
    let beta = t.pod_ns(t.pod("api-1"));
    for addr in [t.node(1).pod_gw(), t.node(1).ip()] {
        let (status, body) = netns_http::get(&beta, &format!("{addr}:9990"), "/metrics").unwrap();
        assert_eq!(status, 200, "metrics stay scrapeable on {addr}");
        assert!(body.contains("tenantflow_ready 1"));
        for path in [alpha, "/flows", "/observations"] {
            let (status, _) = netns_http::get(&beta, &format!("{addr}:9990"), path).unwrap();
            assert_eq!(status, 404, "{path} is not on the public listener ({addr})");
        }
        let refused = netns_http::get(&beta, &format!("{addr}:9991"), alpha).unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "the records listener is loopback only ({addr})"
        );
    }
    // `kubectl exec` into the agent runs the CLI on the node: it reads them.
    let out = xtask::exec::in_ns(
        &node,
        &[
            agent_bin().to_str().unwrap(),
            "flows",
            "--namespace",
            "alpha-web",
            "-o",
            "json",
        ],
    )
    .unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mine: Vec<_> = records.iter().filter(|r| r["src_port"] == 4200).collect();
    assert_eq!(mine.len(), 1, "{out}");
    assert_eq!(counts(mine[0], "forward"), sent);
    let (status, _) = netns_http::get(&node, RECORDS, alpha).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn records_on_a_non_loopback_address_are_refused() {
    let out = Command::new(agent_bin())
        .args(["agent", "--flows-listen", "0.0.0.0:9991"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("--flows-listen 0.0.0.0:9991: flow records name every tenant's pods"),
        "{err}"
    );
}
