//! Services under socket-LB (Cilium's kube-proxy replacement): a lab stand-in rewrites the
//! ClusterIP to a backend inside connect() (`xtask/src/lab/socket_lb.rs`), so no packet
//! carries the VIP and netfilter has no DNAT. The agent's own hooks on the pods' cgroup run
//! first and see what connect() asked for; the record carries the VIP as destination and
//! the backend as `dnat`, the class is `pod_to_service`, and the backend's tenant decides
//! the cross-tenant verdict.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

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
    // The Service is dual-stack: its IPv6 ClusterIP goes to the same backend.
    let be6: Ipv6Addr = t.pod(&svc.backends[0]).ip6().parse().unwrap();
    let vip6: Ipv6Addr = svc.vip6.parse().unwrap();
    socket_lb::enable6(&root, &t.prefix, (vip6, svc.port), (be6, svc.target_port)).unwrap();
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

    /// Five datagrams of 100 bytes from api-1's `sport` to the VIP (the IPv6 one if `v6`),
    /// sent with `how`: they reach the backend directly, and one record has the VIP, the
    /// backend and exactly those counts.
    fn udp_to_vip(&self, how: &str, sport: u16, v6: bool) {
        let t = &self.lab.topo;
        let backend = t.pod(&self.svc.backends[0]);
        let api1 = t.pod("api-1");
        let sock = |ip: String, port: u16| {
            if v6 {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        };
        let (vip, be, me) = if v6 {
            (self.svc.vip6.clone(), backend.ip6(), api1.ip6())
        } else {
            (self.svc.vip.clone(), backend.ip(), api1.ip())
        };
        let rx = traffic_bg(
            &t.pod_ns(backend),
            &["udp-recv", &sock(be, self.svc.target_port), "5", "--peers"],
        );
        let (to, from) = (sock(vip, self.svc.port), sock(me, sport));
        self.run_as_api1(&format!("udp-send {to} 5 100 --bind {from}{how}"));
        // All five reached the backend directly: the socket call was rewritten.
        assert_eq!(finish(rx).trim(), format!("5\n{from} 5"));
        let c = wait_connection(
            &self.agent,
            |c: &Value| c["src_port"] == sport,
            |c: &Value| !c["dnat"].is_null() && c["forward"]["packets"] == 5,
        );
        assert_eq!(c["proto"], "udp", "{c:#}");
        self.assert_vip_and_backend_in(&c, v6);
        // 100 bytes and the IP and UDP headers (28 bytes over IPv4, 48 over IPv6).
        let headers = if v6 { 48 } else { 28 };
        assert_eq!(c["forward"]["bytes"], 5 * (100 + headers));
    }

    /// The record of api-1's flow from `sport`, once joined: the VIP as destination, the
    /// backend as `dnat`, a Service flow into alpha's backend; over IPv6 when `v6`.
    fn assert_vip_and_backend_in(&self, c: &Value, v6: bool) {
        let backend = self.lab.topo.pod(&self.svc.backends[0]);
        let (vip, be) = if v6 {
            (self.svc.vip6.clone(), backend.ip6())
        } else {
            (self.svc.vip.clone(), backend.ip())
        };
        assert_eq!(
            (&c["dst"], &c["dst_port"]),
            (&serde_json::json!(vip), &serde_json::json!(self.svc.port)),
            "{c:#}"
        );
        assert_eq!(
            c["dnat"],
            serde_json::json!({"ip": be, "port": self.svc.target_port})
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
    s.assert_vip_and_backend_in(&c, false);
    assert_eq!(c["nat_joined"], true);
    // Counted once: the pod's veth saw the backend's tuple both ways.
    assert_eq!(c["forward"]["packets"], c["sightings"][0]["packets"]);
}

/// Unconnected UDP to the VIP: socket-LB rewrites each sendmsg() (DNS to kube-dns is
/// this), and the agent's sendmsg4 and cgroup egress hooks record the pair.
#[test]
fn udp_to_a_cluster_ip_under_socket_lb_carries_the_vip_and_the_backend() {
    udp_to_the_vip("su", "", 41001);
}

/// Connected UDP to the VIP (glibc's resolver connects its socket): socket-LB rewrites the
/// connect() once, and the agent's connect4 and cgroup egress hooks record the pair.
#[test]
fn connected_udp_to_a_cluster_ip_under_socket_lb_carries_the_vip_and_the_backend() {
    udp_to_the_vip("sc", " --connect", 41002);
}

/// Five datagrams from api-1's `sport` to the IPv4 VIP, sent with `how`.
fn udp_to_the_vip(tag: &str, how: &str, sport: u16) {
    socket_lb_lab(tag).udp_to_vip(how, sport, false);
}

/// TCP to the Service's IPv6 ClusterIP: socket-LB rewrites connect() (connect6), and the
/// agent's connect6 and sock_ops hooks record the pair.
#[test]
fn tcp_to_an_ipv6_cluster_ip_under_socket_lb_carries_the_vip_and_the_backend() {
    let s = socket_lb_lab("s6");
    let t = &s.lab.topo;
    let backend = t.pod(&s.svc.backends[0]);
    let api1 = t.pod("api-1");
    let srv = traffic_bg(
        &t.pod_ns(backend),
        &[
            "tcp-serve",
            &format!("[{}]:{}", backend.ip6(), s.svc.target_port),
            "200",
            "--peers",
        ],
    );
    let got = s.run_as_api1(&format!(
        "tcp-send [{}]:{} 100 --bind [{}]:41003",
        s.svc.vip6,
        s.svc.port,
        api1.ip6()
    ));
    assert_eq!(got, "200");
    assert_eq!(finish(srv).trim(), format!("100 [{}]:41003", api1.ip6()));
    let c = wait_connection(
        &s.agent,
        |c: &Value| c["src_port"] == 41003,
        |c: &Value| !c["dnat"].is_null(),
    );
    s.assert_vip_and_backend_in(&c, true);
    assert_eq!(c["src"], api1.ip6().as_str());
    assert_eq!(c["nat_joined"], true);
    assert_eq!(c["forward"]["packets"], c["sightings"][0]["packets"]);
}

/// UDP to the IPv6 ClusterIP, unconnected (sendmsg6) and connected (connect6): one record
/// each with the VIP, the backend and exactly the datagrams sent (48 bytes of IPv6 and UDP
/// headers each).
#[test]
fn udp_to_an_ipv6_cluster_ip_under_socket_lb_carries_the_vip_and_the_backend() {
    let s = socket_lb_lab("s7");
    for (how, sport) in [("", 41004), (" --connect", 41005)] {
        s.udp_to_vip(how, sport, true);
    }
}
