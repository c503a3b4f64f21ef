//! A stand-in for Cilium's BPF masquerade on a lab node, as far as the agent can tell it
//! apart: packets are translated on the uplink by eBPF programs linked after the agent's
//! (as Cilium's run after an observer that stays first), with no iptables rule and no
//! nf_conntrack entry (NOTRACK in the raw table), and the translation is recorded where
//! Cilium records it: an LRU hash named `cilium_snat_v4_external`, pinned at
//! `<bpffs>/tc/globals/`, with Cilium's 14-byte key and 40-byte value, holding the OUT and
//! IN entries Cilium writes. The agent reads that map (`--cilium-bpffs`).
//!
//! The programs are a few dozen raw instructions each (`asm.rs`; the lab needs no
//! compiler): one pair per connection, matching its addresses, protocol and port, rewriting
//! address and port (the node port the lab chose, e.g. another one for the second of two
//! pods using the same source port) and fixing the IP and TCP/UDP checksums with the
//! kernel's helpers. Limits, stated: the connections and their node ports are chosen by the
//! lab up front and written to the map then, not allocated by a program on the first
//! packet; IPv4 without IP options.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context, Result};

use super::{
    asm::*,
    chain_end::{is_bpffs, link_pinned, load_insns, mount_bpffs, pin, sys_bpf},
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
    mount_bpffs(&root)?;
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

/// Masquerade each of `conns` on node `n`'s uplink as Cilium's BPF masquerade would:
/// after the agent's programs (linked last), netfilter kept out (NOTRACK both ways, so
/// neither conntrack nor the lab's MASQUERADE rule sees the packets), and the mapping
/// recorded in `map`. A connection's node port may differ from the pod's (Cilium picks
/// another port when two pods use the same one towards the same destination).
pub fn masquerade(prefix: &str, t: &Topology, n: u8, map: &OwnedFd, conns: &[Snat]) -> Result<()> {
    let ns = t.node_ns(n);
    for (i, s) in conns.iter().enumerate() {
        let (p, r) = (s.pod.0.to_string(), s.remote.0.to_string());
        for (src, dst) in [(&p, &r), (&r, &p)] {
            let rule = ["PREROUTING", "-s", src, "-d", dst, "-j", "NOTRACK"];
            let has =
                |flag: &str| in_ns(&ns, &[&["iptables", "-t", "raw", flag][..], &rule].concat());
            if has("-C").is_err() {
                has("-I")?;
            }
        }
        record(map, *s)?;
        // Leaving: pod:port → remote becomes node:port → remote. Arriving: remote →
        // node:port becomes remote → pod:port.
        let out = Rewrite {
            proto: s.proto,
            addrs: (s.pod.0, s.remote.0),
            port: (SPORT, s.pod.1),
            field: (SADDR, SPORT),
            old: s.pod,
            new: s.node,
        };
        let back = Rewrite {
            proto: s.proto,
            addrs: (s.remote.0, s.node.0),
            port: (DPORT, s.node.1),
            field: (DADDR, DPORT),
            old: s.node,
            new: s.pod,
        };
        let prog = load_insns(&out.program(), "lab_snat_out")?;
        link_pinned(
            prefix,
            &ns,
            ("eth0", false),
            &prog,
            &format!("cilium-snat-{i}-egress"),
            false,
        )?;
        let prog = load_insns(&back.program(), "lab_snat_in")?;
        link_pinned(
            prefix,
            &ns,
            ("eth0", true),
            &prog,
            &format!("cilium-snat-{i}-ingress"),
            false,
        )?;
    }
    Ok(())
}

/// Offsets in an Ethernet frame carrying IPv4 without options.
const PROTO: i32 = 14 + 9;
const IP_CSUM: i32 = 14 + 10;
const SADDR: i32 = 14 + 12;
const DADDR: i32 = 14 + 16;
const SPORT: i32 = 14 + 20;
const DPORT: i32 = 14 + 22;
const TCP_CSUM: i32 = 14 + 20 + 16;
const UDP_CSUM: i32 = 14 + 20 + 6;

/// One direction of one translated connection.
struct Rewrite {
    proto: u8,
    /// (source, destination) the packet must carry.
    addrs: (Ipv4Addr, Ipv4Addr),
    /// (offset, value) of the port the packet must carry.
    port: (i32, u16),
    /// Offsets of the address and port rewritten.
    field: (i32, i32),
    old: (Ipv4Addr, u16),
    new: (Ipv4Addr, u16),
}

impl Rewrite {
    /// A TC program: a matching packet gets the new address and port, with the IP and
    /// transport checksums fixed, and ends the chain (TC_ACT_OK, as Cilium's programs do);
    /// anything else goes on to the next program (TCX_NEXT).
    fn program(&self) -> Vec<u64> {
        let udp = self.proto == 17;
        let csum = if udp { UDP_CSUM } else { TCP_CSUM };
        let mangled = if udp { MANGLED_0 } else { 0 };
        let mut a = Asm::default();
        a.op(MOV_X, 6, 1, 0, 0); // r6 = skb
        a.op(LDX_W, 2, 6, 16, 0); // skb->protocol
        a.out_if(JNE32_K, 2, 0x0008); // not ETH_P_IP (big-endian 0x0800)
        a.load_bytes(SADDR, -8, 8);
        a.out_if(JNE_K, 0, 0);
        a.op(LDX_W, 2, 10, -8, 0);
        a.out_if(JNE32_K, 2, wire(self.addrs.0));
        a.op(LDX_W, 2, 10, -4, 0);
        a.out_if(JNE32_K, 2, wire(self.addrs.1));
        a.load_bytes(PROTO, -16, 1);
        a.out_if(JNE_K, 0, 0);
        a.op(LDX_B, 2, 10, -16, 0);
        a.out_if(JNE_K, 2, self.proto as i32);
        a.load_bytes(self.port.0, -24, 2);
        a.out_if(JNE_K, 0, 0);
        a.op(LDX_H, 2, 10, -24, 0);
        a.out_if(JNE32_K, 2, wire16(self.port.1));
        let (old, new) = (self.old, self.new);
        a.csum(
            L4_CSUM,
            csum,
            wire(old.0),
            wire(new.0),
            PSEUDO_HDR | mangled | 4,
        );
        a.csum(L4_CSUM, csum, wire16(old.1), wire16(new.1), mangled | 2);
        a.csum(L3_CSUM, IP_CSUM, wire(old.0), wire(new.0), 4);
        a.op(ST_W, 10, 0, -8, wire(new.0));
        a.store_bytes(self.field.0, -8, 4);
        a.op(ST_H, 10, 0, -4, wire16(new.1));
        a.store_bytes(self.field.1, -4, 2);
        a.op(MOV_K, 0, 0, 0, 0);
        a.op(EXIT, 0, 0, 0, 0);
        a.finish_with(-1)
    }
}
