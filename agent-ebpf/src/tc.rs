//! TC classifier entry points: thin wrappers that never influence the packet's fate.

use agent_common::{
    Counter, Direction, Evicted, FlowKey, FlowSet, FlowStats, CACHE_WAYS, CONN_GEN_ENTRIES,
    MARK_OPENED,
};
use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    cty::c_void,
    helpers::{bpf_get_smp_processor_id, bpf_get_socket_cookie},
    macros::classifier,
    programs::TcContext,
};
use core::ptr::write_volatile;

use crate::{
    maps::{bump, evict, hash_seed, idle_ns, now, set_mask, CONN_GEN, FLOW_CACHE, SOCK_FLOWS},
    parse::{parse, Outcome, Parsed, IPPROTO_TCP, TCP_SYN},
};

/// Attached at TC ingress of pod veths and uplinks.
#[classifier]
pub fn tf_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Ingress);
    TC_ACT_UNSPEC
}

/// Attached at TC egress of pod veths and uplinks.
#[classifier]
pub fn tf_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}

/// A packet a local socket sends (host process, hostNetwork pod) carries its socket; a
/// forwarded pod packet does not (veths orphan it), so this costs one helper call on a
/// flow's first packet per CPU and nothing afterwards.
#[inline(always)]
fn remember_socket(ctx: &TcContext, key: &FlowKey) {
    // SAFETY: the context pointer the kernel passed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
    if cookie != 0 {
        let _ = SOCK_FLOWS.insert(key, cookie, 0);
    }
}

/// Does nothing: the benchmark's floor (dispatch plus kernel stats cost).
#[classifier]
pub fn tf_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe(ctx: &TcContext, dir: Direction) {
    bump(Counter::Packets);
    match parse(ctx) {
        Outcome::Flow(p) => record(ctx, dir, p),
        Outcome::NotIp => bump(Counter::NonIp),
        Outcome::Unparsable => bump(Counter::Unparsable),
    }
}

#[inline(always)]
fn record(ctx: &TcContext, dir: Direction, mut p: Parsed) {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context pointer the kernel passed in; these UAPI fields are readable.
    let (ifindex, len, gso_segs) = unsafe { ((*skb).ifindex, (*skb).len, (*skb).gso_segs) };
    p.key.ifindex = ifindex;
    p.key.direction = dir as u8;
    // A GSO super-packet stands for `segs` wire packets, each carrying its own copy of the
    // IP + transport headers; count them the way the wire will see them.
    crate::dns::capture(ctx, &p, len);
    let segs = if gso_segs > 1 { gso_segs as u64 } else { 1 };
    let l3_len = (len as u64).saturating_sub(p.l3_off as u64);
    let bytes = l3_len + (segs - 1) * p.hdr_len as u64;
    let now = now();

    let words = &words_of(&p.key);
    let h = hash(words);
    let set_index = (h >> 32) as u32 & set_mask();
    // The generation's bits of the key's last word (0 for all but TCP): folded into the
    // compare, so every other packet's key words stay as the parser built them.
    let generation_bits = if p.key.proto == IPPROTO_TCP {
        let generation = generation(h, &p);
        p.key.generation = generation;
        (generation as u64) << 32
    } else {
        0
    };
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(set) = FLOW_CACHE.get_ptr_mut(cpu * (set_mask() + 1) + set_index) else {
        return;
    };
    // SAFETY: this CPU's row: only this CPU writes it, and not concurrently with itself.
    let set = unsafe { &mut *set };
    for way in 0..CACHE_WAYS {
        let s = &mut set.ways[way];
        if s.stats.packets != 0 && same_key(key_words(&s.key), words, generation_bits) {
            let st = &mut s.stats;
            // Back after the agent expired it: a new record, as with a fresh slot.
            if now.wrapping_sub(st.last_seen_ns) > idle_ns() {
                st.first_seen_ns = now;
                st.tcp_flags = 0;
                st.marks = 0;
                if dir == Direction::Egress {
                    remember_socket(ctx, &p.key);
                }
            }
            st.packets += segs;
            st.bytes += bytes;
            st.last_seen_ns = now;
            st.tcp_flags |= p.tcp_flags;
            if p.marks != 0 {
                st.marks |= p.marks;
                if p.marks & MARK_OPENED != 0 {
                    // A retransmitted SYN, or one after the agent reloaded the programs (a
                    // new connection on the tuple has another generation, so another key).
                    st.syn_seq = p.syn_seq;
                }
            }
            return;
        }
    }
    occupy(set, cpu, set_index, &p, segs, bytes, now);
    if dir == Direction::Egress {
        remember_socket(ctx, &p.key);
    }
}

/// A miss: take an empty way, else the least recently seen one (its counts go to userspace).
#[inline(always)]
fn occupy(
    set: &mut FlowSet,
    cpu: u32,
    set_index: u32,
    p: &Parsed,
    segs: u64,
    bytes: u64,
    now: u64,
) {
    let w = &set.ways;
    let way = if w[0].stats.packets == 0 {
        0
    } else if w[1].stats.packets == 0 || w[1].stats.last_seen_ns < w[0].stats.last_seen_ns {
        1
    } else {
        0
    };
    let s = &mut set.ways[way];
    if s.stats.packets != 0 {
        evict(&Evicted {
            key: s.key,
            stats: s.stats,
            seq: s.seq_begin,
            cpu,
            slot: set_index * CACHE_WAYS as u32 + way as u32,
        });
    }
    let seq = s.seq_begin + 1;
    let stats = FlowStats {
        packets: segs,
        bytes,
        first_seen_ns: now,
        last_seen_ns: now,
        tcp_flags: p.tcp_flags,
        marks: p.marks,
        _pad1: 0,
        syn_seq: p.syn_seq,
    };
    // SAFETY: plain stores into this CPU's slot; volatile only to keep their order, which
    // userspace relies on to detect a torn copy (see agent_common::cache).
    unsafe {
        write_volatile(&mut s.seq_begin, seq);
        write_volatile(&mut s.key, p.key);
        write_volatile(&mut s.stats, stats);
        write_volatile(&mut s.seq_end, seq);
    }
}

/// The key's six words built in registers from its fields (generation included, which is
/// 0 where [`record`] builds them: it adds the generation to the compare instead). Loading
/// them back from the stack instead would read each of words 0 and 5 through one 8-byte
/// load over several narrower stores the parser just made, which store forwarding cannot
/// serve.
#[inline(always)]
fn words_of(k: &FlowKey) -> [u64; 6] {
    [
        k.ifindex as u64
            | (k.direction as u64) << 32
            | (k.family as u64) << 40
            | (k.proto as u64) << 48,
        k.src_addr[0],
        k.src_addr[1],
        k.dst_addr[0],
        k.dst_addr[1],
        k.src_port as u64 | (k.dst_port as u64) << 16 | (k.generation as u64) << 32,
    ]
}

/// The key as the six 64-bit words it is laid out in (48 bytes, 8-aligned, no uninitialised
/// padding; little-endian like [`words_of`]).
#[inline(always)]
fn key_words(key: &FlowKey) -> &[u64; 6] {
    // SAFETY: FlowKey is #[repr(C, align(8))], 48 bytes, all padding explicit.
    unsafe { &*(key as *const FlowKey as *const [u64; 6]) }
}

/// Word-wise equality of a slot's key `a` with the packet's words `b` plus its generation
/// bits (`b[5]` has them clear). `==` on the arrays compiles to a call to a byte-at-a-time
/// `memcmp` (~430 instructions for 48 bytes); XOR-OR of the six words is twelve.
#[inline(always)]
fn same_key(a: &[u64; 6], b: &[u64; 6], generation_bits: u64) -> bool {
    ((a[0] ^ b[0])
        | (a[1] ^ b[1])
        | (a[2] ^ b[2])
        | (a[3] ^ b[3])
        | (a[4] ^ b[4])
        | (a[5] ^ b[5] ^ generation_bits))
        == 0
}

/// The TCP connection generation of this packet's key: a SYN or SYN-ACK records its
/// initiator ISN under the key's hash; any other packet reads it back if the entry's tag
/// says it is this key's (else 0: unknown). Index and tag come from one more mixing step
/// of the key's hash, from disjoint bits of it: the hash's low bits depend only on the
/// inputs' low bits (two IPv4 keys that differ only in an address's last two bytes share
/// its low 48), and a tag that overlapped the index would leave only its other bits to
/// tell keys of one index apart (a wrong generation in about 65,000 such pairs, which CI
/// caught as one split connection in 20,000). A wrong generation now needs two keys with
/// the same 16-bit index and the same 32-bit tag.
#[inline(always)]
fn generation(h: u64, p: &Parsed) -> u32 {
    let m = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let index = (m >> 48) as u32 & (CONN_GEN_ENTRIES - 1);
    let tag = (m >> 16) as u32 | 1;
    let Some(cell) = CONN_GEN.get_ptr_mut(index) else {
        return 0;
    };
    if p.tcp_flags & TCP_SYN != 0 {
        // SAFETY: an aligned 8-byte store into a shared array value: atomic on the JITs'
        // targets, so readers on other CPUs see the old or the new entry, never a mix.
        unsafe { write_volatile(cell, (tag as u64) << 32 | p.isn as u64) };
        return p.isn;
    }
    // SAFETY: as above, an aligned 8-byte load.
    let entry = unsafe { core::ptr::read_volatile(cell) };
    if (entry >> 32) as u32 == tag {
        entry as u32
    } else {
        0
    }
}

/// Seeded multiplicative hash of the key's words (generation bits clear): four independent
/// products, so the CPU overlaps them (a chain of six dependent multiplies cost more). Its
/// well-mixed top 32 bits pick the set, masked to the sets the agent sized the cache to.
/// Addresses pair up source-low with destination-high so IPv4 tuples map bijectively.
#[inline(always)]
fn hash(w: &[u64; 6]) -> u64 {
    let seed = hash_seed();
    (w[0] ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (w[1] ^ w[3].rotate_left(32)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (w[2] ^ w[4].rotate_left(32)).wrapping_mul(0x1656_67B1_9E37_79F9)
        ^ (w[5] ^ seed.rotate_left(32)).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}
