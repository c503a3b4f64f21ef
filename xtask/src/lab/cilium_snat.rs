//! A stand-in for Cilium's BPF masquerade on a lab node, as far as the agent can tell it
//! apart: packets are translated on the uplink by eBPF programs linked after the agent's
//! (as Cilium's run after an observer that stays first), with no iptables rule and no
//! nf_conntrack entry (NOTRACK in the raw table), and the translation is recorded where
//! Cilium records it: an LRU hash named `cilium_snat_v4_external`, pinned at
//! `<bpffs>/tc/globals/`, with Cilium's 14-byte key and 40-byte value, holding the OUT and
//! IN entries Cilium writes. The agent reads that map (`--cilium-bpffs`).
//!
//! The programs are a few dozen raw instructions (the lab needs no compiler): match one
//! pod ↔ remote pair by address, rewrite the address and fix the IP and TCP/UDP checksums
//! with the kernel's helpers. Limits, stated: addresses only, so the NAT port is the pod's
//! port (Cilium keeps it too when it is free; a source-port collision, where Cilium picks
//! another, is not reproduced); IPv4 without IP options; the entries are written by the
//! lab when the translation is set up rather than on the first packet.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context, Result};

use super::{
    asm::*,
    chain_end::{link_last, load_insns, pin, sys_bpf},
    topology::Topology,
};
use crate::exec::in_ns;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
pub const MAP: &str = "cilium_snat_v4_external";

/// The bpffs root the agent is pointed at for this lab (`--cilium-bpffs`): a bpffs
/// instance of the lab's own, outside /sys (`ip netns exec`, which starts the lab's agents,
/// mounts a fresh /sys and would hide /sys/fs/bpf).
pub fn bpffs(prefix: &str) -> PathBuf {
    PathBuf::from("/run/tenantflow-lab")
        .join(prefix)
        .join("bpffs")
}

fn is_bpffs(dir: &std::path::Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 2 && std::path::Path::new(f[1]) == dir && f[2] == "bpf"
        })
    })
}

/// Unmount and remove the lab's bpffs (with the map in it), if any.
pub fn remove(prefix: &str) {
    let dir = bpffs(prefix);
    if is_bpffs(&dir) {
        let _ = crate::exec::run("umount", &["-l", &dir.to_string_lossy()]);
    }
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir_all(parent);
    }
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The SNAT map, created and pinned as Cilium does (name truncated by the kernel to 15
/// characters, as on a real node: `cilium_snat_v4_`).
pub fn create_map(prefix: &str) -> Result<OwnedFd> {
    let root = bpffs(prefix);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    if !is_bpffs(&root) {
        crate::exec::run("mount", &["-t", "bpf", "bpf", &root.to_string_lossy()])?;
    }
    let dir = root.join("tc/globals");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut name = [0u8; 16];
    name[..15].copy_from_slice(&MAP.as_bytes()[..15]);
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: 14,
        value_size: 40,
        max_entries: 4096,
        map_name: name,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_MAP_CREATE, &mut attr).context("creating the lab's Cilium SNAT map")?;
    // SAFETY: the kernel returned a new fd we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    pin(&fd, &dir.join(MAP))?;
    Ok(fd)
}

fn key(daddr: Ipv4Addr, saddr: Ipv4Addr, dport: u16, sport: u16, proto: u8, flags: u8) -> [u8; 14] {
    let mut k = [0u8; 14];
    k[..4].copy_from_slice(&daddr.octets());
    k[4..8].copy_from_slice(&saddr.octets());
    k[8..10].copy_from_slice(&dport.to_be_bytes());
    k[10..12].copy_from_slice(&sport.to_be_bytes());
    k[12] = proto;
    k[13] = flags;
    k
}

fn value(to: Ipv4Addr, to_port: u16) -> [u8; 40] {
    let mut v = [0u8; 40];
    // `created` (bpf_mono_now() in Cilium): any non-zero time.
    v[..8].copy_from_slice(&1u64.to_ne_bytes());
    v[32..36].copy_from_slice(&to.octets());
    v[36..38].copy_from_slice(&to_port.to_be_bytes());
    v
}

fn update(map: &OwnedFd, k: &[u8; 14], v: &[u8; 40]) -> Result<()> {
    let mut attr = MapUpdate {
        map_fd: map.as_raw_fd() as u32,
        key: k.as_ptr() as u64,
        value: v.as_ptr() as u64,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("writing a Cilium SNAT entry")?;
    Ok(())
}

/// One masqueraded connection: pod:port → remote:port leaves as node:port.
#[derive(Clone, Copy, Debug)]
pub struct Snat {
    pub proto: u8,
    pub pod: (Ipv4Addr, u16),
    pub remote: (Ipv4Addr, u16),
    pub node: (Ipv4Addr, u16),
}

/// Write the OUT entry (pod → remote, to the node side) and the IN entry (remote → node,
/// back to the pod), as Cilium's `snat_v4_new_mapping` does.
pub fn record(map: &OwnedFd, s: Snat) -> Result<()> {
    let out = key(s.remote.0, s.pod.0, s.remote.1, s.pod.1, s.proto, 0);
    update(map, &out, &value(s.node.0, s.node.1))?;
    let inb = key(s.node.0, s.remote.0, s.node.1, s.remote.1, s.proto, 1);
    update(map, &inb, &value(s.pod.0, s.pod.1))
}

/// Translate `pod` ↔ node `n`'s address for traffic with `remote` on the node's uplink,
/// after the agent's programs, and keep netfilter out of it (NOTRACK both ways, so neither
/// conntrack nor the lab's MASQUERADE rule sees these packets).
pub fn masquerade(
    prefix: &str,
    t: &Topology,
    n: u8,
    pod: Ipv4Addr,
    remote: Ipv4Addr,
) -> Result<()> {
    let ns = t.node_ns(n);
    let node: Ipv4Addr = t.node(n).ip().parse().context("node address")?;
    let (p, r) = (pod.to_string(), remote.to_string());
    for (src, dst) in [(&p, &r), (&r, &p)] {
        in_ns(
            &ns,
            &[
                "iptables",
                "-t",
                "raw",
                "-I",
                "PREROUTING",
                "-s",
                src,
                "-d",
                dst,
                "-j",
                "NOTRACK",
            ],
        )?;
    }
    // Leaving: pod → remote becomes node → remote. Arriving: remote → node becomes
    // remote → pod.
    let out = load_insns(
        &nat_program((pod, remote), SADDR, pod, node),
        "lab_snat_out",
    )?;
    link_last(prefix, &ns, "eth0", false, &out, "cilium-snat-egress")?;
    let back = load_insns(
        &nat_program((remote, node), DADDR, node, pod),
        "lab_snat_in",
    )?;
    link_last(prefix, &ns, "eth0", true, &back, "cilium-snat-ingress")
}

/// Offsets in an Ethernet frame carrying IPv4 without options.
const PROTO: i32 = 14 + 9;
const IP_CSUM: i32 = 14 + 10;
const SADDR: i32 = 14 + 12;
const DADDR: i32 = 14 + 16;
const TCP_CSUM: i32 = 14 + 20 + 16;
const UDP_CSUM: i32 = 14 + 20 + 6;

/// A TC program: for IPv4 packets from `matched.0` to `matched.1`, replace the address at
/// `field` (`old` there) with `new`, fixing the IP and TCP/UDP checksums. Returns TC_ACT_OK
/// (ends the chain, as Cilium's programs do).
fn nat_program(
    matched: (Ipv4Addr, Ipv4Addr),
    field: i32,
    old: Ipv4Addr,
    new: Ipv4Addr,
) -> Vec<u64> {
    let mut a = Asm::default();
    a.op(MOV_X, 6, 1, 0, 0); // r6 = skb
    a.op(LDX_W, 2, 6, 16, 0); // skb->protocol
    a.out_if(JNE32_K, 2, 0x0008); // not ETH_P_IP (big-endian 0x0800)
                                  // Load saddr and daddr to the stack.
    a.load_bytes(SADDR, -8, 8);
    a.out_if(JNE_K, 0, 0);
    a.op(LDX_W, 2, 10, -8, 0);
    a.out_if(JNE32_K, 2, wire(matched.0));
    a.op(LDX_W, 2, 10, -4, 0);
    a.out_if(JNE32_K, 2, wire(matched.1));
    // The protocol byte, for where the transport checksum is.
    a.load_bytes(PROTO, -16, 1);
    a.out_if(JNE_K, 0, 0);
    a.op(LDX_B, 7, 10, -16, 0);
    a.op(MOV_K, 2, 0, 0, TCP_CSUM);
    a.op(MOV_K, 5, 0, 0, PSEUDO_HDR | 4);
    a.op(JEQ_K, 7, 0, 3, 6); // TCP: fix its checksum
    a.op(MOV_K, 2, 0, 0, UDP_CSUM);
    a.op(MOV_K, 5, 0, 0, PSEUDO_HDR | MANGLED_0 | 4);
    a.op(JNE_K, 7, 0, 4, 17); // neither: only the IP checksum
    a.op(MOV_X, 1, 6, 0, 0);
    a.op(MOV_K, 3, 0, 0, wire(old));
    a.op(MOV_K, 4, 0, 0, wire(new));
    a.op(CALL, 0, 0, 0, L4_CSUM);
    a.op(MOV_X, 1, 6, 0, 0);
    a.op(MOV_K, 2, 0, 0, IP_CSUM);
    a.op(MOV_K, 3, 0, 0, wire(old));
    a.op(MOV_K, 4, 0, 0, wire(new));
    a.op(MOV_K, 5, 0, 0, 4);
    a.op(CALL, 0, 0, 0, L3_CSUM);
    a.op(ST_W, 10, 0, -8, wire(new));
    a.op(MOV_X, 1, 6, 0, 0);
    a.op(MOV_K, 2, 0, 0, field);
    a.op(MOV_X, 3, 10, 0, 0);
    a.op(ADD_K, 3, 0, 0, -8);
    a.op(MOV_K, 4, 0, 0, 4);
    a.op(MOV_K, 5, 0, 0, 0);
    a.op(CALL, 0, 0, 0, STORE_BYTES);
    a.finish()
}
