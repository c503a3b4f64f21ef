//! Counting NAT joins that did not happen: a pod's TCP/UDP connection crosses netfilter on
//! the node, so conntrack must know it; one still unjoined after [`MISS_AFTER`] harvests is
//! a miss (event lost, or a NAT conntrack does not see). Counted once, never dropped.

use std::collections::{HashMap, HashSet};

use crate::{
    datapath::Role,
    flow::{Connection, FlowTuple, PROTO_TCP, PROTO_UDP},
};

/// Harvests a connection may stay unjoined before it counts as a miss (events arrive
/// asynchronously, so one harvest of lag is normal).
pub const MISS_AFTER: u32 = 2;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct JoinStats {
    pub new_misses: u64,
    pub late_joins: u64,
}

#[derive(Debug, Default)]
pub struct JoinTracker {
    unjoined: HashMap<FlowTuple, u32>,
    missed: HashSet<FlowTuple>,
}

fn expects_join(c: &Connection) -> bool {
    let local = |ip: &std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v) => v.is_link_local() || v.is_multicast() || v.is_broadcast(),
        std::net::IpAddr::V6(v) => v.is_multicast() || v.is_unicast_link_local(),
    };
    (c.tuple.proto == PROTO_TCP || c.tuple.proto == PROTO_UDP)
        && !local(&c.tuple.src)
        && !local(&c.tuple.dst)
        && c.sightings.iter().any(|s| s.role == Some(Role::Pod))
}

impl JoinTracker {
    pub fn observe(&mut self, conns: &[Connection]) -> JoinStats {
        let mut stats = JoinStats::default();
        let mut seen = HashSet::new();
        for c in conns.iter().filter(|c| expects_join(c)) {
            seen.insert(c.tuple);
            if c.nat_joined {
                self.unjoined.remove(&c.tuple);
                if self.missed.remove(&c.tuple) {
                    stats.late_joins += 1;
                }
                continue;
            }
            let n = self.unjoined.entry(c.tuple).or_insert(0);
            *n += 1;
            if *n == MISS_AFTER && self.missed.insert(c.tuple) {
                stats.new_misses += 1;
            }
        }
        self.unjoined.retain(|t, _| seen.contains(t));
        self.missed.retain(|t| seen.contains(t));
        stats
    }
}
