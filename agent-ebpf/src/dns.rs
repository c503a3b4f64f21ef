//! DNS messages to userspace: a UDP or TCP packet from or to port 53 has its payload's first
//! `DNS_CAPTURE_BYTES` copied into the `TF_DNS` ring, for the agent to name the pods' flows.
//! Every other packet pays two port compares. A full ring drops the copy (counted), never
//! the packet.

use agent_common::{
    Counter, DnsCapture, DNS_CAPTURE_BYTES, DNS_PORT, DNS_WAKE_BYTES, IPPROTO_TCP, IPPROTO_UDP,
    MARK_ICMP_ERROR,
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    cty::c_void,
    helpers::bpf_skb_load_bytes,
    programs::TcContext,
};

use crate::{
    maps::{bump, DNS},
    parse::Parsed,
};

/// `skb_len`: the packet's length from the frame start, as the flow count uses it.
#[inline(always)]
pub fn capture(ctx: &TcContext, p: &Parsed, skb_len: u32) {
    if p.key.src_port != DNS_PORT && p.key.dst_port != DNS_PORT {
        return;
    }
    // An ICMP error about a DNS packet is keyed as the flow it answers: not a message.
    if (p.key.proto != IPPROTO_UDP && p.key.proto != IPPROTO_TCP) || p.marks & MARK_ICMP_ERROR != 0
    {
        return;
    }
    let off = p.l3_off + p.hdr_len;
    let total = skb_len as usize;
    // TCP segments without payload (handshake, ACKs) carry no message.
    if off >= total {
        return;
    }
    let payload = total - off;
    let Some(mut entry) = DNS.reserve::<DnsCapture>(0) else {
        bump(Counter::DnsLost);
        return;
    };
    let c = entry.as_mut_ptr();
    // SAFETY: `c` points at the reserved, exclusively owned ring record.
    let data = unsafe {
        (*c).key = p.key;
        (*c).orig_len = if payload > u16::MAX as usize {
            u16::MAX
        } else {
            payload as u16
        };
        (*c)._pad = 0;
        (*c).len = 0;
        &mut (*c).data
    };
    let want = if payload > DNS_CAPTURE_BYTES {
        DNS_CAPTURE_BYTES
    } else {
        payload
    } as u32;
    // The helper's length must be provably within 1..=DNS_CAPTURE_BYTES for the verifier.
    // The compiler knows `want` is at least 1 and would drop the test; read back through
    // a volatile load it cannot see through, so the verifier sees the test.
    // SAFETY: reading a local.
    let want = unsafe { core::ptr::read_volatile(&want) };
    if want == 0 || want > DNS_CAPTURE_BYTES as u32 {
        entry.discard(0);
        return;
    }
    // SAFETY: `data` is the record's buffer of DNS_CAPTURE_BYTES; `want` is at most that.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            off as u32,
            data.as_mut_ptr() as *mut c_void,
            want,
        )
    };
    if loaded == 0 {
        // SAFETY: as above.
        unsafe { (*c).len = want as u16 };
        let flags = if DNS.query(BPF_RB_AVAIL_DATA as u64) >= DNS_WAKE_BYTES as u64 {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
        entry.submit(flags as u64);
        bump(Counter::DnsCaptured);
    } else {
        entry.discard(0);
    }
}
