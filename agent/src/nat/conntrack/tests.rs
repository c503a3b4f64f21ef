//! Conntrack messages as the kernel sends them (built with the same netlink crate the
//! kernel's format is modelled in), parsed into NAT entries.

use netlink_packet_netfilter::{
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple},
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
};
use rtnetlink::packet_core::{DefaultNla, DoneMessage, NetlinkMessage, NetlinkPayload};

use super::*;
use crate::net::{test_tuple as t, PROTO_TCP};

fn ends(src: &str, dst: &str) -> Tuple {
    Tuple::Ip(vec![
        IPTuple::SourceAddress(src.parse().unwrap()),
        IPTuple::DestinationAddress(dst.parse().unwrap()),
    ])
}

fn ports(proto: Protocol, sport: u16, dport: u16) -> Tuple {
    Tuple::Proto(vec![
        ProtoTuple::Protocol(proto),
        ProtoTuple::SourcePort(sport),
        ProtoTuple::DestinationPort(dport),
    ])
}

fn bytes(ct: ConntrackMessage) -> Vec<u8> {
    let mut m = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
        ct,
    ));
    m.finalize();
    let mut out = vec![0u8; m.buffer_len()];
    m.serialize(&mut out);
    out
}

/// `conntrack -E` of a masqueraded TCP connection: pod 10.244.1.11:40000 → 203.0.113.10:443,
/// leaving as 10.224.0.4:40001.
fn masqueraded() -> Vec<ConntrackAttribute> {
    vec![
        ConntrackAttribute::CtaTupleOrig(vec![
            ends("10.244.1.11", "203.0.113.10"),
            ports(Protocol::Tcp, 40000, 443),
        ]),
        ConntrackAttribute::CtaTupleReply(vec![
            ends("203.0.113.10", "10.224.0.4"),
            ports(Protocol::Tcp, 443, 40001),
        ]),
        ConntrackAttribute::CtaTimeout(120),
    ]
}

fn want() -> NatEntry {
    NatEntry {
        orig: t(PROTO_TCP, "10.244.1.11", 40000, "203.0.113.10", 443),
        reply: t(PROTO_TCP, "203.0.113.10", 443, "10.224.0.4", 40001),
    }
}

#[test]
fn new_and_destroy_in_one_datagram_are_both_read_in_order() {
    let mut dgram = bytes(ConntrackMessage::New(masqueraded()));
    dgram.extend(bytes(ConntrackMessage::Delete(masqueraded())));
    assert_eq!(
        parse_all(&dgram),
        [Parsed::Entry(want(), true), Parsed::Entry(want(), false)]
    );
}

#[test]
fn icmp_echo_keeps_its_id_as_the_source_port_and_type_code_as_the_destination() {
    let icmp = |src: &str, dst: &str, id: u16, ty: u8| {
        vec![
            ends(src, dst),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Icmp),
                ProtoTuple::Other(DefaultNla::new(
                    CTA_PROTO_ICMP_ID,
                    id.to_be_bytes().to_vec(),
                )),
                ProtoTuple::Other(DefaultNla::new(CTA_PROTO_ICMP_TYPE, vec![ty])),
                ProtoTuple::Other(DefaultNla::new(CTA_PROTO_ICMP_CODE, vec![0])),
            ]),
        ]
    };
    let got = parse_all(&bytes(ConntrackMessage::New(vec![
        ConntrackAttribute::CtaTupleOrig(icmp("10.244.1.11", "203.0.113.10", 7, 8)),
        ConntrackAttribute::CtaTupleReply(icmp("203.0.113.10", "10.224.0.4", 9, 0)),
    ])));
    assert_eq!(
        got,
        [Parsed::Entry(
            NatEntry {
                orig: t(PROTO_ICMP, "10.244.1.11", 7, "203.0.113.10", 8 << 8),
                reply: t(PROTO_ICMP, "203.0.113.10", 9, "10.224.0.4", 0),
            },
            true
        )]
    );
}

#[test]
fn entries_missing_a_tuple_and_other_message_types_are_skipped() {
    let mut dgram = bytes(ConntrackMessage::New(vec![
        ConntrackAttribute::CtaTupleOrig(vec![
            ends("10.0.0.1", "10.0.0.2"),
            ports(Protocol::Udp, 1, 2),
        ]),
    ]));
    dgram.extend(bytes(ConntrackMessage::Get(masqueraded())));
    dgram.extend(bytes(ConntrackMessage::New(masqueraded())));
    assert_eq!(parse_all(&dgram), [Parsed::Entry(want(), true)]);
}

#[test]
fn a_truncated_or_corrupt_datagram_keeps_what_came_before_and_never_panics() {
    let whole = bytes(ConntrackMessage::New(masqueraded()));
    let mut dgram = whole.clone();
    dgram.extend(&whole[..whole.len() - 7]);
    assert_eq!(parse_all(&dgram), [Parsed::Entry(want(), true)]);
    // A length field pointing past the end, one under the header size, garbage.
    let mut bad = whole.clone();
    bad[..4].copy_from_slice(&(whole.len() as u32 + 100).to_ne_bytes());
    assert_eq!(parse_all(&bad), []);
    bad[..4].copy_from_slice(&8u32.to_ne_bytes());
    assert_eq!(parse_all(&bad), []);
    for n in 0..whole.len() {
        let _ = parse_all(&whole[..n]);
        let mut flipped = whole.clone();
        flipped[n] ^= 0xff;
        let _ = parse_all(&flipped);
    }
}

#[test]
fn the_end_of_a_dump_is_reported() {
    let mut done = NetlinkMessage::<NetfilterMessage>::new(
        Default::default(),
        NetlinkPayload::Done(DoneMessage::default()),
    );
    done.finalize();
    let mut b = vec![0u8; done.buffer_len()];
    done.serialize(&mut b);
    let mut dgram = bytes(ConntrackMessage::New(masqueraded()));
    dgram.extend(b);
    assert_eq!(
        parse_all(&dgram),
        [Parsed::Entry(want(), true), Parsed::Done]
    );
}

proptest::proptest! {
    #![proptest_config(crate::fuzz_support::config())]
    /// Mutations of real conntrack datagrams (new, destroy, done, several per datagram):
    /// malformed messages are skipped, never a panic.
    #[test]
    fn fuzz_conntrack_messages(bytes in crate::fuzz_support::mutated({
        let new = bytes(ConntrackMessage::New(masqueraded()));
        let gone = bytes(ConntrackMessage::Delete(masqueraded()));
        let mut both = new.clone();
        both.extend_from_slice(&gone);
        vec![new, gone, both]
    })) {
        let _ = parse_all(&bytes);
    }
}
