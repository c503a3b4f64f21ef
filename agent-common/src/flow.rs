//! The flow key and counters of the kernel flow cache.

/// IP protocol numbers the kernel programs and the agent both name: one definition.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Which hook saw the packet. Values are stable: they appear in the map key.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// TC ingress: the packet arrived on this interface.
    Ingress = 0,
    /// TC egress: the packet leaves through this interface.
    Egress = 1,
}

/// One flow as seen at one observation point (interface + direction).
///
/// Addresses are stored as two u64 holding the address bytes in network order (IPv4 in the
/// first four bytes) so one map serves both families. Aligned u64s, not byte arrays: the
/// BPF backend turns byte arrays into byte-at-a-time copies and out-of-line memset calls,
/// which measured more than the map lookup itself. For ICMP/ICMPv6 `src_port` carries the echo identifier and `dst_port`
/// carries `type << 8 | code`, so echo request and reply stay distinct flows.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    pub ifindex: u32,
    /// [`Direction`] as u8 (enums are not allowed in shared map types).
    pub direction: u8,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number of the transport header (after IPv6 extension headers).
    pub proto: u8,
    pub _pad0: u8,
    pub src_addr: [u64; 2],
    pub dst_addr: [u64; 2],
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP: the initiator's initial sequence number of the connection this packet belongs
    /// to, learnt from its SYN (or the SYN-ACK acknowledging it) through
    /// [`crate::CONN_GEN_ENTRIES`]; 0 when unknown (the connection predates the programs, or
    /// a colliding flow's SYN took its entry). Two connections that reuse one 5-tuple so get
    /// different keys, hence different slots and records. 0 for other protocols.
    pub generation: u32,
}

/// Hashed as its six 64-bit words: one write each instead of one per field, on the
/// agent's per-harvest path.
impl core::hash::Hash for FlowKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(
            self.ifindex as u64
                | (self.direction as u64) << 32
                | (self.family as u64) << 40
                | (self.proto as u64) << 48,
        );
        state.write_u64(self.src_addr[0]);
        state.write_u64(self.src_addr[1]);
        state.write_u64(self.dst_addr[0]);
        state.write_u64(self.dst_addr[1]);
        state.write_u64(
            self.src_port as u64 | (self.dst_port as u64) << 16 | (self.generation as u64) << 32,
        );
    }
}

impl FlowKey {
    /// The same observation point of the same 5-tuple, whatever the connection generation.
    pub fn same_place(&self, o: &FlowKey) -> bool {
        FlowKey {
            generation: 0,
            ..*self
        } == FlowKey {
            generation: 0,
            ..*o
        }
    }

    /// Address bytes in network order (IPv4 in the first four).
    pub fn addr_bytes(words: &[u64; 2]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&words[0].to_ne_bytes());
        out[8..].copy_from_slice(&words[1].to_ne_bytes());
        out
    }

    /// Inverse of [`FlowKey::addr_bytes`].
    pub fn addr_words(bytes: &[u8; 16]) -> [u64; 2] {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&bytes[..8]);
        b.copy_from_slice(&bytes[8..]);
        [u64::from_ne_bytes(a), u64::from_ne_bytes(b)]
    }
}

/// A TCP SYN without ACK passed here: this direction opened the connection (OR-ed flags
/// cannot tell the opener: both ends OR to SYN|ACK).
pub const MARK_OPENED: u8 = 1;
/// An ICMP error answering this flow passed here. The kernel keys an error by the header it
/// embeds (reversed: it travels the flow's way back), so it lands on the flow it answers
/// instead of becoming an unrelated ICMP flow; its packet and bytes count in that direction.
pub const MARK_ICMP_ERROR: u8 = 2;

/// Counters for one [`FlowKey`], one copy per CPU (summed by the agent).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Wire packets: a GSO super-packet counts as its segment count.
    pub packets: u64,
    /// IP bytes (IP header + payload) as they would appear on the wire, GSO segments
    /// included; link-layer headers excluded so a flow counts the same on every hop.
    pub bytes: u64,
    /// CLOCK_MONOTONIC ns of the first and last packet on this CPU, from the agent's clock
    /// map (resolution: [`crate::CLOCK_TICK_MS`]).
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// OR of TCP flags seen (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20 ...).
    pub tcp_flags: u8,
    /// [`MARK_OPENED`] | [`MARK_ICMP_ERROR`]: facts about single packets that OR-ed TCP
    /// flags cannot carry.
    pub marks: u8,
    pub _pad1: u16,
    /// Sequence number of the SYN that opened it (0 if none was seen in this occupation).
    /// NAT keeps sequence numbers, so the pod's and the uplink's sightings of one TCP
    /// connection carry the same value: the agent pairs them by it when conntrack is silent.
    pub syn_seq: u32,
}
