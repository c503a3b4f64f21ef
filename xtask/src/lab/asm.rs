//! Raw BPF instructions for the lab's stand-in programs (Cilium-like datapaths): the lab
//! loads them with `bpf(2)` and needs no compiler. A tiny assembler: opcodes, helper ids,
//! and jumps to a common exit resolved at the end.

use std::net::Ipv4Addr;

/// One BPF instruction.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | ((dst | src << 4) as u64) << 8
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// A port as the packet holds it, read as a little-endian u16.
pub fn wire16(p: u16) -> i32 {
    u16::from_le_bytes(p.to_be_bytes()) as i32
}

/// An address as the packet holds it, read as a little-endian u32 (what a 4-byte load
/// of the header gives).
pub fn wire(a: Ipv4Addr) -> i32 {
    u32::from_le_bytes(a.octets()) as i32
}

pub const MOV_X: u8 = 0xbf; // r_dst = r_src
pub const MOV_K: u8 = 0xb7; // r_dst = imm
pub const ADD_K: u8 = 0x07; // r_dst += imm
pub const LDX_W: u8 = 0x61; // r_dst = *(u32 *)(r_src + off)
pub const LDX_B: u8 = 0x71; // r_dst = *(u8 *)(r_src + off)
pub const LDX_H: u8 = 0x69; // r_dst = *(u16 *)(r_src + off)
pub const ST_H: u8 = 0x6a; // *(u16 *)(r_dst + off) = imm
pub const STX_W: u8 = 0x63; // *(u32 *)(r_dst + off) = r_src
pub const ST_W: u8 = 0x62; // *(u32 *)(r_dst + off) = imm
pub const JNE_K: u8 = 0x55; // if r_dst != imm goto +off
pub const JEQ_K: u8 = 0x15;
pub const JNE32_K: u8 = 0x56; // 32-bit compare: imm is not sign-extended
pub const CALL: u8 = 0x85;
pub const EXIT: u8 = 0x95;
pub const AND32_K: u8 = 0x54; // w_dst &= imm
pub const REDIRECT_NEIGH: i32 = 152;
pub const REDIRECT_PEER: i32 = 155;
pub const LOAD_BYTES: i32 = 26;
pub const STORE_BYTES: i32 = 9;
pub const L3_CSUM: i32 = 10;
pub const L4_CSUM: i32 = 11;
pub const PSEUDO_HDR: i32 = 0x10;
pub const MANGLED_0: i32 = 0x20;

/// Instructions, with jumps to the common exit resolved when finished.
#[derive(Default)]
pub struct Asm {
    v: Vec<(u8, u8, u8, i16, i32, bool)>,
}

impl Asm {
    pub fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.v.push((code, dst, src, off, imm, false));
    }

    /// Jump to the exit when `r_dst <code> imm`.
    pub fn out_if(&mut self, code: u8, dst: u8, imm: i32) {
        self.v.push((code, dst, 0, 0, imm, true));
    }

    /// bpf_skb_load_bytes(skb, offset, r10 + at, len); r0 is its result.
    pub fn load_bytes(&mut self, offset: i32, at: i32, len: i32) {
        self.op(MOV_X, 1, 6, 0, 0);
        self.op(MOV_K, 2, 0, 0, offset);
        self.op(MOV_X, 3, 10, 0, 0);
        self.op(ADD_K, 3, 0, 0, at);
        self.op(MOV_K, 4, 0, 0, len);
        self.op(CALL, 0, 0, 0, LOAD_BYTES);
    }

    /// Where the next instruction goes.
    pub fn len(&self) -> usize {
        self.v.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    /// bpf_l3/l4_csum_replace(skb, offset, from, to, flags).
    pub fn csum(&mut self, helper: i32, offset: i32, from: i32, to: i32, flags: i32) {
        self.op(MOV_X, 1, 6, 0, 0);
        self.op(MOV_K, 2, 0, 0, offset);
        self.op(MOV_K, 3, 0, 0, from);
        self.op(MOV_K, 4, 0, 0, to);
        self.op(MOV_K, 5, 0, 0, flags);
        self.op(CALL, 0, 0, 0, helper);
    }

    /// bpf_skb_store_bytes(skb, offset, r10 + at, len, 0).
    pub fn store_bytes(&mut self, offset: i32, at: i32, len: i32) {
        self.op(MOV_X, 1, 6, 0, 0);
        self.op(MOV_K, 2, 0, 0, offset);
        self.op(MOV_X, 3, 10, 0, 0);
        self.op(ADD_K, 3, 0, 0, at);
        self.op(MOV_K, 4, 0, 0, len);
        self.op(MOV_K, 5, 0, 0, 0);
        self.op(CALL, 0, 0, 0, STORE_BYTES);
    }

    /// Append `r0 = TC_ACT_OK; exit` and resolve the jumps to it.
    pub fn finish(self) -> Vec<u64> {
        self.finish_with(0)
    }

    /// Append `r0 = ret; exit` and resolve the jumps to it.
    pub fn finish_with(mut self, ret: i32) -> Vec<u64> {
        let end = self.v.len();
        self.op(MOV_K, 0, 0, 0, ret);
        self.op(EXIT, 0, 0, 0, 0);
        self.v
            .iter()
            .enumerate()
            .map(|(i, &(code, dst, src, off, imm, to_end))| {
                let off = if to_end { (end - i - 1) as i16 } else { off };
                insn(code, dst, src, off, imm)
            })
            .collect()
    }
}
