use std::net::Ipv4Addr;

use agent_common::FlowKey;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};

use super::*;
use crate::dns::message::tests::{a, answer, cname};

const POD: &str = "10.244.1.11";
const RESOLVER: &str = "10.0.0.10";
const POD_IF: u32 = 4;
const OTHER_IF: u32 = 5;
const UPLINK: u32 = 2;

fn words(ip: &str) -> [u64; 2] {
    let v4: Ipv4Addr = ip.parse().unwrap();
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&v4.octets());
    FlowKey::addr_words(&raw)
}

/// A message on `ifindex` in `dir` from src:sport to dst:dport.
fn msg(
    ifindex: u32,
    dir: Direction,
    (src, sport): (&str, u16),
    (dst, dport): (&str, u16),
    payload: Vec<u8>,
) -> DnsMessage {
    let key = FlowKey {
        ifindex,
        direction: dir as u8,
        family: 4,
        proto: 17,
        _pad0: 0,
        src_addr: words(src),
        dst_addr: words(dst),
        src_port: sport,
        dst_port: dport,
        generation: 0,
    };
    DnsMessage { key, payload }
}

/// A query the pod sent from `sport` to the cluster's resolver.
fn asked(sport: u16, id: u16, name: &str) -> DnsMessage {
    msg(
        POD_IF,
        Direction::Ingress,
        (POD, sport),
        (RESOLVER, 53),
        query(id, name),
    )
}

/// An answer from `from`'s port 53 to the pod's port `sport`.
fn answered(from: &str, sport: u16, payload: Vec<u8>) -> DnsMessage {
    msg(POD_IF, Direction::Egress, (from, 53), (POD, sport), payload)
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    let mut q = Query::new();
    q.set_name(Name::from_ascii(name).unwrap())
        .set_query_type(RecordType::A);
    m.add_query(q);
    m.to_vec().unwrap()
}

fn roles(i: u32) -> Option<Role> {
    match i {
        POD_IF => Some(Role::Pod),
        UPLINK => Some(Role::Uplink),
        _ => None,
    }
}

/// The cluster's resolver is the VIP only.
fn cluster(ip: IpAddr) -> bool {
    ip.to_string() == RESOLVER
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn api_answer(id: u16) -> Vec<u8> {
    answer(
        id,
        "api.example.test.",
        vec![
            cname("api.example.test.", 300, "edge.example.test."),
            a("edge.example.test.", 60, [198, 51, 100, 7]),
            a("edge.example.test.", 60, [198, 51, 100, 8]),
        ],
        ResponseCode::NoError,
    )
}

#[test]
fn an_answer_to_the_pods_own_query_names_its_addresses_for_that_pod_only() {
    let mut d = DnsTracker::new(NamesLimits::default());
    let now = Instant::now();
    let msgs = [
        asked(40000, 7, "api.example.test."),
        answered(RESOLVER, 40000, api_answer(7)),
    ];
    assert_eq!(d.absorb(&msgs, roles, cluster, now), Signals::default());
    for addr in ["198.51.100.7", "198.51.100.8"] {
        assert_eq!(
            d.name_of(POD_IF, ip(addr), now).as_deref(),
            Some("api.example.test")
        );
        assert_eq!(d.name_of(OTHER_IF, ip(addr), now), None);
    }
    assert_eq!(
        d.counts,
        DnsCounts {
            queries: 1,
            answers: 1,
            ..DnsCounts::default()
        }
    );
    assert_eq!((d.names(), d.waiting()), ((2, 0), 0));
}

#[test]
fn spoofed_malformed_and_uplink_messages_name_nothing() {
    let mut d = DnsTracker::new(NamesLimits::default());
    let now = Instant::now();
    let msgs = [
        asked(40000, 7, "api.example.test."),
        // From another address than the one asked.
        answered("203.0.113.66", 40000, api_answer(7)),
        // The right resolver, the wrong id.
        answered(RESOLVER, 40000, api_answer(8)),
        // Garbage.
        answered(RESOLVER, 40000, vec![0xde, 0xad]),
        // The uplink carries no pod's own view: ignored whatever it says.
        msg(
            UPLINK,
            Direction::Egress,
            (RESOLVER, 53),
            (POD, 40000),
            api_answer(7),
        ),
    ];
    d.absorb(&msgs, roles, cluster, now);
    assert_eq!(d.name_of(POD_IF, ip("198.51.100.7"), now), None);
    assert_eq!(
        d.counts,
        DnsCounts {
            queries: 1,
            unsolicited: 2,
            malformed: 1,
            ..DnsCounts::default()
        }
    );
    // The real answer still arrives afterwards and is believed.
    d.absorb(
        &[answered(RESOLVER, 40000, api_answer(7))],
        roles,
        cluster,
        now,
    );
    assert!(d.name_of(POD_IF, ip("198.51.100.7"), now).is_some());
}

#[test]
fn nxdomain_is_reported_per_pod_and_unanswered_queries_expire() {
    let mut d = DnsTracker::new(NamesLimits::default());
    let now = Instant::now();
    let nx = answer(9, "nope.example.test.", vec![], ResponseCode::NXDomain);
    let got = d.absorb(
        &[
            asked(40001, 9, "nope.example.test."),
            answered(RESOLVER, 40001, nx),
            asked(40002, 10, "x.test."),
        ],
        roles,
        cluster,
        now,
    );
    assert_eq!(
        got.nxdomain,
        [NxDomain {
            pod: ip(POD),
            asked: "nope.example.test".into()
        }]
    );
    assert!(got.unapproved.is_empty());
    assert_eq!(d.counts.nxdomain, 1);
    assert_eq!(d.waiting(), 1);
    d.expire(now + QUERY_TIMEOUT);
    assert_eq!(d.waiting(), 0);
}

#[test]
fn a_query_to_a_resolver_outside_the_cluster_is_unapproved() {
    let mut d = DnsTracker::new(NamesLimits::default());
    let now = Instant::now();
    let got = d.absorb(
        &[
            msg(
                POD_IF,
                Direction::Ingress,
                (POD, 40003),
                ("8.8.8.8", 53),
                query(11, "a.test."),
            ),
            asked(40004, 12, "a.test."),
        ],
        roles,
        cluster,
        now,
    );
    assert_eq!(got.unapproved, [(ip(POD), ip("8.8.8.8"))]);
    assert_eq!((d.counts.queries, d.counts.unapproved), (2, 1));
}
