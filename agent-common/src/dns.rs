//! DNS messages the programs copy to userspace: every UDP or TCP packet from or to port 53,
//! its payload's first [`DNS_CAPTURE_BYTES`]. The agent keeps those seen on pod interfaces
//! to name the pods' flows (agent/src/dns).

use crate::FlowKey;

/// Payload bytes copied per packet: the EDNS buffer size DNS Flag Day 2020 settled on, so
/// a UDP answer arrives whole; a longer TCP message is marked incomplete by the agent.
pub const DNS_CAPTURE_BYTES: usize = 1232;

/// The ring the captures go through: ~800 messages in flight before the kernel drops (and
/// counts) more, however fast pods query.
pub const DNS_RING_BYTES: u32 = 1 << 20;

/// The agent is woken once this much waits in the ring (it drains the ring at every
/// harvest anyway, before it reads the flows, which is when names are needed): a DNS flood
/// costs one wakeup per ~200 messages, not one each.
pub const DNS_WAKE_BYTES: u32 = DNS_RING_BYTES / 4;

/// The service port that marks DNS.
pub const DNS_PORT: u16 = 53;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct DnsCapture {
    /// Addresses, ports, protocol, interface and direction of the packet.
    pub key: FlowKey,
    /// Bytes of `data` filled.
    pub len: u16,
    /// The transport payload's full length.
    pub orig_len: u16,
    pub _pad: u32,
    pub data: [u8; DNS_CAPTURE_BYTES],
}
