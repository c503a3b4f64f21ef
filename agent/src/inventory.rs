//! The identity task: the one writer of the identity store, running beside the harvest
//! instead of inside it. A relist of 200k pods or a burst of pod churn is applied here in
//! short write-locked batches; the harvest takes a read lock once per harvest and so sees
//! a consistent inventory, waiting at most one batch, never for a whole relist.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use tokio::sync::mpsc::{Receiver, UnboundedReceiver};
use tracing::{info, warn};

use crate::{
    config::Tenancy,
    export::Shared,
    identity::{reload::Reloaded, tenant, watch::WatchEvent, Kind, Store},
    index::journal::Journal,
};

/// Changes applied under one write lock: small enough that a harvest waiting for the
/// lock waits well under a millisecond.
const BATCH: usize = 256;

/// How many watch events may wait for the identity task before the watchers are made
/// to wait (backpressure on the API stream; nothing is dropped).
pub const QUEUE: usize = 8192;

/// The identity store as the harvest reads it and the identity task writes it.
#[derive(Clone, Default)]
pub struct SharedStore(Arc<RwLock<Store>>);

impl SharedStore {
    pub fn new(store: Store) -> Self {
        Self(Arc::new(RwLock::new(store)))
    }

    /// A consistent view for one harvest. A panic elsewhere never poisons identity: the
    /// store is only ever changed by whole `apply` calls.
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

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
}

impl Inventory {
    /// Complete enough to serve: every kind listed at least once (a snapshot is complete
    /// when loaded, and having no source is complete by definition).
    fn ready(&self, synced: &BTreeSet<Kind>) -> bool {
        !matches!(self.source, "kubernetes" | "index")
            || Kind::ALL.iter().all(|k| synced.contains(k))
    }

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
        let mut synced = BTreeSet::new();
        self.publish(&shared);
        shared.set_ready(self.ready(&synced));
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
                    let newly_synced = self.apply(batch, &shared, &mut synced);
                    dirty = true;
                    if newly_synced {
                        self.publish(&shared);
                        dirty = false;
                        shared.set_ready(self.ready(&synced));
                    }
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
                }
            }
        }
    }

    /// One batch of watch events under one write lock. True when a kind became synced.
    fn apply(&self, batch: Vec<WatchEvent>, shared: &Shared, synced: &mut BTreeSet<Kind>) -> bool {
        let m = &shared.metrics;
        let mut newly = false;
        let mut store = self.store.write();
        for ev in batch {
            match ev {
                WatchEvent::Change(c) => {
                    store.apply(c);
                    m.metadata_stale.set(0);
                }
                WatchEvent::Synced(kind) => {
                    if synced.insert(kind) {
                        info!(?kind, "identity: initial list applied");
                    }
                    newly = true;
                }
                WatchEvent::BadObject(e) => {
                    m.metadata_errors.inc();
                    warn!(error = %e, "identity: object skipped");
                }
                WatchEvent::Available => m.metadata_stale.set(0),
                WatchEvent::Unavailable(e) => {
                    m.metadata_stale.set(1);
                    warn!(error = %e, "identity: source unavailable, keeping the last-known inventory");
                }
            }
        }
        if let Some(j) = &self.journal {
            j.publish(&mut store);
        }
        newly
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        m.metadata_last_sync.set(now.as_secs() as i64);
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
