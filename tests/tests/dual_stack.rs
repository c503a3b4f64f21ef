//! The dual-stack (kubenet) lab over IPv6: a pod's egress through the node's ip6tables
//! MASQUERADE and a pod's connection to a Service's IPv6 ClusterIP through kube-proxy's
//! ip6tables DNAT. Each record carries both sides of its translation, joined from
//! conntrack, with packets and bytes equal to the endpoints' own counters.

use std::collections::HashMap;

use serde_json::Value;
use tenantflow_tests::{
    agent::{counts, endpoint, is_tuple, wait_connection},
    eventually, finish, lab, lab_agent, snmp, traffic, traffic_bg, udp_seen_as,
};
use xtask::lab::topology::INTERNET_HOST6;

fn sock(ip: &str, port: u16) -> String {
    format!("[{ip}]:{port}")
}

/// TCP segments each namespace in `nss` sent since `before`. None may have been
/// retransmitted: the byte formula counts one SYN per direction.
fn segs_since(nss: &[&str], before: &[HashMap<String, u64>]) -> Vec<u64> {
    nss.iter()
        .zip(before)
        .map(|(ns, b)| {
            let now = snmp::read(ns);
            let retrans = snmp::delta(b, &now, "Tcp:RetransSegs");
            assert_eq!(
                retrans, 0,
                "{ns} retransmitted: the oracle's bytes assume not"
            );
            snmp::delta(b, &now, "Tcp:OutSegs")
        })
        .collect()
}

#[test]
fn ipv6_egress_through_masquerade_carries_the_pod_and_the_node_address() {
    let lab = lab("d6e");
    let t = &lab.topo;
    let jobs = t.pod("jobs-1");
    let ns = t.pod_ns(jobs);
    let inet = t.internet_ns();
    let agent = lab_agent(&lab, 1, &[]);
    let node6 = t.node(1).ip6();

    let peer = udp_seen_as(
        &ns,
        &sock(&jobs.ip6(), 6000),
        &inet,
        &sock(INTERNET_HOST6, 5353),
        5,
        100,
    );
    assert!(
        peer.starts_with(&format!("[{node6}]:")),
        "the internet host sees the node's address: {peer}"
    );
    let udp = wait_connection(
        &agent,
        |c| is_tuple(c, "udp", &jobs.ip6(), 6000, INTERNET_HOST6, 5353),
        |c| counts(c, "forward") == (5, 5 * 148) && !c["snat"].is_null(),
    );
    assert_eq!(
        endpoint(&udp["snat"]),
        Some(peer),
        "post-SNAT = what the far end saw"
    );
    assert_eq!(udp["dnat"], Value::Null);
    assert_eq!(udp["nat_joined"], true);
    assert_eq!(counts(&udp, "reply"), (0, 0));
    assert_eq!(udp["flow_class"], "pod_to_egress", "{udp:#}");

    let before = [snmp::read(&ns), snmp::read(&inet)];
    let srv = traffic_bg(
        &inet,
        &["tcp-serve", &sock(INTERNET_HOST6, 443), "3000", "--peers"],
    );
    traffic(
        &ns,
        &[
            "tcp-send",
            &sock(INTERNET_HOST6, 443),
            "1000",
            "--bind",
            &sock(&jobs.ip6(), 6001),
        ],
    );
    let out = finish(srv);
    let peer = out.split_whitespace().nth(1).unwrap().to_owned();
    let want = || {
        let s = segs_since(&[&ns, &inet], &before);
        (
            (s[0], snmp::tcp_bytes(s[0], 1000, 40)),
            (s[1], snmp::tcp_bytes(s[1], 3000, 40)),
        )
    };
    let tcp = wait_connection(
        &agent,
        |c| is_tuple(c, "tcp", &jobs.ip6(), 6001, INTERNET_HOST6, 443),
        |c| (counts(c, "forward"), counts(c, "reply")) == want(),
    );
    assert_eq!((counts(&tcp, "forward"), counts(&tcp, "reply")), want());
    assert_eq!(endpoint(&tcp["snat"]), Some(peer));
    assert_eq!(tcp["nat_joined"], true);
    assert_eq!(tcp["outcome"], "established");
}

#[test]
fn ipv6_cluster_ip_carries_the_vip_and_the_backend_that_served_it() {
    let lab = lab("d6s");
    let t = &lab.topo;
    let api = t.pod("api-1");
    let svc = &t.services[0];
    let backends: Vec<_> = svc.backends.iter().map(|b| t.pod(b).clone()).collect();
    let servers: Vec<_> = backends
        .iter()
        .map(|p| {
            let bind = sock(&p.ip6(), svc.target_port);
            traffic_bg(&t.pod_ns(p), &["tcp-serve", &bind, "2000", "--peers"])
        })
        .collect();
    let agent = lab_agent(&lab, 1, &[]);
    let nss: Vec<String> = std::iter::once(t.pod_ns(api))
        .chain(backends.iter().map(|p| t.pod_ns(p)))
        .collect();
    let nss: Vec<&str> = nss.iter().map(String::as_str).collect();
    let before: Vec<_> = nss.iter().map(|ns| snmp::read(ns)).collect();
    let got = traffic(
        &t.pod_ns(api),
        &[
            "tcp-send",
            &sock(&svc.vip6, svc.port),
            "100",
            "--bind",
            &sock(&api.ip6(), 20000),
        ],
    );
    assert_eq!(got.trim(), "2000");
    // The backend that served it exits after its one connection, printing its peer; the
    // other never saw one.
    let mut servers = servers;
    let done = eventually(std::time::Duration::from_secs(10), || {
        servers
            .iter_mut()
            .position(|c| c.try_wait().unwrap().is_some())
    })
    .expect("one backend served the connection");
    let mut served = None;
    for (i, (p, mut child)) in backends.iter().zip(servers).enumerate() {
        if i == done {
            let out = finish(child);
            assert_eq!(out.trim(), format!("100 {}", sock(&api.ip6(), 20000)));
            served = Some(p.clone());
        } else {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
    let served = served.expect("the backend that exited");
    let idx = backends.iter().position(|p| p.name == served.name).unwrap() + 1;
    let want = || {
        let s = segs_since(&nss, &before);
        (
            (s[0], snmp::tcp_bytes(s[0], 100, 40)),
            (s[idx], snmp::tcp_bytes(s[idx], 2000, 40)),
        )
    };
    let c = wait_connection(
        &agent,
        |c| is_tuple(c, "tcp", &api.ip6(), 20000, &svc.vip6, svc.port),
        |c| (counts(c, "forward"), counts(c, "reply")) == want() && !c["dnat"].is_null(),
    );
    assert_eq!((counts(&c, "forward"), counts(&c, "reply")), want());
    assert_eq!(
        endpoint(&c["dnat"]),
        Some(sock(&served.ip6(), svc.target_port))
    );
    assert_eq!(c["snat"], Value::Null);
    assert_eq!(c["nat_joined"], true);
    assert_eq!(c["flow_class"], "pod_to_service", "{c:#}");
    assert_eq!(c["backend_identity"]["pod"], served.name.as_str());
    assert_eq!(c["cross_tenant"], true, "beta → alpha's backend");
}
