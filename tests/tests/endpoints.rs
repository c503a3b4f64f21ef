//! Who can read what: with the chart's listeners (metrics on every node address, records on
//! loopback), a pod reaches the node's metrics but not one flow record, while the node
//! itself (`kubectl exec`, `kubectl port-forward`) reads them; exposing records on a
//! non-loopback address is refused.

use std::{process::Command, time::Duration};

use tenantflow_tests::{
    agent::{counts, wait_connection, RECORDS},
    agent_bin,
    certs::certificate,
    eventually, lab, netns_http, udp_from_pod, Agent,
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

/// GET `url` with curl from inside `ns`, trusting `ca`, with a bearer token if given;
/// returns (status, body), status 0 when nothing answered.
fn https_get(ns: &str, ca: &str, token: Option<&str>, url: &str) -> (u16, String) {
    let mut args = vec![
        "netns",
        "exec",
        ns,
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        ca,
    ];
    args.extend(["-w", "\n%{http_code}"]);
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    if let Some(h) = &auth {
        args.extend(["-H", h.as_str()]);
    }
    args.push(url);
    let out = Command::new("ip").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Exposed records: TLS on the node address, tokens reviewed by the Kubernetes API (the
/// stand-in answers with recorded payloads). No token: 401; a tenant's reader: exactly its
/// tenant's connections with the other tenant's end reduced; a cluster-wide reader:
/// everything; a revoked token stops working within the cache TTL; metrics stay open.
#[test]
fn exposed_records_answer_each_caller_with_what_rbac_grants() {
    use std::collections::{BTreeMap, BTreeSet};
    use tenantflow_tests::kube_auth::{Grant, KubeAuth};

    let lab = lab("ex");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let dir = std::env::temp_dir().join(format!("tf-exposed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificate(&dir, &lab);
    let reader = "system:serviceaccount:alpha-web:flows-reader";
    let tokens: BTreeMap<String, Grant> = [
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
                user: reader.into(),
                namespaces: Some(BTreeSet::from(["alpha-web".into(), "alpha-jobs".into()])),
                metrics: false,
            },
        ),
    ]
    .into();
    let api = KubeAuth::start(&node, 16443, tokens);
    let cfg = xtask::lab::manifest::config_path(&t.prefix);
    let kubeconfig = api.kubeconfig.display().to_string();
    let _agent = Agent::start_env(
        &node,
        "0.0.0.0:9990",
        "200ms",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--flows-listen",
            "0.0.0.0:9991",
            "--flows-auth",
            "kubernetes",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--auth-cache-ttl",
            "1s",
        ],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );

    // alpha → alpha, alpha → beta, beta → beta.
    let (web2, api1, api2) = (t.pod("web-2"), t.pod("api-1"), t.pod("api-2"));
    let to = |p: &xtask::lab::Pod| format!("{}:5000", p.ip());
    let sent = udp_from_pod(&lab, "web-1", 4301, &t.pod_ns(web2), &to(web2), 2, 10);
    udp_from_pod(&lab, "web-1", 4302, &t.pod_ns(api1), &to(api1), 2, 10);
    udp_from_pod(&lab, "api-1", 4303, &t.pod_ns(api2), &to(api2), 2, 10);

    // Every request comes from a pod of tenant beta, to the node's pod-side address.
    let client = t.pod_ns(api1);
    let base = format!("https://{}:9991", t.node(1).pod_gw());
    let get =
        |token: Option<&str>, path: &str| https_get(&client, &ca, token, &format!("{base}{path}"));
    let ours = |body: &str| -> Vec<serde_json::Value> {
        let mut v: Vec<serde_json::Value> = serde_json::from_str::<Vec<serde_json::Value>>(body)
            .unwrap_or_else(|e| panic!("{e}: {body}"))
            .into_iter()
            .filter(|c| matches!(c["src_port"].as_u64(), Some(4301..=4303)))
            .collect();
        v.sort_by_key(|c| c["src_port"].as_u64());
        v
    };

    // A cluster-wide reader: all three, in full, once counted.
    let mut last = (0, String::new());
    let all = tenantflow_tests::eventually(std::time::Duration::from_secs(8), || {
        last = get(Some("admin-token"), "/flows");
        let v = if last.0 == 200 { ours(&last.1) } else { vec![] };
        (v.len() == 3 && v.iter().all(|c| counts(c, "forward") == sent)).then_some(v)
    })
    .unwrap_or_else(|| panic!("the admin sees the three connections; last answer {last:?}"));
    assert_eq!(all[1]["dst_identity"]["pod"], "api-1");
    assert_eq!(all[2]["src_identity"]["namespace"], "beta-api");

    let (code, body) = get(None, "/flows");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no bearer token"), "{body}");
    let (code, body) = get(Some("made-up"), "/flows");
    assert_eq!(code, 401, "{body}");
    let (code, body) = get(Some("alpha-token"), "/flows");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("may not read flows cluster-wide"), "{body}");
    let (code, _) = get(Some("alpha-token"), "/flows?namespace=beta-api");
    assert_eq!(code, 403);
    let (code, _) = get(Some("alpha-token"), "/observations?tenant=alpha");
    assert_eq!(code, 403);

    // A reader of tenant alpha: its two connections; beta's end reduced to kind and tenant.
    let (code, body) = get(Some("alpha-token"), "/flows?tenant=alpha");
    assert_eq!(code, 200, "{body}");
    let alpha = ours(&body);
    assert_eq!(
        alpha
            .iter()
            .map(|c| c["src_port"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [4301, 4302]
    );
    assert_eq!(alpha[0], all[0], "alpha → alpha in full");
    let far = &alpha[1]["dst_identity"];
    assert_eq!(
        far,
        &serde_json::json!({"kind": "pod", "tenant": "beta", "node": t.node(1).name}),
        "beta's end reduced"
    );
    assert_eq!(alpha[1]["src_identity"], all[1]["src_identity"]);
    // The reviews the agent asked for: the token once, then cluster-wide, then each of
    // tenant alpha's namespaces, for `get` on flows.tenantflow.io.
    let asked: BTreeSet<_> = api
        .asked()
        .into_iter()
        .filter(|(_, who, _)| who == reader || who == "alpha-token")
        .collect();
    assert_eq!(
        asked,
        BTreeSet::from([
            ("TokenReview".into(), "alpha-token".into(), None),
            ("SubjectAccessReview".into(), reader.into(), None),
            (
                "SubjectAccessReview".into(),
                reader.into(),
                Some("alpha-jobs".into())
            ),
            (
                "SubjectAccessReview".into(),
                reader.into(),
                Some("alpha-web".into())
            ),
            (
                "SubjectAccessReview".into(),
                reader.into(),
                Some("beta-api".into())
            ),
        ])
    );

    // The CLI from the same pod: it says what is missing, then shows exactly alpha's two.
    let cli = |extra: &[&str], kubeconfig: &str| {
        let mut args = vec![
            "netns".to_owned(),
            "exec".into(),
            client.clone(),
            agent_bin().display().to_string(),
            "flows".into(),
            "--agent".into(),
            format!("https://{}:9991", t.node(1).ip()),
            "--cacert".into(),
            ca.clone(),
            "--tls-server-name".into(),
            "tenantflow-agent".into(),
            "-o".into(),
            "json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new("ip")
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap()
    };
    let out = cli(&["--tenant", "alpha"], "/nonexistent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("401") && err.contains("pass --token-file"),
        "{err}"
    );
    let token_file = dir.join("alpha.token");
    std::fs::write(&token_file, "alpha-token\n").unwrap();
    let out = cli(
        &[
            "--tenant",
            "alpha",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        "/nonexistent",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = ours(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(shown, alpha, "the CLI shows what the API gave");
    // The current kubeconfig user's token serves as well.
    let user_kubeconfig = dir.join("user.kubeconfig");
    std::fs::write(
        &user_kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://aks.example\"}}]\n\
         users: [{name: alpha, user: {token: alpha-token}}]\n\
         contexts: [{name: c, context: {cluster: c, user: alpha}}]\ncurrent-context: c\n",
    )
    .unwrap();
    let out = cli(&["--tenant", "alpha"], user_kubeconfig.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ours(&String::from_utf8_lossy(&out.stdout)), alpha);

    // Revoked: refused once the cached decision (1 s) has expired.
    api.revoke("alpha-token");
    let refused = tenantflow_tests::eventually(std::time::Duration::from_secs(5), || {
        (get(Some("alpha-token"), "/flows?tenant=alpha").0 == 401).then_some(())
    });
    assert!(
        refused.is_some(),
        "a revoked token stops working within the TTL"
    );

    // Prometheus' view is unchanged: metrics on the node address, no token needed.
    let (code, body) =
        netns_http::get(&client, &format!("{}:9990", t.node(1).pod_gw()), "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("tenantflow_ready 1"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn rss_kib(pid: u32) -> u64 {
    tenantflow_tests::proc_status_kib(pid, "VmRSS")
}

/// 200 concurrent record requests and a client that never finishes its request: each
/// request gets its records or a prompt 503 "busy", probes stay answered, counting stays
/// exact and the agent's memory stays bounded.
#[test]
fn a_flood_of_record_requests_is_bounded() {
    use std::io::Write;
    let lab = lab("fl");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let agent = tenantflow_tests::lab_agent(&lab, 1, &[]);
    let pid = agent.pid().unwrap();
    let web2 = t.pod("web-2");
    let to = format!("{}:5000", web2.ip());
    let sent = udp_from_pod(&lab, "web-1", 4401, &t.pod_ns(web2), &to, 3, 20);
    let c = wait_connection(
        &agent,
        |c| c["src_port"] == 4401,
        |c| counts(c, "forward") == sent,
    );
    assert_eq!(counts(&c, "forward"), sent);
    let before = rss_kib(pid);

    // The slow client: half a request, held open for the whole flood.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let node2 = node.clone();
    let slow = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{node2}")).unwrap();
        // SAFETY: setns on a valid namespace fd; it affects only this thread.
        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        let mut s = std::net::TcpStream::connect(RECORDS).unwrap();
        s.write_all(b"GET /flows HTTP/1.1\r\nHost: slow\r\n")
            .unwrap();
        let _ = hold_rx.recv();
    });
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let node = node.clone();
            std::thread::spawn(move || netns_http::get(&node, RECORDS, "/flows").unwrap())
        })
        .collect();
    let (probe, _) = agent.get("/healthz").unwrap();
    let answers: Vec<(u16, String)> = flood.into_iter().map(|h| h.join().unwrap()).collect();
    hold_tx.send(()).unwrap();
    slow.join().unwrap();
    assert_eq!(probe, 200, "probes answered during the flood");
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let busy = answers
        .iter()
        .filter(|(s, b)| *s == 503 && b.starts_with("busy: 16 records requests in flight"))
        .count();
    assert_eq!(ok + busy, 200, "each answered with records or busy");
    assert!(ok >= 1);

    // Counting went on exactly, and the flood left no lasting memory behind.
    let sent2 = udp_from_pod(&lab, "web-1", 4402, &t.pod_ns(web2), &to, 3, 20);
    let c = wait_connection(
        &agent,
        |c| c["src_port"] == 4402,
        |c| counts(c, "forward") == sent2,
    );
    assert_eq!(counts(&c, "forward"), sent2);
    let after = rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

/// `/metrics` behind TLS and a token granted get on /metrics: a real Prometheus scrapes it
/// with a service-account token file (the usual `authorization` / `tls_config`), a request
/// without a token gets 401 and one without the grant 403, and the kubelet's probes stay
/// open.
#[test]
fn metrics_behind_a_token_are_scraped_by_prometheus() {
    use std::collections::BTreeMap;
    use tenantflow_tests::{
        kube_auth::{Grant, KubeAuth},
        prometheus::Prometheus,
    };

    let lab = lab("mt");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let dir = std::env::temp_dir().join(format!("tf-metrics-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificate(&dir, &lab);
    let grant = |user: &str, metrics| Grant {
        user: user.into(),
        namespaces: Some(Default::default()),
        metrics,
    };
    let tokens: BTreeMap<String, Grant> = [
        (
            "prom-token".to_owned(),
            grant("system:serviceaccount:monitoring:prometheus", true),
        ),
        (
            "app-token".to_owned(),
            grant("system:serviceaccount:beta-api:app", false),
        ),
    ]
    .into();
    let api = KubeAuth::start(&node, 16443, tokens);
    let cfg = xtask::lab::manifest::config_path(&t.prefix);
    let kubeconfig = api.kubeconfig.display().to_string();
    let mut agent = Agent::spawn_env(
        &node,
        "0.0.0.0:9990",
        "200ms",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--metrics-auth",
            "kubernetes",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let client = t.pod_ns(t.pod("api-1"));
    let get = |token: Option<&str>, path: &str| {
        let url = format!("https://{}:9990{path}", t.node(1).pod_gw());
        https_get(&client, &ca, token, &url).0
    };
    let ready = tenantflow_tests::eventually(std::time::Duration::from_secs(20), || {
        assert!(
            agent.exited().is_none(),
            "agent exited:\n{}",
            agent.log_text()
        );
        (get(None, "/readyz") == 200).then_some(())
    });
    assert!(ready.is_some(), "never ready:\n{}", agent.log_text());
    assert_eq!(get(None, "/healthz"), 200, "probes stay open");
    assert_eq!(get(None, "/metrics"), 401);
    assert_eq!(get(Some("app-token"), "/metrics"), 403);
    assert_eq!(get(Some("prom-token"), "/metrics"), 200);

    let token_file = dir.join("prometheus.token");
    std::fs::write(&token_file, "prom-token").unwrap();
    let prom = Prometheus::start_with(
        &node,
        "127.0.0.1:9990",
        &[],
        &format!(
            "    scheme: https\n    authorization:\n      credentials_file: {}\n    tls_config:\n      ca_file: {ca}\n      server_name: tenantflow-agent\n",
            token_file.display()
        ),
    );
    let up = tenantflow_tests::eventually(std::time::Duration::from_secs(15), || {
        (prom.query("up{job=\"tenantflow\"}").first().map(|s| s.1) == Some(1.0)).then_some(())
    });
    assert!(up.is_some(), "prometheus scrapes it:\n{}", prom.log());
    prom.expect_one("tenantflow_ready", 1.0);
    let asked: Vec<_> = api
        .asked()
        .into_iter()
        .filter(|(kind, _, what)| {
            kind == "SubjectAccessReview" && what.as_deref() == Some("/metrics")
        })
        .map(|(_, who, _)| who)
        .collect();
    // One review per user for the whole run: decisions are cached (30 s by default).
    assert_eq!(
        asked,
        [
            "system:serviceaccount:beta-api:app",
            "system:serviceaccount:monitoring:prometheus"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The exposure flags of the chart's default DaemonSet (`helm template` with no values):
/// who can reach which listener, and what /metrics may name.
fn chart_default_exposure() -> (String, Vec<String>) {
    use tenantflow_tests::chart::{agent_args, documents, template};
    let args = agent_args(&documents(&template(&[])));
    let listen = args
        .iter()
        .find_map(|a| a.strip_prefix("--listen="))
        .expect("the chart sets --listen")
        .to_owned();
    let exposure = args
        .into_iter()
        .filter(|a| {
            a.starts_with("--flows-") && !a.starts_with("--flows-log")
                || a.starts_with("--metrics-")
        })
        .collect();
    (listen, exposure)
}

/// Every lab pod name that appears in `body`.
fn pod_names_in(t: &xtask::lab::Topology, body: &str) -> Vec<String> {
    t.pods
        .iter()
        .filter(|p| body.contains(&format!("\"{}\"", p.name)))
        .map(|p| p.name.clone())
        .collect()
}

/// With the chart's default values, a pod of tenant beta that reads its node's metrics and
/// records ports learns no pod name of tenant alpha, which has an open masqueraded flow
/// on that node. The control: the same agent with names accepted shows alpha's pod (in
/// `tenantflow_snat_mapping_info`) to that same reader.
#[test]
fn with_the_charts_defaults_a_tenant_pod_reads_no_other_tenants_pod_names() {
    let lab = lab("epn");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let cfg = xtask::lab::manifest::config_path(&t.prefix);
    let (listen, exposure) = chart_default_exposure();
    assert_eq!(listen, "0.0.0.0:9990");
    assert_eq!(
        exposure,
        [
            "--flows-listen=127.0.0.1:9991",
            "--metrics-max-series=10000",
            "--metrics-grace=5m"
        ],
        "no name-bearing flag by default"
    );
    let beta = t.pod_ns(t.pod("api-1"));
    let internet = format!("{}:5300", xtask::lab::topology::INTERNET_HOST);
    let read = |sport: u16, extra: &[&str]| {
        let mut args = vec!["--config", cfg.to_str().unwrap()];
        args.extend(exposure.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let mut agent = Agent::start_on(&node, &listen, "200ms", &args);
        let sent = udp_from_pod(&lab, "jobs-1", sport, &t.internet_ns(), &internet, 2, 10);
        wait_connection(
            &agent,
            |c| c["src_port"] == sport,
            |c| counts(c, "forward") == sent,
        );
        agent.wait_harvests(2);
        let mut seen = Vec::new();
        for addr in [t.node(1).pod_gw(), t.node(1).ip()] {
            let (status, body) =
                netns_http::get(&beta, &format!("{addr}:9990"), "/metrics").unwrap();
            assert_eq!(status, 200);
            assert!(body.contains("tenantflow_ready 1"));
            seen.extend(pod_names_in(t, &body));
            let refused = netns_http::get(&beta, &format!("{addr}:9991"), "/flows").unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        agent.stop_with(libc::SIGTERM);
        seen
    };
    assert_eq!(
        read(4310, &["--metrics-public-names"]),
        ["jobs-1", "jobs-1"],
        "the control: names accepted, alpha's pod is on /metrics at both addresses"
    );
    assert_eq!(
        read(4311, &[]),
        Vec::<String>::new(),
        "chart defaults: no pod name"
    );
}

/// Points `live/..data` at `dir` the way the kubelet updates a Secret volume: files are
/// `live/<name> -> ..data/<name>`, and `..data` is replaced in one rename.
fn project_secret(live: &std::path::Path, dir: &std::path::Path) {
    std::fs::create_dir_all(live).unwrap();
    let tmp = live.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dir, &tmp).unwrap();
    std::fs::rename(&tmp, live.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = live.join(f);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), link).unwrap();
        }
    }
}

/// A renewed or replaced certificate is served without a restart: the agent's files are a
/// projected Secret; after the kubelet-style swap to a certificate from another CA, clients
/// trusting the new CA get through within a few reload intervals and the old CA no longer
/// verifies, by the same agent process. A swap to a pair that does not belong together is
/// counted as failed and the last good certificate stays served.
#[test]
fn a_replaced_certificate_is_served_without_a_restart() {
    use std::collections::BTreeMap;
    use tenantflow_tests::kube_auth::{Grant, KubeAuth};

    let lab = lab("tlsr");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let base = std::env::temp_dir().join(format!("tf-tls-reload-{}", std::process::id()));
    let (a, b, mixed, live) = (
        base.join("a"),
        base.join("b"),
        base.join("m"),
        base.join("live"),
    );
    for d in [&a, &b, &mixed] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (ca_a, _, key_a) = certificate(&a, &lab);
    let (ca_b, cert_b, _) = certificate(&b, &lab);
    std::fs::copy(&cert_b, mixed.join("tls.crt")).unwrap();
    std::fs::copy(&key_a, mixed.join("tls.key")).unwrap();
    project_secret(&live, &a);

    let tokens: BTreeMap<String, Grant> = [(
        "prom".to_owned(),
        Grant {
            user: "system:serviceaccount:monitoring:prometheus".into(),
            namespaces: None,
            metrics: true,
        },
    )]
    .into();
    let api = KubeAuth::start(&node, 16444, tokens);
    let cfg = xtask::lab::manifest::config_path(&t.prefix);
    let kubeconfig = api.kubeconfig.display().to_string();
    let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
    let mut agent = Agent::spawn_env(
        &node,
        "0.0.0.0:9990",
        "200ms",
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--metrics-auth",
            "kubernetes",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-reload-interval",
            "1s",
        ],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let pid = agent.pid();
    let client = t.pod_ns(t.pod("api-1"));
    let url = |path: &str| format!("https://{}:9990{path}", t.node(1).pod_gw());
    let health = |ca: &str| https_get(&client, ca, None, &url("/healthz")).0;
    let reloads = |result: &str| -> Option<f64> {
        let (code, body) = https_get(&client, &ca_b, Some("prom"), &url("/metrics"));
        assert_eq!(code, 200, "{body}");
        let series = format!("tenantflow_tls_reloads_total{{result=\"{result}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(|v| v.parse().unwrap())
    };
    let served = |ca: &str| {
        eventually(Duration::from_secs(15), || {
            (health(ca) == 200).then_some(())
        })
    };
    assert!(served(&ca_a).is_some(), "the first certificate is served");
    assert_eq!(health(&ca_b), 0, "another CA does not verify it");

    project_secret(&live, &b);
    assert!(served(&ca_b).is_some(), "the new certificate within 15 s");
    assert_eq!(health(&ca_a), 0, "the old CA no longer verifies");
    assert_eq!(reloads("replaced"), Some(1.0));

    project_secret(&live, &mixed);
    let failed = eventually(Duration::from_secs(15), || {
        (reloads("failed") == Some(1.0)).then_some(())
    });
    assert!(failed.is_some(), "a mismatched pair is counted as failed");
    assert_eq!(health(&ca_b), 200, "the last good certificate stays served");
    assert_eq!(reloads("replaced"), Some(1.0));
    assert!(agent.exited().is_none(), "the same agent throughout");
    assert_eq!(agent.pid(), pid);
    let _ = std::fs::remove_dir_all(&base);
}
