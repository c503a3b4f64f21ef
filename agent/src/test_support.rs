//! Kernel map values for unit tests of the code that consumes them.

use agent_common::{FlowKey, FlowStats};

/// A UDP flow 10.0.0.1:`port` → 10.0.0.2:53 at ifindex 3, egress.
pub fn udp_key(port: u16) -> FlowKey {
    FlowKey {
        ifindex: 3,
        direction: 1,
        family: 4,
        proto: 17,
        _pad0: 0,
        src_addr: [0x0100_000a, 0],
        dst_addr: [0x0200_000a, 0],
        src_port: port,
        dst_port: 53,
        generation: 0,
    }
}

pub fn stats(packets: u64, bytes: u64, first: u64, last: u64, tcp_flags: u8) -> FlowStats {
    FlowStats {
        packets,
        bytes,
        first_seen_ns: first,
        last_seen_ns: last,
        tcp_flags,
        marks: u8::from(tcp_flags & 0x12 == 0x02) * agent_common::MARK_OPENED,
        _pad1: 0,
        syn_seq: 0,
    }
}

/// web-1 (alpha-web, tenant alpha) → the internet: 10.244.1.10:40000 → 203.0.113.10:443 over
/// TCP, masqueraded to 10.224.0.4:40001, seen at veth10, 3/300 forward and 2/150 back.
pub fn egress_view() -> crate::export::ConnectionView {
    use crate::{
        classify::classify,
        config::Config,
        flow::{Connection, Counts, Sighting},
        identity::{snapshot, Store},
        net::{test_tuple, WallClock, PROTO_TCP},
    };
    let store = Store::from_objects(
        snapshot::parse(
            "kind: List\nitems:\n\
             - {apiVersion: v1, kind: Namespace, metadata: {name: alpha-web, labels: {tenant: alpha}}}\n\
             - {apiVersion: v1, kind: Pod, metadata: {name: web-1, namespace: alpha-web}, spec: {nodeName: n1, containers: []}, status: {podIP: 10.244.1.10}}\n",
        )
        .expect("fixture parses"),
    );
    let mut c = Connection::new(test_tuple(
        PROTO_TCP,
        "10.244.1.10",
        40000,
        "203.0.113.10",
        443,
    ));
    c.snat = Some(("10.224.0.4".parse().expect("literal"), 40001));
    c.forward = Counts {
        packets: 3,
        bytes: 300,
    };
    c.reply = Counts {
        packets: 2,
        bytes: 150,
    };
    let seen = Sighting {
        ifindex: 4,
        iface: "veth10".into(),
        role: Some(crate::datapath::Role::Pod),
        ingress: true,
        forward: true,
        post_nat: false,
        counts: c.forward,
    };
    let k = classify(&Config::default(), &store, &c);
    crate::export::ConnectionView::new(1, &c, [seen], k, &WallClock::now())
}

/// An endpoint of this kind with nothing else known.
pub fn identity(kind: crate::classify::EndpointKind) -> crate::classify::EndpointIdentity {
    crate::classify::EndpointIdentity::bare(kind)
}

/// A classification to overwrite fields of (two internet addresses, nothing flagged).
pub fn classification() -> crate::classify::Classification {
    let c = crate::flow::Connection::new(crate::net::test_tuple(
        crate::net::PROTO_TCP,
        "198.51.100.1",
        40000,
        "203.0.113.10",
        443,
    ));
    crate::classify::classify(
        &crate::config::Config::default(),
        &crate::identity::Store::default(),
        &c,
    )
}
