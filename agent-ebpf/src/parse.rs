//! Header parsing with direct packet access.
//!
//! Every read goes through [`ptr_at`], which proves to the verifier that the bytes lie inside
//! `[data, data_end)`. Direct access measured ~40% cheaper per packet than `bpf_skb_load_bytes`.

use agent_common::FlowKey;
use aya_ebpf::programs::TcContext;
use core::mem;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up; real traffic rarely has more than two.
const MAX_IPV6_EXT: usize = 6;

/// What the parser learned beyond the key: needed to size GSO super-packets.
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Bytes of IP + transport headers, repeated on every GSO segment.
    pub hdr_len: usize,
    pub tcp_flags: u8,
}

pub enum Outcome {
    Flow(Parsed),
    NotIp,
    Unparsable,
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Outcome {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Outcome::Unparsable;
    };
    // SAFETY: bounds checked by ptr_at.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut key = FlowKey {
        ifindex: 0,
        direction: 0,
        family: 0,
        proto: 0,
        _pad0: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        _pad1: 0,
    };
    let l3_off = EthHdr::LEN;
    let (l4_off, has_l4) = match ether_type {
        ETH_P_IP => match parse_ipv4(ctx, l3_off, &mut key) {
            Some(v) => v,
            None => return Outcome::Unparsable,
        },
        ETH_P_IPV6 => match parse_ipv6(ctx, l3_off, &mut key) {
            Some(v) => v,
            None => return Outcome::Unparsable,
        },
        _ => return Outcome::NotIp,
    };
    let mut parsed = Parsed {
        key,
        l3_off,
        hdr_len: l4_off - l3_off,
        tcp_flags: 0,
    };
    if has_l4 && parse_l4(ctx, l4_off, &mut parsed).is_none() {
        return Outcome::Unparsable;
    }
    Outcome::Flow(parsed)
}

/// Returns (transport offset, whether a transport header follows: false for non-first fragments).
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, off: usize, key: &mut FlowKey) -> Option<(usize, bool)> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ihl < Ipv4Hdr::LEN {
        return None;
    }
    key.family = 4;
    key.proto = ip.proto as u8;
    key.src_addr[..4].copy_from_slice(&ip.src_addr);
    key.dst_addr[..4].copy_from_slice(&ip.dst_addr);
    let frag_off = be16(ip.frags) & 0x1fff;
    Some((off + ihl, frag_off == 0))
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize, key: &mut FlowKey) -> Option<(usize, bool)> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    key.family = 6;
    key.src_addr = ip.src_addr;
    key.dst_addr = ip.dst_addr;
    let mut next = ip.next_hdr as u8;
    let mut cur = off + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext = ptr_at::<[u8; 2]>(ctx, cur)?;
                // SAFETY: bounds checked by ptr_at.
                let [nh, len] = unsafe { *ext };
                next = nh;
                cur += (len as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let ext = ptr_at::<[u8; 2]>(ctx, cur)?;
                // SAFETY: bounds checked by ptr_at.
                let [nh, len] = unsafe { *ext };
                next = nh;
                cur += (len as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let ext = ptr_at::<[u8; 4]>(ctx, cur)?;
                // SAFETY: bounds checked by ptr_at.
                let frag = unsafe { *ext };
                next = frag[0];
                cur += 8;
                let frag_off = u16::from_be_bytes([frag[2], frag[3]]) >> 3;
                if frag_off != 0 {
                    key.proto = next;
                    return Some((cur, false));
                }
            }
            _ => {
                key.proto = next;
                return Some((cur, true));
            }
        }
    }
    None
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, p: &mut Parsed) -> Option<()> {
    match p.key.proto {
        IPPROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(ctx, off)?;
            // SAFETY: bounds checked by ptr_at.
            let tcp = unsafe { &*tcp };
            p.key.src_port = be16(tcp.source);
            p.key.dst_port = be16(tcp.dest);
            let raw = ptr_at::<[u8; 14]>(ctx, off)?;
            // SAFETY: bounds checked by ptr_at; byte 12 = data offset, byte 13 = flags.
            let raw = unsafe { *raw };
            p.tcp_flags = raw[13];
            p.hdr_len += ((raw[12] >> 4) as usize) * 4;
        }
        IPPROTO_UDP => {
            let udp = ptr_at::<UdpHdr>(ctx, off)?;
            // SAFETY: bounds checked by ptr_at.
            let udp = unsafe { &*udp };
            p.key.src_port = be16(udp.src);
            p.key.dst_port = be16(udp.dst);
            p.hdr_len += UdpHdr::LEN;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // type, code, checksum, identifier: the id keeps concurrent pings apart.
            let icmp = ptr_at::<[u8; 6]>(ctx, off)?;
            // SAFETY: bounds checked by ptr_at.
            let icmp = unsafe { *icmp };
            p.key.dst_port = u16::from_be_bytes([icmp[0], icmp[1]]);
            if is_echo(p.key.proto, icmp[0]) {
                p.key.src_port = u16::from_be_bytes([icmp[4], icmp[5]]);
            }
            p.hdr_len += 8;
        }
        _ => {}
    }
    Some(())
}

/// Echo request/reply (ICMP 8/0, ICMPv6 128/129) carry an identifier; other types do not.
#[inline(always)]
fn is_echo(proto: u8, ty: u8) -> bool {
    match proto {
        IPPROTO_ICMP => ty == 0 || ty == 8,
        _ => ty == 128 || ty == 129,
    }
}
