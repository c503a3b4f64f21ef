//! Fan-out: per source workload, how many distinct destinations (address, port, protocol)
//! it opened connections to within a sliding window. A scan, or a compromised pod probing
//! its way around, shows as a jump here long before anything succeeds.
//!
//! The window is [`SLOTS`] slots of window/[`SLOTS`] each; a source keeps one
//! [`Distinct`] per slot and the estimate is their union, so memory per source is at most
//! `SLOTS × distinct::MAX_BYTES` (6 KiB) however many destinations it reaches. At most
//! `max_sources` sources are tracked; a new one past that replaces the one idle longest
//! (counted). Exported at namespace level (the busiest workload of each namespace, so one
//! scanning workload is not diluted), per workload when workload labels are on.

use std::{
    collections::HashMap,
    hash::BuildHasher as _,
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use super::{
    distinct::{fingerprint, Distinct, MAX_BYTES},
    principal,
};
use crate::metric::register;
use crate::{
    classify::{Classification, EndpointKind},
    event::{ConnEvent, EventKind},
    net::FlowTuple,
};

/// Slots per window.
pub const SLOTS: usize = 6;
/// The most one source's state can take, payload bytes.
pub const MAX_BYTES_PER_SOURCE: usize = SLOTS * MAX_BYTES;

#[derive(Clone, Debug)]
pub struct FanoutConfig {
    pub window: Duration,
    pub max_sources: usize,
    pub workload_labels: bool,
}

/// A source: the initiating workload (pods) or node (host processes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Source {
    namespace: String,
    tenant: String,
    workload: String,
}

struct Window {
    slots: [Distinct; SLOTS],
    /// Index of the slot that started at `slot_start`.
    current: usize,
    slot_start: Instant,
    last_seen: Instant,
    /// The union's estimate, until a slot changes: most sources are quiet in most
    /// harvests, and merging six sketches per source every second would be wasted.
    estimate: Option<u64>,
}

pub struct Fanout {
    cfg: FanoutConfig,
    sources: HashMap<Source, Window>,
    gauge: IntGaugeVec,
    state_bytes: IntGauge,
    tracked: IntGauge,
    replaced: IntCounter,
    /// Label sets currently exported, to remove those whose sources went idle.
    exported: HashMap<Vec<String>, i64>,
}

fn slot_len(window: Duration) -> Duration {
    (window / SLOTS as u32).max(Duration::from_millis(1))
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            slots: Default::default(),
            current: 0,
            slot_start: now,
            last_seen: now,
            estimate: None,
        }
    }

    /// Count a destination in the current slot.
    fn insert(&mut self, fp: u32) {
        self.slots[self.current].insert(fp);
        self.estimate = None;
    }

    /// Move the window to `now`, clearing slots that fell out of it.
    fn advance(&mut self, now: Instant, slot: Duration) {
        let mut steps = 0;
        while now.duration_since(self.slot_start) >= slot && steps < SLOTS {
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current] = Distinct::default();
            self.slot_start += slot;
            steps += 1;
        }
        if steps > 0 {
            self.estimate = None;
        }
        if now.duration_since(self.slot_start) >= slot {
            // Idle longer than the window: everything above was cleared.
            self.slot_start = now;
        }
    }

    fn estimate(&mut self) -> u64 {
        *self.estimate.get_or_insert_with(|| {
            let mut u = Distinct::default();
            for s in &self.slots {
                u.merge(s);
            }
            u.estimate()
        })
    }

    fn bytes(&self) -> usize {
        self.slots.iter().map(Distinct::bytes).sum()
    }
}

/// Stable within the process: fan-out state is not persisted.
fn destination(t: &FlowTuple) -> u32 {
    fingerprint(
        foldhash::quality::FixedState::with_seed(0x7466_616e).hash_one((t.dst, t.dport, t.proto)),
    )
}

fn source_of(k: &Classification) -> Option<Source> {
    let s = &k.src_identity;
    matches!(s.kind, EndpointKind::Pod | EndpointKind::Node).then(|| Source {
        namespace: s.namespace.as_deref().unwrap_or_default().to_owned(),
        tenant: s.tenant.as_deref().unwrap_or_default().to_owned(),
        workload: principal(s),
    })
}

impl Fanout {
    pub fn new(r: &Registry, cfg: FanoutConfig) -> prometheus::Result<Self> {
        let mut labels = vec!["src_namespace", "src_tenant"];
        if cfg.workload_labels {
            labels.push("src_workload");
        }
        let gauge = register(r, IntGaugeVec::new(
            Opts::new(
                "tenantflow_fanout_destinations",
                "Distinct destinations (address, port, protocol) the busiest source workload of a namespace opened connections to within --fanout-window (exact up to 256, else within about 3% at one standard error).",
            ),
            &labels,
        ))?;
        let state_bytes = register(
            r,
            IntGauge::new(
                "tenantflow_fanout_state_bytes",
                "Bytes of fan-out sketches held (at most 6 KiB per source).",
            ),
        )?;
        let tracked = register(
            r,
            IntGauge::new(
                "tenantflow_fanout_sources",
                "Source workloads whose fan-out is tracked (at most --fanout-max-sources).",
            ),
        )?;
        let replaced = register(r, IntCounter::new(
            "tenantflow_fanout_sources_replaced_total",
            "Sources dropped for a new one because --fanout-max-sources was reached (their counts restart).",
        ))?;
        Ok(Self {
            cfg,
            sources: HashMap::new(),
            gauge,
            state_bytes,
            tracked,
            replaced,
            exported: HashMap::new(),
        })
    }

    /// Count each new connection's destination for its source, then refresh the gauges.
    pub fn observe(&mut self, events: &[ConnEvent], now: Instant) {
        let slot = slot_len(self.cfg.window);
        for ev in events.iter().filter(|e| e.kind == EventKind::Start) {
            let Some(src) = source_of(ev.class) else {
                continue;
            };
            if !self.sources.contains_key(&src) && self.sources.len() >= self.cfg.max_sources {
                self.replace_idlest();
            }
            let w = self.sources.entry(src).or_insert_with(|| Window::new(now));
            w.advance(now, slot);
            w.insert(destination(&ev.conn.tuple));
            w.last_seen = now;
        }
        self.refresh(now, slot);
    }

    fn replace_idlest(&mut self) {
        if let Some(k) = self
            .sources
            .iter()
            .min_by_key(|(_, w)| w.last_seen)
            .map(|(k, _)| k.clone())
        {
            self.sources.remove(&k);
            self.replaced.inc();
        }
    }

    /// Estimates per exported label set; sources idle past the window are forgotten.
    fn refresh(&mut self, now: Instant, slot: Duration) {
        let window = self.cfg.window;
        self.sources
            .retain(|_, w| now.duration_since(w.last_seen) < window);
        let mut values: HashMap<Vec<String>, i64> = HashMap::new();
        let mut bytes = 0;
        for (s, w) in self.sources.iter_mut() {
            w.advance(now, slot);
            bytes += w.bytes();
            let mut l = vec![s.namespace.clone(), s.tenant.clone()];
            if self.cfg.workload_labels {
                l.push(s.workload.clone());
            }
            let e = w.estimate() as i64;
            let v = values.entry(l).or_default();
            *v = (*v).max(e);
        }
        for gone in self.exported.keys().filter(|l| !values.contains_key(*l)) {
            let l: Vec<&str> = gone.iter().map(String::as_str).collect();
            let _ = self.gauge.remove_label_values(&l);
        }
        for (l, v) in &values {
            let refs: Vec<&str> = l.iter().map(String::as_str).collect();
            self.gauge.with_label_values(&refs).set(*v);
        }
        self.exported = values;
        self.state_bytes.set(bytes as i64);
        self.tracked.set(self.sources.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_slots_as_it_slides() {
        let t0 = Instant::now();
        let slot = Duration::from_secs(10);
        let mut w = Window::new(t0);
        for i in 0..50u32 {
            w.insert(i.wrapping_mul(0x9E37_79B9));
        }
        w.advance(t0 + Duration::from_secs(25), slot);
        for i in 40..90u32 {
            w.insert(i.wrapping_mul(0x9E37_79B9));
        }
        assert_eq!(w.estimate(), 90, "both slots inside the window");
        w.advance(t0 + Duration::from_secs(65), slot);
        assert_eq!(w.estimate(), 50, "the first slot slid out");
        w.advance(t0 + Duration::from_secs(500), slot);
        assert_eq!(w.estimate(), 0);
        assert!(w.bytes() <= MAX_BYTES_PER_SOURCE);
    }

    #[test]
    fn one_source_stays_within_its_size_whatever_it_reaches() {
        let t0 = Instant::now();
        let slot = Duration::from_secs(10);
        let mut w = Window::new(t0);
        for i in 0..60_000u32 {
            // Spread over the whole window: every slot goes dense.
            w.advance(t0 + Duration::from_millis(i as u64), slot);
            let t = crate::net::test_tuple(crate::net::PROTO_UDP, "10.0.0.1", 1, "10.0.0.2", 1);
            let t = FlowTuple {
                dst: std::net::IpAddr::V4((0x0a00_0000 + i).into()),
                ..t
            };
            w.insert(destination(&t));
        }
        assert_eq!(w.bytes(), MAX_BYTES_PER_SOURCE);
        let e = w.estimate() as f64;
        assert!((e - 60_000.0).abs() / 60_000.0 < 0.1, "{e}");
    }
}
