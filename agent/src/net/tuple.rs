//! A 5-tuple in the form the datapath reports it, with the protocol-aware reversal that
//! joining directions needs (ICMP echo has no ports: the id stays, the type flips).

use std::net::IpAddr;

use agent_common::FlowKey;
use serde::Serialize;

use super::{addr, PROTO_ICMP, PROTO_ICMPV6};

/// One direction of a flow. For ICMP/ICMPv6 `sport` is the echo id and `dport` is
/// `type << 8 | code`, exactly as the kernel programs key it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowTuple {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl From<&FlowKey> for FlowTuple {
    fn from(k: &FlowKey) -> Self {
        FlowTuple {
            proto: k.proto,
            src: addr(k.family, &k.src_addr),
            sport: k.src_port,
            dst: addr(k.family, &k.dst_addr),
            dport: k.dst_port,
        }
    }
}

/// ICMP(v6) echo request type → reply type and back; other types have no answer type.
fn icmp_answer(proto: u8, ty: u8) -> Option<u8> {
    match (proto, ty) {
        (PROTO_ICMP, 8) => Some(0),
        (PROTO_ICMP, 0) => Some(8),
        (PROTO_ICMPV6, 128) => Some(129),
        (PROTO_ICMPV6, 129) => Some(128),
        _ => None,
    }
}

impl FlowTuple {
    pub fn is_icmp(&self) -> bool {
        self.proto == PROTO_ICMP || self.proto == PROTO_ICMPV6
    }

    /// The other direction of the same flow, or `None` for ICMP messages that have no
    /// reply type (errors, router advertisements: one-way by nature).
    pub fn reversed(&self) -> Option<FlowTuple> {
        if self.is_icmp() {
            let ty = icmp_answer(self.proto, (self.dport >> 8) as u8)?;
            return Some(FlowTuple {
                proto: self.proto,
                src: self.dst,
                sport: self.sport,
                dst: self.src,
                dport: (ty as u16) << 8 | (self.dport & 0xff),
            });
        }
        Some(FlowTuple {
            proto: self.proto,
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
        })
    }
}

/// A tuple from text, for tests across the crate.
#[cfg(test)]
pub fn t(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> FlowTuple {
    FlowTuple {
        proto,
        src: src.parse().unwrap(),
        sport,
        dst: dst.parse().unwrap(),
        dport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::PROTO_TCP;

    #[test]
    fn reverses_ports_for_tcp_and_udp() {
        let a = t(PROTO_TCP, "10.0.0.1", 40000, "10.0.0.2", 80);
        assert_eq!(
            a.reversed(),
            Some(t(PROTO_TCP, "10.0.0.2", 80, "10.0.0.1", 40000))
        );
    }

    #[test]
    fn reverses_icmp_echo_by_type_and_keeps_the_id() {
        let req = t(PROTO_ICMP, "10.0.0.1", 77, "8.8.8.8", 8 << 8);
        assert_eq!(
            req.reversed(),
            Some(t(PROTO_ICMP, "8.8.8.8", 77, "10.0.0.1", 0))
        );
        let req6 = t(PROTO_ICMPV6, "fd00::1", 5, "fd00::2", 128 << 8);
        assert_eq!(req6.reversed().unwrap().dport, 129 << 8);
        let unreachable = t(PROTO_ICMP, "10.0.0.1", 0, "10.0.0.2", 3 << 8 | 3);
        assert_eq!(unreachable.reversed(), None);
    }
}
