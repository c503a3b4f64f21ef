//! Cilium's eBPF host routing on a `cilium` lab, as far as an observer can tell: packets
//! for a pod of this node are handed into the pod with `bpf_redirect_peer`, from the uplink
//! and from other pods' `lxc*`, so they never cross the host-side `lxc*` egress hook; pod
//! traffic for another node's pods leaves `lxc*` ingress straight for the uplink with
//! `bpf_redirect_neigh`, skipping the host's routing and netfilter. Raw-instruction
//! programs (`asm.rs`), linked first on the uplink's and every `lxc*`'s ingress before the
//! agent starts (the agent then goes ahead of them).
//!
//! Pod-CIDR traffic only: Services and egress keep the host path here (with eBPF host
//! routing Cilium also does socket-LB and BPF masquerade, which the lab stands in for
//! separately or not yet).

use std::{ffi::CString, net::Ipv4Addr};

use anyhow::{bail, Context, Result};

use super::{
    asm::*,
    chain_end::{in_netns, link_pinned, load_insns},
    topology::{Model, Topology, POD_CIDR},
};

/// Where the destination address sits in an Ethernet frame carrying IPv4.
const DADDR: i32 = 14 + 16;

fn ifindex(t: &Topology, n: u8, iface: &str) -> Result<u32> {
    let name = CString::new(iface).context("interface name")?;
    in_netns(&t.node_ns(n), || {
        // SAFETY: a valid NUL-terminated name.
        match unsafe { libc::if_nametoindex(name.as_ptr()) } {
            0 => bail!("no interface {iface} on node {n}"),
            i => Ok(i),
        }
    })
}

/// Link the redirecting programs on every node of a `cilium` lab.
pub fn enable(t: &Topology) -> Result<()> {
    if t.model != Model::Cilium {
        bail!("eBPF host routing needs the cilium lab model (lab up --model cilium)");
    }
    let net: Ipv4Addr = POD_CIDR
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .context("pod CIDR")?;
    for n in 1..=t.nodes.len() as u8 {
        let ns = t.node_ns(n);
        let mut local = Vec::new();
        for p in t.pods.iter().filter(|p| p.node == n) {
            let ip: Ipv4Addr = p.ip().parse().context("pod address")?;
            local.push((ip, ifindex(t, n, &p.host_iface())?, p.host_iface()));
        }
        let peers: Vec<(Ipv4Addr, u32)> = local.iter().map(|l| (l.0, l.1)).collect();
        let uplink = ifindex(t, n, "eth0")?;
        let from_uplink = load_insns(&program(&peers, None), "lab_host_route")?;
        link_pinned(
            &t.prefix,
            &ns,
            ("eth0", true),
            &from_uplink,
            &format!("{ns}-eth0-route"),
            true,
        )?;
        let from_pods = load_insns(&program(&peers, Some((uplink, net))), "lab_lxc_route")?;
        for (_, _, lxc) in &local {
            link_pinned(
                &t.prefix,
                &ns,
                (lxc, true),
                &from_pods,
                &format!("{ns}-{lxc}-route"),
                true,
            )?;
        }
    }
    Ok(())
}

/// IPv4 for a local pod: redirect_peer into it. With `to_uplink`, anything else in the
/// /16 pod CIDR (another node's pod): redirect_neigh out of the uplink. Everything else
/// goes on (TC_ACT_OK).
fn program(local: &[(Ipv4Addr, u32)], to_uplink: Option<(u32, Ipv4Addr)>) -> Vec<u64> {
    let mut a = Asm::default();
    a.op(MOV_X, 6, 1, 0, 0);
    a.op(LDX_W, 2, 6, 16, 0); // skb->protocol
    a.out_if(JNE32_K, 2, 0x0008);
    a.load_bytes(DADDR, -4, 4);
    a.out_if(JNE_K, 0, 0);
    a.op(LDX_W, 7, 10, -4, 0);
    for &(ip, idx) in local {
        a.op(JNE32_K, 7, 0, 4, wire(ip));
        a.op(MOV_K, 1, 0, 0, idx as i32);
        a.op(MOV_K, 2, 0, 0, 0);
        a.op(CALL, 0, 0, 0, REDIRECT_PEER);
        a.op(EXIT, 0, 0, 0, 0);
    }
    if let Some((uplink, net)) = to_uplink {
        a.op(MOV_X, 3, 7, 0, 0);
        a.op(AND32_K, 3, 0, 0, wire(Ipv4Addr::new(255, 255, 0, 0)));
        a.out_if(JNE32_K, 3, wire(net));
        a.op(MOV_K, 1, 0, 0, uplink as i32);
        a.op(MOV_K, 2, 0, 0, 0);
        a.op(MOV_K, 3, 0, 0, 0);
        a.op(MOV_K, 4, 0, 0, 0);
        a.op(CALL, 0, 0, 0, REDIRECT_NEIGH);
        a.op(EXIT, 0, 0, 0, 0);
    }
    a.finish()
}
