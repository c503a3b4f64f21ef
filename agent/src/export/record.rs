//! The serialisable connection record: what `/flows`, the CLI and the flow log show.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    classify::Classification,
    event::ConnEvent,
    flow::{ConnId, Connection, Counts, Sighting},
    net::{Protocol, WallClock},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// One observation point's view, as shown to users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SightingView {
    pub iface: String,
    /// "pod" or "uplink"; empty if the interface is gone.
    pub role: String,
    /// "ingress" or "egress" (TC hook).
    pub hook: String,
    /// "forward" (initiator → responder) or "reply".
    pub direction: String,
    /// "pre_nat" or "post_nat".
    pub nat_stage: String,
    pub packets: u64,
    pub bytes: u64,
}

/// One connection. Addresses are the initiator's, before NAT; `snat`/`dnat` carry the
/// translated source (what firewalls see) and the chosen backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// Stable for the connection's life in this agent process (start, updates, end).
    #[serde(default)]
    pub id: ConnId,
    pub proto: Protocol,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub snat: Option<Endpoint>,
    pub dnat: Option<Endpoint>,
    /// A conntrack entry was found for this connection.
    pub nat_joined: bool,
    /// `snat` was inferred by pairing the uplink sighting with the pod's because conntrack
    /// never told (events lost or late).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snat_inferred: bool,
    /// Counted once, at the preferred observation point of each direction.
    pub forward: Counts,
    pub reply: Counts,
    pub sightings: Vec<SightingView>,
    pub tcp_flags: u8,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Identities, class and verdicts.
    #[serde(flatten)]
    pub class: Classification,
    /// The node-local process that owns the connection's socket (host processes,
    /// hostNetwork pods, escaped containers); absent for forwarded pod traffic.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub process: Option<crate::process::ProcessInfo>,
    /// How the attempt went (established, refused, unanswered, reset; replied,
    /// unreplied), once known: docs/flow-log.md.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub outcome: Option<crate::flow::Outcome>,
    /// The first answered connection on its (source workload → destination, port) edge
    /// since the learning period ended: docs/flow-log.md.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub new_edge: bool,
    /// The name the source pod resolved the destination address from (its own DNS
    /// answer, seen on its interface), when it did: docs/flow-log.md.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dst_fqdn: Option<std::sync::Arc<str>>,
}

/// Forward sightings first, each direction by counting preference.
fn sorted(s: impl IntoIterator<Item = Sighting>) -> Vec<Sighting> {
    let mut v: Vec<Sighting> = s.into_iter().collect();
    v.sort_by_key(|s| (!s.forward, s.rank()));
    v
}

impl ConnectionView {
    /// The full record of an event (what the flow log writes and `/flows` returns).
    pub fn of_event(ev: &ConnEvent, clock: &WallClock) -> Self {
        let mut v = Self::new(
            ev.id,
            ev.conn,
            ev.sightings.iter(),
            (**ev.class).clone(),
            clock,
        );
        v.process = ev.process.cloned();
        v.outcome = ev.outcome;
        v.new_edge = ev.new_edge;
        v.dst_fqdn = ev.dst_fqdn.cloned();
        v
    }

    pub fn new(
        id: ConnId,
        c: &Connection,
        sightings: impl IntoIterator<Item = Sighting>,
        class: Classification,
        clock: &WallClock,
    ) -> Self {
        let ep = |x: Option<(IpAddr, u16)>| x.map(|(ip, port)| Endpoint { ip, port });
        Self {
            id,
            proto: c.tuple.proto.into(),
            src: c.tuple.src,
            src_port: c.tuple.sport,
            dst: c.tuple.dst,
            dst_port: c.tuple.dport,
            snat: ep(c.snat),
            dnat: ep(c.dnat),
            nat_joined: c.nat_joined,
            snat_inferred: c.snat_inferred,
            forward: c.forward,
            reply: c.reply,
            sightings: sorted(sightings)
                .into_iter()
                .map(|s| SightingView {
                    iface: s.iface.to_string(),
                    role: s
                        .role
                        .map(|r| format!("{r:?}").to_lowercase())
                        .unwrap_or_default(),
                    hook: if s.ingress { "ingress" } else { "egress" }.into(),
                    direction: if s.forward { "forward" } else { "reply" }.into(),
                    nat_stage: if s.post_nat { "post_nat" } else { "pre_nat" }.into(),
                    packets: s.counts.packets,
                    bytes: s.counts.bytes,
                })
                .collect(),
            tcp_flags: c.tcp_flags,
            first_seen_ms: clock.unix_ms(c.first_seen_ns),
            last_seen_ms: clock.unix_ms(c.last_seen_ns),
            class,
            process: None,
            outcome: None,
            new_edge: false,
            dst_fqdn: None,
        }
    }

    /// Every address the connection is known by (for filters).
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        [
            Some(self.src),
            Some(self.dst),
            self.snat.map(|e| e.ip),
            self.dnat.map(|e| e.ip),
        ]
        .into_iter()
        .flatten()
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        [
            Some(self.src_port),
            Some(self.dst_port),
            self.snat.map(|e| e.port),
            self.dnat.map(|e| e.port),
        ]
        .into_iter()
        .flatten()
    }
}
