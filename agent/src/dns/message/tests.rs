use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::{A, AAAA, CNAME},
        Name, RData, Record, RecordType,
    },
};

use super::*;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn question(q: &str, t: RecordType) -> Query {
    let mut query = Query::new();
    query.set_name(name(q)).set_query_type(t);
    query
}

/// An answer to `q` with `records` as its answer section.
pub(crate) fn answer(id: u16, q: &str, records: Vec<Record>, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.response_code = rcode;
    m.add_query(question(q, RecordType::A));
    for r in records {
        m.add_answer(r);
    }
    m.to_vec().unwrap()
}

pub(crate) fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

pub(crate) fn cname(owner: &str, ttl: u32, to: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(to))))
}

#[test]
fn a_query_gives_its_id_and_name() {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(question("API.Example.test.", RecordType::A));
    assert_eq!(
        parse(&m.to_vec().unwrap(), false).unwrap(),
        Parsed::Query {
            id: 7,
            name: "api.example.test".into()
        }
    );
}

#[test]
fn a_cname_chain_gives_the_asked_name_its_addresses_with_the_smallest_ttl() {
    let bytes = answer(
        9,
        "api.example.test.",
        vec![
            cname("api.example.test.", 300, "edge.cdn.test."),
            cname("edge.cdn.test.", 60, "node7.cdn.test."),
            a("node7.cdn.test.", 120, [198, 51, 100, 7]),
            a("node7.cdn.test.", 20, [198, 51, 100, 8]),
            // Not on the chain: ignored.
            a("other.test.", 999, [192, 0, 2, 1]),
        ],
        ResponseCode::NoError,
    );
    let Parsed::Answer(ans) = parse(&bytes, false).unwrap() else {
        panic!("an answer")
    };
    assert_eq!(ans.id, 9);
    assert_eq!(&*ans.asked, "api.example.test");
    assert_eq!(ans.rcode, Rcode::NoError);
    assert_eq!(
        ans.addrs,
        [
            ("198.51.100.7".parse().unwrap(), 60),
            ("198.51.100.8".parse().unwrap(), 20)
        ]
    );
    assert!(!ans.truncated);
}

#[test]
fn aaaa_nxdomain_truncation_and_tcp_framing() {
    let v6 = Record::from_rdata(
        name("v6.example.test."),
        30,
        RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
    );
    let bytes = answer(1, "v6.example.test.", vec![v6], ResponseCode::NoError);
    let Parsed::Answer(ans) = parse(&bytes, false).unwrap() else {
        panic!()
    };
    assert_eq!(ans.addrs, [("2001:db8::1".parse().unwrap(), 30)]);

    let nx = answer(2, "nope.example.test.", vec![], ResponseCode::NXDomain);
    let Parsed::Answer(ans) = parse(&nx, false).unwrap() else {
        panic!()
    };
    assert_eq!((ans.rcode, ans.addrs.len()), (Rcode::NxDomain, 0));

    let mut m = Message::new(3, MessageType::Response, OpCode::Query);
    m.metadata.truncation = true;
    m.add_query(question("big.example.test.", RecordType::A));
    let Parsed::Answer(ans) = parse(&m.to_vec().unwrap(), false).unwrap() else {
        panic!()
    };
    assert!(ans.truncated);

    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    assert!(matches!(parse(&framed, true), Ok(Parsed::Answer(_))));
    assert_eq!(
        parse(&framed[..framed.len() - 5], true),
        Err(DnsError::Incomplete {
            want: bytes.len(),
            have: bytes.len() - 5
        })
    );
}

#[test]
fn garbage_and_questionless_messages_are_errors_not_panics() {
    assert!(matches!(
        parse(&[1, 2, 3], false),
        Err(DnsError::Malformed(_))
    ));
    assert!(matches!(parse(&[], true), Err(DnsError::Malformed(_))));
    let m = Message::new(4, MessageType::Response, OpCode::Query);
    assert_eq!(
        parse(&m.to_vec().unwrap(), false),
        Err(DnsError::NoQuestion)
    );
}

proptest::proptest! {
    #![proptest_config(crate::fuzz_support::config())]

    /// Mutations of real queries and answers (CNAME chains, AAAA, NXDOMAIN, TCP-framed):
    /// an error or a parse, never a panic.
    #[test]
    fn fuzz_dns_messages(bytes in crate::fuzz_support::mutated({
        let chain = answer(
            9,
            "api.example.test.",
            vec![
                cname("api.example.test.", 300, "edge.cdn.test."),
                a("edge.cdn.test.", 60, [198, 51, 100, 7]),
            ],
            ResponseCode::NoError,
        );
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(question("a.test.", RecordType::AAAA));
        let nx = answer(2, "nope.test.", vec![], ResponseCode::NXDomain);
        let mut framed = (chain.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&chain);
        vec![chain, q.to_vec().unwrap(), nx, framed, Vec::new()]
    })) {
        let _ = parse(&bytes, false);
        let _ = parse(&bytes, true);
    }
}
