//! What happens at each harvest: kernel counters → observation table → connections (NAT
//! joined) → classified (identity, class, verdicts) → metrics, flow log, published
//! snapshots. Owns all userspace flow state.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    classify,
    config::Config,
    datapath::{Attachments, Harvester},
    export::{ConnEvent, ConnectionView, EventKind, FlowLog, FlowMetrics, NatMappings, Shared},
    flow::{monotonic_ns, ConnId, ConnTable, FlowView, Settled, WallClock},
    identity::{reload::SnapshotFile, watch::WatchEvent, Change, Kind, Store},
    nat::{Mechanism, NatEvent, NatTable},
    process::{Attribution, ProcessInfo},
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

/// Where connection events go each harvest.
pub struct Sinks {
    pub metrics: FlowMetrics,
    pub nat_mappings: NatMappings,
    pub log: Option<FlowLog>,
}

/// What the pipeline attaches to each connection of the table.
#[derive(Debug, Default)]
pub struct Annotation {
    /// Identity store version the classification was made at.
    classified_at: Option<u64>,
    process: Option<ProcessInfo>,
    /// The published record (identities, class, verdicts, counts).
    view: Option<Arc<ConnectionView>>,
}

pub struct Pipeline {
    table: ConnTable<Annotation>,
    nat: NatTable,
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
            table: ConnTable::new(mechanism == Mechanism::Conntrack),
            nat: NatTable::new(),
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
            NatEvent::Resync(all) => {
                self.nat.resync(all, now);
                self.table.nat_resynced();
            }
            NatEvent::Lost => {
                shared.metrics.nat_events_lost.inc();
                self.table.nat_lost();
            }
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
        let idle_ns = u64::try_from(self.idle.as_nanos()).unwrap_or(u64::MAX);
        let role = |i: u32| attachments.get(i).map(|a| a.role);
        self.table.apply(&harvest.deltas, &self.nat, role);
        let fresh = self.nat.take_fresh();
        self.table.join(&fresh, &self.nat);
        // Keep mappings of closed connections as long as their counters may still be shown.
        self.nat.gc(now, idle_ns.saturating_mul(2));
        self.reload_snapshot(shared);
        if self.identity.dirty {
            self.identity.dirty = false;
            self.publish_identity(shared);
        }
        let name = |i: u32| attachments.get(i).map(|a| a.name.clone());
        let settled = self.table.settle(now, idle_ns, name);
        self.report(settled, false, shared);
        m.tracked_flows.set(
            self.table
                .all()
                .map(|t| t.observations().count())
                .sum::<usize>() as i64,
        );
        m.nat_entries.set(self.nat.len() as i64);
        m.nat_unjoined.set(self.table.unjoined() as i64);
        m.held_connections
            .set((self.table.len() - self.table.reported().count()) as i64);
        let clock = WallClock::now();
        let views = self
            .table
            .reported()
            .filter_map(|t| t.extra.view.clone())
            .collect::<Vec<_>>();
        m.connections.set(views.len() as i64);
        let iface = |i: u32| attachments.get(i).map(|a| (a.name.as_str(), a.role));
        let observations = self
            .table
            .all()
            .flat_map(|t| t.observations())
            .map(|(k, e)| FlowView::new(k, e, iface(k.ifindex), &clock))
            .collect();
        shared.publish(views, observations);
        timer.observe_duration();
    }

    /// Classify what started or changed, then hand every event to the sinks and forget
    /// what ended. `stopping`: final events are shutdowns, not ends.
    fn report(&mut self, settled: Settled, stopping: bool, shared: &Shared) {
        let m = &shared.metrics;
        let clock = WallClock::now();
        let version = self.identity.store.version();
        let identity_changed = self
            .table
            .reported()
            .next()
            .is_some_and(|t| t.extra.classified_at != Some(version));
        let procs = match &mut self.processes {
            Some(a) if !settled.started.is_empty() || !settled.updated.is_empty() => {
                a.read(&self.identity.store)
            }
            _ => Default::default(),
        };
        let mut touched: Vec<ConnId> = settled
            .started
            .iter()
            .chain(&settled.updated)
            .chain(&settled.ending)
            .copied()
            .collect();
        if identity_changed {
            touched.extend(self.table.reported().map(|t| t.id));
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            let Some(t) = self.table.get_mut(id) else {
                continue;
            };
            let stale = t.nat_changed || t.extra.classified_at != Some(version);
            let class = match (&t.extra.view, stale) {
                (Some(v), false) => v.class.clone(),
                _ => classify::classify(&self.config, &self.identity.store, &t.conn),
            };
            t.nat_changed = false;
            t.extra.classified_at = Some(version);
            if t.extra.process.is_none() {
                let tu = &t.conn.tuple;
                t.extra.process = procs
                    .get(tu)
                    .or_else(|| tu.reversed().and_then(|r| procs.get(&r)))
                    .cloned();
            }
            let mut v = ConnectionView::new(id, &t.conn, class, &clock);
            v.process = t.extra.process.clone();
            t.extra.view = Some(Arc::new(v));
        }
        let mut events = Vec::new();
        let groups = [
            (&settled.started, EventKind::Start),
            (&settled.updated, EventKind::Update),
            (
                &settled.ending,
                if stopping {
                    EventKind::Shutdown
                } else {
                    EventKind::End
                },
            ),
        ];
        for (ids, kind) in groups {
            for &id in ids {
                let delta = self.table.take_delta(id);
                if let Some(view) = self.table.get(id).and_then(|t| t.extra.view.clone()) {
                    events.push(ConnEvent {
                        kind,
                        id,
                        view,
                        delta,
                    });
                }
            }
        }
        for reason in &settled.misses {
            m.nat_join_misses
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        let wall = Instant::now();
        self.sinks
            .metrics
            .observe(&events, &self.identity.store, wall);
        self.sinks.nat_mappings.observe(&events);
        if let Some(log) = &mut self.sinks.log {
            match log.observe(&events, wall) {
                Ok(n) => m.flow_log_records.inc_by(n),
                Err(e) => {
                    m.flow_log_errors.inc();
                    warn!(error = %e, "flow log write failed");
                }
            }
        }
        let gone = self.table.remove_ended(&settled.ending);
        if let Some(a) = &mut self.processes {
            a.forget(&gone);
        }
    }

    /// Stopping: everything open is reported and gets its final record.
    pub fn shutdown(&mut self, attachments: &Attachments, shared: &Shared) {
        let name = |i: u32| attachments.get(i).map(|a| a.name.clone());
        let settled = self.table.drain(name);
        self.report(settled, true, shared);
    }
}
