//! The serialisable form of a flow, as the API and CLI show it.

use std::net::IpAddr;

use agent_common::FlowKey;
use serde::{Deserialize, Serialize};

use super::FlowEntry;
use crate::{
    datapath::Role,
    net::{addr, Protocol, WallClock},
};

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
