//! A stand-in for Cilium's BPF masquerade on a lab node, as far as the agent can tell it
//! apart: packets are translated on the uplink by eBPF programs linked after the agent's
//! (as Cilium's run after an observer that stays first), with no iptables rule and no
//! nf_conntrack entry (NOTRACK in the raw table), and the translation is recorded where
//! Cilium records it: LRU hashes named `cilium_snat_v4_external` and
//! `cilium_snat_v6_external`, pinned at `<bpffs>/tc/globals/`, with Cilium's key and value
//! layouts (14/40 and 38/56 bytes), holding the OUT and IN entries Cilium writes. The agent
//! reads those maps (`--cilium-bpffs`).
//!
//! The programs are a few dozen raw instructions each (`asm.rs`; the lab needs no
//! compiler): one pair per connection, matching its addresses, protocol and port, rewriting
//! address and port (the node port the lab chose, e.g. another one for the second of two
//! pods using the same source port) and fixing the IP (IPv4) and TCP/UDP checksums with the
//! kernel's helpers. Limits, stated: the connections and their node ports are chosen by the
//! lab up front and written to the map then, not allocated by a program on the first
//! packet; IPv4 without IP options, IPv6 without extension headers.

use std::{
    net::{IpAddr, Ipv4Addr},
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
pub const MAP6: &str = "cilium_snat_v6_external";

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

/// Cilium's two SNAT maps, IPv4 and IPv6.
pub struct Maps {
    v4: OwnedFd,
    v6: OwnedFd,
}

/// The SNAT maps, created and pinned as Cilium does (names truncated by the kernel to 15
/// characters, as on a real node: `cilium_snat_v4_`).
pub fn create_map(prefix: &str) -> Result<Maps> {
    let root = bpffs(prefix);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    mount_bpffs(&root)?;
    let dir = root.join("tc/globals");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let one = |map: &str, key_size, value_size| -> Result<OwnedFd> {
        let mut name = [0u8; 16];
        name[..15].copy_from_slice(&map.as_bytes()[..15]);
        let mut attr = MapCreate {
            map_type: BPF_MAP_TYPE_LRU_HASH,
            key_size,
            value_size,
            max_entries: 4096,
            map_name: name,
            ..Default::default()
        };
        let fd = sys_bpf(BPF_MAP_CREATE, &mut attr)
            .with_context(|| format!("creating the lab's Cilium SNAT map {map}"))?;
        // SAFETY: the kernel returned a new fd we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        pin(&fd, &dir.join(map))?;
        Ok(fd)
    };
    Ok(Maps {
        v4: one(MAP, 14, 40)?,
        v6: one(MAP6, 38, 56)?,
    })
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// `struct ipv4_ct_tuple` / `ipv6_ct_tuple`: daddr, saddr, dport, sport, nexthdr, flags.
fn key(daddr: IpAddr, saddr: IpAddr, dport: u16, sport: u16, proto: u8, flags: u8) -> Vec<u8> {
    let mut k = octets(daddr);
    k.extend(octets(saddr));
    k.extend(dport.to_be_bytes());
    k.extend(sport.to_be_bytes());
    k.extend([proto, flags]);
    k
}

/// `struct ipv4_nat_entry` / `ipv6_nat_entry`: created, needs_ct, two pads, to_saddr,
/// to_sport, pad.
fn value(to: IpAddr, to_port: u16) -> Vec<u8> {
    // `created` (bpf_mono_now() in Cilium): any non-zero time.
    let mut v = 1u64.to_ne_bytes().to_vec();
    v.resize(32, 0);
    v.extend(octets(to));
    v.extend(to_port.to_be_bytes());
    // The trailing pad: 40 bytes for IPv4, 56 for IPv6.
    v.resize(v.len().next_multiple_of(8), 0);
    v
}

fn update(map: &OwnedFd, k: &[u8], v: &[u8]) -> Result<()> {
    let mut attr = MapUpdate {
        map_fd: map.as_raw_fd() as u32,
        key: k.as_ptr() as u64,
        value: v.as_ptr() as u64,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("writing a Cilium SNAT entry")?;
    Ok(())
}

/// One masqueraded connection: pod:port → remote:port leaves as node:port (all three of
/// one family).
#[derive(Clone, Copy, Debug)]
pub struct Snat {
    pub proto: u8,
    pub pod: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub node: (IpAddr, u16),
}

/// Write the OUT entry (pod → remote, to the node side) and the IN entry (remote → node,
/// back to the pod), as Cilium's `snat_v4_new_mapping` (and `_v6_`) does.
pub fn record(maps: &Maps, s: Snat) -> Result<()> {
    let map = if s.pod.0.is_ipv4() {
        &maps.v4
    } else {
        &maps.v6
    };
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
pub fn masquerade(prefix: &str, t: &Topology, n: u8, maps: &Maps, conns: &[Snat]) -> Result<()> {
    let ns = t.node_ns(n);
    for (i, s) in conns.iter().enumerate() {
        let (p, r) = (s.pod.0.to_string(), s.remote.0.to_string());
        let tool = if s.pod.0.is_ipv4() {
            "iptables"
        } else {
            "ip6tables"
        };
        for (src, dst) in [(&p, &r), (&r, &p)] {
            let rule = ["PREROUTING", "-s", src, "-d", dst, "-j", "NOTRACK"];
            let has = |flag: &str| in_ns(&ns, &[&[tool, "-t", "raw", flag][..], &rule].concat());
            if has("-C").is_err() {
                has("-I")?;
            }
        }
        record(maps, *s)?;
        // Leaving: pod:port → remote becomes node:port → remote. Arriving: remote →
        // node:port becomes remote → pod:port.
        let out = Rewrite {
            proto: s.proto,
            addrs: (s.pod.0, s.remote.0),
            source: true,
            port: s.pod.1,
            old: s.pod,
            new: s.node,
        };
        let back = Rewrite {
            proto: s.proto,
            addrs: (s.remote.0, s.node.0),
            source: false,
            port: s.node.1,
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

/// Where the fields lie in an Ethernet frame of one family (IPv4 without options, IPv6
/// without extension headers).
struct Layout {
    /// skb->protocol as a 4-byte load reads it.
    ether: i32,
    proto: i32,
    saddr: i32,
    daddr: i32,
    sport: i32,
    /// The IPv4 header checksum (none in IPv6).
    ip_csum: Option<i32>,
}

impl Layout {
    const V4: Layout = Layout {
        ether: 0x0008,
        proto: 14 + 9,
        saddr: 14 + 12,
        daddr: 14 + 16,
        sport: 14 + 20,
        ip_csum: Some(14 + 10),
    };
    const V6: Layout = Layout {
        ether: 0xdd86,
        proto: 14 + 6,
        saddr: 14 + 8,
        daddr: 14 + 24,
        sport: 14 + 40,
        ip_csum: None,
    };

    fn dport(&self) -> i32 {
        self.sport + 2
    }

    /// The TCP (16 bytes in) or UDP (6 bytes in) checksum.
    fn l4_csum(&self, udp: bool) -> i32 {
        self.sport + if udp { 6 } else { 16 }
    }
}

/// An address as native-order words of its wire bytes (what 4-byte loads give).
fn words(a: IpAddr) -> Vec<i32> {
    match a {
        IpAddr::V4(v) => vec![wire(v)],
        IpAddr::V6(v) => v
            .octets()
            .chunks_exact(4)
            .map(|c| wire(Ipv4Addr::new(c[0], c[1], c[2], c[3])))
            .collect(),
    }
}

/// One direction of one translated connection.
struct Rewrite {
    proto: u8,
    /// (source, destination) the packet must carry.
    addrs: (IpAddr, IpAddr),
    /// The source address and port are rewritten (else the destination's).
    source: bool,
    /// The port the packet must carry there.
    port: u16,
    old: (IpAddr, u16),
    new: (IpAddr, u16),
}

impl Rewrite {
    /// A TC program: a matching packet gets the new address and port, with the IP and
    /// transport checksums fixed, and ends the chain (TC_ACT_OK, as Cilium's programs do);
    /// anything else goes on to the next program (TCX_NEXT).
    fn program(&self) -> Vec<u64> {
        let l = if self.addrs.0.is_ipv4() {
            Layout::V4
        } else {
            Layout::V6
        };
        let udp = self.proto == 17;
        let csum = l.l4_csum(udp);
        let mangled = if udp { MANGLED_0 } else { 0 };
        let (addr_at, port_at) = if self.source {
            (l.saddr, l.sport)
        } else {
            (l.daddr, l.dport())
        };
        let (src, dst) = (words(self.addrs.0), words(self.addrs.1));
        let n = src.len() as i32 * 4;
        let mut a = Asm::default();
        a.op(MOV_X, 6, 1, 0, 0); // r6 = skb
        a.op(LDX_W, 2, 6, 16, 0); // skb->protocol
        a.out_if(JNE32_K, 2, l.ether);
        // Both addresses (they are adjacent) onto the stack, compared word by word.
        a.load_bytes(l.saddr, -2 * n, 2 * n);
        a.out_if(JNE_K, 0, 0);
        for (i, w) in src.iter().chain(&dst).enumerate() {
            a.op(LDX_W, 2, 10, (-2 * n + 4 * i as i32) as i16, 0);
            a.out_if(JNE32_K, 2, *w);
        }
        a.load_bytes(l.proto, -2 * n - 8, 1);
        a.out_if(JNE_K, 0, 0);
        a.op(LDX_B, 2, 10, (-2 * n - 8) as i16, 0);
        a.out_if(JNE_K, 2, self.proto as i32);
        a.load_bytes(port_at, -2 * n - 16, 2);
        a.out_if(JNE_K, 0, 0);
        a.op(LDX_H, 2, 10, (-2 * n - 16) as i16, 0);
        a.out_if(JNE32_K, 2, wire16(self.port));
        let (old, new) = (self.old, self.new);
        for (o, w) in words(old.0).into_iter().zip(words(new.0)) {
            a.csum(L4_CSUM, csum, o, w, PSEUDO_HDR | mangled | 4);
            if let Some(ip_csum) = l.ip_csum {
                a.csum(L3_CSUM, ip_csum, o, w, 4);
            }
        }
        a.csum(L4_CSUM, csum, wire16(old.1), wire16(new.1), mangled | 2);
        for (i, w) in words(new.0).into_iter().enumerate() {
            a.op(ST_W, 10, 0, (-n + 4 * i as i32) as i16, w);
        }
        a.store_bytes(addr_at, -n, n);
        a.op(ST_H, 10, 0, (-2 * n - 24) as i16, wire16(new.1));
        a.store_bytes(port_at, -2 * n - 24, 2);
        a.op(MOV_K, 0, 0, 0, 0);
        a.op(EXIT, 0, 0, 0, 0);
        a.finish_with(-1)
    }
}
