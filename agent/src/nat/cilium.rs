//! SNAT from Cilium's BPF masquerade, which leaves no nf_conntrack entry: its state is the
//! LRU hash `cilium_snat_v4_external` (and `cilium_snat_v6_external`) pinned under
//! `<bpffs>/tc/globals/`. This source opens those maps read-only, checks type and key/value
//! sizes first (Cilium creates them from Go, without BTF, so nothing else says what they
//! hold), reads them in batches on a thread of its own and reports each pod → remote
//! mapping as a [`NatEntry`], the way the conntrack source does: `New` when it appears,
//! `Destroy` when Cilium's GC or the LRU removed it.
//!
//! Layouts (cilium/cilium bpf/lib/nat.h, `struct ipv4_ct_tuple`, `struct ipv4_nat_entry`),
//! network byte order:
//! - key, 14 bytes: daddr, saddr, dport, sport, nexthdr, flags. flags 0 (`TUPLE_F_OUT`) is
//!   the pod → remote tuple as the pod sent it; flags 1 (`TUPLE_F_IN`) the reverse after
//!   SNAT, which adds nothing and is skipped.
//! - value, 40 bytes: created, needs_ct, two pads (u64 each), to_saddr, to_sport, pad.
//! - IPv6: the same with 16-byte addresses: key 38, value 56.
//!
//! TCP and UDP only: Cilium keys ICMP echo by its id in a way this reader does not decode.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use tokio::sync::mpsc::UnboundedSender;
use tracing::warn;

use super::{NatEntry, NatEvent};
use crate::datapath::{BatchAttr, BPF_MAP_LOOKUP_BATCH};
use crate::net::{FlowTuple, PROTO_TCP, PROTO_UDP};

/// One of Cilium's SNAT maps: where it is pinned and the sizes this reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub key: u32,
    pub value: u32,
    family: u8,
}

pub const V4: MapSpec = MapSpec {
    name: "cilium_snat_v4_external",
    key: 14,
    value: 40,
    family: 4,
};
pub const V6: MapSpec = MapSpec {
    name: "cilium_snat_v6_external",
    key: 38,
    value: 56,
    family: 6,
};

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_F_RDONLY: u32 = 1 << 3;
/// Entries per batch call (a bucket larger than this is retried with more room).
const CHUNK: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CiliumError {
    #[error("{path}: cannot open the pinned map read-only ({source}); the agent needs CAP_BPF and the host's bpffs mounted (--cilium-bpffs)")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: {what}, not Cilium's SNAT map as this agent knows it (a Cilium version whose layout changed): SNAT from Cilium's BPF masquerade stays unjoined; --no-cilium-snat turns the probe off")]
    Layout { path: PathBuf, what: String },
}

/// An opened, probed SNAT map.
pub struct SnatMap {
    fd: OwnedFd,
    spec: MapSpec,
    pub path: PathBuf,
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info`: the fields the probe reads.
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
}

/// The SNAT maps pinned under `bpffs` (`<bpffs>/tc/globals/…`), probed. Empty when Cilium's
/// BPF masquerade is not in use on this node (no map pinned).
pub fn open(bpffs: &Path) -> Result<Vec<SnatMap>, CiliumError> {
    let mut maps = Vec::new();
    for spec in [V4, V6] {
        let path = bpffs.join("tc/globals").join(spec.name);
        if !path.exists() {
            continue;
        }
        maps.push(open_one(&path, spec)?);
    }
    Ok(maps)
}

fn open_one(path: &Path, spec: MapSpec) -> Result<SnatMap, CiliumError> {
    let open_err = |source| CiliumError::Open {
        path: path.to_owned(),
        source,
    };
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| open_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut get = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        file_flags: BPF_F_RDONLY,
        ..Default::default()
    };
    // SAFETY: the attribute is BPF_OBJ_GET's; the path outlives the call.
    let fd = unsafe { crate::datapath::bpf(BPF_OBJ_GET, &mut get) }.map_err(open_err)?;
    // SAFETY: a fresh fd the kernel just gave us (the call's result).
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = MapInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<MapInfo>() as u32,
        info: &mut info as *mut MapInfo as u64,
    };
    // SAFETY: the attribute is BPF_OBJ_GET_INFO_BY_FD's; `info` is large enough for the
    // length given (the kernel writes at most that much).
    unsafe { crate::datapath::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }.map_err(open_err)?;
    check_layout(&info, spec).map_err(|what| CiliumError::Layout {
        path: path.to_owned(),
        what,
    })?;
    Ok(SnatMap {
        fd,
        spec,
        path: path.to_owned(),
    })
}

fn check_layout(info: &MapInfo, spec: MapSpec) -> Result<(), String> {
    if !matches!(info.map_type, BPF_MAP_TYPE_LRU_HASH | BPF_MAP_TYPE_HASH) {
        return Err(format!(
            "map type {} (expected an LRU hash, 9)",
            info.map_type
        ));
    }
    if (info.key_size, info.value_size) != (spec.key, spec.value) {
        return Err(format!(
            "key {} B / value {} B (expected {} / {})",
            info.key_size, info.value_size, spec.key, spec.value
        ));
    }
    Ok(())
}

impl SnatMap {
    /// Every pod → remote mapping now in the map.
    pub fn read(&self) -> io::Result<Vec<NatEntry>> {
        let (k, v) = (self.spec.key as usize, self.spec.value as usize);
        let mut chunk = CHUNK;
        let mut out = Vec::new();
        let mut keys = vec![0u8; chunk as usize * k];
        let mut values = vec![0u8; chunk as usize * v];
        let mut cursor: u32 = 0;
        let mut started = false;
        loop {
            let mut next: u32 = 0;
            let mut attr = BatchAttr {
                in_batch: if started {
                    &cursor as *const u32 as u64
                } else {
                    0
                },
                out_batch: &mut next as *mut u32 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: chunk,
                map_fd: self.fd.as_raw_fd() as u32,
                ..Default::default()
            };
            // SAFETY: buffers hold `count` keys and values of the probed sizes; the
            // cursors are u32 (a hash map's batch token is a bucket index).
            let end = match unsafe { crate::datapath::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
                Ok(_) => false,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                // One bucket holds more than `chunk`: retry it with more room.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    chunk *= 2;
                    keys.resize(chunk as usize * k, 0);
                    values.resize(chunk as usize * v, 0);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for i in 0..attr.count as usize {
                let key = &keys[i * k..(i + 1) * k];
                let value = &values[i * v..(i + 1) * v];
                out.extend(parse(self.spec.family, key, value));
            }
            if end {
                return Ok(out);
            }
            cursor = next;
            started = true;
        }
    }
}

fn addr(family: u8, b: &[u8]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

fn port(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// One map entry as a NAT entry: an OUT tuple (pod → remote) of TCP or UDP; None for
/// anything else.
pub fn parse(family: u8, key: &[u8], value: &[u8]) -> Option<NatEntry> {
    let a = if family == 4 { 4 } else { 16 };
    if key.len() != 2 * a + 6 || value.len() < 32 + a + 2 {
        return None;
    }
    let (daddr, saddr) = (addr(family, &key[..a]), addr(family, &key[a..2 * a]));
    let (dport, sport) = (port(&key[2 * a..]), port(&key[2 * a + 2..]));
    let (proto, flags) = (key[2 * a + 4], key[2 * a + 5]);
    if flags != 0 || !matches!(proto, PROTO_TCP | PROTO_UDP) {
        return None;
    }
    let to_saddr = addr(family, &value[32..32 + a]);
    let to_sport = port(&value[32 + a..]);
    let orig = FlowTuple {
        proto,
        src: saddr,
        sport,
        dst: daddr,
        dport,
    };
    let reply = FlowTuple {
        proto,
        src: daddr,
        sport: dport,
        dst: to_saddr,
        dport: to_sport,
    };
    Some(NatEntry { orig, reply })
}

/// Poll `maps` every `every` on a thread of its own; report what appeared and what went.
pub fn spawn(maps: Vec<SnatMap>, tx: UnboundedSender<NatEvent>, every: Duration) -> io::Result<()> {
    thread::Builder::new()
        .name("cilium-snat".into())
        .spawn(move || {
            let mut known: HashMap<FlowTuple, NatEntry> = HashMap::new();
            let mut failing = false;
            while !tx.is_closed() {
                let mut now: HashMap<FlowTuple, NatEntry> = HashMap::new();
                let mut ok = true;
                for m in &maps {
                    match m.read() {
                        Ok(entries) => now.extend(entries.into_iter().map(|e| (e.orig, e))),
                        Err(e) => {
                            ok = false;
                            if !failing {
                                warn!(map = %m.path.display(), error = %e, "cannot read Cilium's SNAT map; retrying");
                            }
                        }
                    }
                }
                failing = !ok;
                if ok {
                    for (t, e) in &now {
                        if known.get(t) != Some(e) && tx.send(NatEvent::Mapped(*e)).is_err() {
                            return;
                        }
                    }
                    for (t, e) in &known {
                        if !now.contains_key(t) && tx.send(NatEvent::Unmapped(*e)).is_err() {
                            return;
                        }
                    }
                    known = now;
                }
                thread::sleep(every);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::test_tuple as t;

    fn v4_key(d: [u8; 4], s: [u8; 4], dport: u16, sport: u16, proto: u8, flags: u8) -> Vec<u8> {
        let mut k = Vec::new();
        k.extend_from_slice(&d);
        k.extend_from_slice(&s);
        k.extend_from_slice(&dport.to_be_bytes());
        k.extend_from_slice(&sport.to_be_bytes());
        k.extend_from_slice(&[proto, flags]);
        k
    }

    fn v4_value(to: [u8; 4], to_port: u16) -> Vec<u8> {
        let mut v = vec![0u8; 32];
        v[..8].copy_from_slice(&12345u64.to_ne_bytes());
        v.extend_from_slice(&to);
        v.extend_from_slice(&to_port.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v
    }

    #[test]
    fn an_out_entry_is_the_pods_tuple_and_the_node_side() {
        let k = v4_key([203, 0, 113, 10], [10, 244, 1, 10], 443, 40000, 6, 0);
        let v = v4_value([10, 224, 0, 4], 61000);
        assert_eq!((k.len(), v.len()), (14, 40));
        let e = parse(4, &k, &v).unwrap();
        assert_eq!(
            e.orig,
            t(PROTO_TCP, "10.244.1.10", 40000, "203.0.113.10", 443)
        );
        assert_eq!(e.snat(), Some(("10.224.0.4".parse().unwrap(), 61000)));
        assert_eq!(e.dnat(), None);
    }

    #[test]
    fn in_entries_icmp_and_short_input_are_skipped() {
        let v = v4_value([10, 224, 0, 4], 61000);
        let inbound = v4_key([10, 224, 0, 4], [203, 0, 113, 10], 61000, 443, 6, 1);
        assert_eq!(parse(4, &inbound, &v), None);
        let icmp = v4_key([203, 0, 113, 10], [10, 244, 1, 10], 0, 7, 1, 0);
        assert_eq!(parse(4, &icmp, &v), None);
        let k = v4_key([203, 0, 113, 10], [10, 244, 1, 10], 443, 40000, 6, 0);
        assert_eq!(parse(4, &k[..13], &v), None);
        assert_eq!(parse(4, &k, &v[..37]), None);
    }

    #[test]
    fn ipv6_entries_parse_with_their_own_layout() {
        let d: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let s: Ipv6Addr = "fd00:10:244:1::10".parse().unwrap();
        let n: Ipv6Addr = "fd00:224::4".parse().unwrap();
        let mut k = Vec::new();
        k.extend_from_slice(&d.octets());
        k.extend_from_slice(&s.octets());
        k.extend_from_slice(&53u16.to_be_bytes());
        k.extend_from_slice(&5353u16.to_be_bytes());
        k.extend_from_slice(&[17, 0]);
        let mut v = vec![0u8; 32];
        v.extend_from_slice(&n.octets());
        v.extend_from_slice(&40001u16.to_be_bytes());
        v.resize(56, 0);
        assert_eq!((k.len(), v.len()), (V6.key as usize, V6.value as usize));
        let e = parse(6, &k, &v).unwrap();
        assert_eq!(e.snat(), Some((IpAddr::V6(n), 40001)));
        assert_eq!(e.orig.src, IpAddr::V6(s));
    }

    #[test]
    fn a_map_of_another_layout_is_refused_naming_what_differs() {
        let info = MapInfo {
            map_type: BPF_MAP_TYPE_LRU_HASH,
            key_size: 16,
            value_size: 40,
            ..Default::default()
        };
        let e = check_layout(&info, V4).unwrap_err();
        assert_eq!(e, "key 16 B / value 40 B (expected 14 / 40)");
        let array = MapInfo {
            map_type: 2,
            key_size: 14,
            value_size: 40,
            ..Default::default()
        };
        assert!(check_layout(&array, V4).unwrap_err().contains("map type 2"));
    }
}
