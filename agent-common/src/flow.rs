//! The flow key and value of the kernel flow map.

/// Capacity of the kernel flow map. LRU, so a full map evicts the least recently used flow
/// rather than refusing new ones; the agent harvests well before that in normal operation.
pub const MAX_FLOWS: u32 = 65_536;

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
/// Addresses are stored as 16 bytes for both families (IPv4 in the first four bytes) so one
/// map serves both. For ICMP/ICMPv6 `src_port` carries the echo identifier and `dst_port`
/// carries `type << 8 | code`, so echo request and reply stay distinct flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub ifindex: u32,
    /// [`Direction`] as u8 (enums are not allowed in shared map types).
    pub direction: u8,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number of the transport header (after IPv6 extension headers).
    pub proto: u8,
    pub _pad0: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad1: u32,
}

/// Counters for one [`FlowKey`], one copy per CPU (summed by the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Wire packets: a GSO super-packet counts as its segment count.
    pub packets: u64,
    /// IP bytes (IP header + payload) as they would appear on the wire, GSO segments
    /// included; link-layer headers excluded so a flow counts the same on every hop.
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and last packet on this CPU.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// OR of TCP flags seen (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20 ...).
    pub tcp_flags: u8,
    pub _pad: [u8; 7],
}
