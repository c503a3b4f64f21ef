//! SNAT from Cilium's BPF masquerade: no iptables rule and no nf_conntrack entry, only
//! Cilium's pinned SNAT map (`xtask/src/lab/cilium_snat.rs` stands in for Cilium on node 1).
//! The agent finds the map by probing, says so in its mechanism metric, and joins the pod's
//! connection with its post-SNAT side from the map: one record, pod as the source, the
//! node address and port a firewall sees (another port for the second of two pods using the
//! same source port), nothing unjoined.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::Value;
use tenantflow_tests::{
    agent::wait_connection, finish, in_ns, lab, lab_agent, traffic, traffic_bg,
};
use xtask::lab::{
    cilium_snat::{self, Snat},
    topology::{INTERNET_HOST, INTERNET_HOST6},
};

#[test]
fn snat_of_ciliums_bpf_masquerade_is_joined_from_its_map_without_conntrack() {
    let lab = lab("cs");
    let t = &lab.topo;
    let pod: Ipv4Addr = t.pod("web-1").ip().parse().unwrap();
    let node: Ipv4Addr = t.node(1).ip().parse().unwrap();
    let remote: Ipv4Addr = INTERNET_HOST.parse().unwrap();
    let jobs: Ipv4Addr = t.pod("jobs-1").ip().parse().unwrap();
    let map = cilium_snat::create_map(&t.prefix).unwrap();
    let snat = |proto, pod: Ipv4Addr, sport, dport, node_port| Snat {
        proto,
        pod: (pod.into(), sport),
        remote: (remote.into(), dport),
        node: (node.into(), node_port),
    };
    let conns = [
        snat(6, pod, 40100, 443, 40100),
        snat(17, pod, 40101, 5353, 40101),
        // Two pods, one source port, one destination: Cilium gives the second another port.
        snat(6, pod, 40200, 443, 40200),
        snat(6, jobs, 40200, 443, 40201),
    ];
    cilium_snat::masquerade(&t.prefix, t, 1, &map, &conns).unwrap();
    let bpffs = cilium_snat::bpffs(&t.prefix);
    let agent = lab_agent(&lab, 1, &["--cilium-bpffs", bpffs.to_str().unwrap()]);
    assert_eq!(
        agent.metric(r#"tenantflow_nat_mechanism{mechanism="conntrack+cilium_bpf_masquerade"}"#),
        Some(1.0)
    );

    let web1 = t.pod_ns(t.pod("web-1"));
    let srv = traffic_bg(
        &t.internet_ns(),
        &["tcp-serve", &format!("{remote}:443"), "700", "--peers"],
    );
    let got = traffic(
        &web1,
        &[
            "tcp-send",
            &format!("{remote}:443"),
            "300",
            "--bind",
            &format!("{pod}:40100"),
        ],
    );
    assert_eq!(got.trim(), "700");
    // The firewall's view: the node address and the NAT port.
    assert_eq!(finish(srv).trim(), format!("300 {node}:40100"));
    let rx = traffic_bg(
        &t.internet_ns(),
        &["udp-recv", &format!("{remote}:5353"), "2", "--peers"],
    );
    traffic(
        &web1,
        &[
            "udp-send",
            &format!("{remote}:5353"),
            "2",
            "50",
            "--bind",
            &format!("{pod}:40101"),
        ],
    );
    assert_eq!(finish(rx).trim(), format!("2\n{node}:40101 2"));
    let srv = traffic_bg(
        &t.internet_ns(),
        &[
            "tcp-serve",
            &format!("{remote}:443"),
            "100",
            "--peers",
            "--conns",
            "2",
        ],
    );
    for from in [&pod, &jobs] {
        let ns = if from == &pod {
            web1.clone()
        } else {
            t.pod_ns(t.pod("jobs-1"))
        };
        let to = format!("{remote}:443");
        let bind = format!("{from}:40200");
        let got = traffic(&ns, &["tcp-send", &to, "50", "--bind", &bind]);
        assert_eq!(got.trim(), "100");
    }
    assert_eq!(
        finish(srv).trim(),
        format!("50 {node}:40200\n50 {node}:40201"),
        "the firewall sees two node ports"
    );
    // Netfilter never tracked them: nothing to join but Cilium's map.
    let tracked = in_ns(&t.node_ns(1), &["conntrack", "-L", "-s", &pod.to_string()]);
    assert!(
        !tracked.contains("sport=4010"),
        "conntrack holds them:\n{tracked}"
    );

    for s in conns {
        let (src, sport) = (s.pod.0.to_string(), s.pod.1 as u64);
        let port = s.remote.1 as u64;
        let c = wait_connection(
            &agent,
            |c: &Value| c["src"] == src.as_str() && c["src_port"] == sport,
            |c: &Value| c["nat_joined"] == true,
        );
        assert_eq!(
            c["snat"],
            serde_json::json!({"ip": node.to_string(), "port": s.node.1}),
            "{c:#}"
        );
        assert_eq!(c["nat_joined"], true);
        assert!(c.get("snat_inferred").is_none(), "joined, not inferred");
        assert_eq!(c["flow_class"], "pod_to_egress");
        // Both hooks of each direction (pod veth, uplink before and after translation)
        // counted the same packets: one connection, nothing split off.
        for (dir, forward) in [("forward", true), ("reply", false)] {
            let counts: Vec<(u64, u64)> = c["sightings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| (s["direction"] == "forward") == forward)
                .map(|s| (s["packets"].as_u64().unwrap(), s["bytes"].as_u64().unwrap()))
                .collect();
            let want = (
                c[dir]["packets"].as_u64().unwrap(),
                c[dir]["bytes"].as_u64().unwrap(),
            );
            let unanswered = port == 5353 && !forward;
            assert!(counts.len() >= if unanswered { 0 } else { 2 }, "{c:#}");
            assert!(counts.iter().all(|&x| x == want), "{dir}: {counts:?} {c:#}");
        }
        if port == 5353 {
            // Two datagrams of 50 bytes (+ 28 of headers each), no answer.
            assert_eq!(
                (&c["forward"], &c["reply"]),
                (
                    &serde_json::json!({"packets": 2, "bytes": 156}),
                    &serde_json::json!({"packets": 0, "bytes": 0})
                )
            );
        }
    }
    // Nothing reported under the node's address, nothing unjoined.
    let from_node: Vec<Value> = agent
        .connections("")
        .into_iter()
        .filter(|c| c["src"] == node.to_string().as_str())
        .collect();
    assert_eq!(from_node, Vec::<Value>::new());
    assert_eq!(
        agent.metric("tenantflow_nat_unjoined_connections"),
        Some(0.0)
    );
}

/// The same over IPv6: Cilium's `cilium_snat_v6_external` (38/56-byte layout) is the only
/// record of the translation, and each connection is one record with the pod's IPv6
/// address, the node's IPv6 address and port as `snat`, and exact counts.
#[test]
fn ipv6_snat_of_ciliums_bpf_masquerade_is_joined_from_its_v6_map() {
    let lab = lab("c6");
    let t = &lab.topo;
    let pod: Ipv6Addr = t.pod("web-1").ip6().parse().unwrap();
    let node: Ipv6Addr = t.node(1).ip6().parse().unwrap();
    let remote: Ipv6Addr = INTERNET_HOST6.parse().unwrap();
    let maps = cilium_snat::create_map(&t.prefix).unwrap();
    let snat = |proto, sport, dport, node_port| Snat {
        proto,
        pod: (pod.into(), sport),
        remote: (remote.into(), dport),
        node: (node.into(), node_port),
    };
    // The UDP flow leaves under another port than the pod's.
    let conns = [snat(6, 40300, 443, 40300), snat(17, 40301, 5353, 40302)];
    cilium_snat::masquerade(&t.prefix, t, 1, &maps, &conns).unwrap();
    let bpffs = cilium_snat::bpffs(&t.prefix);
    let agent = lab_agent(&lab, 1, &["--cilium-bpffs", bpffs.to_str().unwrap()]);

    let web1 = t.pod_ns(t.pod("web-1"));
    let srv = traffic_bg(
        &t.internet_ns(),
        &["tcp-serve", &format!("[{remote}]:443"), "700", "--peers"],
    );
    let bind = format!("[{pod}]:40300");
    let got = traffic(
        &web1,
        &[
            "tcp-send",
            &format!("[{remote}]:443"),
            "300",
            "--bind",
            &bind,
        ],
    );
    assert_eq!(got.trim(), "700");
    assert_eq!(finish(srv).trim(), format!("300 [{node}]:40300"));
    let rx = traffic_bg(
        &t.internet_ns(),
        &["udp-recv", &format!("[{remote}]:5353"), "2", "--peers"],
    );
    let bind = format!("[{pod}]:40301");
    let to = format!("[{remote}]:5353");
    traffic(&web1, &["udp-send", &to, "2", "50", "--bind", &bind]);
    assert_eq!(finish(rx).trim(), format!("2\n[{node}]:40302 2"));
    let tracked = in_ns(&t.node_ns(1), &["conntrack", "-L", "-f", "ipv6"]);
    assert!(
        !tracked.contains("sport=4030"),
        "conntrack holds them:\n{tracked}"
    );

    for s in conns {
        let sport = s.pod.1 as u64;
        let c = wait_connection(
            &agent,
            |c: &Value| c["src"] == pod.to_string().as_str() && c["src_port"] == sport,
            |c: &Value| c["nat_joined"] == true,
        );
        assert_eq!(
            c["snat"],
            serde_json::json!({"ip": node.to_string(), "port": s.node.1}),
            "{c:#}"
        );
        assert_eq!(c["dst"], INTERNET_HOST6);
        assert_eq!(c["flow_class"], "pod_to_egress");
        if s.proto == 17 {
            // Two datagrams of 50 bytes (+ 48 of IPv6 and UDP headers each), no answer.
            assert_eq!(
                (&c["forward"], &c["reply"]),
                (
                    &serde_json::json!({"packets": 2, "bytes": 196}),
                    &serde_json::json!({"packets": 0, "bytes": 0})
                )
            );
        } else {
            assert_eq!(c["outcome"], "established", "{c:#}");
        }
    }
    let from_node: Vec<Value> = agent
        .connections("")
        .into_iter()
        .filter(|c| c["src"] == node.to_string().as_str() && c["proto"] != "icmpv6")
        .collect();
    // (The node's own neighbour discovery is ICMPv6 under its address, rightly.)
    assert_eq!(
        from_node,
        Vec::<Value>::new(),
        "nothing under the node's address"
    );
    assert_eq!(
        agent.metric("tenantflow_nat_unjoined_connections"),
        Some(0.0)
    );
}
