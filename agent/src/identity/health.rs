//! Whether the inventory can be trusted, judged per source. The inventory is *ready* once
//! every source it needs has listed once, and *current* only while every one of them is
//! listed and healthy: one watch that came back must not hide another still down or
//! relisting, and an agent following the index is current only while both the index
//! stream and its own-node watch are (and the index itself says it is current).

use std::{
    collections::{btree_map::Entry, BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::watch::Source;

/// What changed about one source, for a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    /// A list began while the source was current (or for the first time).
    RelistStarted,
    /// The list completed, after this long.
    RelistCompleted(Duration),
    /// It went down while current.
    Lost,
    /// It answers again and missed nothing.
    Recovered,
    /// Nothing worth a line (a retry of something already reported).
    Quiet,
}

#[derive(Debug)]
pub struct Health {
    sources: Vec<Source>,
    synced: BTreeSet<Source>,
    current: BTreeSet<Source>,
    /// Sources listing now, since when.
    listing: BTreeMap<Source, Instant>,
}

impl Health {
    /// Needs all of `sources` (none: a snapshot or no source, complete when loaded).
    pub fn new(sources: Vec<Source>) -> Self {
        Self {
            sources,
            synced: BTreeSet::new(),
            current: BTreeSet::new(),
            listing: BTreeMap::new(),
        }
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Every source listed at least once.
    pub fn ready(&self) -> bool {
        self.sources.iter().all(|s| self.synced.contains(s))
    }

    /// Some source is down, listing, or not yet listed.
    pub fn stale(&self) -> bool {
        self.sources.iter().any(|s| !self.current.contains(s))
    }

    pub fn is_current(&self, s: Source) -> bool {
        self.current.contains(&s)
    }

    pub fn relisting(&mut self, s: Source) -> Transition {
        self.current.remove(&s);
        match self.listing.entry(s) {
            // A retry keeps the first attempt's start, so the completion says how long
            // the source really was away.
            Entry::Occupied(_) => Transition::Quiet,
            Entry::Vacant(v) => {
                v.insert(Instant::now());
                Transition::RelistStarted
            }
        }
    }

    pub fn synced(&mut self, s: Source) -> Transition {
        self.synced.insert(s);
        self.current.insert(s);
        match self.listing.remove(&s) {
            Some(since) => Transition::RelistCompleted(since.elapsed()),
            None => Transition::Quiet,
        }
    }

    /// Whether `s` has ever completed a list.
    pub fn has_listed(&self, s: Source) -> bool {
        self.synced.contains(&s)
    }

    pub fn unavailable(&mut self, s: Source) -> Transition {
        if self.current.remove(&s) {
            Transition::Lost
        } else {
            Transition::Quiet
        }
    }

    /// A source answers again. Only one that has listed and is not listing now is current
    /// by answering: a relist completes with `synced`.
    pub fn available(&mut self, s: Source) -> Transition {
        if self.synced.contains(&s) && !self.listing.contains_key(&s) && self.current.insert(s) {
            Transition::Recovered
        } else {
            Transition::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Kind;

    const PODS: Source = Source::Api(Kind::Pod);
    const NODES: Source = Source::Api(Kind::Node);

    #[test]
    fn current_only_when_every_source_is() {
        let mut h = Health::new(vec![PODS, NODES]);
        assert!(!h.ready() && h.stale());
        assert_eq!(h.relisting(PODS), Transition::RelistStarted);
        assert!(matches!(h.synced(PODS), Transition::RelistCompleted(_)));
        assert!(!h.ready() && h.stale(), "nodes not listed yet");
        h.relisting(NODES);
        h.synced(NODES);
        assert!(h.ready() && !h.stale());
        // One kind relists after a 410: stale until it completes, whatever the others do.
        assert_eq!(h.relisting(PODS), Transition::RelistStarted);
        assert_eq!(h.available(NODES), Transition::Quiet, "already current");
        assert_eq!(
            h.available(PODS),
            Transition::Quiet,
            "a relist ends with synced"
        );
        assert!(h.stale() && h.ready());
        assert_eq!(h.relisting(PODS), Transition::Quiet, "a retry");
        assert!(matches!(h.synced(PODS), Transition::RelistCompleted(_)));
        assert!(!h.stale());
    }

    #[test]
    fn a_watch_down_then_resumed_is_current_again_without_a_relist() {
        let mut h = Health::new(vec![PODS]);
        h.relisting(PODS);
        h.synced(PODS);
        assert_eq!(h.unavailable(PODS), Transition::Lost);
        assert_eq!(h.unavailable(PODS), Transition::Quiet);
        assert!(h.stale());
        assert_eq!(h.available(PODS), Transition::Recovered);
        assert!(!h.stale());
    }

    #[test]
    fn no_source_is_ready_and_current() {
        let h = Health::new(vec![]);
        assert!(h.ready() && !h.stale());
    }
}
