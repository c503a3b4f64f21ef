//! Egress by name: a real DNS server (dnsmasq) answers behind a kube-dns-like Service VIP,
//! pods resolve with glibc (`getent`, the pod's resolv.conf pointing at the VIP) before they
//! connect, and the agent names each connection with what its own pod resolved.

use std::{path::PathBuf, time::Duration};

use tenantflow_tests::{
    agent::{counts, wait_connection},
    agent_bin,
    dns_server::{resolv_conf, resolve, Dns, DNS_VIP},
    eventually, finish, in_ns, lab, lab_agent,
    prometheus::Prometheus,
    traffic, traffic_bg, udp_from_pod, Agent,
};
use xtask::lab::{manifest, topology::INTERNET_HOST};

/// A pod resolves `api.example.test` (a CNAME and two A records) through the Service VIP and
/// connects to the first address: its record carries the name it asked for, and the name
/// rule `*.example.test` makes it exempt. A second pod that dialled the same address without
/// resolving it gets no name and stays unmediated. The agent's DNS counters are exact.
#[test]
fn a_connection_carries_the_name_its_own_pod_resolved_and_no_other_pods() {
    let lab = lab("dn");
    let t = &lab.topo;
    // The lab's config, with names of example.test exempt from mediation.
    let cfg = std::fs::read_to_string(xtask::lab::manifest::config_path(&t.prefix)).unwrap();
    let cfg = cfg.replacen("  exempt: [", "  exempt: [\"*.example.test\", ", 1);
    assert!(cfg.contains("*.example.test"), "{cfg}");
    let cfg_path = std::env::temp_dir().join(format!("{}-dns-config.yaml", t.prefix));
    std::fs::write(&cfg_path, cfg).unwrap();
    let agent = Agent::start(&t.node_ns(1), &["--config", cfg_path.to_str().unwrap()]);
    let _dns = Dns::start(&lab);
    let warmed = agent.metric("tenantflow_dns_messages_total{kind=\"query\"}");
    assert_eq!(
        resolve(&lab, "web-1", "api.example.test"),
        Some(vec!["198.51.100.8".to_owned(), INTERNET_HOST.to_owned()])
    );
    let to = format!("{INTERNET_HOST}:5300");
    let named = udp_from_pod(&lab, "web-1", 4400, &t.internet_ns(), &to, 3, 50);
    let unnamed = udp_from_pod(&lab, "jobs-1", 4401, &t.internet_ns(), &to, 2, 50);
    let web = wait_connection(
        &agent,
        |c| c["src_port"] == 4400,
        |c| counts(c, "forward") == named,
    );
    assert_eq!(web["dst_fqdn"], "api.example.test", "{web}");
    assert_eq!(web["src_identity"]["pod"], "web-1");
    let jobs = wait_connection(
        &agent,
        |c| c["src_port"] == 4401,
        |c| counts(c, "forward") == unnamed,
    );
    assert!(
        jobs["dst_fqdn"].is_null(),
        "jobs-1 never resolved it: {jobs}"
    );
    // The same destination: exempt by the name web-1 resolved, unmediated for jobs-1,
    // which dialled the address.
    assert_eq!(web["egress"], "exempt");
    assert_eq!(jobs["egress"], "unmediated");
    // Filters by name pattern: exactly web-1's connection; a bad pattern is a 400 naming it.
    let ours = |body: &str| -> Vec<u64> {
        let v: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
        let mut ports: Vec<u64> = v
            .iter()
            .filter_map(|c| c["src_port"].as_u64())
            .filter(|p| (4400..=4401).contains(p))
            .collect();
        ports.sort();
        ports
    };
    for (q, want) in [
        ("*.example.test", vec![4400]),
        ("api.example.test", vec![4400]),
        ("example.test", vec![]),
        ("*.other.test", vec![]),
    ] {
        let (status, body) = agent.get_records(&format!("/flows?fqdn={q}")).unwrap();
        assert_eq!(status, 200, "{q}: {body}");
        assert_eq!(ours(&body), want, "fqdn={q}");
    }
    let (status, body) = agent.get_records("/flows?fqdn=a..b").unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("\"a..b\" is not a name pattern"), "{body}");
    let table = in_ns(
        &t.node_ns(1),
        &[
            agent_bin().to_str().unwrap(),
            "flows",
            "--fqdn",
            "*.example.test",
        ],
    );
    assert!(table.contains("internet [api.example.test]"), "{table}");
    // The warm-up resolved from coredns-2, whose node's agent is not this one: node 1 saw
    // exactly web-1's query and its answer (glibc asks A only for ahostsv4).
    let m = |kind: &str| agent.metric(&format!("tenantflow_dns_messages_total{{kind=\"{kind}\"}}"));
    assert_eq!(warmed, Some(0.0));
    assert_eq!(m("query"), Some(1.0));
    assert_eq!(m("answer"), Some(1.0));
    assert_eq!(m("unsolicited"), Some(0.0));
    assert_eq!(m("malformed"), Some(0.0));
    assert_eq!(agent.metric("tenantflow_dns_names"), Some(2.0));
    let _ = std::fs::remove_file(&cfg_path);
}

/// DNS as a signal, through a real Prometheus with the shipped rules: 50 NXDOMAIN answers in
/// a minute to alpha-web's pod fire `TenantflowDnsNxdomainBurst` for alpha-web, and a query
/// from alpha-jobs' pod to a resolver outside the cluster fires `TenantflowUnmediatedDns`
/// for alpha-jobs; the counters behind them are exact.
#[test]
fn nxdomain_bursts_and_outside_resolvers_fire_their_alerts() {
    let lab = lab("dnx");
    let t = &lab.topo;
    // A short grace: the last step deletes a namespace and waits for its series to go.
    let agent = lab_agent(&lab, 1, &["--metrics-grace", "2s"]);
    let _dns = Dns::start(&lab);
    let rules = tenantflow_tests::chart::rules_file();
    let prom = Prometheus::start(&t.node_ns(1), "127.0.0.1:9990", &[rules]);
    for i in 0..50 {
        assert_eq!(
            resolve(&lab, "web-1", &format!("nope-{i}.example.test")),
            None
        );
    }
    // jobs-1 asks the internet host, which runs no resolver: the query still left.
    let jobs_etc = PathBuf::from("/etc/netns").join(t.pod_ns(t.pod("jobs-1")));
    std::fs::write(
        jobs_etc.join("resolv.conf"),
        format!("nameserver {INTERNET_HOST}\noptions timeout:1 attempts:1\n"),
    )
    .unwrap();
    assert_eq!(resolve(&lab, "jobs-1", "api.example.test"), None);
    let series = |family: &str, ns: &str, tenant: &str| {
        format!("{family}{{src_namespace=\"{ns}\",src_tenant=\"{tenant}\"}}")
    };
    let nx = series("tenantflow_dns_nxdomain_total", "alpha-web", "alpha");
    let outside = series(
        "tenantflow_dns_unapproved_queries_total",
        "alpha-jobs",
        "alpha",
    );
    let counted = eventually(Duration::from_secs(10), || {
        (agent.metric(&nx) == Some(50.0) && agent.metric(&outside) == Some(1.0)).then_some(())
    });
    assert!(
        counted.is_some(),
        "{:?} {:?}",
        agent.metric(&nx),
        agent.metric(&outside)
    );
    let mut firing = Vec::new();
    eventually(Duration::from_secs(20), || {
        firing = prom
            .alerts()
            .into_iter()
            .filter(|(name, state, _)| {
                state == "firing"
                    && (name.starts_with("TenantflowDns") || name == "TenantflowUnmediatedDns")
            })
            .map(|(name, _, l)| format!("{name} {}", l["src_namespace"]))
            .collect();
        firing.sort();
        (firing.len() >= 2).then_some(())
    });
    assert_eq!(
        firing,
        [
            "TenantflowDnsNxdomainBurst \"alpha-web\"",
            "TenantflowUnmediatedDns \"alpha-jobs\""
        ]
    );
    // alpha-web is deleted from the cluster: its NXDOMAIN series goes once the grace
    // period has passed, alpha-jobs' unapproved-resolver series stays as it was.
    manifest::write_without_namespace(t, "alpha-web").unwrap();
    let gone = eventually(Duration::from_secs(15), || {
        agent.metric(&nx).is_none().then_some(())
    });
    assert!(
        gone.is_some(),
        "{nx} still exported: {:?}",
        agent.metric(&nx)
    );
    assert_eq!(agent.metric(&outside), Some(1.0));
}

/// DNS over TCP, an answer too big for UDP retried over TCP, and a TTL running out, each
/// with its exact outcome: web-1 resolves over TCP (`use-vc`) and its connection is named;
/// api-1's lookup of a 40-address name is truncated over UDP and asked again over TCP (two
/// answers counted) and its connection carries that name; with a 2 s TTL and no grace, the
/// connection jobs-1 opened in time keeps its name after the TTL ran out, while a new one
/// opened after it gets none.
#[test]
fn tcp_dns_truncated_answers_and_expiring_ttls() {
    let lab = lab("dnt");
    let t = &lab.topo;
    let agent = lab_agent(&lab, 1, &["--dns-name-grace", "0s"]);
    let _dns = Dns::start_with_ttl(&lab, 2);
    let answers = || {
        agent
            .metric("tenantflow_dns_messages_total{kind=\"answer\"}")
            .unwrap()
    };
    let to = format!("{INTERNET_HOST}:5301");
    let named = |sport: u16, sent: (u64, u64)| {
        wait_connection(
            &agent,
            |c| c["src_port"] == sport,
            |c| counts(c, "forward") == sent,
        )["dst_fqdn"]
            .clone()
    };

    resolv_conf(
        &lab,
        "web-1",
        &format!("nameserver {DNS_VIP}\noptions use-vc\n"),
    );
    let before = answers();
    assert!(resolve(&lab, "web-1", "api.example.test").is_some());
    let sent = udp_from_pod(&lab, "web-1", 4500, &t.internet_ns(), &to, 1, 10);
    assert_eq!(named(4500, sent), "api.example.test", "over TCP");
    assert_eq!(answers() - before, 1.0);

    let before = answers();
    let big = resolve(&lab, "api-1", "big.example.test").unwrap();
    assert_eq!(big.len(), 40, "the whole answer, over TCP");
    let sent = udp_from_pod(&lab, "api-1", 4501, &t.internet_ns(), &to, 1, 10);
    assert_eq!(named(4501, sent), "big.example.test");
    assert_eq!(
        answers() - before,
        2.0,
        "the truncated UDP answer and the TCP one"
    );

    assert!(resolve(&lab, "jobs-1", "api.example.test").is_some());
    let early = udp_from_pod(&lab, "jobs-1", 4502, &t.internet_ns(), &to, 1, 10);
    assert_eq!(named(4502, early), "api.example.test");
    // The TTL runs out: the tracker drops jobs-1's two names (web-1's and api-1's too).
    let expired = eventually(Duration::from_secs(10), || {
        (agent.metric("tenantflow_dns_names") == Some(0.0)).then_some(())
    });
    assert!(expired.is_some(), "names expired after their 2 s TTL");
    let more = udp_from_pod(&lab, "jobs-1", 4502, &t.internet_ns(), &to, 1, 10);
    let c = wait_connection(
        &agent,
        |c| c["src_port"] == 4502,
        |c| counts(c, "forward") == (early.0 + more.0, early.1 + more.1),
    );
    assert_eq!(
        c["dst_fqdn"], "api.example.test",
        "kept by the open connection"
    );
    let late = udp_from_pod(&lab, "jobs-1", 4503, &t.internet_ns(), &to, 1, 10);
    assert!(
        named(4503, late).is_null(),
        "a new connection after the TTL"
    );
    // Unmediated egress by name: one series per (namespace, name), the unnamed one in none
    // (labels in the exposition's alphabetical order).
    let by_name = |ns: &str, tenant: &str, name: &str| {
        agent.metric(&format!(
            "tenantflow_unmediated_egress_names_total{{dst_fqdn=\"{name}\",src_namespace=\"{ns}\",src_tenant=\"{tenant}\"}}"
        ))
    };
    assert_eq!(by_name("alpha-web", "alpha", "api.example.test"), Some(1.0));
    assert_eq!(by_name("beta-api", "beta", "big.example.test"), Some(1.0));
    assert_eq!(
        by_name("alpha-jobs", "alpha", "api.example.test"),
        Some(1.0)
    );
    let (_, body) = agent.get("/metrics").unwrap();
    let series = body
        .lines()
        .filter(|l| l.starts_with("tenantflow_unmediated_egress_names_total{"))
        .count();
    assert_eq!(series, 3, "{body}");
}

/// What must not name a flow, each with its exact count: a forged answer from another
/// address to a pod that asked nothing (`unsolicited`), garbage from port 53 (`malformed`);
/// and AAAA: a pod that resolved an IPv6 name gets it on its IPv6 connection.
#[test]
fn spoofed_and_malformed_answers_name_nothing_and_aaaa_names_ipv6() {
    let lab = lab("dns6");
    let t = &lab.topo;
    let agent = lab_agent(&lab, 1, &[]);
    let _dns = Dns::start(&lab);
    let kind = |k: &str| {
        agent
            .metric(&format!("tenantflow_dns_messages_total{{kind=\"{k}\"}}"))
            .unwrap()
    };
    // coredns-2 (node 2) sends the garbage: dnsmasq holds coredns-1's port 53.
    let (api1, jobs1, coredns) = (t.pod("api-1"), t.pod("jobs-1"), t.pod("coredns-2"));
    // api-1 forges an answer to jobs-1, which asked nothing: evil.example.test is the
    // internet host.
    traffic(
        &t.pod_ns(api1),
        &[
            "dns-answer",
            &format!("{}:33333", jobs1.ip()),
            "--bind",
            &format!("{}:53", api1.ip()),
            "--name",
            "evil.example.test",
            "--addr",
            INTERNET_HOST,
        ],
    );
    // Garbage from the DNS server's own port 53 to web-1.
    traffic(
        &t.pod_ns(coredns),
        &[
            "udp-send",
            &format!("{}:33334", t.pod("web-1").ip()),
            "1",
            "20",
            "--bind",
            &format!("{}:53", coredns.ip()),
        ],
    );
    let counted = eventually(Duration::from_secs(10), || {
        (kind("unsolicited") == 1.0 && kind("malformed") == 1.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "unsolicited {} malformed {}",
        kind("unsolicited"),
        kind("malformed")
    );
    let to = format!("{INTERNET_HOST}:5303");
    let sent = udp_from_pod(&lab, "jobs-1", 4600, &t.internet_ns(), &to, 1, 10);
    let c = wait_connection(
        &agent,
        |c| c["src_port"] == 4600,
        |c| counts(c, "forward") == sent,
    );
    assert!(
        c["dst_fqdn"].is_null(),
        "the forged answer named nothing: {c}"
    );
    assert_eq!(kind("answer"), 0.0);
    assert_eq!(agent.metric("tenantflow_dns_names"), Some(0.0));

    // AAAA over the kube-dns VIP (IPv4 transport), then an IPv6 connection.
    let web1 = t.pod("web-1");
    let out = in_ns(
        &t.pod_ns(web1),
        &["getent", "ahostsv6", "edge6.example.test"],
    );
    assert!(out.contains(xtask::lab::topology::INTERNET_HOST6), "{out}");
    let to6 = format!("[{}]:5304", xtask::lab::topology::INTERNET_HOST6);
    let rx = traffic_bg(&t.internet_ns(), &["udp-recv", &to6, "2"]);
    traffic(
        &t.pod_ns(web1),
        &[
            "udp-send",
            &to6,
            "2",
            "30",
            "--bind",
            &format!("[{}]:4601", web1.ip6()),
        ],
    );
    assert_eq!(finish(rx).trim(), "2");
    let c = wait_connection(
        &agent,
        |c| c["src_port"] == 4601,
        |c| counts(c, "forward").0 == 2,
    );
    assert_eq!(c["dst_fqdn"], "edge6.example.test", "{c}");
    assert_eq!(c["dst"], xtask::lab::topology::INTERNET_HOST6);
}
