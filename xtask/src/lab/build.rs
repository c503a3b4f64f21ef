//! The commands that bring a lab up, in dependency order.

use anyhow::Result;

use super::{
    chain_end::Placement,
    topology::{self, Model, Pod, Topology},
};
use crate::exec::{in_ns, run};

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(drop)
}

fn sysctl(ns: &str, kv: &str) -> Result<()> {
    in_ns(ns, &["sysctl", "-qw", kv]).map(drop)
}

pub fn build(t: &Topology) -> Result<()> {
    for ns in t.all_netns() {
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        // No duplicate address detection on the interfaces to come: while a link-local
        // address is tentative (a second) the node cannot resolve neighbours, and the
        // first IPv6 packets of a fresh lab waited and were retransmitted.
        sysctl(&ns, "net.ipv6.conf.default.accept_dad=0")?;
        sysctl(&ns, "net.ipv6.conf.all.accept_dad=0")?;
    }
    fabric(t)?;
    for n in 1..=t.nodes.len() as u8 {
        node(t, n)?;
    }
    for p in &t.pods {
        pod(t, p)?;
    }
    for n in 1..=t.nodes.len() as u8 {
        kube_proxy(t, n)?;
    }
    if t.model == Model::Cilium {
        cilium_programs(t)?;
    }
    Ok(())
}

/// Cilium's programs, as far as an observer is concerned: on every `lxc*` and each node's
/// uplink, both directions, first in the tcx chain, ending it.
fn cilium_programs(t: &Topology) -> Result<()> {
    let mut hooks: Vec<(String, String)> = (1..=t.nodes.len() as u8)
        .map(|n| (t.node_ns(n), "eth0".to_owned()))
        .collect();
    hooks.extend(t.pods.iter().map(|p| (t.node_ns(p.node), p.host_iface())));
    for (ns, iface) in hooks {
        for ingress in [true, false] {
            super::chain_end::attach(&t.prefix, &ns, &iface, ingress, Placement::TcxFirst)?;
        }
    }
    Ok(())
}

/// The Azure fabric: VNet bridge, router to the internet host, IMDS and wireserver.
fn fabric(t: &Topology) -> Result<()> {
    let v = t.vnet_ns();
    let inet = t.internet_ns();
    ip(&["-n", &v, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &v, "addr", "add", "10.224.0.1/16", "dev", "br0"])?;
    ip(&[
        "-n",
        &v,
        "addr",
        "add",
        "fd00:224::1/64",
        "dev",
        "br0",
        "nodad",
    ])?;
    ip(&["-n", &v, "link", "set", "br0", "up"])?;
    for a in [
        topology::IMDS,
        topology::WIRESERVER,
        topology::PRIVATE_ENDPOINT,
    ] {
        ip(&["-n", &v, "addr", "add", &format!("{a}/32"), "dev", "lo"])?;
    }
    sysctl(&v, "net.ipv4.ip_forward=1")?;
    sysctl(&v, "net.ipv6.conf.all.forwarding=1")?;
    ip(&[
        "-n", &v, "link", "add", "inet", "type", "veth", "peer", "name", "eth0", "netns", &inet,
    ])?;
    ip(&["-n", &v, "addr", "add", "203.0.113.1/24", "dev", "inet"])?;
    ip(&["-n", &v, "link", "set", "inet", "up"])?;
    ip(&["-n", &inet, "addr", "add", "203.0.113.10/24", "dev", "eth0"])?;
    ip(&["-n", &inet, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        &inet,
        "route",
        "add",
        "default",
        "via",
        topology::INTERNET_GW,
    ])?;
    let gw6 = format!("{}/64", topology::INTERNET_GW6);
    let host6 = format!("{}/64", topology::INTERNET_HOST6);
    ip(&["-n", &v, "addr", "add", &gw6, "dev", "inet", "nodad"])?;
    ip(&["-n", &inet, "addr", "add", &host6, "dev", "eth0", "nodad"])?;
    let via6 = ["route", "add", "default", "via", topology::INTERNET_GW6];
    ip(&[&["-n", &inet, "-6"][..], &via6[..]].concat())?;
    Ok(())
}

fn node(t: &Topology, n: u8) -> Result<()> {
    let v = t.vnet_ns();
    let node = t.node(n).clone();
    let ns = node.name.clone();
    let peer = format!("node{n}");
    ip(&[
        "-n", &v, "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["-n", &v, "link", "set", &peer, "master", "br0", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{}/16", node.ip()),
        "dev",
        "eth0",
    ])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{}/64", node.ip6()),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        topology::VNET_GW,
    ])?;
    ip(&[
        "-n",
        &ns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        topology::VNET_GW6,
    ])?;
    if t.model != Model::Kubenet {
        return azure_node(t, n);
    }
    ip(&["-n", &ns, "link", "add", "cbr0", "type", "bridge"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{}/24", node.pod_gw()),
        "dev",
        "cbr0",
    ])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{}/64", node.pod_gw6()),
        "dev",
        "cbr0",
        "nodad",
    ])?;
    ip(&["-n", &ns, "link", "set", "cbr0", "up"])?;
    routes_to_other_nodes(t, n)?;
    for other in t.nodes.iter().filter(|o| o.n != n) {
        ip(&[
            "-n",
            &ns,
            "-6",
            "route",
            "add",
            &other.pod_cidr6(),
            "via",
            &other.ip6(),
        ])?;
    }
    sysctl(&ns, "net.ipv4.ip_forward=1")?;
    sysctl(&ns, "net.ipv6.conf.all.forwarding=1")?;
    // kubenet: bridged pod traffic goes through iptables so Service DNAT is undone on replies.
    sysctl(&ns, "net.bridge.bridge-nf-call-iptables=1")?;
    sysctl(&ns, "net.bridge.bridge-nf-call-ip6tables=1")?;
    // ip-masq-agent: pod traffic leaving the pod CIDR leaves with the node's address.
    let masq = [
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        topology::POD_CIDR,
        "!",
        "-d",
        topology::POD_CIDR,
        "-j",
        "MASQUERADE",
    ];
    in_ns(&ns, &[&["iptables"][..], &masq[..]].concat())?;
    let masq6 = [
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        topology::POD_CIDR6,
        "!",
        "-d",
        topology::POD_CIDR6,
        "-j",
        "MASQUERADE",
    ];
    in_ns(&ns, &[&["ip6tables"][..], &masq6[..]].concat())?;
    Ok(())
}

/// Each other node's IPv4 pod /24 via that node (kubenet's route table, Overlay's routing).
fn routes_to_other_nodes(t: &Topology, n: u8) -> Result<()> {
    let ns = t.node_ns(n);
    for other in t.nodes.iter().filter(|o| o.n != n) {
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            &other.pod_cidr(),
            "via",
            &other.ip(),
        ])?;
    }
    Ok(())
}

/// Azure CNI and Overlay: no bridge. Pods hang off `azv*` veths with /32 routes; the node
/// answers ARP for their gateway (169.254.1.1) and, for Azure CNI, for their VNet addresses
/// on the uplink, as the Azure SDN delivers them to the right node.
fn azure_node(t: &Topology, n: u8) -> Result<()> {
    let ns = t.node_ns(n);
    sysctl(&ns, "net.ipv4.ip_forward=1")?;
    sysctl(&ns, "net.ipv4.conf.eth0.proxy_arp=1")?;
    // Answer at once: the default proxy delay (up to 0.8 s) would drop first packets.
    sysctl(&ns, "net.ipv4.neigh.eth0.proxy_delay=0")?;
    if matches!(t.model, Model::Overlay | Model::Cilium) {
        routes_to_other_nodes(t, n)?;
    }
    // ip-masq-agent: Azure CNI pods keep their VNet address inside the VNet; Overlay pods
    // leave the pod CIDR with the node's.
    let (src, keep) = match t.model {
        Model::AzureCni => (format!("10.224.{n}.0/24"), topology::VNET_CIDR.to_owned()),
        _ => (topology::POD_CIDR.to_owned(), topology::POD_CIDR.to_owned()),
    };
    in_ns(
        &ns,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &src,
            "!",
            "-d",
            &keep,
            "-j",
            "MASQUERADE",
        ],
    )?;
    Ok(())
}

/// The pod's `eth0` in its namespace, paired with `host` on its node.
fn veth_to_pod(node_ns: &str, host: &str, pod_ns: &str) -> Result<()> {
    ip(&[
        "-n", node_ns, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", pod_ns,
    ])
}

fn azure_pod(t: &Topology, p: &Pod) -> Result<()> {
    let node_ns = t.node_ns(p.node);
    let pod_ns = t.pod_ns(p);
    let host = p.host_iface();
    veth_to_pod(&node_ns, &host, &pod_ns)?;
    ip(&["-n", &node_ns, "link", "set", &host, "up"])?;
    sysctl(&node_ns, &format!("net.ipv4.conf.{host}.proxy_arp=1"))?;
    sysctl(&node_ns, &format!("net.ipv4.neigh.{host}.proxy_delay=0"))?;
    ip(&[
        "-n",
        &node_ns,
        "route",
        "add",
        &format!("{}/32", p.ip()),
        "dev",
        &host,
    ])?;
    ip(&[
        "-n",
        &pod_ns,
        "addr",
        "add",
        &format!("{}/32", p.ip()),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &pod_ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        &pod_ns,
        "route",
        "add",
        topology::AZURE_GW,
        "dev",
        "eth0",
        "scope",
        "link",
    ])?;
    ip(&[
        "-n",
        &pod_ns,
        "route",
        "add",
        "default",
        "via",
        topology::AZURE_GW,
        "dev",
        "eth0",
    ])?;
    Ok(())
}

fn pod(t: &Topology, p: &Pod) -> Result<()> {
    if t.model != Model::Kubenet {
        return azure_pod(t, p);
    }
    let node = t.node(p.node).clone();
    let node_ns = node.name.clone();
    let pod_ns = t.pod_ns(p);
    let host = p.host_iface();
    veth_to_pod(&node_ns, &host, &pod_ns)?;
    ip(&["-n", &node_ns, "link", "set", &host, "master", "cbr0", "up"])?;
    ip(&[
        "-n",
        &pod_ns,
        "addr",
        "add",
        &format!("{}/24", p.ip()),
        "dev",
        "eth0",
    ])?;
    ip(&[
        "-n",
        &pod_ns,
        "addr",
        "add",
        &format!("{}/64", p.ip6()),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ip(&["-n", &pod_ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        &pod_ns,
        "route",
        "add",
        "default",
        "via",
        &node.pod_gw(),
    ])?;
    ip(&[
        "-n",
        &pod_ns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        &node.pod_gw6(),
    ])?;
    Ok(())
}

/// kube-proxy (iptables mode) rules for every Service: PREROUTING for pods, OUTPUT for
/// host processes, a random split across backends, DNAT to the chosen one. The kubenet
/// lab is dual-stack: its Services get the same rules for their IPv6 ClusterIP.
fn kube_proxy(t: &Topology, n: u8) -> Result<()> {
    kube_proxy_family(t, n, false)?;
    if t.model == Model::Kubenet {
        kube_proxy_family(t, n, true)?;
    }
    Ok(())
}

fn kube_proxy_family(t: &Topology, n: u8, v6: bool) -> Result<()> {
    let ns = t.node_ns(n);
    let tool = if v6 { "ip6tables" } else { "iptables" };
    let ipt = |args: &[&str]| in_ns(&ns, &[&[tool, "-t", "nat"][..], args].concat()).map(drop);
    ipt(&["-N", "KUBE-SERVICES"])?;
    ipt(&["-I", "PREROUTING", "-j", "KUBE-SERVICES"])?;
    ipt(&["-I", "OUTPUT", "-j", "KUBE-SERVICES"])?;
    for (si, s) in t.services.iter().enumerate() {
        let svc_chain = format!("KUBE-SVC-{si}");
        ipt(&["-N", &svc_chain])?;
        let dport = s.port.to_string();
        ipt(&[
            "-A",
            "KUBE-SERVICES",
            "-d",
            &if v6 {
                format!("{}/128", s.vip6)
            } else {
                format!("{}/32", s.vip)
            },
            "-p",
            "tcp",
            "--dport",
            &dport,
            "-j",
            &svc_chain,
        ])?;
        let count = s.backends.len();
        for (bi, b) in s.backends.iter().enumerate() {
            let sep = format!("KUBE-SEP-{si}-{bi}");
            ipt(&["-N", &sep])?;
            let to = if v6 {
                format!("[{}]:{}", t.pod(b).ip6(), s.target_port)
            } else {
                format!("{}:{}", t.pod(b).ip(), s.target_port)
            };
            ipt(&[
                "-A",
                &sep,
                "-p",
                "tcp",
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ])?;
            // kube-proxy's scheme: backend i of n is taken with probability 1/(n-i).
            let remaining = count - bi;
            if remaining > 1 {
                let prob = format!("{:.5}", 1.0 / remaining as f64);
                ipt(&[
                    "-A",
                    &svc_chain,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &prob,
                    "-j",
                    &sep,
                ])?;
            } else {
                ipt(&["-A", &svc_chain, "-j", &sep])?;
            }
        }
    }
    Ok(())
}
