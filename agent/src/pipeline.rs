//! What happens at each harvest: kernel counters → observation table → connections (NAT
//! joined) → classified (identity, class, verdicts) → metrics, flow log, published
//! snapshots. Owns all userspace flow state.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::{
    classify,
    config::Config,
    datapath::{Attachments, Harvester},
    export::{FlowLog, FlowMetrics, NatMappings, Shared},
    flow::{self, monotonic_ns, ConnectionView, FlowTable, FlowView, Observation, WallClock},
    identity::{reload::SnapshotFile, watch::WatchEvent, Change, Kind, Store},
    nat::{JoinTracker, Mechanism, NatEvent, NatTable},
    process::Attribution,
};

/// Where identities come from and how fresh they are.
pub struct Identity {
    pub store: Store,
    pub source: &'static str,
    pub snapshot: Option<SnapshotFile>,
    /// Kinds whose full list has been applied (the API watch); a snapshot is complete at once.
    pub synced: std::collections::BTreeSet<Kind>,
    /// Object counts need republishing (kept off the per-event path).
    pub dirty: bool,
}

impl Identity {
    pub const KINDS: [Kind; 4] = [Kind::Pod, Kind::Namespace, Kind::Node, Kind::Service];

    /// Complete enough to serve: every kind listed at least once.
    pub fn ready(&self) -> bool {
        self.source != "kubernetes" || Self::KINDS.iter().all(|k| self.synced.contains(k))
    }
}

/// Where classified connections go each harvest.
pub struct Sinks {
    pub metrics: FlowMetrics,
    pub nat_mappings: NatMappings,
    pub log: Option<FlowLog>,
}

pub struct Pipeline {
    table: FlowTable,
    nat: NatTable,
    joins: JoinTracker,
    mechanism: Mechanism,
    idle: Duration,
    config: Config,
    identity: Identity,
    sinks: Sinks,
    processes: Option<Attribution>,
}

impl Pipeline {
    pub fn new(
        mechanism: Mechanism,
        idle: Duration,
        config: Config,
        identity: Identity,
        sinks: Sinks,
        processes: Option<Attribution>,
    ) -> Self {
        Self {
            table: FlowTable::new(),
            nat: NatTable::new(),
            joins: JoinTracker::default(),
            mechanism,
            idle,
            config,
            identity,
            sinks,
            processes,
        }
    }

    pub fn on_nat(&mut self, ev: NatEvent, shared: &Shared) {
        let now = monotonic_ns();
        match ev {
            NatEvent::New(e) => self.nat.insert(e),
            NatEvent::Destroy(e) => self.nat.destroy(&e.orig, now),
            NatEvent::Resync(all) => self.nat.resync(all, now),
            NatEvent::Lost => shared.metrics.nat_events_lost.inc(),
        }
    }

    pub fn identity_ready(&self) -> bool {
        self.identity.ready()
    }

    /// One event from the Kubernetes API watch.
    pub fn on_watch(&mut self, ev: WatchEvent, shared: &Shared) {
        let m = &shared.metrics;
        match ev {
            WatchEvent::Change(c) => {
                self.identity.store.apply(c);
                self.identity.dirty = true;
                m.metadata_stale.set(0);
            }
            WatchEvent::Synced(kind) => {
                if self.identity.synced.insert(kind) {
                    info!(?kind, "identity: initial list applied");
                }
                self.publish_identity(shared);
            }
            WatchEvent::BadObject(e) => {
                m.metadata_errors.inc();
                warn!(error = %e, "identity: object skipped");
            }
            WatchEvent::Unavailable(e) => {
                m.metadata_stale.set(1);
                warn!(error = %e, "identity: Kubernetes API unavailable, keeping the last-known inventory");
            }
        }
    }

    /// Identity metrics after a load or change.
    pub fn publish_identity(&self, shared: &Shared) {
        let m = &shared.metrics;
        let counts = self.identity.store.counts();
        for kind in [Kind::Pod, Kind::Namespace, Kind::Node, Kind::Service] {
            m.metadata_objects
                .with_label_values(&[&format!("{kind:?}").to_lowercase(), self.identity.source])
                .set(counts.get(&kind).copied().unwrap_or(0) as i64);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        m.metadata_last_sync.set(now.as_secs() as i64);
        m.metadata_stale.set(0);
    }

    fn reload_snapshot(&mut self, shared: &Shared) {
        let Some(file) = self.identity.snapshot.as_mut() else {
            return;
        };
        match file.poll() {
            None => {}
            Some(Ok(objects)) => {
                for kind in [Kind::Pod, Kind::Namespace, Kind::Node, Kind::Service] {
                    let of_kind = objects
                        .iter()
                        .filter(|o| o.kind() == kind)
                        .cloned()
                        .collect();
                    self.identity.store.apply(Change::Replace(kind, of_kind));
                }
                info!(
                    objects = self.identity.store.len(),
                    "identity snapshot reloaded"
                );
                self.publish_identity(shared);
            }
            Some(Err(e)) => {
                shared.metrics.metadata_errors.inc();
                warn!(error = %e, "identity snapshot changed but is invalid: keeping the last good one");
            }
        }
    }

    pub fn harvest(
        &mut self,
        harvester: &mut Harvester,
        attachments: &Attachments,
        shared: &Shared,
    ) {
        let m = &shared.metrics;
        let timer = m.harvest_duration.start_timer();
        let now = monotonic_ns();
        let harvest = match harvester.harvest() {
            Ok(h) => h,
            Err(e) => {
                m.harvest_errors.inc();
                warn!(error = %e, "harvest failed");
                return;
            }
        };
        m.flow_map_entries.set(harvest.occupied as i64);
        m.observe_kernel(harvest.counters);
        let idle_ns = self.idle.as_nanos() as u64;
        self.table.apply(&harvest.deltas);
        let expired: Vec<_> = self
            .table
            .expire(now, idle_ns)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        if let Some(a) = &mut self.processes {
            a.forget(&expired);
        }
        // Keep mappings of closed connections as long as their counters may still be shown.
        self.nat.gc(now, 2 * idle_ns);
        m.tracked_flows.set(self.table.len() as i64);
        m.nat_entries.set(self.nat.len() as i64);
        self.reload_snapshot(shared);
        if self.identity.dirty {
            self.identity.dirty = false;
            self.publish_identity(shared);
        }

        let iface = |i: u32| attachments.get(i).map(|a| (a.name.as_str(), a.role));
        let conns = flow::build_connections(
            self.table.iter().map(|(key, entry)| Observation {
                key,
                entry,
                iface: iface(key.ifindex),
            }),
            &self.nat,
        );
        if self.mechanism == Mechanism::Conntrack {
            let stats = self.joins.observe(&conns);
            m.nat_join_misses.inc_by(stats.new_misses);
            m.nat_late_joins.inc_by(stats.late_joins);
        }
        m.connections.set(conns.len() as i64);
        let classified: Vec<_> = conns
            .into_iter()
            .map(|c| {
                let k = classify::classify(&self.config, &self.identity.store, &c);
                (c, k)
            })
            .collect();
        let wall = Instant::now();
        self.sinks
            .metrics
            .observe(&classified, &self.identity.store, wall);
        self.sinks.nat_mappings.observe(&classified);
        let clock = WallClock::now();
        let procs = match &mut self.processes {
            Some(a) => a.read(&self.identity.store),
            None => Default::default(),
        };
        let views: Vec<ConnectionView> = classified
            .into_iter()
            .map(|(c, k)| {
                let process = procs
                    .get(&c.tuple)
                    .or_else(|| c.tuple.reversed().and_then(|r| procs.get(&r)))
                    .cloned();
                let mut v = ConnectionView::new(&c, k, &clock);
                v.process = process;
                v
            })
            .collect();
        if let Some(log) = &mut self.sinks.log {
            match log.observe(&views, wall) {
                Ok(n) => m.flow_log_records.inc_by(n),
                Err(e) => {
                    m.flow_log_errors.inc();
                    warn!(error = %e, "flow log write failed");
                }
            }
        }
        let observations = self
            .table
            .iter()
            .map(|(k, e)| FlowView::new(k, e, iface(k.ifindex), &clock))
            .collect();
        shared.publish(views, observations);
        timer.observe_duration();
    }

    /// Stopping: open connections get their flow-log record.
    pub fn shutdown(&mut self, shared: &Shared) {
        if let Some(log) = &mut self.sinks.log {
            match log.shutdown() {
                Ok(n) => shared.metrics.flow_log_records.inc_by(n),
                Err(e) => {
                    shared.metrics.flow_log_errors.inc();
                    warn!(error = %e, "flow log: final records not written");
                }
            }
        }
    }
}
