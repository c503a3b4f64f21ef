//! What sinks consume: the connection table's start / update / end of one connection,
//! with the counts it had not reported before. Sinks keep no copy of connections to diff,
//! and build a full record only when they write one.

use crate::{
    classify::Classification,
    flow::{ConnId, Connection, Counts, Outcome, Sightings},
    process::ProcessInfo,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// First reported.
    Start,
    /// Reported before; counts, NAT or identity changed.
    Update,
    /// Idle past the timeout: final.
    End,
    /// Still open when the agent stopped: final for this agent.
    Shutdown,
}

impl EventKind {
    pub fn is_final(self) -> bool {
        matches!(self, EventKind::End | EventKind::Shutdown)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ConnEvent<'a> {
    pub kind: EventKind,
    pub id: ConnId,
    pub conn: &'a Connection,
    /// Its observation points, for the record.
    pub sightings: Sightings<'a>,
    /// Identities, class and verdicts as they are now: the copy shared by every
    /// connection that has them (sinks may key per-classification state on it).
    pub class: &'a std::sync::Arc<Classification>,
    pub process: Option<&'a ProcessInfo>,
    /// The classification changed since this connection's previous event.
    pub reclassified: bool,
    /// Forward and reply packets/bytes not in any earlier event.
    pub delta: (Counts, Counts),
    /// How the attempt went, once known.
    pub outcome: Option<Outcome>,
    /// The outcome was first decided in this harvest (counted as an attempt once).
    pub decided: bool,
    /// The first answered connection on its edge since learning ended.
    pub new_edge: bool,
    /// The name the source pod resolved the destination from, when it did.
    pub dst_fqdn: Option<&'a std::sync::Arc<str>>,
}
