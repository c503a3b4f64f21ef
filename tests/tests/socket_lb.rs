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

/// A lab with the socket-LB stand-in on the web Service and the agent hooking the pods'
/// cgroup; returns what the tests need.
struct SocketLbLab {
    lab: tenantflow_tests::LabGuard,
    agent: tenantflow_tests::Agent,
    svc: xtask::lab::topology::Service,
    be: Ipv4Addr,
    pod_cg: std::path::PathBuf,
}

fn socket_lb_lab(tag: &str) -> SocketLbLab {
    let lab = lab(tag);
    let t = &lab.topo;
    let svc = t.services[0].clone();
    let be: Ipv4Addr = t.pod(&svc.backends[0]).ip().parse().unwrap();
    let vip: Ipv4Addr = svc.vip.parse().unwrap();
    let root = manifest::cgroup_dir(&t.prefix);
    let pods = socket_lb::enable(&root, &t.prefix, (vip, svc.port), (be, svc.target_port)).unwrap();
    let agent = lab_agent(&lab, 1, &["--pods-cgroup", pods.to_str().unwrap()]);
    // api-1 (tenant beta) runs its client from inside its pod cgroup.
    let pod_cg = pods.join(format!("pod{}", t.pod("api-1").uid()));
    std::fs::create_dir_all(&pod_cg).unwrap();
    SocketLbLab {
        lab,
        agent,
        svc,
        be,
        pod_cg,
    }
}

impl SocketLbLab {
    /// Run tf-traffic `args` as api-1, from inside its pod cgroup; returns its stdout.
    fn run_as_api1(&self, args: &str) -> String {
        let t = &self.lab.topo;
        let api1 = t.pod("api-1");
        let send = format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} {args}",
            self.pod_cg.display(),
            t.pod_ns(api1),
            traffic_bin().display(),
        );
        let out = Command::new("sh").args(["-c", &send]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The record of api-1's flow from `sport`, once joined: the VIP as destination, the
    /// backend as `dnat`, a Service flow into alpha's backend.
    fn assert_vip_and_backend(&self, c: &Value) {
        let backend = self.lab.topo.pod(&self.svc.backends[0]);
        assert_eq!(
            (&c["dst"], &c["dst_port"]),
            (
                &serde_json::json!(self.svc.vip),
                &serde_json::json!(self.svc.port)
            ),
            "{c:#}"
        );
        assert_eq!(
            c["dnat"],
            serde_json::json!({"ip": backend.ip(), "port": self.svc.target_port})
        );
        assert_eq!(c["flow_class"], "pod_to_service");
        assert_eq!(c["backend_identity"]["pod"], backend.name.as_str());
        assert_eq!(c["cross_tenant"], true, "beta → alpha's backend");
    }
}

impl Drop for SocketLbLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.pod_cg);
    }
}

#[test]
fn a_cluster_ip_under_socket_lb_carries_the_vip_and_the_backend() {
    let s = socket_lb_lab("sl");
    let t = &s.lab.topo;
    let backend = t.pod(&s.svc.backends[0]);
    let api1 = t.pod("api-1");
    let srv = traffic_bg(
        &t.pod_ns(backend),
        &[
            "tcp-serve",
            &format!("{}:{}", s.be, s.svc.target_port),
            "200",
            "--peers",
        ],
    );
    let got = s.run_as_api1(&format!(
        "tcp-send {}:{} 100 --bind {}:41000",
        s.svc.vip,
        s.svc.port,
        api1.ip()
    ));
    assert_eq!(got, "200");
    // The backend was reached directly: socket-LB rewrote the connect.
    assert_eq!(finish(srv).trim(), format!("100 {}:41000", api1.ip()));
    let c = wait_connection(
        &s.agent,
        |c: &Value| c["src_port"] == 41000,
        |c: &Value| !c["dnat"].is_null(),
    );
    s.assert_vip_and_backend(&c);
    assert_eq!(c["nat_joined"], true);
    // Counted once: the pod's veth saw the backend's tuple both ways.
    assert_eq!(c["forward"]["packets"], c["sightings"][0]["packets"]);
}

/// Unconnected UDP to the VIP: socket-LB rewrites each sendmsg() (DNS to kube-dns is
/// this), and the agent's sendmsg4 and cgroup egress hooks record the pair.
#[test]
fn udp_to_a_cluster_ip_under_socket_lb_carries_the_vip_and_the_backend() {
    let s = socket_lb_lab("su");
    let t = &s.lab.topo;
    let backend = t.pod(&s.svc.backends[0]);
    let api1 = t.pod("api-1");
    let rx = traffic_bg(
        &t.pod_ns(backend),
        &[
            "udp-recv",
            &format!("{}:{}", s.be, s.svc.target_port),
            "5",
            "--peers",
        ],
    );
    s.run_as_api1(&format!(
        "udp-send {}:{} 5 100 --bind {}:41001",
        s.svc.vip,
        s.svc.port,
        api1.ip()
    ));
    // All five reached the backend directly: sendmsg() was rewritten.
    assert_eq!(finish(rx).trim(), format!("5\n{}:41001 5", api1.ip()));
    let c = wait_connection(
        &s.agent,
        |c: &Value| c["src_port"] == 41001,
        |c: &Value| !c["dnat"].is_null() && c["forward"]["packets"] == 5,
    );
    assert_eq!(c["proto"], "udp", "{c:#}");
    s.assert_vip_and_backend(&c);
    assert_eq!(c["forward"]["bytes"], 5 * 128);
}
