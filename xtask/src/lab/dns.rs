//! A real DNS server for the lab: dnsmasq (Debian's package) in kube-system's coredns-1 pod
//! behind a kube-dns-like Service VIP, and glibc lookups from the pods. The demo's pods
//! resolve before they connect; the DNS tests use it to check the names on flows.

use std::{path::PathBuf, process::Child};

use anyhow::{Context, Result};

use super::topology::{Topology, INTERNET_HOST, INTERNET_HOST6};
use crate::exec::in_ns;

/// The kube-dns-like VIP the pods' resolv.conf names.
pub const DNS_VIP: &str = "10.0.0.53";

/// dnsmasq in coredns-1, reached through [`DNS_VIP`] (DNAT on both nodes for UDP and TCP, as
/// kube-proxy programs every node), answering for `test.`: `api.example.test` is a CNAME
/// of `edge.example.test`, which has two addresses, the lab's internet host first;
/// `big.example.test` has 40 addresses, the internet host among them (an answer too big for
/// plain UDP: truncated, then asked again over TCP); `edge6.example.test` is the internet
/// host's IPv6 address (AAAA); other names in `test.` do not exist.
/// Every pod of the lab gets a resolv.conf naming the VIP (`ip netns exec` mounts
/// /etc/netns/<ns>/resolv.conf). Stopped and removed on drop.
pub struct DnsServer {
    server: Child,
    dirs: Vec<PathBuf>,
}

impl DnsServer {
    /// Start it with `ttl` seconds on every answer; returns once it answers.
    pub fn start(t: &Topology, ttl: u32) -> Result<Self> {
        let coredns = t.pod("coredns-1");
        let dir = std::env::temp_dir().join(format!("{}-dns", t.prefix));
        std::fs::create_dir_all(&dir)?;
        let hosts = dir.join("hosts");
        let mut lines =
            format!("{INTERNET_HOST} edge.example.test\n198.51.100.8 edge.example.test\n");
        lines.push_str(&format!("{INTERNET_HOST6} edge6.example.test\n"));
        lines.push_str(&format!("{INTERNET_HOST} big.example.test\n"));
        for i in 100..139 {
            lines.push_str(&format!("198.51.100.{i} big.example.test\n"));
        }
        std::fs::write(&hosts, lines)?;
        let server = std::process::Command::new("ip")
            .args(["netns", "exec", &t.pod_ns(coredns), "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
            ])
            .args([
                "--no-hosts",
                "--user=root",
                "--bind-interfaces",
                "--pid-file",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .args([
                "--cname=api.example.test,edge.example.test",
                "--local=/test/",
            ])
            .arg(format!("--local-ttl={ttl}"))
            .arg(format!("--listen-address={}", coredns.ip()))
            .spawn()
            .context("dnsmasq: run `cargo xtask setup` (dnsmasq-base)")?;
        let mut dns = DnsServer {
            server,
            dirs: vec![dir],
        };
        let to = format!("{}:53", coredns.ip());
        for n in [1, 2] {
            for proto in ["udp", "tcp"] {
                in_ns(
                    &t.node_ns(n),
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
                        &to,
                    ],
                )?;
            }
        }
        for p in &t.pods {
            let etc = PathBuf::from("/etc/netns").join(t.pod_ns(p));
            std::fs::create_dir_all(&etc)?;
            dns.dirs.push(etc.clone());
            std::fs::write(etc.join("resolv.conf"), format!("nameserver {DNS_VIP}\n"))?;
        }
        // dnsmasq answers once it is bound.
        for _ in 0..100 {
            if resolve(t, "coredns-2", "edge.example.test").is_some() {
                return Ok(dns);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        anyhow::bail!("dnsmasq in {} never answered", t.pod_ns(coredns))
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `getent ahostsv4 NAME` in `pod`'s namespace (glibc's resolver, its resolv.conf): the
/// addresses, sorted, or None when the lookup failed.
pub fn resolve(t: &Topology, pod: &str, name: &str) -> Option<Vec<String>> {
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
        .ok()?;
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

/// Sets `pod`'s resolv.conf (the [`DnsServer`] removes it).
pub fn resolv_conf(t: &Topology, pod: &str, text: &str) -> Result<()> {
    let etc = PathBuf::from("/etc/netns").join(t.pod_ns(t.pod(pod)));
    std::fs::write(etc.join("resolv.conf"), text)?;
    Ok(())
}
