//! Which direction of a new connection is the initiator's. Decided once, when the agent
//! first places the connection, and never revised by a later harvest: a revision would
//! report the same connection twice. Conntrack's original tuple, when it arrives, is the
//! one authority that can still re-key it (see [`super::tracker`]).
//!
//! Evidence, strongest first (docs/flow-log.md lists the same order):
//! 1. TCP: the direction that carried a SYN without ACK (a kernel bit, not OR-ed flags);
//!    failing that, the one that carried the SYN-ACK is the responder;
//! 2. an ICMP error (the kernel keys it as the flow it answers): the direction that carried
//!    one, and the other did not, is the responder's, since an error answers a packet;
//! 3. ICMP echo: the request's direction;
//! 4. only one direction seen so far (UDP and other datagrams): that one, since a reply
//!    cannot precede its request;
//! 5. both seen, at different times: the earlier one;
//! 6. the port rule, a pure function of the tuple (so it can never flip): the higher port
//!    is the client's (ephemeral ports sit above service ports); equal ports, the higher
//!    address. TCP connections that began before the agent and that conntrack does not
//!    know end here.

use super::FlowEntry;
use crate::net::{FlowTuple, PROTO_TCP};

const TCP_SYN: u8 = 0x02;

/// What decided the initiator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    Opener,
    Answer,
    Echo,
    OneWay,
    FirstSeen,
    Ports,
}

/// Is `t` (rather than its reverse) the initiator's direction? `te` merges every
/// observation of `t`; `rev` is the reverse direction and its merged observations, if seen.
pub fn decide(t: &FlowTuple, te: &FlowEntry, rev: Option<&FlowEntry>) -> (bool, Evidence) {
    if t.proto == PROTO_TCP {
        match (te.opened, rev.is_some_and(|r| r.opened)) {
            (true, false) => return (true, Evidence::Opener),
            (false, true) => return (false, Evidence::Opener),
            _ => {}
        }
        let syn = |e: &FlowEntry| e.tcp_flags & TCP_SYN != 0 && !e.opened;
        match (syn(te), rev.is_some_and(syn)) {
            (true, false) => return (false, Evidence::Answer),
            (false, true) => return (true, Evidence::Answer),
            _ => {}
        }
    }
    // Timestamps tie within a clock tick, and a datagram to a closed port is answered
    // within one: without this, equal ports (7005 -> 7005) fell to the port rule and the
    // refusing side became the initiator of a "replied" flow.
    match (te.icmp_error, rev.is_some_and(|r| r.icmp_error)) {
        (true, false) => return (false, Evidence::Answer),
        (false, true) => return (true, Evidence::Answer),
        _ => {}
    }
    if t.is_icmp() {
        let ty = (t.dport >> 8) as u8;
        if matches!(ty, 8 | 128) {
            return (true, Evidence::Echo);
        }
        if matches!(ty, 0 | 129) {
            return (false, Evidence::Echo);
        }
    }
    match rev {
        None if t.proto != PROTO_TCP => (true, Evidence::OneWay),
        Some(r) if r.first_seen_ns != te.first_seen_ns => {
            (te.first_seen_ns < r.first_seen_ns, Evidence::FirstSeen)
        }
        _ => (ports_say_client(t), Evidence::Ports),
    }
}

/// The port rule: does `t` come from the client's side?
pub fn ports_say_client(t: &FlowTuple) -> bool {
    t.sport > t.dport || (t.sport == t.dport && t.src > t.dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{test_tuple as tu, PROTO_ICMP, PROTO_UDP};

    fn e(first: u64, flags: u8) -> FlowEntry {
        FlowEntry::observed(1, 60, first, first, flags)
    }

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    #[test]
    fn the_syn_without_ack_opens_even_when_both_sides_or_to_syn_ack() {
        // Server port above the client's: the port rule alone would pick the server.
        let c = tu(PROTO_TCP, "10.244.1.10", 3000, "10.244.2.10", 40000);
        let mut client = e(5, SYN | ACK);
        client.opened = true;
        let server = e(1, SYN | ACK);
        assert_eq!(decide(&c, &client, Some(&server)), (true, Evidence::Opener));
        let s = c.reversed().unwrap();
        assert_eq!(
            decide(&s, &server, Some(&client)),
            (false, Evidence::Opener)
        );
    }

    #[test]
    fn a_lone_syn_ack_is_the_responder() {
        let s = tu(PROTO_TCP, "10.244.2.10", 40000, "10.244.1.10", 3000);
        assert_eq!(
            decide(&s, &e(1, SYN | ACK), None),
            (false, Evidence::Answer)
        );
    }

    #[test]
    fn tcp_mid_stream_falls_to_the_port_rule_which_never_depends_on_timing() {
        let server_side = tu(PROTO_TCP, "10.244.2.10", 443, "10.244.1.10", 50000);
        for (a, b) in [(1, 9), (9, 1), (5, 5)] {
            let got = decide(&server_side, &e(a, ACK), None);
            assert_eq!(got, (false, Evidence::Ports));
            let got = decide(&server_side, &e(a, ACK), Some(&e(b, ACK)));
            // With both directions, timing decides only when it differs.
            if a == b {
                assert_eq!(got, (false, Evidence::Ports));
            }
        }
    }

    #[test]
    fn the_side_an_icmp_error_came_from_is_the_responder_even_within_one_tick() {
        // Equal ports and equal timestamps: the port rule alone would pick the higher
        // address, the side that refused.
        let datagram = tu(PROTO_UDP, "10.244.1.10", 7005, "10.244.2.12", 7005);
        let refusal = datagram.reversed().unwrap();
        let mut error = e(5, 0);
        error.icmp_error = true;
        assert_eq!(
            decide(&refusal, &error, Some(&e(5, 0))),
            (false, Evidence::Answer)
        );
        assert_eq!(
            decide(&datagram, &e(5, 0), Some(&error)),
            (true, Evidence::Answer)
        );
        assert_eq!(
            decide(&refusal, &error, None),
            (false, Evidence::Answer),
            "the error alone still names the side it answers"
        );
        // Errors both ways say nothing; the next rule decides (equal ports: the higher
        // address).
        let mut other = e(5, 0);
        other.icmp_error = true;
        assert_eq!(
            decide(&refusal, &error, Some(&other)),
            (true, Evidence::Ports)
        );
    }

    #[test]
    fn echo_requests_initiate_and_lone_udp_is_its_own_initiator() {
        let req = tu(PROTO_ICMP, "10.244.1.10", 7, "10.244.2.10", 8 << 8);
        assert_eq!(decide(&req, &e(3, 0), None), (true, Evidence::Echo));
        let rep = req.reversed().unwrap();
        assert_eq!(decide(&rep, &e(1, 0), None), (false, Evidence::Echo));
        let dns_answer = tu(PROTO_UDP, "10.0.0.53", 53, "10.244.1.10", 40000);
        assert_eq!(
            decide(&dns_answer, &e(1, 0), None),
            (true, Evidence::OneWay)
        );
        assert_eq!(
            decide(&dns_answer, &e(2, 0), Some(&e(1, 0))),
            (false, Evidence::FirstSeen)
        );
    }
}
