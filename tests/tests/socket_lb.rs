//! Services under socket-LB (Cilium's kube-proxy replacement): a lab stand-in rewrites the
//! ClusterIP to a backend inside connect() (`xtask/src/lab/socket_lb.rs`), so no packet
//! carries the VIP and netfilter has no DNAT. The agent's own hooks on the pods' cgroup run
//! first and see what connect() asked for; the record carries the VIP as destination and
//! the backend as `dnat`, the class is `pod_to_service`, and the backend's tenant decides
//! the cross-tenant verdict.

use std::{net::Ipv4Addr, process::Command};

use serde_json::Value;
use tenantflow_tests::{agent::wait_connection, finish, lab, lab_agent, traffic_bg, traffic_bin};
use xtask::lab::{manifest, socket_lb};

#[test]
fn a_cluster_ip_under_socket_lb_carries_the_vip_and_the_backend() {
    let lab = lab("sl");
    let t = &lab.topo;
    let svc = t.services[0].clone();
    let backend = t.pod(&svc.backends[0]);
    let vip: Ipv4Addr = svc.vip.parse().unwrap();
    let be: Ipv4Addr = backend.ip().parse().unwrap();
    let root = manifest::cgroup_dir(&t.prefix);
    let pods = socket_lb::enable(&root, &t.prefix, (vip, svc.port), (be, svc.target_port)).unwrap();
    let agent = lab_agent(&lab, 1, &["--pods-cgroup", pods.to_str().unwrap()]);
    let srv = traffic_bg(
        &t.pod_ns(backend),
        &[
            "tcp-serve",
            &format!("{be}:{}", svc.target_port),
            "200",
            "--peers",
        ],
    );
    // api-1 (tenant beta) connects to the VIP from inside its pod cgroup.
    let api1 = t.pod("api-1");
    let pod_cg = pods.join(format!("pod{}", api1.uid()));
    std::fs::create_dir_all(&pod_cg).unwrap();
    let send = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} tcp-send {}:{} 100 --bind {}:41000",
        pod_cg.display(),
        t.pod_ns(api1),
        traffic_bin().display(),
        svc.vip,
        svc.port,
        api1.ip()
    );
    let out = Command::new("sh").args(["-c", &send]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200");
    // The backend was reached directly: socket-LB rewrote the connect.
    assert_eq!(finish(srv).trim(), format!("100 {}:41000", api1.ip()));

    let c = wait_connection(
        &agent,
        |c: &Value| c["src_port"] == 41000,
        |c: &Value| !c["dnat"].is_null(),
    );
    assert_eq!(
        (&c["dst"], &c["dst_port"]),
        (&serde_json::json!(svc.vip), &serde_json::json!(svc.port)),
        "{c:#}"
    );
    assert_eq!(
        c["dnat"],
        serde_json::json!({"ip": backend.ip(), "port": svc.target_port})
    );
    assert_eq!(c["flow_class"], "pod_to_service");
    assert_eq!(c["backend_identity"]["pod"], backend.name.as_str());
    assert_eq!(c["cross_tenant"], true, "beta → alpha's backend");
    assert_eq!(c["nat_joined"], true);
    // Counted once: the pod's veth saw the backend's tuple both ways.
    assert_eq!(c["forward"]["packets"], c["sightings"][0]["packets"]);
    drop(agent);
    std::fs::remove_dir(&pod_cg).unwrap();
}

/// Unconnected UDP to the VIP: socket-LB rewrites each sendmsg() (DNS to kube-dns is
/// this), and the agent's sendmsg4 and cgroup egress hooks record the pair.
#[test]
fn udp_to_a_cluster_ip_under_socket_lb_carries_the_vip_and_the_backend() {
    let lab = lab("su");
    let t = &lab.topo;
    let svc = t.services[0].clone();
    let backend = t.pod(&svc.backends[0]);
    let vip: Ipv4Addr = svc.vip.parse().unwrap();
    let be: Ipv4Addr = backend.ip().parse().unwrap();
    let root = manifest::cgroup_dir(&t.prefix);
    let pods = socket_lb::enable(&root, &t.prefix, (vip, svc.port), (be, svc.target_port)).unwrap();
    let agent = lab_agent(&lab, 1, &["--pods-cgroup", pods.to_str().unwrap()]);
    let rx = traffic_bg(
        &t.pod_ns(backend),
        &[
            "udp-recv",
            &format!("{be}:{}", svc.target_port),
            "5",
            "--peers",
        ],
    );
    let api1 = t.pod("api-1");
    let pod_cg = pods.join(format!("pod{}", api1.uid()));
    std::fs::create_dir_all(&pod_cg).unwrap();
    let send = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} udp-send {}:{} 5 100 --bind {}:41001",
        pod_cg.display(),
        t.pod_ns(api1),
        traffic_bin().display(),
        svc.vip,
        svc.port,
        api1.ip()
    );
    let out = Command::new("sh").args(["-c", &send]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // All five reached the backend directly: sendmsg() was rewritten.
    assert_eq!(finish(rx).trim(), format!("5\n{}:41001 5", api1.ip()));
    let c = wait_connection(
        &agent,
        |c: &Value| c["src_port"] == 41001,
        |c: &Value| !c["dnat"].is_null() && c["forward"]["packets"] == 5,
    );
    assert_eq!(c["proto"], "udp", "{c:#}");
    assert_eq!(
        (&c["dst"], &c["dst_port"]),
        (&serde_json::json!(svc.vip), &serde_json::json!(svc.port)),
        "{c:#}"
    );
    assert_eq!(
        c["dnat"],
        serde_json::json!({"ip": backend.ip(), "port": svc.target_port})
    );
    assert_eq!(c["flow_class"], "pod_to_service");
    assert_eq!(c["backend_identity"]["pod"], backend.name.as_str());
    assert_eq!(c["cross_tenant"], true, "beta → alpha's backend");
    assert_eq!(c["forward"]["bytes"], 5 * 128);
    drop(agent);
    std::fs::remove_dir(&pod_cg).unwrap();
}
