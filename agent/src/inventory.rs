//! The identity task: the one writer of the identity store, running beside the harvest
//! instead of inside it. A relist of 200k pods or a burst of pod churn is applied here in
//! short write-locked batches; the harvest takes a read lock once per harvest and so sees
//! a consistent inventory, waiting at most one batch, never for a whole relist.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::mpsc::{Receiver, UnboundedReceiver};
use tracing::{debug, info, warn};

use crate::{
    config::Tenancy,
    export::Shared,
    identity::{
        health::{Health, Transition},
        reload::Reloaded,
        tenant,
        watch::{Source, WatchEvent},
        Kind, SharedStore, Store,
    },
    index::journal::Journal,
};

/// Changes applied under one write lock: small enough that a harvest waiting for the
/// lock waits well under a millisecond.
const BATCH: usize = 256;

/// Past this many pods, an agent in direct mode says index mode is the better fit
/// (docs/scale.md, "When to switch").
const DIRECT_MODE_PODS: usize = 30_000;

/// How many watch events may wait for the identity task before the watchers are made
/// to wait (backpressure on the API stream; nothing is dropped).
pub const QUEUE: usize = 8192;

/// What the identity task needs to know besides the changes themselves.
pub struct Inventory {
    pub store: SharedStore,
    /// `kubernetes`, `index`, `snapshot` or `none`: the `source` label of the object counts.
    pub source: &'static str,
    pub tenancy: Tenancy,
    /// Pod label keys classification reads (those of egress-gateway selectors).
    pub pod_label_keys: BTreeSet<String>,
    /// Index mode: every change is versioned and passed on to followers.
    pub journal: Option<Arc<Journal>>,
    /// The inputs that must all be listed and healthy for the inventory to be current
    /// (none for a snapshot file or no source: complete when loaded).
    pub sources: Vec<Source>,
}

impl Inventory {
    /// Apply changes until both inputs close. Readiness and identity metrics are
    /// published here; object counts at most once a second.
    pub async fn run(
        self,
        mut watch: Receiver<WatchEvent>,
        mut reload: UnboundedReceiver<Reloaded>,
        shared: Arc<Shared>,
    ) {
        let m = &shared.metrics;
        m.identity_queue_capacity.set(QUEUE as i64);
        self.store
            .write()
            .keep_pod_labels(self.pod_label_keys.clone());
        let mut health = Health::new(self.sources.clone());
        self.publish(&shared);
        self.judge(&health, &shared);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = false;
        let (mut watching, mut reloading) = (true, true);
        while watching || reloading {
            tokio::select! {
                ev = watch.recv(), if watching => {
                    let Some(ev) = ev else {
                        watching = false;
                        continue;
                    };
                    let mut batch = vec![ev];
                    while batch.len() < BATCH {
                        match watch.try_recv() {
                            Ok(ev) => batch.push(ev),
                            Err(_) => break,
                        }
                    }
                    m.identity_queue.set(watch.len() as i64);
                    let was_ready = health.ready();
                    self.apply(batch, &shared, &mut health);
                    dirty = true;
                    if health.ready() && !was_ready {
                        self.publish(&shared);
                        dirty = false;
                    }
                    self.judge(&health, &shared);
                    // Let the harvest (and everything else) in between batches.
                    tokio::task::yield_now().await;
                }
                r = reload.recv(), if reloading => match r {
                    Some(r) => self.reloaded(r, &shared),
                    None => reloading = false,
                },
                _ = tick.tick() => {
                    if std::mem::take(&mut dirty) {
                        self.publish(&shared);
                    }
                    self.judge(&health, &shared);
                }
            }
        }
    }

    /// Readiness, staleness and the last-sync time from the sources' health. The sync time
    /// moves only while every source is current (with no source, at each load instead).
    fn judge(&self, health: &Health, shared: &Shared) {
        let m = &shared.metrics;
        let stale = health.stale();
        for &s in health.sources() {
            m.identity_source_current
                .with_label_values(&[s.label()])
                .set(health.is_current(s) as i64);
        }
        m.metadata_stale.set(stale as i64);
        // A snapshot (no source to wait for) is current with its file, which is watched.
        if !stale {
            m.metadata_last_sync.set(crate::net::unix_seconds() as i64);
        }
        shared.set_ready(health.ready());
        if let Some(j) = &self.journal {
            j.set_stale(stale);
        }
    }

    /// One batch of watch events under one write lock.
    fn apply(&self, batch: Vec<WatchEvent>, shared: &Shared, health: &mut Health) {
        let m = &shared.metrics;
        let mut store = self.store.write();
        for ev in batch {
            match ev {
                WatchEvent::Change(c) => store.apply(c),
                WatchEvent::Relisting(s, why) => {
                    m.identity_relists
                        .with_label_values(&[s.label(), why.label()])
                        .inc();
                    if health.relisting(s) == Transition::RelistStarted {
                        info!(
                            source = s.label(),
                            reason = why.label(),
                            "identity: listing started"
                        );
                    }
                }
                WatchEvent::Synced(s) => {
                    m.identity_relists_completed
                        .with_label_values(&[s.label()])
                        .inc();
                    if let Transition::RelistCompleted(took) = health.synced(s) {
                        info!(source = s.label(), took = ?took, objects = store.len(), "identity: listing completed, source current");
                    }
                    self.advise_index_mode(s, &store);
                }
                WatchEvent::BadObject(e) => {
                    m.metadata_errors.inc();
                    warn!(error = %e, "identity: object skipped");
                }
                WatchEvent::Available(s) => {
                    if health.available(s) == Transition::Recovered {
                        info!(
                            source = s.label(),
                            "identity: source reachable again, nothing missed"
                        );
                    }
                }
                WatchEvent::Unavailable(s, e) => {
                    if health.unavailable(s) == Transition::Lost {
                        warn!(source = s.label(), error = %e, "identity: source unavailable, keeping the last-known inventory");
                    } else if !health.has_listed(s) {
                        // Never reached: often configuration (an address, a CA, RBAC), so
                        // every retry says why, not only the first.
                        warn!(source = s.label(), error = %e, "identity: source not reached yet");
                    } else {
                        debug!(source = s.label(), error = %e, "identity: still unavailable");
                    }
                }
            }
        }
        if let Some(j) = &self.journal {
            j.publish(&mut store);
        }
    }

    /// Direct mode is the small-cluster mode: past [`DIRECT_MODE_PODS`] an agent says so
    /// (every agent listing every pod is what loads the API server).
    fn advise_index_mode(&self, s: Source, store: &Store) {
        if s != Source::Api(Kind::Pod) || self.journal.is_some() {
            return;
        }
        let pods = store.counts().get(&Kind::Pod).copied().unwrap_or(0);
        if pods > DIRECT_MODE_PODS {
            warn!(
                pods,
                "identity: direct mode at this cluster size makes every agent list and watch every pod; \
                 enable index mode (chart: index.enabled=true, docs/scale.md)"
            );
        }
    }

    /// A changed snapshot, parsed and indexed on the reload thread: swapped in at once.
    fn reloaded(&self, r: Reloaded, shared: &Shared) {
        match r {
            Reloaded::Store(mut store) => {
                store.keep_pod_labels(self.pod_label_keys.clone());
                {
                    let mut held = self.store.write();
                    store.resume_after(held.version());
                    *held = *store;
                    info!(objects = held.len(), "identity snapshot reloaded");
                }
                release_freed_memory();
                self.publish(shared);
            }
            Reloaded::Invalid(e) => {
                shared.metrics.metadata_errors.inc();
                warn!(error = %e, "identity snapshot changed but is invalid: keeping the last good one");
            }
        }
    }

    /// Identity metrics and the tenant → namespaces map after a load or change.
    fn publish(&self, shared: &Shared) {
        let m = &shared.metrics;
        let store = self.store.read();
        let counts = store.counts();
        for kind in Kind::ALL {
            m.metadata_objects
                .with_label_values(&[&format!("{kind:?}").to_lowercase(), self.source])
                .set(counts.get(&kind).copied().unwrap_or(0) as i64);
        }
        let conflicts = store.ip_conflicts() as i64;
        if conflicts != m.metadata_ip_conflicts.get() && conflicts > 0 {
            warn!(
                addresses = conflicts,
                "identity: addresses claimed by more than one object (the newest claim owns each; brief during pod IP reuse, lasting in a bad snapshot)"
            );
        }
        m.metadata_ip_conflicts.set(conflicts);
        let mut by_tenant: BTreeMap<String, Vec<String>> = Default::default();
        for name in store.namespace_names() {
            let t = tenant::resolve(&self.tenancy, name, store.namespace(name));
            by_tenant.entry(t).or_default().push(name.to_owned());
        }
        drop(store);
        shared.set_tenant_namespaces(by_tenant);
    }
}

/// Give the memory a swapped-out snapshot (and its parse, on the reload thread) held back
/// to the system: glibc keeps freed heap in its arenas otherwise, and a swap from a large
/// snapshot to a small one would leave the large one's footprint.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
