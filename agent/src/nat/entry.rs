//! One translated (or merely tracked) connection as conntrack describes it.

use std::net::IpAddr;

use crate::net::FlowTuple;

/// Where a sighting sits relative to the translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Initiator → responder, as the initiator sent it (before NAT): e.g. at the pod veth.
    ForwardPre,
    /// Responder → initiator, after NAT was undone: e.g. back at the pod veth.
    ReplyPre,
    /// Initiator → responder after NAT: e.g. leaving the uplink from the node address.
    ForwardPost,
    /// Responder → initiator before NAT is undone: e.g. arriving at the uplink.
    ReplyPost,
}

impl Side {
    pub fn is_forward(self) -> bool {
        matches!(self, Side::ForwardPre | Side::ForwardPost)
    }
}

/// Conntrack's original and reply tuples, in the datapath's tuple form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatEntry {
    pub orig: FlowTuple,
    pub reply: FlowTuple,
}

impl NatEntry {
    /// The four tuples packets of this connection can carry, and which side each is.
    /// `None` when the reply tuple cannot be reversed (an ICMP type with no answer).
    pub fn sightings(&self) -> Option<[(FlowTuple, Side); 4]> {
        Some([
            (self.orig, Side::ForwardPre),
            (self.orig.reversed()?, Side::ReplyPre),
            (self.reply.reversed()?, Side::ForwardPost),
            (self.reply, Side::ReplyPost),
        ])
    }

    /// The forward tuple after translation.
    fn forward_post(&self) -> Option<FlowTuple> {
        self.reply.reversed()
    }

    /// Packets after translation carry tuples packets before it do not (SNAT or DNAT).
    pub fn translates(&self) -> bool {
        self.forward_post() != Some(self.orig)
    }

    /// Source after SNAT (node or egress address and port), if SNAT happened.
    pub fn snat(&self) -> Option<(IpAddr, u16)> {
        let post = self.forward_post()?;
        ((post.src, post.sport) != (self.orig.src, self.orig.sport))
            .then_some((post.src, post.sport))
    }

    /// Destination after DNAT (the chosen backend), if DNAT happened.
    pub fn dnat(&self) -> Option<(IpAddr, u16)> {
        let post = self.forward_post()?;
        ((post.dst, post.dport) != (self.orig.dst, self.orig.dport))
            .then_some((post.dst, post.dport))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::test_tuple as t;
    use crate::net::{PROTO_ICMP, PROTO_TCP};

    #[test]
    fn masquerade_to_the_internet_is_snat_only() {
        // conntrack -L: src=10.244.1.11 dst=203.0.113.10 sport=40000 dport=443
        //               src=203.0.113.10 dst=10.224.0.4 sport=443 dport=40001
        let e = NatEntry {
            orig: t(PROTO_TCP, "10.244.1.11", 40000, "203.0.113.10", 443),
            reply: t(PROTO_TCP, "203.0.113.10", 443, "10.224.0.4", 40001),
        };
        assert_eq!(e.snat(), Some(("10.224.0.4".parse().unwrap(), 40001)));
        assert_eq!(e.dnat(), None);
        let s = e.sightings().unwrap();
        assert_eq!(
            s[2].0,
            t(PROTO_TCP, "10.224.0.4", 40001, "203.0.113.10", 443)
        );
        assert_eq!(
            s[1].0,
            t(PROTO_TCP, "203.0.113.10", 443, "10.244.1.11", 40000)
        );
    }

    #[test]
    fn cluster_ip_is_dnat_only_and_both_when_the_backend_is_remote_and_masqueraded() {
        let svc = NatEntry {
            orig: t(PROTO_TCP, "10.244.1.12", 5000, "10.0.0.10", 80),
            reply: t(PROTO_TCP, "10.244.2.10", 8080, "10.244.1.12", 5000),
        };
        assert_eq!(svc.dnat(), Some(("10.244.2.10".parse().unwrap(), 8080)));
        assert_eq!(svc.snat(), None);
        let both = NatEntry {
            orig: t(PROTO_TCP, "10.244.1.12", 5000, "10.0.0.10", 80),
            reply: t(PROTO_TCP, "10.224.0.9", 8080, "10.224.0.4", 5001),
        };
        assert!(both.snat().is_some() && both.dnat().is_some());
    }

    #[test]
    fn icmp_echo_snat_keeps_type_and_maps_the_id() {
        let e = NatEntry {
            orig: t(PROTO_ICMP, "10.244.1.11", 7, "203.0.113.10", 8 << 8),
            reply: t(PROTO_ICMP, "203.0.113.10", 9, "10.224.0.4", 0),
        };
        assert_eq!(e.snat(), Some(("10.224.0.4".parse().unwrap(), 9)));
        assert_eq!(e.dnat(), None);
        assert_eq!(
            e.sightings().unwrap()[2].0,
            t(PROTO_ICMP, "10.224.0.4", 9, "203.0.113.10", 8 << 8)
        );
    }
}
