//! Pre/post-NAT on every connection record, counted once: SNAT to the internet (with
//! conntrack port remapping), ClusterIP DNAT across two backends, no translation inside
//! the cluster, connections older than the agent, and counted join misses.

use std::{collections::BTreeMap, sync::atomic::Ordering::SeqCst, time::Duration};

use serde_json::Value;
use tenantflow_tests::{
    agent::{counts, endpoint, is_tuple, wait_connection},
    count_lines, eventually, finish, lab, lab_model, notrack, per_model, snmp, traffic, traffic_bg,
    udp_seen_as, wait_established, wait_tcp_closed, Agent, Model,
};
use xtask::lab::topology::INTERNET_HOST;

const NODE1: &str = "10.224.0.4";

per_model!(
    pod_to_internet_udp_and_tcp_carry_pod_and_node_addresses,
    super::pod_to_internet_udp_and_tcp_carry_pod_and_node_addresses
);
fn pod_to_internet_udp_and_tcp_carry_pod_and_node_addresses(model: Model) {
    let lab = lab_model("ne", model);
    let t = &lab.topo;
    let jobs = t.pod("jobs-1");
    let ns = t.pod_ns(jobs);
    let agent = Agent::start(&t.node_ns(1), &[]);

    let peer = udp_seen_as(
        &ns,
        &format!("{}:6000", jobs.ip()),
        &t.internet_ns(),
        &format!("{INTERNET_HOST}:5353"),
        5,
        100,
    );
    assert!(
        peer.starts_with(&format!("{NODE1}:")),
        "the internet host must see the node address: {peer}"
    );
    let udp = wait_connection(
        &agent,
        |c| is_tuple(c, "udp", &jobs.ip(), 6000, INTERNET_HOST, 5353),
        |c| counts(c, "forward") == (5, 640) && !c["snat"].is_null(),
    );
    assert_eq!(
        endpoint(&udp["snat"]).as_deref(),
        Some(peer.as_str()),
        "post-SNAT = what the far end saw"
    );
    assert_eq!(udp["dnat"], Value::Null);
    assert_eq!(counts(&udp, "forward"), (5, 640));
    assert_eq!(counts(&udp, "reply"), (0, 0));
    let stages: Vec<(String, String, String)> = udp["sightings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["iface"].as_str().unwrap().into(),
                s["hook"].as_str().unwrap().into(),
                s["nat_stage"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            (jobs.host_iface(), "ingress".into(), "pre_nat".into()),
            ("eth0".into(), "egress".into(), "post_nat".into())
        ]
    );

    let (c0, s0) = (snmp::read(&ns), snmp::read(&t.internet_ns()));
    let srv = traffic_bg(
        &t.internet_ns(),
        &[
            "tcp-serve",
            &format!("{INTERNET_HOST}:443"),
            "3000",
            "--peers",
        ],
    );
    traffic(
        &ns,
        &[
            "tcp-send",
            &format!("{INTERNET_HOST}:443"),
            "1000",
            "--bind",
            &format!("{}:6001", jobs.ip()),
        ],
    );
    let out = finish(srv);
    let peer = out.split_whitespace().nth(1).unwrap().to_owned();
    wait_tcp_closed(&ns, 6001);
    wait_tcp_closed(&t.internet_ns(), 443);
    let up = snmp::delta(&c0, &snmp::read(&ns), "Tcp:OutSegs");
    let down = snmp::delta(&s0, &snmp::read(&t.internet_ns()), "Tcp:OutSegs");
    let want = (
        (up, snmp::tcp_bytes(up, 1000, 20)),
        (down, snmp::tcp_bytes(down, 3000, 20)),
    );
    let tcp = wait_connection(
        &agent,
        |c| is_tuple(c, "tcp", &jobs.ip(), 6001, INTERNET_HOST, 443),
        |c| (counts(c, "forward"), counts(c, "reply")) == want,
    );
    assert_eq!((counts(&tcp, "forward"), counts(&tcp, "reply")), want);
    assert_eq!(endpoint(&tcp["snat"]).as_deref(), Some(peer.as_str()));
    assert_eq!(tcp["nat_joined"], true);
}

per_model!(
    same_source_port_from_two_pods_gets_two_records_with_their_own_post_snat_ports,
    super::same_source_port_from_two_pods_gets_two_records_with_their_own_post_snat_ports
);
fn same_source_port_from_two_pods_gets_two_records_with_their_own_post_snat_ports(model: Model) {
    let lab = lab_model("nc", model);
    let t = &lab.topo;
    let (web, jobs) = (t.pod("web-1"), t.pod("jobs-1"));
    let agent = Agent::start(&t.node_ns(1), &[]);
    let rx = traffic_bg(
        &t.internet_ns(),
        &["udp-recv", &format!("{INTERNET_HOST}:5353"), "7", "--peers"],
    );
    let dst = format!("{INTERNET_HOST}:5353");
    traffic(
        &t.pod_ns(web),
        &[
            "udp-send",
            &dst,
            "3",
            "60",
            "--bind",
            &format!("{}:7777", web.ip()),
        ],
    );
    traffic(
        &t.pod_ns(jobs),
        &[
            "udp-send",
            &dst,
            "4",
            "60",
            "--bind",
            &format!("{}:7777", jobs.ip()),
        ],
    );
    let out = finish(rx);
    // What the internet host saw: two node-address senders, one of them remapped.
    let seen: BTreeMap<u64, String> = out
        .lines()
        .skip(1)
        .map(|l| {
            let (peer, n) = l.split_once(' ').unwrap();
            (n.parse().unwrap(), peer.to_owned())
        })
        .collect();
    assert_eq!(seen.len(), 2, "two distinct post-SNAT senders: {out}");
    assert_ne!(seen[&3], seen[&4]);
    for (pod, packets) in [(web, 3u64), (jobs, 4u64)] {
        let c = wait_connection(
            &agent,
            |c| is_tuple(c, "udp", &pod.ip(), 7777, INTERNET_HOST, 5353),
            |c| counts(c, "forward").0 == packets && !c["snat"].is_null(),
        );
        assert_eq!(counts(&c, "forward"), (packets, packets * (20 + 8 + 60)));
        assert_eq!(
            endpoint(&c["snat"]).as_deref(),
            Some(seen[&packets].as_str()),
            "{}",
            pod.name
        );
    }
}

per_model!(
    cluster_ip_records_carry_vip_and_the_backend_that_served_them,
    super::cluster_ip_records_carry_vip_and_the_backend_that_served_them
);
fn cluster_ip_records_carry_vip_and_the_backend_that_served_them(model: Model) {
    let lab = lab_model("ns", model);
    let t = &lab.topo;
    let api = t.pod("api-1");
    let svc = &t.services[0];
    let conns_total = 16u64;
    let servers: Vec<_> = ["web-1", "web-2"]
        .iter()
        .map(|b| {
            let p = t.pod(b);
            let child = traffic_bg(
                &t.pod_ns(p),
                &[
                    "tcp-serve",
                    &format!("{}:8080", p.ip()),
                    "2000",
                    "--conns",
                    "1000",
                    "--peers",
                ],
            );
            (p.clone(), child)
        })
        .collect();
    let agent = Agent::start(&t.node_ns(1), &[]);
    let snmp0: Vec<_> = ["api-1", "web-1", "web-2"]
        .iter()
        .map(|p| snmp::read(&t.pod_ns(t.pod(p))))
        .collect();
    for i in 0..conns_total {
        let bind = format!("{}:{}", api.ip(), 20000 + i);
        traffic(
            &t.pod_ns(api),
            &[
                "tcp-send",
                &format!("{}:{}", svc.vip, svc.port),
                "100",
                "--bind",
                &bind,
            ],
        );
    }
    // Each server prints a line per connection it finished: wait for all of them, and
    // for every connection's last segment, before reading the oracles.
    let printed: Vec<_> = servers
        .into_iter()
        .map(|(p, mut child)| {
            let lines = count_lines(&mut child);
            (p, child, lines)
        })
        .collect();
    let total = || printed.iter().map(|(_, _, n)| n.load(SeqCst)).sum::<u64>();
    eventually(Duration::from_secs(10), || {
        (total() == conns_total).then_some(())
    })
    .unwrap_or_else(|| panic!("servers finished {} of {conns_total} connections", total()));
    let mut served = BTreeMap::new();
    for (p, mut child, lines) in printed {
        wait_tcp_closed(&t.pod_ns(&p), 8080);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        served.insert(p.ip(), lines.load(SeqCst));
    }
    assert_eq!(served.values().sum::<u64>(), conns_total);
    assert!(
        served.values().all(|n| *n > 0),
        "the random split used both backends: {served:?}"
    );
    let segs: Vec<u64> = ["api-1", "web-1", "web-2"]
        .iter()
        .zip(&snmp0)
        .map(|(p, before)| snmp::delta(before, &snmp::read(&t.pod_ns(t.pod(p))), "Tcp:OutSegs"))
        .collect();

    let ours = |c: &Value| {
        c["proto"] == "tcp" && c["src"] == api.ip().as_str() && c["dst"] == svc.vip.as_str()
    };
    let mut all = Vec::new();
    eventually(Duration::from_secs(6), || {
        all = agent
            .connections("")
            .into_iter()
            .filter(|c| ours(c))
            .collect();
        let fwd: u64 = all.iter().map(|c| counts(c, "forward").0).sum();
        (all.len() as u64 == conns_total && fwd == segs[0]).then_some(())
    });
    assert_eq!(all.len() as u64, conns_total, "one record per connection");
    for (backend, n) in &served {
        let mine: Vec<&Value> = all
            .iter()
            .filter(|c| c["dnat"]["ip"] == backend.as_str())
            .collect();
        assert_eq!(mine.len() as u64, *n, "connections attributed to {backend}");
        assert!(mine
            .iter()
            .all(|c| c["dnat"]["port"] == 8080 && c["snat"].is_null()));
        let reply_segs: u64 = mine.iter().map(|c| counts(c, "reply").0).sum();
        let reply_bytes: u64 = mine.iter().map(|c| counts(c, "reply").1).sum();
        let seg_ref = if backend == &t.pod("web-1").ip() {
            segs[1]
        } else {
            segs[2]
        };
        assert_eq!(reply_segs, seg_ref, "reply packets from {backend}");
        assert_eq!(
            reply_bytes,
            seg_ref * 52 + 8 * n + 2000 * n,
            "reply bytes from {backend}"
        );
    }
    let fwd_bytes: u64 = all.iter().map(|c| counts(c, "forward").1).sum();
    assert_eq!(
        fwd_bytes,
        segs[0] * 52 + 8 * conns_total + 100 * conns_total
    );
}

per_model!(
    pod_to_pod_has_no_translation_and_every_class_is_counted_once,
    super::pod_to_pod_has_no_translation_and_every_class_is_counted_once
);
fn pod_to_pod_has_no_translation_and_every_class_is_counted_once(model: Model) {
    let lab = lab_model("nx", model);
    let t = &lab.topo;
    let (web1, web2, api1, jobs) = (
        t.pod("web-1"),
        t.pod("web-2"),
        t.pod("api-1"),
        t.pod("jobs-1"),
    );
    let agent = Agent::start(&t.node_ns(1), &[]);
    let sends = [
        // (from, to address, to namespace, count, payload): cross-node, same-node, egress
        (web1, web2.ip(), t.pod_ns(web2), 4u64, 50u64),
        (web1, api1.ip(), t.pod_ns(api1), 3, 80),
        (jobs, INTERNET_HOST.to_string(), t.internet_ns(), 5, 100),
    ];
    for (i, (from, to, to_ns, n, size)) in sends.iter().enumerate() {
        let port = 9100 + i as u16;
        let rx = traffic_bg(
            to_ns,
            &["udp-recv", &format!("{to}:{port}"), &n.to_string()],
        );
        traffic(
            &t.pod_ns(from),
            &[
                "udp-send",
                &format!("{to}:{port}"),
                &n.to_string(),
                &size.to_string(),
                "--bind",
                &format!("{}:{port}", from.ip()),
            ],
        );
        assert_eq!(finish(rx).lines().next(), Some(n.to_string().as_str()));
    }
    let sent_packets: u64 = sends.iter().map(|s| s.3).sum();
    let sent_bytes: u64 = sends.iter().map(|s| s.3 * (28 + s.4)).sum();
    let udp = |agent: &Agent| -> Vec<Value> {
        agent
            .connections("?proto=udp")
            .into_iter()
            .filter(|c| (9100..9103).contains(&c["dst_port"].as_u64().unwrap()))
            .collect()
    };
    let mut conns = Vec::new();
    // Conntrack's event can land a harvest after the packets: the pod's connection is then
    // reported first and joined (with its uplink half) at the next harvest.
    eventually(Duration::from_secs(6), || {
        conns = udp(&agent);
        let p: u64 = conns.iter().map(|c| counts(c, "forward").0).sum();
        let joined = conns.iter().all(|c| c["nat_joined"] == true);
        (conns.len() == 3 && p == sent_packets && joined).then_some(())
    });
    assert_eq!(conns.len(), 3, "one record per connection: {conns:#?}");
    assert_eq!(
        conns.iter().map(|c| counts(c, "forward").0).sum::<u64>(),
        sent_packets
    );
    assert_eq!(
        conns.iter().map(|c| counts(c, "forward").1).sum::<u64>(),
        sent_bytes
    );
    for c in &conns {
        let egress = c["dst"] == INTERNET_HOST;
        assert_eq!(c["snat"].is_null(), !egress, "{c:#}");
        assert_eq!(c["dnat"], Value::Null);
        assert_eq!(c["nat_joined"], true);
    }
    // Two sightings each (the same-node flow: both pod veths), one counting point.
    let sightings: Vec<usize> = conns
        .iter()
        .map(|c| c["sightings"].as_array().unwrap().len())
        .collect();
    assert_eq!(sightings, [2, 2, 2]);
    // Untranslated flows are seen before NAT only; the egress flow after it at the uplink.
    let stages: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            c["sightings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["nat_stage"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    let egress_at = conns.iter().position(|c| c["dst"] == INTERNET_HOST);
    for (i, st) in stages.iter().enumerate() {
        let want = if Some(i) == egress_at {
            ["pre_nat", "post_nat"]
        } else {
            ["pre_nat", "pre_nat"]
        };
        assert_eq!(st, &want, "{:#}", conns[i]);
    }
    assert_eq!(
        agent.metric("tenantflow_nat_unjoined_connections"),
        Some(0.0)
    );
    assert_eq!(
        agent.metric(r#"tenantflow_nat_mechanism{mechanism="conntrack"}"#),
        Some(1.0)
    );
}

#[test]
fn connection_opened_before_the_agent_started_still_gets_its_mapping() {
    let lab = lab("nl");
    let t = &lab.topo;
    let jobs = t.pod("jobs-1");
    let srv = traffic_bg(
        &t.internet_ns(),
        &[
            "tcp-serve",
            &format!("{INTERNET_HOST}:8443"),
            "500",
            "--peers",
        ],
    );
    let client = traffic_bg(
        &t.pod_ns(jobs),
        &[
            "tcp-send",
            &format!("{INTERNET_HOST}:8443"),
            "700",
            "--bind",
            &format!("{}:6100", jobs.ip()),
            "--hold-ms",
            "4000",
        ],
    );
    // Established before the agent starts: its NEW event came before anyone listened.
    wait_established(&t.pod_ns(jobs), 6100);
    let agent = Agent::start(&t.node_ns(1), &[]);
    assert_eq!(finish(client).trim(), "500");
    let peer = finish(srv).split_whitespace().nth(1).unwrap().to_owned();
    let c = wait_connection(
        &agent,
        |c| is_tuple(c, "tcp", &jobs.ip(), 6100, INTERNET_HOST, 8443),
        |c| !c["snat"].is_null() && counts(c, "forward").0 > 0,
    );
    assert_eq!(endpoint(&c["snat"]).as_deref(), Some(peer.as_str()));
    assert_eq!(c["nat_joined"], true);
}

#[test]
fn a_connection_conntrack_never_sees_is_counted_as_a_join_miss() {
    let lab = lab("nm");
    let t = &lab.topo;
    let (web1, web2) = (t.pod("web-1"), t.pod("web-2"));
    let node = t.node_ns(1);
    // Real clusters have NOTRACK rules too (NodeLocal DNSCache); this flow bypasses conntrack.
    notrack(&node, "udp", "--dport", 9999);
    let agent = Agent::start(&node, &["--idle-timeout", "3s"]);
    let rx = traffic_bg(
        &t.pod_ns(web2),
        &["udp-recv", &format!("{}:9999", web2.ip()), "2"],
    );
    traffic(
        &t.pod_ns(web1),
        &[
            "udp-send",
            &format!("{}:9999", web2.ip()),
            "2",
            "10",
            "--bind",
            &format!("{}:9998", web1.ip()),
        ],
    );
    assert_eq!(finish(rx).trim(), "2");
    let c = wait_connection(
        &agent,
        |c| is_tuple(c, "udp", &web1.ip(), 9998, &web2.ip(), 9999),
        |_| true,
    );
    assert_eq!(c["nat_joined"], false);
    assert_eq!(
        counts(&c, "forward"),
        (2, 2 * 38),
        "still recorded, counted once"
    );
    // Open and past its join window: a miss to come, counted when it ends.
    let pending = eventually(Duration::from_secs(6), || {
        (agent.metric("tenantflow_nat_unjoined_connections") == Some(1.0)).then_some(())
    });
    assert!(pending.is_some(), "unjoined gauge never rose");
    let none = r#"tenantflow_nat_join_misses_total{reason="none"}"#;
    assert_eq!(agent.metric(none), Some(0.0), "not counted while open");
    let missed = eventually(Duration::from_secs(10), || {
        (agent.metric(none) == Some(1.0)).then_some(())
    });
    assert!(
        missed.is_some(),
        "miss not counted: {:?}",
        agent.metric(none)
    );
    // Exactly once, with its reason, and still once two harvests later; the other
    // reasons stay 0.
    agent.wait_harvests(2);
    assert_eq!(agent.metric(none), Some(1.0));
    for other in ["late", "lost"] {
        let series = format!("tenantflow_nat_join_misses_total{{reason=\"{other}\"}}");
        assert_eq!(agent.metric(&series), Some(0.0), "{other}");
    }
    assert_eq!(
        agent.metric("tenantflow_nat_unjoined_connections"),
        Some(0.0)
    );
}

per_model!(
    pod_to_vnet_keeps_the_pod_address_only_under_azure_cni,
    super::pod_to_vnet_keeps_the_pod_address_only_under_azure_cni
);
/// What a VNet host (here node 2's address) sees of a pod: its own VNet address under
/// Azure CNI (no SNAT inside the VNet), the node's address under kubenet and Overlay.
fn pod_to_vnet_keeps_the_pod_address_only_under_azure_cni(model: Model) {
    let lab = lab_model("nv", model);
    let t = &lab.topo;
    let jobs = t.pod("jobs-1");
    let node2 = t.node(2).ip();
    let agent = tenantflow_tests::lab_agent(&lab, 1, &[]);
    let peer = udp_seen_as(
        &t.pod_ns(jobs),
        &format!("{}:9201", jobs.ip()),
        &t.node_ns(2),
        &format!("{node2}:9200"),
        4,
        30,
    );
    let snat = model != Model::AzureCni;
    let want_peer = if snat { NODE1.to_owned() } else { jobs.ip() };
    assert!(
        peer.starts_with(&format!("{want_peer}:")),
        "{model:?}: node 2 saw {peer}"
    );
    let c = wait_connection(
        &agent,
        |c| is_tuple(c, "udp", &jobs.ip(), 9201, &node2, 9200),
        |c| counts(c, "forward") == (4, 4 * 58) && c["snat"].is_null() != snat,
    );
    assert_eq!(counts(&c, "forward"), (4, 4 * 58));
    assert_eq!(
        endpoint(&c["snat"]),
        snat.then(|| peer.clone()),
        "{model:?}: the record's post-SNAT side is what node 2 saw"
    );
    assert_eq!(c["flow_class"], "pod_to_node");
}
