//! What happens at each harvest: kernel counters → observation table → connections (NAT
//! joined) → classified (identity, class, verdicts) → metrics, flow log, published
//! snapshots. Owns all userspace flow state.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{
    classify,
    classify::{Classification, SharedClasses},
    config::Config,
    datapath::{Harvest, Harvester, Interfaces},
    dns::{DnsTracker, NamesLimits},
    event::{ConnEvent, EventKind},
    export::{
        otlp::Otlp, ConnectionView, FlowLog, FlowMetrics, NamespaceSeries, NatMappings, Shared,
    },
    flow::{
        decide_outcome, ConnId, ConnTable, Counts, FlowView, NewFlows, Outcome, Seen, Settled,
        WARM_AHEAD,
    },
    identity::{SharedStore, Store},
    lateral::{Edges, Fanout},
    nat::{Mechanism, NatEvent, NatTable},
    net::{monotonic_ns, FastSet, WallClock},
    process::{Attribution, ProcessInfo},
};

/// Where connection events go each harvest.
pub struct Sinks {
    pub metrics: FlowMetrics,
    pub nat_mappings: NatMappings,
    pub log: Option<FlowLog>,
    pub otlp: Option<Otlp>,
    pub fanout: Fanout,
}

/// A connection with an event this harvest: its kind, the counts not yet reported and
/// whether it was reclassified since its last event.
type Due = (ConnId, EventKind, (Counts, Counts), bool);

/// What the pipeline attaches to each connection of the table.
#[derive(Debug, Default)]
pub struct Annotation {
    class: Option<Arc<Classification>>,
    /// Reclassified since the connection's last event.
    reclassified: bool,
    /// Boxed: host processes' connections are few, every connection carries the field.
    process: Option<Box<ProcessInfo>>,
    /// The published record, built only while records are wanted and then only when the
    /// connection changed.
    view: Option<Arc<ConnectionView>>,
    /// How the attempt went, once known.
    outcome: Option<Outcome>,
    /// The first answered connection on its edge since learning ended.
    new_edge: bool,
    /// The name the source pod resolved the destination from, fixed when the connection
    /// is first classified (a TTL running out mid-connection does not take it away).
    dst_fqdn: Option<Arc<str>>,
}

/// Events handed to the sinks at once (about 2 MiB of them).
const EMIT_CHUNK: usize = 16_384;

pub struct Pipeline {
    table: ConnTable<Annotation>,
    /// The last harvest's buffer, reused.
    harvest: Harvest,
    classes: SharedClasses,
    /// Identity store version of the last full reclassification.
    classified_at: Option<u64>,
    nat: NatTable,
    idle: Duration,
    config: Config,
    /// Written by the identity task only; read once per harvest.
    identity: SharedStore,
    sinks: Sinks,
    processes: Option<Attribution>,
    /// Reported connections whose outcome is not known yet: looked at every harvest, as
    /// an unanswered attempt sends nothing more that would touch it.
    undecided: std::collections::BTreeSet<ConnId>,
    /// Paths seen before, to flag new ones.
    edges: Edges,
    /// The pods' DNS: what each resolved, to name their connections.
    dns: DnsTracker,
    /// The DNS counters' namespace series, dropped when their namespace is deleted.
    dns_series: NamespaceSeries,
    /// Deltas of eviction records folded between harvests whose flow no connection has
    /// yet: placed with the next harvest's new flows, as if that harvest had read them.
    unplaced: NewFlows,
}

impl Pipeline {
    pub fn new(
        mechanism: Mechanism,
        idle: Duration,
        config: Config,
        identity: SharedStore,
        sinks: Sinks,
        processes: Option<Attribution>,
        edges: Edges,
    ) -> Self {
        let dns_series = NamespaceSeries::new(sinks.metrics.grace());
        Self {
            table: ConnTable::new(mechanism != Mechanism::None),
            harvest: Harvest::default(),
            classes: SharedClasses::default(),
            classified_at: None,
            nat: NatTable::new(),
            idle,
            config,
            identity,
            sinks,
            processes,
            undecided: Default::default(),
            edges,
            dns: DnsTracker::new(NamesLimits::default()),
            dns_series,
            unplaced: NewFlows::default(),
        }
    }

    pub fn on_nat(&mut self, ev: NatEvent, shared: &Shared) {
        let now = monotonic_ns();
        match ev {
            NatEvent::New(e) => self.nat.insert(e),
            NatEvent::Mapped(e) => self.nat.insert_external(e),
            NatEvent::Unmapped(e) => self.nat.destroy(&e.orig, now),
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

    pub fn harvest(
        &mut self,
        harvester: &mut Harvester,
        interfaces: &impl Interfaces,
        shared: &Shared,
    ) {
        let m = &shared.metrics;
        let timer = m.harvest_duration.start_timer();
        let mut harvest = std::mem::take(&mut self.harvest);
        // Known points add up while the cache is read; new flows wait for the whole read.
        let mut unknown = std::mem::take(&mut self.unplaced);
        let table = &mut self.table;
        match harvester.harvest_with(&mut harvest, |batch| table.apply_known(batch, &mut unknown)) {
            Ok(()) => {
                self.place(&harvest, &mut unknown, interfaces, shared);
                // Placing a burst takes a while, and the ring's thread queues records all
                // the while: fold them before settling, as between harvests.
                self.fold_evictions(harvester);
                self.settle_harvest(&harvest, interfaces, shared);
            }
            Err(e) => {
                m.harvest_errors.inc();
                warn!(error = %e, "harvest failed");
                // What was read before the failure is already accounted as read: its new
                // flows wait for the next harvest instead of being dropped.
                self.unplaced = unknown;
            }
        }
        self.harvest = harvest;
        timer.observe_duration();
    }

    /// Between harvests: eviction records add to the connections their flows already have,
    /// exactly as the next harvest would have added them first (nothing else changes the
    /// table between harvests, and a harvest applies records before it reads the cache);
    /// records of flows without a connection wait for that harvest, which places new
    /// flows together. Keeps a thrashing cache's records from piling up for a whole
    /// harvest interval.
    pub fn fold_evictions(&mut self, harvester: &mut Harvester) {
        let (table, unplaced) = (&mut self.table, &mut self.unplaced);
        harvester.fold_evictions(|batch| table.apply_known(batch, unplaced));
    }

    /// Everything a harvest does after reading the kernel, on deltas read in full: pure
    /// userspace, so it is benchmarked on its own (`agent/benches/harvest.rs`).
    pub fn ingest(&mut self, harvest: &Harvest, interfaces: &impl Interfaces, shared: &Shared) {
        let mut unknown = NewFlows::default();
        self.table.apply_known(&harvest.deltas, &mut unknown);
        self.place(harvest, &mut unknown, interfaces, shared);
        self.settle_harvest(harvest, interfaces, shared);
    }

    /// After the known points are applied: DNS names, then new flows placed and NAT
    /// joins.
    fn place(
        &mut self,
        harvest: &Harvest,
        unknown: &mut NewFlows,
        interfaces: &impl Interfaces,
        shared: &Shared,
    ) {
        // Before the flows: a connection opened right after its name was resolved is named
        // when it is first classified, in this same harvest.
        self.absorb_dns(harvest, interfaces, shared);
        self.table
            .place_unknown(unknown, &self.nat, |i| interfaces.role(i));
        let fresh = self.nat.take_fresh();
        self.table.join(&fresh, &self.nat);
    }

    /// After placing: settling, and what the sinks see.
    fn settle_harvest(&mut self, harvest: &Harvest, interfaces: &impl Interfaces, shared: &Shared) {
        let m = &shared.metrics;
        let now = monotonic_ns();
        m.flow_map_entries.set(harvest.occupied as i64);
        m.observe_kernel(harvest.counters);
        let idle_ns = u64::try_from(self.idle.as_nanos()).unwrap_or(u64::MAX);
        // Keep mappings of closed connections as long as their counters may still be shown.
        self.nat.gc(now, idle_ns.saturating_mul(2));
        let name = |i: u32| interfaces.name(i).cloned();
        let settled = self.table.settle(now, idle_ns, name);
        let stats = settled.stats;
        self.report(settled, false, shared);
        m.tracked_flows.set(stats.points as i64);
        m.nat_entries.set(self.nat.len() as i64);
        m.nat_unjoined.set(stats.unjoined as i64);
        m.held_connections.set(stats.held as i64);
        m.connections.set(stats.reported as i64);
        if shared.records_wanted() {
            self.publish(interfaces, shared);
        }
        self.save_edges(false, shared);
    }

    fn save_edges(&mut self, force: bool, shared: &Shared) {
        if let Err(e) = self.edges.save(Instant::now(), force) {
            shared.metrics.harvest_errors.inc();
            warn!(error = %e, "edges not saved");
        }
    }

    /// `/flows` and `/observations` snapshots: records are rebuilt only for connections
    /// that changed since they were last built.
    fn publish(&mut self, interfaces: &impl Interfaces, shared: &Shared) {
        let clock = WallClock::now();
        let mut views = Vec::new();
        for t in self.table.reported_mut() {
            let (Some(class), None) = (&t.extra.class, &t.extra.view) else {
                views.extend(t.extra.view.clone());
                continue;
            };
            let mut v = ConnectionView::new(
                t.id,
                &t.conn,
                t.sightings().iter(),
                Classification::clone(class),
                &clock,
            );
            v.process = t.extra.process.as_deref().cloned();
            v.outcome = t.extra.outcome;
            v.new_edge = t.extra.new_edge;
            v.dst_fqdn = t.extra.dst_fqdn.clone();
            let v = Arc::new(v);
            t.extra.view = Some(v.clone());
            views.push(v);
        }
        let iface = |i: u32| interfaces.name(i).map(|n| &**n).zip(interfaces.role(i));
        let observations = self
            .table
            .all()
            .flat_map(|t| t.observations())
            .map(|(k, e)| FlowView::new(k, e, iface(k.ifindex), &clock))
            .collect();
        shared.publish(views, observations);
    }

    /// Classify what started or changed, then hand every event to the sinks and forget
    /// what ended. `stopping`: final events are shutdowns, not ends.
    fn report(&mut self, settled: Settled, stopping: bool, shared: &Shared) {
        let m = &shared.metrics;
        let identity = self.identity.clone();
        let store = identity.read();
        self.classify_touched(&settled, &store);
        let decided = self.decide_outcomes(&settled, stopping);
        for reason in &settled.misses {
            m.nat_join_misses
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        self.emit_due(&settled, &decided, stopping, &store, shared);
        for id in &settled.ending {
            self.undecided.remove(id);
        }
        let gone = self.table.remove_ended(&settled.ending);
        if let Some(a) = &mut self.processes {
            a.forget(&gone);
        }
    }

    /// (Re)classify the connections this harvest touched, and those whose addresses'
    /// owners changed in the inventory; attach processes to new ones.
    fn classify_touched(&mut self, settled: &Settled, store: &Store) {
        let version = store.version();
        let procs = match &mut self.processes {
            Some(a) if !settled.started.is_empty() => a.read(store),
            _ => Default::default(),
        };
        let mut touched: Vec<ConnId> = settled
            .started
            .iter()
            .chain(&settled.updated)
            .chain(&settled.ending)
            .copied()
            .collect();
        // The inventory changed: open connections with an address whose owner changed
        // get classified again (all of them when that is not known).
        let mut revisit: FastSet<ConnId> = FastSet::default();
        if self.classified_at != Some(version) {
            let changed = self.classified_at.and_then(|v| store.touched_since(v));
            revisit.extend(
                self.table
                    .reported()
                    .filter(|t| match &changed {
                        Some(ips) => classify::addresses(&t.conn).any(|ip| ips.contains(&ip)),
                        None => true,
                    })
                    .map(|t| t.id),
            );
            touched.extend(revisit.iter().copied());
            self.classified_at = Some(version);
        }
        touched.sort_unstable();
        touched.dedup();
        let now = Instant::now();
        for (i, &id) in touched.iter().enumerate() {
            self.table.warm_ahead(&touched, i);
            let Some(t) = self.table.get_mut(id) else {
                continue;
            };
            if t.extra.class.is_none() {
                t.extra.dst_fqdn = t
                    .initiator_pod_ifindex()
                    .and_then(|pod| self.dns.name_of(pod, t.conn.tuple.dst, now));
            }
            if t.extra.class.is_none() || t.nat_changed || revisit.contains(&id) {
                let name = t.extra.dst_fqdn.as_deref();
                let k = classify::classify_named(&self.config, store, &t.conn, name);
                t.extra.reclassified |= t.extra.class.as_deref() != Some(&k);
                t.extra.class = Some(self.classes.share(k));
                t.nat_changed = false;
            }
            if t.extra.process.is_none() && !procs.is_empty() {
                let tu = &t.conn.tuple;
                t.extra.process = procs
                    .get(tu)
                    .or_else(|| tu.reversed().and_then(|r| procs.get(&r)))
                    .map(|p| Box::new(p.clone()));
            }
            t.extra.view = None;
        }
    }

    /// How many names the DNS tracker keeps and for how long past their TTL.
    pub fn set_dns_limits(&mut self, limits: NamesLimits) {
        self.dns = DnsTracker::new(limits);
    }

    /// Take the harvest's DNS messages into the per-pod names, and publish what they were.
    fn absorb_dns(&mut self, harvest: &Harvest, interfaces: &impl Interfaces, shared: &Shared) {
        let now = Instant::now();
        self.dns.expire(now);
        let config = &self.config;
        let signals = self.dns.absorb(
            &harvest.dns,
            |i| interfaces.role(i),
            |ip| config.approved_resolver(ip),
            now,
        );
        let m = &shared.metrics;
        m.observe_dns(self.dns.counts, self.dns.names());
        let wall = Instant::now();
        if signals.nxdomain.is_empty()
            && signals.unapproved.is_empty()
            && !self.dns_series.due(wall)
        {
            return;
        }
        let store = self.identity.read();
        let labels = |pod| {
            let id = classify::endpoint::resolve(config, &store, pod);
            let ns = id.namespace.unwrap_or_default();
            (ns, id.tenant.unwrap_or_default())
        };
        for nx in &signals.nxdomain {
            let (ns, tenant) = labels(nx.pod);
            self.dns_series.inc(&m.dns_nxdomain, &ns, &tenant);
        }
        for (pod, _resolver) in &signals.unapproved {
            let (ns, tenant) = labels(*pod);
            self.dns_series.inc(&m.dns_unapproved, &ns, &tenant);
        }
        if self.dns_series.due(wall) {
            self.dns_series
                .gc(&store, wall, &[&m.dns_nxdomain, &m.dns_unapproved]);
        }
    }

    /// Every connection with an event this harvest, with its kind and the counts and
    /// reclassification it carries (taken from the connection: each is handed out once),
    /// handed to the sinks [`EMIT_CHUNK`] at a time as they are taken: at node scale every
    /// connection has an event each harvest, and all of them at once were 6 MiB of the
    /// harvest's peak.
    fn emit_due(
        &mut self,
        settled: &Settled,
        decided: &FastSet<ConnId>,
        stopping: bool,
        store: &Store,
        shared: &Shared,
    ) {
        let last = if stopping {
            EventKind::Shutdown
        } else {
            EventKind::End
        };
        // An attempt decided without new packets (given up on) still gets an event.
        let late = late_decided(settled, decided);
        let total = settled.started.len() + settled.updated.len() + settled.ending.len();
        let mut due: Vec<Due> = Vec::with_capacity((total + late.len()).min(EMIT_CHUNK));
        for (ids, kind) in [
            (&settled.started, EventKind::Start),
            (&settled.updated, EventKind::Update),
            (&settled.ending, last),
            (&late, EventKind::Update),
        ] {
            for (i, &id) in ids.iter().enumerate() {
                self.table.warm_ahead(ids, i);
                // The event takes the connection's unreported counts and its reclassified
                // flag (cleared here: the event carries it).
                let (delta, reclassified) =
                    self.table.get_mut(id).map_or_else(Default::default, |t| {
                        (t.take_delta(), std::mem::take(&mut t.extra.reclassified))
                    });
                due.push((id, kind, delta, reclassified));
                if due.len() == EMIT_CHUNK {
                    self.emit(&due, decided, store, shared);
                    due.clear();
                }
            }
        }
        if !due.is_empty() {
            self.emit(&due, decided, store, shared);
        }
    }

    /// One chunk of events, as the sinks read them: metrics, NAT mappings, fan-out, the
    /// flow log.
    fn emit(&mut self, due: &[Due], decided: &FastSet<ConnId>, store: &Store, shared: &Shared) {
        let m = &shared.metrics;
        let wall = Instant::now();
        let clock = WallClock::now();
        let events: Vec<ConnEvent> = due
            .iter()
            .enumerate()
            .filter_map(|(i, &(id, kind, delta, reclassified))| {
                if let Some(ahead) = due.get(i + WARM_AHEAD) {
                    self.table.warm(ahead.0);
                }
                let t = self.table.get(id)?;
                Some(ConnEvent {
                    kind,
                    id,
                    conn: &t.conn,
                    sightings: t.sightings(),
                    class: t.extra.class.as_ref()?,
                    process: t.extra.process.as_deref(),
                    reclassified,
                    delta,
                    outcome: t.extra.outcome,
                    decided: decided.contains(&id),
                    new_edge: t.extra.new_edge,
                    dst_fqdn: t.extra.dst_fqdn.as_ref(),
                })
            })
            .collect();
        self.sinks.metrics.observe(&events, store, wall);
        self.sinks.nat_mappings.observe(&events);
        self.sinks.fanout.observe(&events, wall);
        if let Some(otlp) = &mut self.sinks.otlp {
            otlp.observe(&events, wall, &clock);
        }
        if let Some(log) = &mut self.sinks.log {
            match log.observe(&events, wall, &clock) {
                Ok(n) => m.flow_log_records.inc_by(n),
                Err(e) => {
                    m.flow_log_errors.inc();
                    warn!(error = %e, "flow log write failed");
                }
            }
        }
    }

    /// Outcomes of what started, changed or ended, and of attempts still waiting for an
    /// answer. Returns the connections whose outcome became known now.
    fn decide_outcomes(&mut self, settled: &Settled, stopping: bool) -> FastSet<ConnId> {
        let now = monotonic_ns();
        self.undecided.extend(settled.started.iter().copied());
        let ending: FastSet<ConnId> = settled.ending.iter().copied().collect();
        let mut ids: Vec<ConnId> = self.undecided.iter().copied().collect();
        ids.extend(settled.updated.iter().chain(&settled.ending).copied());
        ids.sort_unstable();
        ids.dedup();
        let mut decided = FastSet::default();
        for (i, &id) in ids.iter().enumerate() {
            self.table.warm_ahead(&ids, i);
            let Some(t) = self.table.get_mut(id) else {
                self.undecided.remove(&id);
                continue;
            };
            let c = &t.conn;
            let now_known = decide_outcome(Seen {
                proto: c.tuple.proto,
                dport: c.tuple.dport,
                fwd_flags: c.fwd_flags,
                rep_flags: c.rep_flags,
                rep_icmp_error: c.rep_icmp_error,
                fwd_packets: c.forward.packets,
                rep_packets: c.reply.packets,
                age_ns: now.saturating_sub(c.first_seen_ns),
                ended: stopping || ending.contains(&id),
            });
            // Decided once; the one later change is an established connection's abort.
            let change = match (t.extra.outcome, now_known) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(Outcome::Established), Some(Outcome::Reset)) => true,
                _ => false,
            };
            if change {
                if t.extra.outcome.is_none() {
                    decided.insert(id);
                    let answered = matches!(
                        now_known,
                        Some(Outcome::Established | Outcome::Reset | Outcome::Replied)
                    );
                    if let (true, Some(k)) = (answered, &t.extra.class) {
                        t.extra.new_edge = self.edges.walk(k, &t.conn.tuple);
                    }
                }
                t.extra.outcome = now_known;
                t.extra.view = None;
            }
            if t.extra.outcome.is_some() {
                self.undecided.remove(&id);
            }
        }
        decided
    }

    /// Stopping: everything open is reported and gets its final record.
    pub fn shutdown(&mut self, interfaces: &impl Interfaces, shared: &Shared) {
        let name = |i: u32| interfaces.name(i).cloned();
        let settled = self.table.drain(name);
        self.report(settled, true, shared);
        self.save_edges(true, shared);
    }
}

/// Connections whose outcome became known this harvest without an event of their own
/// (no new packets, no start or end), in id order.
fn late_decided(settled: &Settled, decided: &FastSet<ConnId>) -> Vec<ConnId> {
    if decided.is_empty() {
        return Vec::new();
    }
    let has_event: FastSet<ConnId> = settled
        .started
        .iter()
        .chain(&settled.updated)
        .chain(&settled.ending)
        .filter(|id| decided.contains(id))
        .copied()
        .collect();
    let mut late: Vec<ConnId> = decided.difference(&has_event).copied().collect();
    late.sort_unstable();
    late
}

/// The pod label keys classification reads: those of the egress-gateway selectors.
pub fn gateway_label_keys(config: &Config) -> std::collections::BTreeSet<String> {
    config
        .gateways
        .iter()
        .flat_map(|g| g.labels.keys().cloned())
        .collect()
}
