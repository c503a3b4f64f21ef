//! What happens at each harvest: kernel counters → observation table → connections (NAT
//! joined) → published snapshots and metrics. Owns all userspace flow state.

use std::time::Duration;

use tracing::warn;

use crate::{
    classify,
    config::Config,
    datapath::{Attachments, Harvester},
    export::Shared,
    flow::{self, monotonic_ns, ConnectionView, FlowTable, FlowView, Observation, WallClock},
    identity::Store,
    nat::{JoinTracker, Mechanism, NatEvent, NatTable},
};

pub struct Pipeline {
    table: FlowTable,
    nat: NatTable,
    joins: JoinTracker,
    mechanism: Mechanism,
    idle: Duration,
    config: Config,
    identity: Store,
}

impl Pipeline {
    pub fn new(mechanism: Mechanism, idle: Duration, config: Config, identity: Store) -> Self {
        Self {
            config,
            identity,
            table: FlowTable::new(),
            nat: NatTable::new(),
            joins: JoinTracker::default(),
            mechanism,
            idle,
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

    pub fn harvest(
        &mut self,
        harvester: &mut Harvester,
        attachments: &Attachments,
        shared: &Shared,
    ) {
        let m = &shared.metrics;
        let timer = m.harvest_duration.start_timer();
        let now = monotonic_ns();
        let harvest = match harvester.harvest(now) {
            Ok(h) => h,
            Err(e) => {
                m.harvest_errors.inc();
                warn!(error = %e, "harvest failed");
                return;
            }
        };
        m.flow_map_entries.set(harvest.flows.len() as i64);
        m.observe_kernel(harvest.counters);
        let idle_ns = self.idle.as_nanos() as u64;
        self.table.apply(&harvest.flows, &harvest.removed);
        self.table.expire(now, idle_ns);
        // Keep mappings of closed connections as long as their counters may still be shown.
        self.nat.gc(now, 2 * idle_ns);
        m.tracked_flows.set(self.table.len() as i64);
        m.nat_entries.set(self.nat.len() as i64);

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
        let clock = WallClock::now();
        let views = conns
            .iter()
            .map(|c| {
                let class = classify::classify(&self.config, &self.identity, c);
                ConnectionView::new(c, class, &clock)
            })
            .collect();
        let observations = self
            .table
            .iter()
            .map(|(k, e)| FlowView::new(k, e, iface(k.ifindex), &clock))
            .collect();
        shared.publish(views, observations);
        timer.observe_duration();
    }
}
