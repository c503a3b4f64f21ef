//! The lab's real DNS server (`xtask::lab::dns`) for tests: dnsmasq behind a kube-dns-like
//! VIP, glibc lookups from the pods.

use xtask::lab::dns::DnsServer;
pub use xtask::lab::dns::DNS_VIP;

use crate::LabGuard;

/// The lab's DNS server, stopped and its resolv.conf files removed on drop.
pub struct Dns(#[allow(dead_code)] DnsServer);

impl Dns {
    /// With a 30 s TTL.
    pub fn start(lab: &LabGuard) -> Self {
        Self::start_with_ttl(lab, 30)
    }

    pub fn start_with_ttl(lab: &LabGuard, ttl: u32) -> Self {
        Dns(DnsServer::start(&lab.topo, ttl).expect("the lab's DNS server"))
    }
}

/// `getent ahostsv4 NAME` in `pod`'s namespace: the sorted addresses, or None.
pub fn resolve(lab: &LabGuard, pod: &str, name: &str) -> Option<Vec<String>> {
    xtask::lab::dns::resolve(&lab.topo, pod, name)
}

/// Sets `pod`'s resolv.conf (the [`Dns`] removes it).
pub fn resolv_conf(lab: &LabGuard, pod: &str, text: &str) {
    xtask::lab::dns::resolv_conf(&lab.topo, pod, text).expect("writing resolv.conf");
}
