//! One query over every node: `tenantflow flows --all-nodes` through the index's relay,
//! against two real agents on the lab's two nodes, each checking the caller's token with
//! its own review (a stand-in API answering recorded TokenReview/SubjectAccessReview
//! payloads). Both nodes' records arrive once each with their node; a token scoped to
//! tenant alpha gets alpha's connections from both nodes; a stopped agent is named as
//! timed out while the other node's records still arrive.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tenantflow_tests::{
    agent::counts,
    agent_bin, certs, eventually,
    index_process::Index,
    kube_api::{KubeApi, Size},
    kube_auth::{Grant, KubeAuth},
    lab, udp_from_pod, Agent, LabGuard,
};
use xtask::lab::topology::INTERNET_HOST;

const INDEX: &str = "127.0.0.1:9993";

fn grants() -> BTreeMap<String, Grant> {
    [
        (
            "admin-token".to_owned(),
            Grant {
                user: "system:serviceaccount:security:auditor".into(),
                namespaces: None,
                metrics: false,
            },
        ),
        (
            "alpha-token".to_owned(),
            Grant {
                user: "system:serviceaccount:alpha-web:flows-reader".into(),
                namespaces: Some(BTreeSet::from(["alpha-web".into(), "alpha-jobs".into()])),
                metrics: false,
            },
        ),
    ]
    .into()
}

/// An agent on node `n` serving its records over TLS to token holders, reviewed by its
/// own stand-in API.
fn exposed_agent(lab: &LabGuard, n: u8, cert: &str, key: &str) -> (Agent, KubeAuth) {
    let t = &lab.topo;
    let ns = t.node_ns(n);
    let auth = KubeAuth::start(&ns, 16443, grants());
    let cfg = xtask::lab::manifest::config_path(&t.prefix);
    let kubeconfig = auth.kubeconfig.display().to_string();
    let agent = Agent::start_env(
        &ns,
        "127.0.0.1:9990",
        "200ms",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--flows-listen",
            "0.0.0.0:9991",
            "--flows-auth",
            "kubernetes",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--idle-timeout",
            "60s",
        ],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    (agent, auth)
}

/// `tenantflow flows --all-nodes` from node 1 as `token` with `extra` flags: (exit code,
/// stdout, stderr).
fn all_nodes(t: &xtask::lab::Topology, token: &str, extra: &[&str]) -> (i32, String, String) {
    let token_file = std::env::temp_dir().join(format!("{}-token-{token}", t.prefix));
    std::fs::write(&token_file, token).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &t.node_ns(1)])
        .arg(agent_bin())
        .args([
            "flows",
            "--all-nodes",
            "--index",
            &format!("http://{INDEX}"),
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The relayed JSON answer's records of this test's ports, by source port.
fn ours(stdout: &str) -> (Value, BTreeMap<u64, Vec<Value>>) {
    let v: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let mut by_port: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for r in v["records"].as_array().unwrap() {
        if let Some(p @ 4401..=4404) = r["src_port"].as_u64() {
            by_port.entry(p).or_default().push(r.clone());
        }
    }
    (v, by_port)
}

#[test]
fn one_query_reaches_every_node_with_the_callers_scope_and_names_a_silent_node() {
    let lab = lab("an");
    let t = &lab.topo;
    let dir = std::env::temp_dir().join(format!("{}-relay-tls", t.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certs::certificate(&dir, &lab);
    let (mut node1, _auth1) = exposed_agent(&lab, 1, &cert, &key);
    let (mut node2, _auth2) = exposed_agent(&lab, 2, &cert, &key);
    let items = xtask::lab::manifest::snapshot(t)["items"]
        .as_array()
        .unwrap()
        .clone();
    let none = Size {
        pods: 0,
        nodes: 0,
        namespaces: 0,
        services: 0,
    };
    let api = KubeApi::start(none, items, Some(&t.node_ns(1)));
    let cfg = tenantflow_tests::index_process::config_without_snapshot(t);
    let index = Index::start_with(
        &api,
        INDEX,
        Some(&t.node_ns(1)),
        Some(&cfg),
        &t.prefix,
        None,
        &[
            "--agent-ca",
            &ca,
            "--agent-server-name",
            "tenantflow-agent",
            "--relay-timeout",
            "2s",
        ],
    );

    // Node 1: alpha → alpha, beta → internet. Node 2: alpha → beta, beta → internet.
    let to = |p: &str| format!("{}:5000", t.pod(p).ip());
    let inet = format!("{INTERNET_HOST}:5000");
    let sent = [
        (
            4401,
            udp_from_pod(
                &lab,
                "web-1",
                4401,
                &t.pod_ns(t.pod("jobs-1")),
                &to("jobs-1"),
                3,
                10,
            ),
        ),
        (
            4402,
            udp_from_pod(
                &lab,
                "web-2",
                4402,
                &t.pod_ns(t.pod("api-2")),
                &to("api-2"),
                2,
                20,
            ),
        ),
        (
            4403,
            udp_from_pod(&lab, "api-1", 4403, &t.internet_ns(), &inet, 4, 30),
        ),
        (
            4404,
            udp_from_pod(&lab, "api-2", 4404, &t.internet_ns(), &inet, 5, 40),
        ),
    ];
    let (n1, n2) = (t.node(1).name.clone(), t.node(2).name.clone());
    let seen_on = BTreeMap::from([(4401, &n1), (4402, &n2), (4403, &n1), (4404, &n2)]);

    // A cluster-wide reader: all four, each once, from the node that saw it, counted exactly.
    let mut last = (0, String::new(), String::new());
    let (answer, by_port) = eventually(Duration::from_secs(10), || {
        last = all_nodes(t, "admin-token", &["-o", "json"]);
        if last.0 != 0 {
            return None;
        }
        let (v, by_port) = ours(&last.1);
        let exact = sent.iter().all(|(port, want)| {
            by_port
                .get(port)
                .is_some_and(|rs| rs.len() == 1 && counts(&rs[0], "forward") == *want)
        });
        exact.then_some((v, by_port))
    })
    .unwrap_or_else(|| panic!("every node's records, counted; last: {last:?}"));
    for (port, node) in &seen_on {
        assert_eq!(&by_port[port][0]["node"], *node, "port {port}");
    }
    let counted = |what: &str| index.metric(what).unwrap_or_else(|| panic!("{what}")) as u64;
    let node_answers = |status: &str| {
        counted(&format!(
            "tenantflow_relay_node_answers_total{{status=\"{status}\"}}"
        ))
    };
    let before: Vec<u64> = ["ok", "denied", "timeout", "failed"]
        .iter()
        .map(|s| node_answers(s))
        .collect();
    let answered = || counted("tenantflow_relay_queries_total{result=\"answered\"}");
    let answered_before = answered();
    // No token: refused by the index itself, before any node is asked.
    let (code, body) = index.get("/v1/flows").unwrap();
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        counted("tenantflow_relay_queries_total{result=\"no_token\"}"),
        1
    );
    let nodes: Vec<(&str, &str)> = answer["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    assert_eq!(nodes, [(n1.as_str(), "ok"), (n2.as_str(), "ok")]);

    // The table shows the node first.
    let (code, table, _) = all_nodes(t, "admin-token", &["--port", "4402"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("NODE"), "{table}");
    assert!(lines[1].starts_with(&n2), "{table}");

    // --summary folds every node's records the same way as one node's.
    let (code, out, err) = all_nodes(
        t,
        "admin-token",
        &["--summary", "--port", "4404", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["connections"], 1, "{out}");

    // Tenant alpha's reader asking for alpha: alpha's two connections, from both nodes.
    let (code, out, err) = all_nodes(t, "alpha-token", &["--tenant", "alpha", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let (_, alpha) = ours(&out);
    assert_eq!(alpha.keys().copied().collect::<Vec<_>>(), [4401, 4402]);
    assert_eq!(alpha[&4401][0]["node"], n1.as_str());
    assert_eq!(alpha[&4402][0]["node"], n2.as_str());
    assert_eq!(
        alpha[&4402][0]["dst_identity"],
        serde_json::json!({"kind": "pod", "tenant": "beta", "node": n2}),
        "beta's end reduced, as the node's agent scoped it"
    );
    // Asking for everything, the same reader is refused by every node, and told.
    let (code, _, err) = all_nodes(t, "alpha-token", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("node {n1} did not answer (denied)")),
        "{err}"
    );
    assert!(
        err.contains(&format!("node {n2} did not answer (denied)")),
        "{err}"
    );
    assert!(err.contains("no node answered (of 2)"), "{err}");

    // Node 2's agent stopped (SIGSTOP: its socket still accepts, nothing answers).
    let pid2 = node2.pid().unwrap() as i32;
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(pid2, libc::SIGSTOP) };
    let (code, out, err) = all_nodes(t, "admin-token", &["-o", "json"]);
    // SAFETY: as above.
    unsafe { libc::kill(pid2, libc::SIGCONT) };
    assert_eq!(code, 0, "{err}");
    let (v, by_port) = ours(&out);
    assert_eq!(by_port.keys().copied().collect::<Vec<_>>(), [4401, 4403]);
    assert!(by_port
        .values()
        .all(|rs| rs.len() == 1 && rs[0]["node"] == n1.as_str()));
    assert_eq!(v["nodes"][1]["node"], n2.as_str());
    assert_eq!(v["nodes"][1]["status"], "timeout");
    assert_eq!(v["nodes"][1]["records"], 0);
    assert!(
        err.contains(&format!(
            "node {n2} did not answer (timeout): no whole answer within 2s"
        )),
        "{err}"
    );
    // Node 2's agent gone: refused at once, named as failed.
    node2.stop_with(libc::SIGTERM);
    let (code, out, err) = all_nodes(t, "admin-token", &["-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let (v, by_port) = ours(&out);
    assert_eq!(by_port.keys().copied().collect::<Vec<_>>(), [4401, 4403]);
    assert_eq!(v["nodes"][1]["status"], "failed");
    assert!(err.contains("nothing accepted the connection"), "{err}");
    // Six relayed queries since: 2 + 2 + 2 + 0 + 1 + 1 nodes answered (table, summary,
    // alpha, alpha unscoped, stopped, gone), 2 refused the alpha reader asking for
    // everything, one timed out, one was gone.
    let after: Vec<u64> = ["ok", "denied", "timeout", "failed"]
        .iter()
        .map(|s| node_answers(s))
        .collect();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, [8, 2, 1, 1]);
    assert_eq!(answered() - answered_before, 6);
    node1.stop_with(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}
