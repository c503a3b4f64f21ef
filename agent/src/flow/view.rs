//! The serialisable form of a flow, as the API and CLI show it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::FlowKey;
use serde::{Deserialize, Serialize};

use super::{FlowEntry, WallClock};
use crate::datapath::Role;

/// IP protocol, named where users expect a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    #[serde(untagged)]
    Other(u8),
}

impl From<u8> for Protocol {
    fn from(p: u8) -> Self {
        match p {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmp,
            58 => Protocol::Icmpv6,
            n => Protocol::Other(n),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("icmpv6"),
            Protocol::Other(n) => write!(f, "ip-{n}"),
        }
    }
}

/// One flow at one observation point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    pub iface: String,
    pub ifindex: u32,
    /// Uplink or pod veth; `None` if the interface went away since.
    pub role: Option<String>,
    /// TC hook: "ingress" (arrived on the interface) or "egress" (left through it).
    pub hook: String,
    pub proto: Protocol,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// For ICMP: echo identifier.
    pub src_port: u16,
    /// For ICMP: `type << 8 | code`.
    pub dst_port: u16,
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u8,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

impl FlowView {
    pub fn new(
        key: &FlowKey,
        e: &FlowEntry,
        iface: Option<(&str, Role)>,
        clock: &WallClock,
    ) -> Self {
        Self {
            iface: iface.map(|(n, _)| n.to_owned()).unwrap_or_default(),
            ifindex: key.ifindex,
            role: iface.map(|(_, r)| format!("{r:?}").to_lowercase()),
            hook: if key.direction == 0 {
                "ingress"
            } else {
                "egress"
            }
            .into(),
            proto: key.proto.into(),
            src: addr(key.family, &key.src_addr),
            dst: addr(key.family, &key.dst_addr),
            src_port: key.src_port,
            dst_port: key.dst_port,
            packets: e.packets,
            bytes: e.bytes,
            tcp_flags: e.tcp_flags,
            first_seen_ms: clock.unix_ms(e.first_seen_ns),
            last_seen_ms: clock.unix_ms(e.last_seen_ns),
        }
    }
}

/// Decode a key address (IPv4 in the first four bytes).
pub fn addr(family: u8, words: &[u64; 2]) -> IpAddr {
    let raw = FlowKey::addr_bytes(words);
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_families() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[10, 244, 1, 5]);
        assert_eq!(
            addr(4, &FlowKey::addr_words(&raw)).to_string(),
            "10.244.1.5"
        );
        let v6: Ipv6Addr = "fd00:10:244:1::5".parse().unwrap();
        let words = FlowKey::addr_words(&v6.octets());
        assert_eq!(addr(6, &words).to_string(), "fd00:10:244:1::5");
    }

    #[test]
    fn protocol_names_round_trip() {
        assert_eq!(
            serde_json::to_string(&Protocol::from(6)).unwrap(),
            "\"tcp\""
        );
        assert_eq!(serde_json::to_string(&Protocol::from(132)).unwrap(), "132");
        let p: Protocol = serde_json::from_str("\"icmpv6\"").unwrap();
        assert_eq!(p, Protocol::Icmpv6);
    }
}
