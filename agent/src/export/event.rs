//! What sinks consume: the connection table's start / update / end of one connection,
//! with the counts it had not reported before. Sinks keep no copy of connections to diff.

use std::sync::Arc;

use super::ConnectionView;
use crate::flow::{ConnId, Counts};

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

#[derive(Clone, Debug)]
pub struct ConnEvent {
    pub kind: EventKind,
    pub id: ConnId,
    /// The connection as it is now (identities, class, verdicts, counts).
    pub view: Arc<ConnectionView>,
    /// Forward and reply packets/bytes not in any earlier event.
    pub delta: (Counts, Counts),
}
