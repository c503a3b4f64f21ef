//! Header parsing with direct packet access.
//!
//! Every read goes through [`ptr_at`], which proves to the verifier that the bytes lie inside
//! `[data, data_end)`. Headers are read through 16-bit word views: with Ethernet's 14-byte
//! header every IP/TCP/UDP field is 2-byte aligned when the frame start is (skb headroom,
//! VLAN and tunnel pops are all even), so the BPF backend emits word loads instead of
//! splitting byte-array headers into single-byte loads, which measured ~50 ns/packet more.
//! The verifier forbids checking the pointer's alignment; on x86-64 and arm64 the JIT's
//! loads are correct at any alignment, so an odd frame would cost speed, not correctness.
//! Words keep network byte order; userspace decodes them.

use agent_common::{FlowKey, MARK_ICMP_ERROR, MARK_OPENED};
use aya_ebpf::programs::TcContext;
use core::mem;
use network_types::eth::EthHdr;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
pub use agent_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up; real traffic rarely has more than two.
const MAX_IPV6_EXT: usize = 6;

/// IPv4 header as 16-bit words (RFC 791 layout).
#[repr(C)]
struct Ip4 {
    vihl_tos: u16,
    tot_len: u16,
    id: u16,
    frag: u16,
    ttl_proto: u16,
    check: u16,
    src: [u16; 2],
    dst: [u16; 2],
}

/// IPv6 fixed header as 16-bit words (RFC 8200 layout).
#[repr(C)]
struct Ip6 {
    vtc_flow: [u16; 2],
    payload_len: u16,
    next_hop: u16,
    src: [u16; 8],
    dst: [u16; 8],
}

/// Four in-memory 16-bit words as one u64 with the same in-memory bytes (little-endian).
#[inline(always)]
fn join(w: &[u16]) -> u64 {
    w[0] as u64 | (w[1] as u64) << 16 | (w[2] as u64) << 32 | (w[3] as u64) << 48
}

pub const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A TCP SYN without ACK: the opener's first packet.
#[inline(always)]
fn opens(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// First byte / second byte of a word as it lies in memory (little-endian host).
#[inline(always)]
fn lo(w: u16) -> u8 {
    w as u8
}
#[inline(always)]
fn hi(w: u16) -> u8 {
    (w >> 8) as u8
}

/// What the parser learned beyond the key: needed to size GSO super-packets.
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Bytes of IP + transport headers, repeated on every GSO segment.
    pub hdr_len: usize,
    pub tcp_flags: u8,
    /// A TCP SYN without ACK's sequence number (host order), else 0. Whether it opened the
    /// connection is read from `tcp_flags` where needed, so the hot path carries one value
    /// fewer.
    pub syn_seq: u32,
    /// A SYN's or SYN-ACK's initiator ISN (the SYN's sequence number, the SYN-ACK's
    /// acknowledgment minus one), else 0: the connection generation both directions share.
    pub isn: u32,
    /// `agent_common::MARK_*` bits this packet sets on its flow (0 for almost every packet,
    /// so the hot path tests one value).
    pub marks: u8,
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
pub fn parse(ctx: &TcContext) -> Outcome {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Outcome::Unparsable;
    };
    // SAFETY: bounds checked by ptr_at; EthHdr is 2-aligned and so is the frame.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut key = FlowKey {
        ifindex: 0,
        direction: 0,
        family: 0,
        proto: 0,
        _pad0: 0,
        src_addr: [0; 2],
        dst_addr: [0; 2],
        src_port: 0,
        dst_port: 0,
        generation: 0,
    };
    let l3_off = EthHdr::LEN;
    let parsed = match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l3_off, &mut key),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off, &mut key),
        _ => return Outcome::NotIp,
    };
    let Some((l4_off, has_l4)) = parsed else {
        return Outcome::Unparsable;
    };
    let mut parsed = Parsed {
        key,
        l3_off,
        hdr_len: l4_off - l3_off,
        tcp_flags: 0,
        syn_seq: 0,
        isn: 0,
        marks: 0,
    };
    if has_l4 && parse_l4(ctx, l4_off, &mut parsed).is_none() {
        return Outcome::Unparsable;
    }
    Outcome::Flow(parsed)
}

/// Returns (transport offset, whether a transport header follows: false for non-first fragments).
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, off: usize, key: &mut FlowKey) -> Option<(usize, bool)> {
    let ip = ptr_at::<Ip4>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at; 2-aligned (see module doc).
    let ip = unsafe { &*ip };
    let ihl = ((lo(ip.vihl_tos) & 0x0f) as usize) * 4;
    if ihl < mem::size_of::<Ip4>() {
        return None;
    }
    key.family = 4;
    key.proto = hi(ip.ttl_proto);
    key.src_addr[0] = ip.src[0] as u64 | (ip.src[1] as u64) << 16;
    key.dst_addr[0] = ip.dst[0] as u64 | (ip.dst[1] as u64) << 16;
    let frag_off = u16::from_be(ip.frag) & 0x1fff;
    Some((off + ihl, frag_off == 0))
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize, key: &mut FlowKey) -> Option<(usize, bool)> {
    let ip = ptr_at::<Ip6>(ctx, off)?;
    // SAFETY: bounds checked by ptr_at; 2-aligned (see module doc).
    let ip = unsafe { &*ip };
    key.family = 6;
    key.src_addr = [join(&ip.src[..4]), join(&ip.src[4..])];
    key.dst_addr = [join(&ip.dst[..4]), join(&ip.dst[4..])];
    let mut next = lo(ip.next_hop);
    let mut cur = off + mem::size_of::<Ip6>();
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // SAFETY: bounds checked by ptr_at; extension headers are 8-byte multiples.
                let w = unsafe { *ptr_at::<u16>(ctx, cur)? };
                next = lo(w);
                cur += (hi(w) as usize + 1) * 8;
            }
            IPPROTO_AH => {
                // SAFETY: as above.
                let w = unsafe { *ptr_at::<u16>(ctx, cur)? };
                next = lo(w);
                cur += (hi(w) as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                // SAFETY: as above; [next header, reserved, offset+flags].
                let w = unsafe { *ptr_at::<[u16; 2]>(ctx, cur)? };
                next = lo(w[0]);
                cur += 8;
                if u16::from_be(w[1]) >> 3 != 0 {
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
            // SAFETY: bounds checked by ptr_at; words 0-1 ports, word 6 = data offset | flags.
            let tcp = unsafe { *ptr_at::<[u16; 7]>(ctx, off)? };
            p.key.src_port = u16::from_be(tcp[0]);
            p.key.dst_port = u16::from_be(tcp[1]);
            p.tcp_flags = hi(tcp[6]);
            if opens(p.tcp_flags) {
                // Words 2-3 are the sequence number, already loaded with the header.
                p.syn_seq = (u16::from_be(tcp[2]) as u32) << 16 | u16::from_be(tcp[3]) as u32;
                p.isn = p.syn_seq;
                p.marks = MARK_OPENED;
            } else if p.tcp_flags & TCP_SYN != 0 {
                // A SYN-ACK: words 4-5 acknowledge the initiator's ISN + 1.
                let ack = (u16::from_be(tcp[4]) as u32) << 16 | u16::from_be(tcp[5]) as u32;
                p.isn = ack.wrapping_sub(1);
            }
            p.hdr_len += ((lo(tcp[6]) >> 4) as usize) * 4;
        }
        IPPROTO_UDP => {
            // SAFETY: bounds checked by ptr_at; source port, destination port.
            let udp = unsafe { *ptr_at::<[u16; 4]>(ctx, off)? };
            p.key.src_port = u16::from_be(udp[0]);
            p.key.dst_port = u16::from_be(udp[1]);
            p.hdr_len += 8;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // SAFETY: bounds checked by ptr_at; type|code, checksum, identifier.
            let icmp = unsafe { *ptr_at::<[u16; 3]>(ctx, off)? };
            let ty = lo(icmp[0]);
            p.hdr_len += 8;
            if is_error(p.key.proto, ty) && answered_flow(ctx, off + 8, &mut p.key).is_some() {
                p.marks = MARK_ICMP_ERROR;
                return Some(());
            }
            p.key.dst_port = u16::from_be(icmp[0]);
            // The identifier keeps concurrent pings apart; only echo messages carry one.
            if is_echo(p.key.proto, ty) {
                p.key.src_port = u16::from_be(icmp[2]);
            }
        }
        _ => {}
    }
    Some(())
}

/// Destination unreachable, time exceeded, parameter problem (ICMP 3, 11, 12; ICMPv6 1-4):
/// errors that embed the header of the packet they answer.
#[inline(always)]
fn is_error(proto: u8, ty: u8) -> bool {
    match proto {
        IPPROTO_ICMP => ty == 3 || ty == 11 || ty == 12,
        _ => (1..=4).contains(&ty),
    }
}

/// Re-keys an ICMP error as the flow it answers, reversed: the error travels that flow's
/// way back, so it is counted as that flow's reply instead of as unrelated ICMP. `off` is
/// the embedded IP header. None (the key untouched) when the embedded header is cut short
/// or answers something that is no flow of ours (another error, a non-echo message).
#[inline(always)]
fn answered_flow(ctx: &TcContext, off: usize, key: &mut FlowKey) -> Option<()> {
    let mut k = *key;
    let l4 = if key.family == 4 {
        // SAFETY: bounds checked by ptr_at; 2-aligned like the outer header.
        let ip = unsafe { &*ptr_at::<Ip4>(ctx, off)? };
        let ihl = ((lo(ip.vihl_tos) & 0x0f) as usize) * 4;
        if ihl < mem::size_of::<Ip4>() {
            return None;
        }
        k.proto = hi(ip.ttl_proto);
        k.src_addr = [ip.dst[0] as u64 | (ip.dst[1] as u64) << 16, 0];
        k.dst_addr = [ip.src[0] as u64 | (ip.src[1] as u64) << 16, 0];
        off + ihl
    } else {
        // SAFETY: as above. Extension headers are not walked: an error quoting one is rare
        // and stays an ICMPv6 flow.
        let ip = unsafe { &*ptr_at::<Ip6>(ctx, off)? };
        k.proto = lo(ip.next_hop);
        k.src_addr = [join(&ip.dst[..4]), join(&ip.dst[4..])];
        k.dst_addr = [join(&ip.src[..4]), join(&ip.src[4..])];
        off + mem::size_of::<Ip6>()
    };
    // SAFETY: bounds checked by ptr_at; every error quotes at least 8 transport bytes.
    let w = unsafe { *ptr_at::<[u16; 3]>(ctx, l4)? };
    match k.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            k.src_port = u16::from_be(w[1]);
            k.dst_port = u16::from_be(w[0]);
        }
        // An unanswerable ping: keyed as the echo reply it did not get.
        IPPROTO_ICMP if lo(w[0]) == 8 => {
            k.src_port = u16::from_be(w[2]);
            k.dst_port = 0;
        }
        IPPROTO_ICMPV6 if lo(w[0]) == 128 => {
            k.src_port = u16::from_be(w[2]);
            k.dst_port = 129 << 8;
        }
        _ => return None,
    }
    *key = k;
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
