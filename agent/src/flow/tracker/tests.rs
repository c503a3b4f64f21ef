//! The connection table, harvest by harvest: joins that arrive late, joins that never
//! arrive, initiators that must not flip, and counts handed out exactly once.

use std::net::IpAddr;

use agent_common::{Direction, FlowKey};

use super::*;
use crate::{
    datapath::Delta,
    net::{test_tuple as t, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    test_support::stats,
};

const VETH: u32 = 4;
const VETH_B: u32 = 5;
const UPLINK: u32 = 2;
const IDLE: u64 = 1_000;

fn role(i: u32) -> Option<Role> {
    match i {
        VETH | VETH_B => Some(Role::Pod),
        UPLINK => Some(Role::Uplink),
        _ => None,
    }
}

fn name(i: u32) -> Option<crate::identity::Name> {
    role(i).map(|r| format!("{r:?}{i}").into())
}

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
        generation: 0,
    }
}

/// `packets` packets of 100 bytes at `ifindex`/`dir`, last seen at `at`.
fn d(ifindex: u32, dir: Direction, tu: FlowTuple, packets: u64, at: u64, flags: u8) -> Delta {
    Delta {
        key: key(ifindex, dir, tu),
        stats: stats(packets, packets * 100, at, at, flags),
        slot: crate::datapath::NO_SLOT,
        evicted: false,
    }
}

type Table = ConnTable<()>;

/// One harvest at time `now`: apply, join what conntrack sent since, settle.
fn harvest(tab: &mut Table, nat: &mut NatTable, deltas: &[Delta], now: u64) -> Settled {
    tab.apply(deltas, nat, role);
    let fresh = nat.take_fresh();
    tab.join(&fresh, nat);
    tab.settle(now, IDLE, name)
}

fn conn(tab: &Table, id: ConnId) -> &Connection {
    &tab.get(id).expect("connection").conn
}

fn sightings(tab: &Table, id: ConnId) -> Vec<Sighting> {
    tab.get(id)
        .expect("connection")
        .sightings()
        .iter()
        .collect()
}

const POD: &str = "10.244.1.11";
const NODE: &str = "10.224.0.4";
const NET: &str = "203.0.113.10";

/// The pod's UDP flow to the internet and its SNAT entry (source port remapped).
fn snat_flow(sport: u16, post_port: u16) -> (FlowTuple, FlowTuple, NatEntry) {
    let orig = t(PROTO_UDP, POD, sport, NET, 53);
    let post = t(PROTO_UDP, NODE, post_port, NET, 53);
    let e = NatEntry {
        orig,
        reply: post.reversed().unwrap(),
    };
    (orig, post, e)
}

#[test]
fn snat_egress_is_one_connection_with_both_addresses_counted_once() {
    let (orig, post, e) = snat_flow(5000, 5000);
    let mut nat = NatTable::new();
    nat.insert(e);
    let mut tab = Table::new(true);
    let s = harvest(
        &mut tab,
        &mut nat,
        &[
            d(VETH, Direction::Ingress, orig, 3, 1, 0),
            d(UPLINK, Direction::Egress, post, 3, 2, 0),
            d(UPLINK, Direction::Ingress, e.reply, 2, 3, 0),
            d(VETH, Direction::Egress, orig.reversed().unwrap(), 2, 4, 0),
        ],
        10,
    );
    assert_eq!(s.started.len(), 1);
    let c = conn(&tab, s.started[0]);
    assert_eq!(c.tuple, orig);
    assert_eq!(c.snat, Some((NODE.parse().unwrap(), 5000)));
    assert_eq!((c.forward.packets, c.reply.packets), (3, 2));
    let mut sides: Vec<(bool, bool, u32)> = sightings(&tab, s.started[0])
        .iter()
        .map(|s| (s.forward, s.post_nat, s.ifindex))
        .collect();
    sides.sort();
    assert_eq!(
        sides,
        [
            (false, false, VETH),
            (false, true, UPLINK),
            (true, false, VETH),
            (true, true, UPLINK)
        ]
    );
    assert_eq!(tab.len(), 1);
}

#[test]
fn a_conntrack_event_after_the_harvest_merges_before_anything_reports_the_node() {
    let (orig, post, e) = snat_flow(40000, 40000);
    let mut nat = NatTable::new();
    let mut tab = Table::new(true);
    // Harvest 1: both sightings, no conntrack entry yet.
    let s1 = harvest(
        &mut tab,
        &mut nat,
        &[
            d(VETH, Direction::Ingress, orig, 4, 1, 0),
            d(UPLINK, Direction::Egress, post, 4, 1, 0),
        ],
        10,
    );
    assert_eq!(s1.started.len(), 1, "the pod's half is reported at once");
    let id = s1.started[0];
    assert_eq!(conn(&tab, id).tuple, orig);
    assert!(tab
        .reported()
        .all(|t| t.conn.tuple.src != NODE.parse::<IpAddr>().unwrap()));
    // The event arrives; harvest 2 merges the held half into the pod's connection.
    nat.insert(e);
    let s2 = harvest(
        &mut tab,
        &mut nat,
        &[d(UPLINK, Direction::Ingress, e.reply, 1, 15, 0)],
        20,
    );
    assert_eq!(
        (s2.started.len(), s2.updated, s2.ending.len()),
        (0, vec![id], 0)
    );
    assert_eq!(tab.len(), 1);
    let c = conn(&tab, id);
    assert_eq!(c.snat, Some((NODE.parse().unwrap(), 40000)));
    assert!(c.nat_joined && !c.snat_inferred);
    assert_eq!((c.forward.packets, c.reply.packets), (4, 1));
    // Within the window: not a miss when it ends.
    let s3 = tab.settle(5_000, IDLE, name);
    assert_eq!((s3.ending, s3.misses), (vec![id], vec![]));
}

#[test]
fn a_join_that_never_comes_is_inferred_from_the_pods_half_and_counted_by_reason() {
    for lost in [false, true] {
        let (orig, post, _) = snat_flow(40000, 40000);
        let mut nat = NatTable::new();
        let mut tab = Table::new(true);
        if lost {
            tab.nat_lost();
            tab.nat_resynced();
        }
        let deltas = [
            d(VETH, Direction::Ingress, orig, 4, 1, 0),
            d(UPLINK, Direction::Egress, post, 4, 1, 0),
        ];
        let s = harvest(&mut tab, &mut nat, &deltas, 10);
        let id = s.started[0];
        if lost {
            // Lost after it started: still counts as lost.
            tab.nat_lost();
            tab.nat_resynced();
        }
        for r in 1..JOIN_WINDOW {
            let s = harvest(&mut tab, &mut nat, &[], 10 + r);
            assert!(s.started.is_empty(), "held for the join window");
        }
        let s = harvest(&mut tab, &mut nat, &[], 20);
        assert!(s.started.is_empty(), "paired, never reported as the node's");
        assert_eq!(s.updated, vec![id]);
        assert_eq!(tab.len(), 1);
        let c = conn(&tab, id);
        assert_eq!(
            (c.snat, c.snat_inferred, c.nat_joined),
            (Some((NODE.parse().unwrap(), 40000)), true, false)
        );
        assert_eq!(c.forward.packets, 4, "counted once");
        assert_eq!(s.stats.unjoined, 1);
        let end = tab.settle(5_000, IDLE, name);
        let want = if lost {
            MissReason::Lost
        } else {
            MissReason::None
        };
        assert_eq!((end.ending, end.misses), (vec![id], vec![want]));
    }
}

#[test]
fn a_loss_noticed_a_harvest_before_a_connection_is_first_seen_may_be_its_own() {
    // The reader learns of an overflow at its next read: a NEW event lost then belongs to
    // a connection the next harvest may only now see. Two harvests earlier, it cannot.
    for (quiet_harvests, want) in [(1, MissReason::Lost), (2, MissReason::None)] {
        let (orig, post, _) = snat_flow(40000, 40000);
        let mut nat = NatTable::new();
        let mut tab = Table::new(true);
        tab.nat_lost();
        tab.nat_resynced();
        for r in 0..quiet_harvests {
            harvest(&mut tab, &mut nat, &[], 1 + r);
        }
        let deltas = [
            d(VETH, Direction::Ingress, orig, 4, 1, 0),
            d(UPLINK, Direction::Egress, post, 4, 1, 0),
        ];
        let id = harvest(&mut tab, &mut nat, &deltas, 10).started[0];
        for r in 0..JOIN_WINDOW {
            harvest(&mut tab, &mut nat, &[], 11 + r);
        }
        let end = tab.settle(5_000, IDLE, name);
        assert_eq!(
            (end.ending, end.misses),
            (vec![id], vec![want]),
            "{quiet_harvests}"
        );
    }
}

#[test]
fn a_remapped_port_is_paired_by_its_count_when_the_port_differs() {
    let (a, a_post, _) = snat_flow(4000, 1024);
    let mut tab = Table::new(true);
    let mut nat = NatTable::new();
    let b = t(PROTO_UDP, "10.244.1.12", 4001, NET, 53);
    harvest(
        &mut tab,
        &mut nat,
        &[
            d(VETH, Direction::Ingress, a, 2, 1, 0),
            d(VETH_B, Direction::Ingress, b, 7, 1, 0),
            d(UPLINK, Direction::Egress, a_post, 2, 1, 0),
        ],
        10,
    );
    for r in 0..JOIN_WINDOW {
        harvest(&mut tab, &mut nat, &[], 11 + r);
    }
    let by_src = |ip: &str| {
        tab.reported()
            .find(|x| x.conn.tuple.src == ip.parse::<IpAddr>().unwrap())
            .map(|x| x.conn.clone())
    };
    assert_eq!(
        by_src(POD).unwrap().snat,
        Some((NODE.parse().unwrap(), 1024))
    );
    assert_eq!(by_src("10.244.1.12").unwrap().snat, None);
    assert!(by_src(NODE).is_none());
}

#[test]
fn node_traffic_without_any_pod_half_is_reported_after_the_window() {
    let own = t(PROTO_UDP, NODE, 33000, NET, 123);
    let mut tab = Table::new(true);
    let mut nat = NatTable::new();
    let deltas = [d(UPLINK, Direction::Egress, own, 1, 1, 0)];
    let mut started = Vec::new();
    for r in 0..=JOIN_WINDOW {
        let deltas: &[Delta] = if r == 0 { &deltas } else { &[] };
        started.extend(harvest(&mut tab, &mut nat, deltas, 10 + r).started);
    }
    assert_eq!(started.len(), 1);
    assert_eq!(conn(&tab, started[0]).tuple, own);
    assert_eq!(
        tab.settle(5_000, IDLE, name).misses,
        vec![],
        "not a pod's: no miss"
    );
}

#[test]
fn without_a_nat_source_nothing_is_held() {
    let own = t(PROTO_UDP, NODE, 33000, NET, 123);
    let mut tab = Table::new(false);
    let s = harvest(
        &mut tab,
        &mut NatTable::new(),
        &[d(UPLINK, Direction::Egress, own, 1, 1, 0)],
        10,
    );
    assert_eq!(s.started.len(), 1);
}

#[test]
fn the_initiator_is_the_syn_sender_and_never_flips_across_harvests() {
    // Server port above the client's; the server's SYN-ACK is harvested first.
    let client = t(PROTO_TCP, "10.244.1.10", 3000, "10.244.2.10", 40000);
    let server = client.reversed().unwrap();
    let mut tab = Table::new(false);
    let mut nat = NatTable::new();
    let s1 = harvest(
        &mut tab,
        &mut nat,
        &[d(VETH, Direction::Egress, server, 1, 1, 0x12)],
        10,
    );
    let id = s1.started[0];
    assert_eq!(conn(&tab, id).tuple, client);
    let mut syn = d(VETH, Direction::Ingress, client, 3, 1, 0x02 | 0x10);
    syn.stats.marks = agent_common::MARK_OPENED;
    let s2 = harvest(&mut tab, &mut nat, &[syn], 11);
    assert!(s2.started.is_empty());
    let s3 = harvest(
        &mut tab,
        &mut nat,
        &[d(VETH, Direction::Egress, server, 2, 12, 0x10)],
        12,
    );
    assert!(s3.started.is_empty());
    let c = conn(&tab, id);
    assert_eq!(
        (c.tuple, c.forward.packets, c.reply.packets),
        (client, 3, 3)
    );
}

#[test]
fn both_directions_in_one_harvest_are_one_connection_opened_by_the_syn_side() {
    let fwd = t(PROTO_TCP, "10.244.1.10", 7001, "10.244.2.10", 7000);
    let rev = fwd.reversed().unwrap();
    let mut syn = d(VETH, Direction::Ingress, fwd, 5, 2, 0x12);
    syn.stats.marks = agent_common::MARK_OPENED;
    let s = harvest(
        &mut Table::new(false),
        &mut NatTable::new(),
        &[d(VETH, Direction::Egress, rev, 4, 1, 0x12), syn],
        10,
    );
    assert_eq!(s.started.len(), 1);
}

#[test]
fn a_connection_is_reported_before_it_can_expire_and_its_counts_go_out_once() {
    let (orig, _, _) = snat_flow(5000, 5000);
    let mut tab = Table::new(false);
    let mut nat = NatTable::new();
    tab.apply(&[d(VETH, Direction::Ingress, orig, 2, 1, 0)], &nat, role);
    // The harvest comes long after the packets: idle already, still reported first.
    let s = tab.settle(1 + 10 * IDLE, IDLE, name);
    assert_eq!(s.started, s.ending);
    let id = s.started[0];
    assert_eq!(tab.take_delta(id).0.packets, 2);
    assert_eq!(tab.take_delta(id).0.packets, 0, "handed out once");
    tab.remove_ended(&s.ending);
    assert!(tab.is_empty());
    let s = harvest(
        &mut tab,
        &mut nat,
        &[d(VETH, Direction::Ingress, orig, 1, 20_000, 0)],
        20_001,
    );
    assert_eq!(s.started.len(), 1, "back after its end: a new connection");
    assert_ne!(s.started[0], id);
}

#[test]
fn a_join_after_the_window_is_late() {
    let (orig, _, e) = snat_flow(5000, 5000);
    let mut tab = Table::new(true);
    let mut nat = NatTable::new();
    let id = harvest(
        &mut tab,
        &mut nat,
        &[d(VETH, Direction::Ingress, orig, 2, 1, 0)],
        10,
    )
    .started[0];
    for r in 0..JOIN_WINDOW {
        harvest(&mut tab, &mut nat, &[], 11 + r);
    }
    nat.insert(e);
    let s = harvest(&mut tab, &mut nat, &[], 20);
    assert_eq!(s.updated, vec![id]);
    assert!(conn(&tab, id).nat_joined);
    assert_eq!(tab.settle(5_000, IDLE, name).misses, vec![MissReason::Late]);
}

#[test]
fn a_resync_pending_extends_the_hold() {
    let (orig, post, e) = snat_flow(40000, 40000);
    let mut tab = Table::new(true);
    let mut nat = NatTable::new();
    tab.nat_lost();
    harvest(
        &mut tab,
        &mut nat,
        &[
            d(VETH, Direction::Ingress, orig, 4, 1, 0),
            d(UPLINK, Direction::Egress, post, 4, 1, 0),
        ],
        10,
    );
    for r in 0..JOIN_WINDOW + 2 {
        harvest(&mut tab, &mut nat, &[], 11 + r);
    }
    assert_eq!(tab.len(), 2, "still held: the resync may carry the entry");
    nat.insert(e);
    tab.nat_resynced();
    harvest(&mut tab, &mut nat, &[], 30);
    assert_eq!(tab.len(), 1);
    assert!(conn(&tab, tab.reported().next().unwrap().id).nat_joined);
}

#[test]
fn remapped_ports_with_equal_counts_are_paired_by_the_syn_sequence_number() {
    let a = t(PROTO_TCP, POD, 40000, NET, 443);
    let b = t(PROTO_TCP, "10.244.1.12", 40000, NET, 443);
    let (a_post, b_post) = (
        t(PROTO_TCP, NODE, 1025, NET, 443),
        t(PROTO_TCP, NODE, 1026, NET, 443),
    );
    let syn = |ifindex, dir, tu, seq| {
        let mut x = d(ifindex, dir, tu, 5, 1, 0x02 | 0x10);
        x.stats.marks = agent_common::MARK_OPENED;
        x.stats.syn_seq = seq;
        x
    };
    let mut tab = Table::new(true);
    let mut nat = NatTable::new();
    harvest(
        &mut tab,
        &mut nat,
        &[
            syn(VETH, Direction::Ingress, a, 111),
            syn(VETH_B, Direction::Ingress, b, 222),
            syn(UPLINK, Direction::Egress, b_post, 222),
            syn(UPLINK, Direction::Egress, a_post, 111),
        ],
        10,
    );
    for r in 0..JOIN_WINDOW {
        harvest(&mut tab, &mut nat, &[], 11 + r);
    }
    assert_eq!(tab.len(), 2);
    let snat_of = |ip: &str| {
        tab.reported()
            .find(|x| x.conn.tuple.src == ip.parse::<IpAddr>().unwrap())
            .and_then(|x| x.conn.snat)
            .map(|(_, port)| port)
    };
    assert_eq!(
        (snat_of(POD), snat_of("10.244.1.12")),
        (Some(1025), Some(1026))
    );
}

#[test]
fn an_echo_request_and_its_reply_are_one_connection_in_either_harvest_order() {
    let req = t(PROTO_ICMP, POD, 7, NET, 8 << 8);
    let rep = req.reversed().unwrap();
    for split in [false, true] {
        let mut tab = Table::new(false);
        let mut nat = NatTable::new();
        let (a, b) = (
            d(VETH, Direction::Ingress, req, 3, 1, 0),
            d(VETH, Direction::Egress, rep, 3, 2, 0),
        );
        let mut started = Vec::new();
        if split {
            // The reply's harvest first: it still joins its request's connection.
            started.extend(harvest(&mut tab, &mut nat, &[b], 10).started);
            started.extend(harvest(&mut tab, &mut nat, &[a], 11).started);
        } else {
            started.extend(harvest(&mut tab, &mut nat, &[a, b], 10).started);
        }
        assert_eq!(started.len(), 1, "split: {split}");
        let c = conn(&tab, started[0]);
        assert_eq!((c.tuple, c.forward.packets, c.reply.packets), (req, 3, 3));
    }
}

/// A delta read from cache slot `slot` (the hint path), else as [`d`].
fn ds(slot: u32, ifindex: u32, dir: Direction, tu: FlowTuple, packets: u64, at: u64) -> Delta {
    Delta {
        slot,
        ..d(ifindex, dir, tu, packets, at, 0)
    }
}

#[test]
fn a_slot_hint_counts_steady_traffic_on_the_point_it_names() {
    let mut nat = NatTable::new();
    let mut tab = Table::new(false);
    let a = t(PROTO_UDP, POD, 5000, NET, 53);
    let b = t(PROTO_UDP, POD, 5001, NET, 53);
    let s = harvest(
        &mut tab,
        &mut nat,
        &[
            ds(0, VETH, Direction::Ingress, a, 1, 1),
            ds(1, VETH, Direction::Ingress, b, 1, 1),
        ],
        2,
    );
    let ids: Vec<ConnId> = s.started.clone();
    for round in 0..3 {
        // The second harvest learns the hints, the rest use them; slot 1 also carries a
        // flow the table has not seen (a new occupation): the hint must not claim it.
        let c = t(PROTO_UDP, POD, 6000 + round, NET, 53);
        harvest(
            &mut tab,
            &mut nat,
            &[
                ds(0, VETH, Direction::Ingress, a, 2, 10 + u64::from(round)),
                ds(1, VETH, Direction::Ingress, b, 3, 10 + u64::from(round)),
                ds(1, VETH, Direction::Ingress, c, 1, 10 + u64::from(round)),
            ],
            20 + u64::from(round),
        );
    }
    let count = |id| conn(&tab, id).forward.packets;
    let by_port = |p: u16| {
        tab.all()
            .find(|x| x.conn.tuple.sport == p)
            .map(|x| x.conn.forward.packets)
    };
    assert_eq!((count(ids[0]), count(ids[1])), (1 + 3 * 2, 1 + 3 * 3));
    assert_eq!(
        (by_port(6000), by_port(6001), by_port(6002)),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(tab.len(), 5);
}

#[test]
fn a_hint_left_by_an_ended_connection_does_not_claim_the_slots_next_flow() {
    let mut nat = NatTable::new();
    let mut tab = Table::new(false);
    let old = t(PROTO_UDP, POD, 5000, NET, 53);
    let s = harvest(
        &mut tab,
        &mut nat,
        &[ds(7, VETH, Direction::Ingress, old, 1, 1)],
        2,
    );
    harvest(
        &mut tab,
        &mut nat,
        &[ds(7, VETH, Direction::Ingress, old, 1, 3)],
        4,
    );
    // Idle past the timeout: it ends and is forgotten; the slot's hint still names it.
    let end = harvest(&mut tab, &mut nat, &[], 4 + IDLE + 10);
    assert_eq!(end.ending, s.started);
    tab.remove_ended(&end.ending);
    let new = t(PROTO_UDP, POD, 5001, NET, 53);
    let s2 = harvest(
        &mut tab,
        &mut nat,
        &[ds(7, VETH, Direction::Ingress, new, 4, 2_000)],
        2_001,
    );
    assert_eq!(s2.started.len(), 1);
    assert_ne!(s2.started, s.started);
    assert_eq!(conn(&tab, s2.started[0]).forward.packets, 4);
    assert_eq!(conn(&tab, s2.started[0]).tuple, new);
}

#[test]
fn a_hinted_point_moved_by_a_late_join_still_counts_once_on_its_connection() {
    // The uplink half is placed (and hinted) as its own connection before conntrack's
    // entry arrives; the join merges it into the pod's connection and moves its point.
    let (orig, post, e) = snat_flow(5000, 7000);
    let mut nat = NatTable::new();
    let mut tab = Table::new(true);
    harvest(
        &mut tab,
        &mut nat,
        &[
            ds(0, VETH, Direction::Ingress, orig, 1, 1),
            ds(1, UPLINK, Direction::Egress, post, 1, 1),
        ],
        2,
    );
    harvest(
        &mut tab,
        &mut nat,
        &[
            ds(0, VETH, Direction::Ingress, orig, 1, 3),
            ds(1, UPLINK, Direction::Egress, post, 1, 3),
        ],
        4,
    );
    nat.insert(e);
    for at in [5, 7] {
        harvest(
            &mut tab,
            &mut nat,
            &[
                ds(0, VETH, Direction::Ingress, orig, 1, at),
                ds(1, UPLINK, Direction::Egress, post, 1, at),
            ],
            at + 1,
        );
    }
    assert_eq!(tab.len(), 1);
    let t = tab.all().next().expect("one connection");
    let c = &t.conn;
    assert_eq!(c.tuple, orig);
    let counts: Vec<(u32, u64)> = t
        .sightings()
        .iter()
        .map(|s| (s.ifindex, s.counts.packets))
        .collect();
    assert_eq!(counts, [(VETH, 4), (UPLINK, 4)]);
    assert_eq!(c.forward.packets, 4);
}

/// As [`d`], for TCP connection generation `generation`.
fn dg(
    ifindex: u32,
    dir: Direction,
    tu: FlowTuple,
    packets: u64,
    flags: u8,
    generation: u32,
) -> Delta {
    let mut x = d(ifindex, dir, tu, packets, 1, flags);
    x.key.generation = generation;
    x
}

/// One whole TCP connection of generation `g` from the pod through SNAT: `fwd` packets out,
/// `rep` back, each seen at the pod veth and the uplink, closed with `close` (FIN or RST).
fn reused(orig: FlowTuple, post: FlowTuple, g: u32, fwd: u64, rep: u64, close: u8) -> Vec<Delta> {
    let (orig_r, post_r) = (orig.reversed().unwrap(), post.reversed().unwrap());
    vec![
        dg(VETH, Direction::Ingress, orig, fwd, 0x02 | 0x10 | close, g),
        dg(UPLINK, Direction::Egress, post, fwd, 0x02 | 0x10 | close, g),
        dg(UPLINK, Direction::Ingress, post_r, rep, 0x12 | 0x01, g),
        dg(VETH, Direction::Egress, orig_r, rep, 0x12 | 0x01, g),
    ]
}

/// A pod's TCP tuple before and after masquerade, the NAT table knowing it, and an empty
/// connection table.
fn tcp_snat_table() -> (FlowTuple, FlowTuple, NatTable, Table) {
    let orig = t(PROTO_TCP, POD, 41000, NET, 443);
    let post = t(PROTO_TCP, NODE, 41000, NET, 443);
    let mut nat = NatTable::new();
    nat.insert(NatEntry {
        orig,
        reply: post.reversed().unwrap(),
    });
    (orig, post, nat, Table::new(true))
}

fn counts_of(tab: &Table, ids: &[ConnId]) -> Vec<(u64, u64)> {
    ids.iter()
        .map(|&id| (conn(tab, id).forward.packets, conn(tab, id).reply.packets))
        .collect()
}

#[test]
fn three_connections_on_one_reused_tuple_in_one_harvest_are_three_records() {
    let (orig, post, mut nat, mut tab) = tcp_snat_table();
    let mut deltas = reused(orig, post, 1_000, 5, 4, 0x01);
    deltas.extend(reused(orig, post, 9_000, 3, 2, 0x04));
    deltas.extend(reused(orig, post, 70_000, 7, 6, 0x01));
    let s = harvest(&mut tab, &mut nat, &deltas, 10);
    assert_eq!(s.started.len(), 3);
    assert_eq!(counts_of(&tab, &s.started), [(5, 4), (3, 2), (7, 6)]);
    // The two older ones end now; the newest holds the tuple until it idles.
    assert_eq!(s.ending, s.started[..2]);
    for &id in &s.started {
        let c = conn(&tab, id);
        assert_eq!(c.tuple, orig);
        assert_eq!(c.snat, Some((NODE.parse().unwrap(), 41000)));
        assert_eq!(sightings(&tab, id).len(), 4);
    }
    assert_eq!(conn(&tab, s.started[1]).fwd_flags, 0x16);
}

#[test]
fn a_reused_tuple_in_the_next_harvest_ends_the_old_connection_and_starts_a_new_one() {
    let (orig, post, mut nat, mut tab) = tcp_snat_table();
    let s1 = harvest(&mut tab, &mut nat, &reused(orig, post, 500, 6, 5, 0x01), 10);
    let first = s1.started[0];
    assert!(s1.ending.is_empty());
    // The old connection's last ACK arrives with the new one's first packets.
    let mut deltas = vec![dg(VETH, Direction::Ingress, orig, 1, 0x10, 500)];
    deltas.extend(reused(orig, post, 800, 2, 1, 0x04));
    let s2 = harvest(&mut tab, &mut nat, &deltas, 20);
    assert_eq!(s2.started.len(), 1);
    assert_ne!(s2.started[0], first);
    assert_eq!(s2.ending, [first]);
    assert_eq!(counts_of(&tab, &[first, s2.started[0]]), [(7, 5), (2, 1)]);
    tab.remove_ended(&s2.ending);
    assert_eq!(tab.len(), 1);
}

#[test]
fn packets_of_unknown_generation_join_the_connection_that_holds_the_tuple() {
    // A colliding flow's SYN took this connection's generation entry: its later packets
    // come under generation 0, at the same place as its SYN.
    let (orig, _, mut nat, mut tab) = tcp_snat_table();
    let s = harvest(
        &mut tab,
        &mut nat,
        &[
            dg(VETH, Direction::Ingress, orig, 1, 0x02, 77),
            dg(VETH, Direction::Ingress, orig, 5, 0x10, 0),
            dg(
                VETH,
                Direction::Egress,
                orig.reversed().unwrap(),
                4,
                0x12,
                77,
            ),
        ],
        10,
    );
    assert_eq!(s.started.len(), 1);
    let c = conn(&tab, s.started[0]);
    assert_eq!((c.forward.packets, c.reply.packets), (6, 4));
    assert_eq!(sightings(&tab, s.started[0]).len(), 2);
}

#[test]
fn a_connection_older_than_the_agent_is_split_from_the_next_one_on_its_tuple() {
    let (orig, post, mut nat, mut tab) = tcp_snat_table();
    // Seen from its middle (generation unknown) to its FIN.
    let s1 = harvest(
        &mut tab,
        &mut nat,
        &[dg(VETH, Direction::Ingress, orig, 9, 0x11, 0)],
        10,
    );
    let old = s1.started[0];
    // The next connection starts in a later clock tick than the old one's FIN.
    let mut next = reused(orig, post, 4242, 3, 3, 0x01);
    for d in &mut next {
        (d.stats.first_seen_ns, d.stats.last_seen_ns) = (5, 5);
    }
    let s2 = harvest(&mut tab, &mut nat, &next, 20);
    assert_eq!(s2.ending, [old]);
    assert_eq!(counts_of(&tab, &[old, s2.started[0]]), [(9, 0), (3, 3)]);
}

#[test]
fn a_generation_learnt_mid_connection_does_not_split_it() {
    let (orig, post, mut nat, mut tab) = tcp_snat_table();
    let s1 = harvest(
        &mut tab,
        &mut nat,
        &[dg(VETH, Direction::Ingress, orig, 4, 0x10, 0)],
        10,
    );
    let s2 = harvest(
        &mut tab,
        &mut nat,
        &[dg(UPLINK, Direction::Egress, post, 4, 0x10, 31)],
        20,
    );
    assert!(s2.started.is_empty() && s2.ending.is_empty());
    assert_eq!(sightings(&tab, s1.started[0]).len(), 2);
}

#[test]
fn a_connections_end_under_unknown_generation_harvested_with_its_start_stays_with_it() {
    // The uplink's FIN-ACK came after a colliding SYN took the entry (generation 0) and is
    // harvested with the SYN-ACK (generation 9): one connection, both counted at one point.
    let (orig, post, mut nat, mut tab) = tcp_snat_table();
    let post_r = post.reversed().unwrap();
    let s = harvest(
        &mut tab,
        &mut nat,
        &[
            dg(UPLINK, Direction::Ingress, post_r, 1, 0x11, 0),
            dg(UPLINK, Direction::Ingress, post_r, 2, 0x12, 9),
            dg(VETH, Direction::Ingress, orig, 4, 0x13, 9),
        ],
        10,
    );
    assert_eq!(s.started.len(), 1, "{:?}", s.started);
    assert!(s.ending.is_empty());
    let c = conn(&tab, s.started[0]);
    assert_eq!((c.forward.packets, c.reply.packets), (4, 3));
}
