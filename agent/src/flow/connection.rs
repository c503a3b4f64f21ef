//! One record per connection: every sighting (pod veth, uplink; before and after NAT) is
//! attached to the connection it belongs to, keyed by the initiator's pre-NAT tuple, and
//! each direction is counted at exactly one observation point.
//!
//! Pure: rebuilt from the observation table and the NAT table at every harvest, so it is
//! testable without a kernel and can never drift from the counters it summarises.

use std::{collections::HashMap, net::IpAddr};

use agent_common::FlowKey;

use super::{FlowEntry, FlowTuple, PROTO_TCP};
use crate::{
    datapath::Role,
    nat::{NatTable, Side},
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Packets and bytes of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

/// One observation point's view of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub ifindex: u32,
    pub iface: String,
    pub role: Option<Role>,
    /// TC hook: true for ingress.
    pub ingress: bool,
    /// Initiator → responder (true) or back.
    pub forward: bool,
    /// Seen with translated addresses (after SNAT/DNAT, before un-NAT).
    pub post_nat: bool,
    pub counts: Counts,
}

impl Sighting {
    /// Lower is preferred as the counting point: the packet's own pod veth as it leaves the
    /// pod, then the pod veth it enters, then the uplink.
    fn rank(&self) -> (u8, u32) {
        let r = match (self.role, self.ingress) {
            (Some(Role::Pod), true) => 0,
            (Some(Role::Pod), false) => 1,
            (Some(Role::Uplink), _) => 2,
            (None, _) => 3,
        };
        (r, self.ifindex)
    }
}

/// A connection as users see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Initiator → responder, before any NAT.
    pub tuple: FlowTuple,
    /// Source after SNAT (what firewalls outside the node see), if translated.
    pub snat: Option<(IpAddr, u16)>,
    /// Destination after DNAT (the Service backend), if translated.
    pub dnat: Option<(IpAddr, u16)>,
    /// A conntrack entry was joined.
    pub nat_joined: bool,
    /// Counted once per direction, at the preferred sighting.
    pub forward: Counts,
    pub reply: Counts,
    pub sightings: Vec<Sighting>,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u8,
}

impl Connection {
    pub fn new(tuple: FlowTuple) -> Self {
        Self {
            tuple,
            snat: None,
            dnat: None,
            nat_joined: false,
            forward: Counts::default(),
            reply: Counts::default(),
            sightings: Vec::new(),
            first_seen_ns: u64::MAX,
            last_seen_ns: 0,
            tcp_flags: 0,
        }
    }

    fn add(&mut self, s: Sighting, e: &FlowEntry) {
        self.first_seen_ns = self.first_seen_ns.min(e.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(e.last_seen_ns);
        self.tcp_flags |= e.tcp_flags;
        self.sightings.push(s);
    }

    /// Pick the counting point of each direction.
    fn settle(&mut self) {
        self.sightings.sort_by_key(|s| (!s.forward, s.rank()));
        let pick = |fwd: bool| {
            self.sightings
                .iter()
                .filter(|s| s.forward == fwd)
                .min_by_key(|s| s.rank())
                .map(|s| s.counts)
                .unwrap_or_default()
        };
        self.forward = pick(true);
        self.reply = pick(false);
    }
}

/// One row of the observation table with what the agent knows of its interface.
pub struct Observation<'a> {
    pub key: &'a FlowKey,
    pub entry: &'a FlowEntry,
    pub iface: Option<(&'a str, Role)>,
}

/// Fold observations into connections.
pub fn build<'a>(
    obs: impl IntoIterator<Item = Observation<'a>>,
    nat: &NatTable,
) -> Vec<Connection> {
    let mut conns: HashMap<FlowTuple, Connection> = HashMap::new();
    let mut loose: Vec<(FlowTuple, Observation<'a>)> = Vec::new();
    for o in obs {
        let tuple = FlowTuple::from(o.key);
        match nat.lookup(&tuple) {
            Some((entry, side)) => {
                let c = conns
                    .entry(entry.orig)
                    .or_insert_with(|| Connection::new(entry.orig));
                c.nat_joined = true;
                c.snat = entry.snat();
                c.dnat = entry.dnat();
                let post = matches!(side, Side::ForwardPost | Side::ReplyPost);
                c.add(sighting(&o, side.is_forward(), post), o.entry);
            }
            None => loose.push((tuple, o)),
        }
    }
    let initiators = decide_initiators(&loose, &conns);
    for (tuple, o) in loose {
        let (key, forward) = initiators[&tuple];
        let c = conns.entry(key).or_insert_with(|| Connection::new(key));
        c.add(sighting(&o, forward, false), o.entry);
    }
    let mut out: Vec<Connection> = conns.into_values().collect();
    for c in &mut out {
        c.settle();
    }
    out.sort_by_key(|c| c.tuple);
    out
}

fn sighting(o: &Observation<'_>, forward: bool, post_nat: bool) -> Sighting {
    Sighting {
        ifindex: o.key.ifindex,
        iface: o.iface.map(|(n, _)| n.to_owned()).unwrap_or_default(),
        role: o.iface.map(|(_, r)| r),
        ingress: o.key.direction == agent_common::Direction::Ingress as u8,
        forward,
        post_nat,
        counts: Counts {
            packets: o.entry.packets,
            bytes: o.entry.bytes,
        },
    }
}

/// For tuples without a conntrack entry: which direction is the initiator's? A known
/// connection in the other direction decides; then TCP flags (SYN without ACK opens);
/// then whichever direction was seen first; a tie goes to the higher source port
/// (ephemeral ports are the clients').
fn decide_initiators(
    loose: &[(FlowTuple, Observation<'_>)],
    known: &HashMap<FlowTuple, Connection>,
) -> HashMap<FlowTuple, (FlowTuple, bool)> {
    let mut flags: HashMap<FlowTuple, u8> = HashMap::new();
    let mut first: HashMap<FlowTuple, u64> = HashMap::new();
    for (t, o) in loose {
        *flags.entry(*t).or_default() |= o.entry.tcp_flags;
        let f = first.entry(*t).or_insert(u64::MAX);
        *f = (*f).min(o.entry.first_seen_ns);
    }
    let mut out = HashMap::new();
    for t in flags.keys() {
        let decision = match t.reversed() {
            None => (*t, true),
            Some(r) if known.contains_key(&r) => (r, false),
            Some(_) if known.contains_key(t) => (*t, true),
            Some(r) => {
                if opens(t, &flags, &first, &r) {
                    (*t, true)
                } else {
                    (r, false)
                }
            }
        };
        out.insert(*t, decision);
    }
    out
}

/// Does `t` (rather than its reverse `r`) open the connection?
fn opens(
    t: &FlowTuple,
    flags: &HashMap<FlowTuple, u8>,
    first: &HashMap<FlowTuple, u64>,
    r: &FlowTuple,
) -> bool {
    if t.proto == PROTO_TCP {
        let syn_only = |x: &FlowTuple| {
            flags
                .get(x)
                .is_some_and(|f| f & TCP_SYN != 0 && f & TCP_ACK == 0)
        };
        if syn_only(t) {
            return true;
        }
        if syn_only(r) {
            return false;
        }
    }
    let (ft, fr) = (
        first.get(t).copied().unwrap_or(u64::MAX),
        first.get(r).copied().unwrap_or(u64::MAX),
    );
    if ft != fr {
        return ft < fr;
    }
    t.sport > t.dport || (t.sport == t.dport && t.src > t.dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_tuple as t;
    use crate::{flow::PROTO_UDP, nat::NatEntry};
    use agent_common::Direction;

    fn key(ifindex: u32, dir: Direction, tu: FlowTuple) -> FlowKey {
        let words = |ip: IpAddr| {
            let mut b = [0u8; 16];
            match ip {
                IpAddr::V4(v) => b[..4].copy_from_slice(&v.octets()),
                IpAddr::V6(v) => b = v.octets(),
            }
            FlowKey::addr_words(&b)
        };
        FlowKey {
            ifindex,
            direction: dir as u8,
            family: if tu.src.is_ipv4() { 4 } else { 6 },
            proto: tu.proto,
            _pad0: 0,
            src_addr: words(tu.src),
            dst_addr: words(tu.dst),
            src_port: tu.sport,
            dst_port: tu.dport,
            _pad1: 0,
        }
    }

    const VETH: u32 = 4;
    const VETH_B: u32 = 5;
    const UPLINK: u32 = 2;

    fn iface(i: u32) -> Option<(&'static str, Role)> {
        match i {
            VETH => Some(("veth10", Role::Pod)),
            VETH_B => Some(("veth11", Role::Pod)),
            UPLINK => Some(("eth0", Role::Uplink)),
            _ => None,
        }
    }

    fn run(rows: &[(FlowKey, FlowEntry)], nat: &NatTable) -> Vec<Connection> {
        build(
            rows.iter().map(|(k, e)| Observation {
                key: k,
                entry: e,
                iface: iface(k.ifindex),
            }),
            nat,
        )
    }

    fn e(p: u64, b: u64, first: u64, flags: u8) -> FlowEntry {
        FlowEntry::observed(p, b, first, first + 10, flags)
    }

    #[test]
    fn snat_egress_is_one_connection_with_both_addresses_counted_once() {
        let orig = t(PROTO_UDP, "10.244.1.11", 5000, "203.0.113.10", 53);
        let reply = t(PROTO_UDP, "203.0.113.10", 53, "10.224.0.4", 5000);
        let mut nat = NatTable::new();
        nat.insert(NatEntry { orig, reply });
        let rows = [
            (key(VETH, Direction::Ingress, orig), e(3, 300, 1, 0)),
            (
                key(UPLINK, Direction::Egress, reply.reversed().unwrap()),
                e(3, 300, 2, 0),
            ),
            (key(UPLINK, Direction::Ingress, reply), e(2, 150, 3, 0)),
            (
                key(VETH, Direction::Egress, orig.reversed().unwrap()),
                e(2, 150, 4, 0),
            ),
        ];
        let conns = run(&rows, &nat);
        assert_eq!(conns.len(), 1);
        let c = &conns[0];
        assert_eq!(c.tuple, orig);
        assert_eq!(c.snat, Some(("10.224.0.4".parse().unwrap(), 5000)));
        assert_eq!(c.dnat, None);
        assert_eq!(
            c.forward,
            Counts {
                packets: 3,
                bytes: 300
            }
        );
        assert_eq!(
            c.reply,
            Counts {
                packets: 2,
                bytes: 150
            }
        );
        assert_eq!(c.sightings.len(), 4);
        let post: Vec<bool> = c.sightings.iter().map(|s| s.post_nat).collect();
        assert_eq!(post, [false, true, false, true]);
    }

    #[test]
    fn two_pods_with_the_same_source_port_stay_two_connections() {
        let mut nat = NatTable::new();
        let a = t(PROTO_UDP, "10.244.1.10", 4000, "203.0.113.10", 53);
        let b = t(PROTO_UDP, "10.244.1.11", 4000, "203.0.113.10", 53);
        nat.insert(NatEntry {
            orig: a,
            reply: t(PROTO_UDP, "203.0.113.10", 53, "10.224.0.4", 4000),
        });
        nat.insert(NatEntry {
            orig: b,
            reply: t(PROTO_UDP, "203.0.113.10", 53, "10.224.0.4", 1024),
        });
        let rows = [
            (key(VETH, Direction::Ingress, a), e(1, 100, 1, 0)),
            (key(VETH_B, Direction::Ingress, b), e(2, 200, 1, 0)),
            (
                key(
                    UPLINK,
                    Direction::Egress,
                    t(PROTO_UDP, "10.224.0.4", 4000, "203.0.113.10", 53),
                ),
                e(1, 100, 2, 0),
            ),
            (
                key(
                    UPLINK,
                    Direction::Egress,
                    t(PROTO_UDP, "10.224.0.4", 1024, "203.0.113.10", 53),
                ),
                e(2, 200, 2, 0),
            ),
        ];
        let conns = run(&rows, &nat);
        assert_eq!(conns.len(), 2);
        assert_eq!(conns[0].snat.unwrap().1, 4000);
        assert_eq!(conns[1].snat.unwrap().1, 1024);
        assert_eq!((conns[0].forward.packets, conns[1].forward.packets), (1, 2));
        assert!(conns.iter().all(|c| c.sightings.len() == 2));
    }

    #[test]
    fn without_conntrack_the_syn_side_is_the_initiator_and_directions_merge() {
        let fwd = t(PROTO_TCP, "10.244.1.10", 7001, "10.244.2.10", 7000);
        let rev = fwd.reversed().unwrap();
        let rows = [
            // The reply was seen first (clock skew between CPUs): flags still decide.
            (
                key(VETH, Direction::Egress, rev),
                e(4, 400, 1, TCP_SYN | TCP_ACK),
            ),
            (key(VETH, Direction::Ingress, fwd), e(5, 500, 2, TCP_SYN)),
            (key(UPLINK, Direction::Egress, fwd), e(5, 500, 3, TCP_SYN)),
            (
                key(UPLINK, Direction::Ingress, rev),
                e(4, 400, 4, TCP_SYN | TCP_ACK),
            ),
        ];
        let conns = run(&rows, &NatTable::new());
        assert_eq!(conns.len(), 1);
        let c = &conns[0];
        assert_eq!(
            (c.tuple, c.nat_joined, c.snat, c.dnat),
            (fwd, false, None, None)
        );
        assert_eq!((c.forward.packets, c.reply.packets), (5, 4));
    }

    #[test]
    fn same_node_pod_to_pod_counts_the_senders_veth() {
        let fwd = t(PROTO_UDP, "10.244.1.10", 5000, "10.244.1.11", 53);
        let rows = [
            (key(VETH_B, Direction::Egress, fwd), e(7, 700, 2, 0)),
            (key(VETH, Direction::Ingress, fwd), e(8, 800, 1, 0)),
        ];
        let conns = run(&rows, &NatTable::new());
        assert_eq!(conns.len(), 1);
        // veth10 ingress (the sender's) outranks veth11 egress.
        assert_eq!(
            conns[0].forward,
            Counts {
                packets: 8,
                bytes: 800
            }
        );
        assert_eq!(conns[0].reply, Counts::default());
    }
}
