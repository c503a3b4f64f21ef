//! Which connection events become records, and when: one rule for every record sink (the
//! flow log, OTLP), so each carries the same records for the same settings.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use clap::ValueEnum;
use serde::Serialize;

use crate::event::{ConnEvent, EventKind};
use crate::{
    classify::{Classification, Egress},
    flow::{ConnId, Outcome},
};

/// Which connections are logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFilter {
    #[default]
    All,
    /// Cross-tenant, unmediated egress, sensitive-target, failed (refused, unanswered)
    /// and new-edge connections only: what a security team acts on.
    Flagged,
}

impl LogFilter {
    fn admits(self, ev: &ConnEvent) -> bool {
        match self {
            LogFilter::All => true,
            LogFilter::Flagged => is_flagged(ev),
        }
    }
}

/// What a security team acts on: cross-tenant, unmediated egress, sensitive-target,
/// failed (refused, unanswered) and new-edge connections.
pub fn is_flagged(ev: &ConnEvent) -> bool {
    let k: &Classification = ev.class;
    k.cross_tenant
        || k.egress == Egress::Unmediated
        || k.sensitive.is_some()
        || ev.new_edge
        || matches!(ev.outcome, Some(Outcome::Refused | Outcome::Unanswered))
}

/// Why a record was written.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordType {
    /// Still open; counters so far.
    Update,
    /// Idle for the idle timeout, or closed: final counters.
    End,
    /// Still open when the agent stopped: counters so far, nothing lost.
    Shutdown,
}

/// Per sink: ends (and shutdowns) become records; connections open for an update interval
/// since their start or last update get an `update` record.
pub struct Selection {
    filter: LogFilter,
    update_interval: Duration,
    /// Open connections: when they started or were last recorded as an update.
    open: HashMap<ConnId, Instant>,
}

impl Selection {
    pub fn new(filter: LogFilter, update_interval: Duration) -> Self {
        Self {
            filter,
            update_interval,
            open: HashMap::new(),
        }
    }

    /// The records one harvest's events make.
    pub fn pick<'s, 'e: 's, 'c>(
        &'s mut self,
        events: &'e [ConnEvent<'c>],
        now: Instant,
    ) -> impl Iterator<Item = (RecordType, &'e ConnEvent<'c>)> + 's {
        events.iter().filter_map(move |ev| {
            let kind = match ev.kind {
                EventKind::Start => {
                    self.open.insert(ev.id, now);
                    return None;
                }
                EventKind::Update => match self.open.get_mut(&ev.id) {
                    Some(since) if now.duration_since(*since) >= self.update_interval => {
                        *since = now;
                        RecordType::Update
                    }
                    Some(_) => return None,
                    None => {
                        self.open.insert(ev.id, now);
                        return None;
                    }
                },
                EventKind::End => RecordType::End,
                EventKind::Shutdown => RecordType::Shutdown,
            };
            if ev.kind.is_final() {
                self.open.remove(&ev.id);
            }
            self.filter.admits(ev).then_some((kind, ev))
        })
    }
}
