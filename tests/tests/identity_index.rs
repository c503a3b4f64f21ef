//! Identity from the Kubernetes API in the lab, in both modes, against the synthetic API
//! server serving the lab's objects plus generated ones. Direct mode: a real agent on lab
//! node 1 watches the four kinds itself. Index mode: it follows `tenantflow index` and
//! opens exactly one API watch (its own node's pods); with the index killed it keeps
//! naming pods and says it is stale; a new index resyncs it. In both, real traffic gets
//! the right pods, tenants, cross-tenant verdict and egress-gateway membership.

use std::time::Duration;

use serde_json::Value;
use tenantflow_tests::{
    agent::{counts, wait_connection, LISTEN},
    agent_bin,
    certs::certificate,
    eventually,
    index_process::{Index, IndexTls},
    kube_api::{KubeApi, Size},
    lab, udp_from_pod, unix_now, Agent,
};

fn pod_of(c: &Value, end: &str) -> (String, String, String) {
    let id = &c[end];
    (
        id["pod"].as_str().unwrap_or("").to_owned(),
        id["namespace"].as_str().unwrap_or("").to_owned(),
        id["tenant"].as_str().unwrap_or("").to_owned(),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    Index,
}

#[test]
fn direct_mode_names_pods_from_four_cluster_wide_watches() {
    run(Mode::Direct);
}

#[test]
fn index_mode_names_pods_opens_one_watch_and_survives_the_index() {
    run(Mode::Index);
}

/// The synthetic API in node 1's namespace with the lab's objects plus `size` generated
/// ones, the agent's token granted /v1/identity, and the agent's config without the
/// snapshot (identity comes from the index): (api, token file, config file).
fn index_setup(
    t: &xtask::lab::Topology,
    size: Size,
) -> (KubeApi, std::path::PathBuf, std::path::PathBuf) {
    let items = xtask::lab::manifest::snapshot(t)["items"]
        .as_array()
        .unwrap()
        .clone();
    let api = KubeApi::start(size, items, Some(&t.node_ns(1)));
    api.grant(
        "agent-sa-token",
        "system:serviceaccount:tenantflow:tenantflow",
        &["/v1/identity"],
    );
    let token_file = std::env::temp_dir().join(format!("tf-index-token-{}", t.prefix));
    std::fs::write(&token_file, "agent-sa-token\n").unwrap();
    (
        api,
        token_file,
        tenantflow_tests::index_process::config_without_snapshot(t),
    )
}

fn run(mode: Mode) {
    let lab = lab(if mode == Mode::Index { "xi" } else { "xd" });
    let t = &lab.topo;
    let ns1 = t.node_ns(1);
    let node1 = t.node(1).name.clone();
    // The lab's objects and 1,000 generated pods on 10 other nodes.
    let size = Size {
        pods: 1_000,
        nodes: 10,
        namespaces: 5,
        services: 5,
    };
    let (api, token_file, cfg_path) = index_setup(t, size);
    let index_addr = "127.0.0.1:9993";
    let mut index = (mode == Mode::Index)
        .then(|| Index::start(&api, index_addr, Some(&ns1), Some(&cfg_path), "lab"));
    let kubeconfig = api.kubeconfig("agent");
    let index_url = format!("http://{index_addr}");
    let mut args = vec![
        "--config",
        cfg_path.to_str().unwrap(),
        "--node-name",
        &node1,
    ];
    if mode == Mode::Index {
        args.extend([
            "--identity-index",
            &index_url,
            "--identity-index-token-file",
            token_file.to_str().unwrap(),
        ]);
    }
    let agent = Agent::start_env(
        &ns1,
        LISTEN,
        "200ms",
        &args,
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let m = |name: &str| agent.metric(name);
    let source = if mode == Mode::Index {
        "index"
    } else {
        "kubernetes"
    };
    assert_eq!(
        m(&format!(
            "tenantflow_metadata_objects{{kind=\"pod\",source=\"{source}\"}}"
        )),
        Some((t.pods.len() + 1_000) as f64)
    );
    assert_eq!(
        m("tenantflow_identity_index_connected"),
        Some(if mode == Mode::Index { 1.0 } else { 0.0 })
    );

    let udp = |sport: u16| {
        let api2 = t.pod("api-2");
        let sent = udp_from_pod(
            &lab,
            "web-1",
            sport,
            &t.pod_ns(api2),
            &format!("{}:7000", api2.ip()),
            3,
            100,
        );
        wait_connection(
            &agent,
            |c| c["src_port"] == sport && c["dst"] == api2.ip(),
            |c| counts(c, "forward") == sent,
        )
    };
    let c = udp(7101);
    let web1 = t.pod("web-1");
    assert_eq!(
        pod_of(&c, "src_identity"),
        ("web-1".into(), web1.namespace.clone(), "alpha".into())
    );
    assert_eq!(pod_of(&c, "dst_identity").0, "api-2");
    assert_eq!(c["cross_tenant"], true);
    // Egress-gateway membership survives slim decoding, label reduction (and the index).
    let gw = t.pod("egress-gw-1");
    let sent = udp_from_pod(
        &lab,
        "jobs-1",
        7103,
        &t.pod_ns(gw),
        &format!("{}:7000", gw.ip()),
        2,
        50,
    );
    let c = wait_connection(
        &agent,
        |c| c["src_port"] == 7103 && c["dst"] == gw.ip(),
        |c| counts(c, "forward") == sent,
    );
    assert_eq!(c["dst_identity"]["pod"], "egress-gw-1");
    assert_eq!(c["dst_identity"]["mediator"], true);
    assert_eq!(c["dst_identity"]["tenant"], "platform");

    if mode == Mode::Direct {
        // Four cluster-wide lists from the watch cache and four watches, no review.
        let s = api.stats("agent");
        let mut lists = s.lists.clone();
        lists.sort();
        assert_eq!(lists, ["namespaces?", "nodes?", "pods?", "services?"]);
        assert_eq!(s.watches_open, 4);
        assert_eq!(api.reviews(), []);
        return;
    }
    let mut index = index.take().expect("index mode");
    assert_eq!(m("tenantflow_identity_index_resyncs_total"), Some(1.0));

    // The agent asked the API for its own node's pods only: one list, one watch.
    let s = api.stats("agent");
    let own = format!("pods?spec.nodeName={node1}");
    assert_eq!(s.lists, std::slice::from_ref(&own));
    assert_eq!(s.watches, [own]);
    assert_eq!(s.watches_open, 1);
    // The index reviewed the agent's token once (cached since).
    assert_eq!(
        api.reviews(),
        [
            ("TokenReview".into(), "agent-sa-token".into(), String::new()),
            (
                "SubjectAccessReview".into(),
                "system:serviceaccount:tenantflow:tenantflow".into(),
                "/v1/identity".into()
            ),
        ]
    );

    // The index dies: the agent keeps the inventory and says it is stale.
    index.kill();
    let stale = eventually(Duration::from_secs(10), || {
        (m("tenantflow_identity_index_connected") == Some(0.0)
            && m("tenantflow_metadata_stale") == Some(1.0))
        .then_some(())
    });
    assert!(stale.is_some(), "{}", agent.log_text());
    let last = m("tenantflow_identity_index_last_frame_timestamp_seconds").unwrap();
    // Whole seconds pass (the timestamp is in seconds) while the follower retries a dead
    // index: no frame may be recorded meanwhile.
    eventually(Duration::from_secs(10), || {
        (unix_now() > last as u64 + 2).then_some(())
    })
    .expect("the clock moves");
    assert_eq!(
        m("tenantflow_identity_index_last_frame_timestamp_seconds"),
        Some(last),
        "no frame while the index is down"
    );
    let c = udp(7102);
    assert_eq!(
        pod_of(&c, "src_identity").0,
        "web-1",
        "last state still names pods"
    );

    // A new index: the agent reconnects (backoff) and resyncs from it.
    let _index = Index::start(&api, index_addr, Some(&ns1), Some(&cfg_path), "lab-2");
    let back = eventually(Duration::from_secs(40), || {
        (m("tenantflow_identity_index_connected") == Some(1.0)
            && m("tenantflow_identity_index_resyncs_total") == Some(2.0)
            && m("tenantflow_metadata_stale") == Some(0.0))
        .then_some(())
    });
    assert!(back.is_some(), "{}", agent.log_text());
    assert_eq!(api.stats("agent").watches_open, 1);
}

/// Followers' tokens never cross the network in clear text: the index serves TLS, an agent
/// that trusts its CA follows it over https (HTTP/2 by ALPN) and holds every pod; an agent
/// trusting another CA never connects and says why; an https index without a CA is
/// refused before anything starts.
#[test]
fn followers_reach_the_index_over_tls_only_with_its_ca() {
    let lab = lab("xt");
    let t = &lab.topo;
    let ns1 = t.node_ns(1);
    let node1 = t.node(1).name.clone();
    let size = Size {
        pods: 200,
        nodes: 4,
        namespaces: 3,
        services: 2,
    };
    let (api, token_file, cfg_path) = index_setup(t, size);
    let dir = std::env::temp_dir().join(format!("tf-index-tls-{}", t.prefix));
    let (right, wrong) = (dir.join("right"), dir.join("wrong"));
    std::fs::create_dir_all(&right).unwrap();
    std::fs::create_dir_all(&wrong).unwrap();
    let (ca, cert, key) = certificate(&right, &lab);
    let (other_ca, _, _) = certificate(&wrong, &lab);
    let tls = IndexTls {
        cert: &cert,
        key: &key,
        ca: &ca,
    };
    let _index = Index::start_tls(
        &api,
        "127.0.0.1:9993",
        Some(&ns1),
        Some(&cfg_path),
        "tls",
        Some(tls),
    );
    let kubeconfig = api.kubeconfig("agent");
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let args = |ca: &str| -> Vec<String> {
        [
            "--config",
            cfg_path.to_str().unwrap(),
            "--node-name",
            &node1,
            "--identity-index",
            "https://127.0.0.1:9993",
            "--identity-index-token-file",
            token_file.to_str().unwrap(),
            "--identity-index-ca",
            ca,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let a = args(&ca);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut agent = Agent::start_env(&ns1, LISTEN, "200ms", &a, &env);
    assert_eq!(
        agent.metric("tenantflow_metadata_objects{kind=\"pod\",source=\"index\"}"),
        Some((t.pods.len() + 200) as f64)
    );
    assert_eq!(
        agent.metric("tenantflow_identity_index_connected"),
        Some(1.0)
    );
    agent.stop_with(libc::SIGTERM);

    let b = args(&other_ca);
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let mut doubter = Agent::spawn_env(&ns1, LISTEN, "200ms", &b, &env);
    let said = eventually(Duration::from_secs(20), || {
        let log = doubter.log_text();
        log.contains("identity: source not reached yet")
            .then_some(log)
            .filter(|l| l.contains("invalid peer certificate"))
    });
    assert!(
        said.is_some(),
        "a wrong CA is named: {}",
        doubter.log_text()
    );
    assert_eq!(
        doubter.metric("tenantflow_identity_index_connected"),
        Some(0.0)
    );
    doubter.stop_with(libc::SIGTERM);

    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns1])
        .arg(agent_bin())
        .args(["agent", "--identity-index", "https://127.0.0.1:9993"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("an https index needs --identity-index-ca"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
