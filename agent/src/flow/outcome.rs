//! How a connection attempt went, from the TCP flags each direction carried and whether
//! anything came back: the signal an intruder gives away before succeeding (attempts that
//! are refused or never answered). Decided once enough is known, and for TCP updated once
//! more if an established connection is later reset.

use serde::{Deserialize, Serialize};

use crate::net::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// An attempt with no answer this long is given up on: Linux retransmits a SYN after 1 s
/// and 3 s, and a UDP or ICMP answer comes well within that or not at all.
pub const ANSWER_WITHIN_NS: u64 = 3_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// TCP: the handshake completed (SYN-ACK came back), or data flowed both ways.
    Established,
    /// TCP: a RST or an ICMP error (unreachable, prohibited) answered the SYN. UDP, ICMP
    /// echo: an ICMP error came back (port unreachable: nothing listens there).
    Refused,
    /// TCP: SYN(s) and no answer (dropped by a NetworkPolicy, an NSG, or a dead host).
    Unanswered,
    /// TCP: established, then aborted with a RST before either side closed (a RST after a
    /// FIN is the usual end of a closed socket written to, not an abort).
    Reset,
    /// UDP, ICMP: something came back.
    Replied,
    /// UDP, ICMP: nothing came back.
    Unreplied,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Established,
        Outcome::Refused,
        Outcome::Unanswered,
        Outcome::Reset,
        Outcome::Replied,
        Outcome::Unreplied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Established => "established",
            Outcome::Refused => "refused",
            Outcome::Unanswered => "unanswered",
            Outcome::Reset => "reset",
            Outcome::Replied => "replied",
            Outcome::Unreplied => "unreplied",
        }
    }
}

/// What is known of a connection so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    pub proto: u8,
    /// The initiator's destination port; for ICMP, type << 8 | code.
    pub dport: u16,
    /// TCP flags seen from the initiator, and back from the responder.
    pub fwd_flags: u8,
    pub rep_flags: u8,
    /// An ICMP error answering the connection came back.
    pub rep_icmp_error: bool,
    pub fwd_packets: u64,
    pub rep_packets: u64,
    /// Since the first packet.
    pub age_ns: u64,
    /// The connection is over (idle, or the agent is stopping).
    pub ended: bool,
}

/// The outcome, or None while it cannot be known yet (or for a connection that was not an
/// attempt: one seen only mid-stream in one direction).
pub fn decide(s: Seen) -> Option<Outcome> {
    let waited = s.ended || s.age_ns >= ANSWER_WITHIN_NS;
    match s.proto {
        PROTO_TCP => {
            let all = s.fwd_flags | s.rep_flags;
            let aborted = all & RST != 0 && all & FIN == 0;
            let established = || {
                if aborted {
                    Outcome::Reset
                } else {
                    Outcome::Established
                }
            };
            if s.rep_flags & (SYN | ACK) == SYN | ACK {
                return Some(established());
            }
            if (s.rep_flags & RST != 0 || s.rep_icmp_error) && s.fwd_flags & SYN != 0 {
                return Some(Outcome::Refused);
            }
            if s.fwd_flags & SYN != 0 && s.rep_packets == 0 {
                return waited.then_some(Outcome::Unanswered);
            }
            // Seen only mid-stream (older than the agent, or its SYN went unobserved).
            if s.fwd_packets > 0 && s.rep_packets > 0 {
                return Some(established());
            }
            None
        }
        // Only an echo request asks for an answer; other ICMP (neighbour discovery,
        // multicast listener reports, errors) is no attempt.
        PROTO_ICMP if s.dport >> 8 != 8 => None,
        PROTO_ICMPV6 if s.dport >> 8 != 128 => None,
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => {
            if s.rep_icmp_error {
                Some(Outcome::Refused)
            } else if s.rep_packets > 0 {
                Some(Outcome::Replied)
            } else {
                waited.then_some(Outcome::Unreplied)
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(fwd: u8, rep: u8, rep_packets: u64, age_s: u64, ended: bool) -> Option<Outcome> {
        decide(Seen {
            proto: PROTO_TCP,
            fwd_flags: fwd,
            rep_flags: rep,
            fwd_packets: 3,
            rep_packets,
            age_ns: age_s * 1_000_000_000,
            ended,
            ..Default::default()
        })
    }

    #[test]
    fn tcp_attempts() {
        assert_eq!(
            tcp(SYN | ACK, SYN | ACK, 2, 0, false),
            Some(Outcome::Established)
        );
        assert_eq!(
            tcp(SYN | ACK | RST, SYN | ACK, 2, 0, false),
            Some(Outcome::Reset)
        );
        assert_eq!(
            tcp(SYN | ACK | FIN | RST, SYN | ACK, 2, 0, false),
            Some(Outcome::Established),
            "closed, then a late write answered with RST"
        );
        assert_eq!(tcp(SYN, RST | ACK, 1, 0, false), Some(Outcome::Refused));
        let unreachable = decide(Seen {
            proto: PROTO_TCP,
            fwd_flags: SYN,
            rep_icmp_error: true,
            fwd_packets: 1,
            rep_packets: 1,
            ..Default::default()
        });
        assert_eq!(unreachable, Some(Outcome::Refused), "REJECT with ICMP");
        assert_eq!(tcp(SYN, 0, 0, 1, false), None, "may still be answered");
        assert_eq!(tcp(SYN, 0, 0, 3, false), Some(Outcome::Unanswered));
        assert_eq!(tcp(SYN, 0, 0, 1, true), Some(Outcome::Unanswered));
        assert_eq!(
            tcp(ACK, ACK, 2, 0, false),
            Some(Outcome::Established),
            "mid-stream"
        );
        assert_eq!(
            tcp(ACK, 0, 0, 9, true),
            None,
            "one-way mid-stream: no attempt"
        );
    }

    #[test]
    fn udp_and_icmp_attempts() {
        let udp = |rep_packets: u64, age_s: u64, ended: bool| {
            decide(Seen {
                proto: PROTO_UDP,
                fwd_packets: 1,
                rep_packets,
                age_ns: age_s * 1_000_000_000,
                ended,
                ..Default::default()
            })
        };
        assert_eq!(udp(1, 0, false), Some(Outcome::Replied));
        assert_eq!(udp(0, 0, false), None);
        assert_eq!(udp(0, 3, false), Some(Outcome::Unreplied));
        let port_unreachable = decide(Seen {
            proto: PROTO_UDP,
            rep_icmp_error: true,
            fwd_packets: 1,
            rep_packets: 1,
            ..Default::default()
        });
        assert_eq!(port_unreachable, Some(Outcome::Refused));
        assert_eq!(udp(0, 0, true), Some(Outcome::Unreplied));
        let other = decide(Seen {
            proto: 47,
            ended: true,
            ..Default::default()
        });
        assert_eq!(other, None);
        let icmp = |proto, ty: u16, rep_packets| {
            decide(Seen {
                proto,
                dport: ty << 8,
                fwd_packets: 1,
                rep_packets,
                ended: true,
                ..Default::default()
            })
        };
        assert_eq!(icmp(PROTO_ICMP, 8, 1), Some(Outcome::Replied));
        assert_eq!(icmp(PROTO_ICMPV6, 128, 0), Some(Outcome::Unreplied));
        assert_eq!(icmp(PROTO_ICMPV6, 135, 0), None, "neighbour solicitation");
        assert_eq!(
            icmp(PROTO_ICMP, 3, 0),
            None,
            "an error answers something else"
        );
    }
}
