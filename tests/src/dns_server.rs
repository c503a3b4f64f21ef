//! A real DNS server for the lab: dnsmasq (Debian's package) in kube-system's coredns-1
//! pod behind a kube-dns-like Service VIP, and glibc lookups from the pods.

use std::{path::PathBuf, process::Child};

use xtask::lab::topology::INTERNET_HOST;

use crate::{in_ns, LabGuard};

/// The kube-dns-like VIP the pods' resolv.conf names.
pub const DNS_VIP: &str = "10.0.0.53";

/// dnsmasq in kube-system's coredns-1 pod, reached through [`DNS_VIP`] (DNAT on both nodes
/// for UDP and TCP, as kube-proxy programs every node), answering for `test.`:
/// `api.example.test` is a CNAME of `edge.example.test`, which has two addresses, the lab's
/// internet host first; `big.example.test` has 40 addresses, the internet host among them
/// (an answer too big for plain UDP: truncated, then asked again over TCP).
/// Every pod of the lab gets a resolv.conf naming the VIP (`ip netns exec` mounts
/// /etc/netns/<ns>/resolv.conf). Removed on drop.
pub struct Dns {
    server: Child,
    dirs: Vec<PathBuf>,
}

impl Dns {
    pub fn start(lab: &LabGuard) -> Self {
        Self::start_with_ttl(lab, 30)
    }

    pub fn start_with_ttl(lab: &LabGuard, ttl: u32) -> Self {
        let t = &lab.topo;
        let coredns = t.pod("coredns-1");
        let dir = std::env::temp_dir().join(format!("{}-dns", t.prefix));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        let mut lines =
            format!("{INTERNET_HOST} edge.example.test\n198.51.100.8 edge.example.test\n");
        lines.push_str(&format!("{INTERNET_HOST} big.example.test\n"));
        for i in 100..139 {
            lines.push_str(&format!("198.51.100.{i} big.example.test\n"));
        }
        std::fs::write(&hosts, lines).unwrap();
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.pod_ns(coredns),
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .args([
                "--cname=api.example.test,edge.example.test",
                "--local=/test/",
            ])
            .arg(format!("--local-ttl={ttl}"))
            .args(["--bind-interfaces", "--pid-file"])
            .arg(format!("--listen-address={}", coredns.ip()))
            .spawn()
            .expect("dnsmasq: run `cargo xtask setup`");
        for (node, proto) in [1, 2]
            .into_iter()
            .flat_map(|n| [(t.node_ns(n), "udp"), (t.node_ns(n), "tcp")])
        {
            in_ns(
                &node,
                &[
                    "iptables",
                    "-t",
                    "nat",
                    "-I",
                    "PREROUTING",
                    "-d",
                    DNS_VIP,
                    "-p",
                    proto,
                    "--dport",
                    "53",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &format!("{}:53", coredns.ip()),
                ],
            );
        }
        let mut dirs = vec![dir];
        for p in &t.pods {
            let etc = PathBuf::from("/etc/netns").join(t.pod_ns(p));
            std::fs::create_dir_all(&etc).unwrap();
            std::fs::write(etc.join("resolv.conf"), format!("nameserver {DNS_VIP}\n")).unwrap();
            dirs.push(etc);
        }
        // dnsmasq answers once it is bound.
        let ready = crate::eventually(std::time::Duration::from_secs(10), || {
            resolve(lab, "coredns-2", "edge.example.test")
                .is_some()
                .then_some(())
        });
        assert!(ready.is_some(), "dnsmasq never answered");
        Dns { server, dirs }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `getent ahostsv4 NAME` in `pod`'s namespace (glibc's resolver, its resolv.conf): the
/// addresses, or None when it failed.
pub fn resolve(lab: &LabGuard, pod: &str, name: &str) -> Option<Vec<String>> {
    let t = &lab.topo;
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.pod_ns(t.pod(pod)),
            "getent",
            "ahostsv4",
            name,
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("STREAM"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    // glibc orders them by its address-selection rules; the set is what the answer gave.
    v.sort();
    v.dedup();
    Some(v)
}

/// Sets `pod`'s resolv.conf (the test's [`Dns`] removes it).
pub fn resolv_conf(lab: &LabGuard, pod: &str, text: &str) {
    let etc = PathBuf::from("/etc/netns").join(lab.topo.pod_ns(lab.topo.pod(pod)));
    std::fs::write(etc.join("resolv.conf"), text).unwrap();
}
