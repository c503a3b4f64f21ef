//! Services under socket-LB (Cilium's kube-proxy replacement rewrites a ClusterIP to a
//! backend inside connect() or sendmsg(): no packet carries the VIP, and there is no DNAT
//! to join). The kernel side (`agent-ebpf/src/service.rs`) hooks connect and sendmsg (IPv4
//! and IPv6) on
//! the cgroup that holds the pods, which run before socket-LB programs on the root cgroup,
//! plus sock_ops (TCP) and cgroup_skb egress (UDP) on the same cgroup; each TCP connection
//! or UDP flow whose destination was rewritten appears in `TF_SVC_FLOWS` as (protocol,
//! pod, source port, backend) → what the application asked for. Each harvest the agent
//! takes them out and joins them like a conntrack DNAT entry.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use agent_common::{SvcAddr, SvcTuple};
use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{links::CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps},
    Ebpf,
};

use super::NatEntry;
use crate::{
    datapath::{self, DatapathError},
    net::FlowTuple,
};

/// The cgroup under which the kubelet puts pods: systemd driver, then cgroupfs.
pub fn default_pods_cgroup(root: &Path) -> Option<PathBuf> {
    ["kubepods.slice", "kubepods"]
        .iter()
        .map(|d| root.join(d))
        .find(|p| p.is_dir())
}

pub struct SocketLb {
    flows: BpfHashMap<MapData, SvcTuple, SvcAddr>,
}

/// Load the hooks and attach them to `pods` (bpf links: they go with the agent).
pub fn attach(ebpf: &mut Ebpf, pods: &Path) -> Result<SocketLb, DatapathError> {
    let dir = datapath::cgroup_hooks::open(pods)?;
    for name in [
        "tf_svc_connect4",
        "tf_svc_sendmsg4",
        "tf_svc_connect6",
        "tf_svc_sendmsg6",
    ] {
        let prog: &mut CgroupSockAddr = datapath::program(ebpf, name)?;
        prog.load().map_err(datapath::load_err(name))?;
        prog.attach(&dir, CgroupAttachMode::Single)
            .map_err(datapath::load_err(name))?;
    }
    attach_egress(ebpf, &dir, "tf_svc_egress")?;
    let name = "tf_svc_sockops";
    let prog: &mut SockOps = datapath::program(ebpf, name)?;
    prog.load().map_err(datapath::load_err(name))?;
    prog.attach(&dir, CgroupAttachMode::Single)
        .map_err(datapath::load_err(name))?;
    Ok(SocketLb {
        flows: datapath::take_map(ebpf, "TF_SVC_FLOWS")?,
    })
}

/// The benchmark's floor (`--bench-noop`): an empty egress program where `tf_svc_egress`
/// would go, so its cost can be measured above dispatch.
pub fn attach_floor(ebpf: &mut Ebpf, pods: &Path) -> Result<(), DatapathError> {
    attach_egress(ebpf, &datapath::cgroup_hooks::open(pods)?, "tf_svc_noop")
}

/// Load `name`, a cgroup_skb program, onto the egress of cgroup `dir`.
fn attach_egress(
    ebpf: &mut Ebpf,
    dir: &std::fs::File,
    name: &'static str,
) -> Result<(), DatapathError> {
    let prog: &mut CgroupSkb = datapath::program(ebpf, name)?;
    prog.load().map_err(datapath::load_err(name))?;
    prog.attach(dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
        .map_err(datapath::load_err(name))?;
    Ok(())
}

/// The address of `a`: its words hold the address's bytes as on the wire.
fn ip(a: &SvcAddr) -> IpAddr {
    if a.family == 6 {
        let mut b = [0u8; 16];
        for (chunk, w) in b.chunks_exact_mut(4).zip(a.ip) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::from(a.ip[0].to_ne_bytes()))
    }
}

/// One rewritten connection as a DNAT entry: pod → VIP as asked, backend → pod back.
pub fn entry(t: &SvcTuple, asked: &SvcAddr) -> NatEntry {
    let pod = (ip(&t.local), t.local.port as u16);
    let proto = t.proto as u8;
    NatEntry {
        orig: FlowTuple {
            proto,
            src: pod.0,
            sport: pod.1,
            dst: ip(asked),
            dport: asked.port as u16,
        },
        reply: FlowTuple {
            proto,
            src: ip(&t.remote),
            sport: t.remote.port as u16,
            dst: pod.0,
            dport: pod.1,
        },
    }
}

impl SocketLb {
    /// Every rewritten connection recorded since the last call, taken out of the map.
    pub fn drain(&mut self) -> Vec<NatEntry> {
        let found: Vec<(SvcTuple, SvcAddr)> = self.flows.iter().filter_map(Result::ok).collect();
        for (k, _) in &found {
            let _ = self.flows.remove(k);
        }
        found.iter().map(|(k, v)| entry(k, v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{test_tuple as t, PROTO_TCP, PROTO_UDP};

    #[test]
    fn a_rewritten_connect_is_a_dnat_from_the_vip_to_the_backend() {
        let addr = |ip: &str, port| {
            SvcAddr::v4(
                u32::from_ne_bytes(ip.parse::<Ipv4Addr>().unwrap().octets()),
                port,
            )
        };
        let conn = SvcTuple {
            local: addr("10.244.1.12", 41000),
            remote: addr("10.244.2.10", 8080),
            proto: PROTO_TCP as u32,
        };
        let e = entry(&conn, &addr("10.0.0.10", 80));
        assert_eq!(e.orig, t(PROTO_TCP, "10.244.1.12", 41000, "10.0.0.10", 80));
        assert_eq!(e.dnat(), Some(("10.244.2.10".parse().unwrap(), 8080)));
        assert_eq!(e.snat(), None);
        // A UDP datagram sendmsg() rewrote: the same join, for UDP.
        let udp = SvcTuple {
            proto: PROTO_UDP as u32,
            ..conn
        };
        let e = entry(&udp, &addr("10.0.0.53", 53));
        assert_eq!(e.orig, t(PROTO_UDP, "10.244.1.12", 41000, "10.0.0.53", 53));
        assert_eq!(
            e.reply,
            t(PROTO_UDP, "10.244.2.10", 8080, "10.244.1.12", 41000)
        );
    }

    #[test]
    fn ipv6_and_ipv4_mapped_addresses_come_out_in_their_own_family() {
        let words = |ip: &str| {
            let o = ip.parse::<Ipv6Addr>().unwrap().octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        };
        let conn = SvcTuple {
            local: SvcAddr::v6(words("fd00:244:1::12"), 41000),
            remote: SvcAddr::v6(words("fd00:244:2::10"), 8080),
            proto: PROTO_TCP as u32,
        };
        let e = entry(&conn, &SvcAddr::v6(words("fd00:10::a"), 80));
        assert_eq!(
            e.orig,
            t(PROTO_TCP, "fd00:244:1::12", 41000, "fd00:10::a", 80)
        );
        assert_eq!(e.dnat(), Some(("fd00:244:2::10".parse().unwrap(), 8080)));
        // A dual-stack socket connecting to an IPv4 VIP: its packets are IPv4.
        let mapped = SvcAddr::v6(words("::ffff:10.0.0.10"), 80);
        assert_eq!(mapped.family, 4);
        assert_eq!(ip(&mapped), "10.0.0.10".parse::<IpAddr>().unwrap());
    }
}
