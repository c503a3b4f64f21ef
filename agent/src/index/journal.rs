//! The index's record of what changed: every change to its inventory gets the next
//! version and is kept in a bounded ring (so a follower that reconnects after a blip
//! resumes from its version) and broadcast to the followers connected now. A full
//! snapshot is encoded once and shared by every follower that needs one, until the ring
//! no longer covers the changes since it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{broadcast, watch};

use super::protocol::{Frame, Position};
use crate::identity::{Change, SharedStore, Store};
use crate::metric::register;

/// One versioned change, encoded once for every follower.
#[derive(Clone, Debug)]
pub struct Delta {
    pub v: u64,
    pub line: Bytes,
}

/// The whole inventory at one version, as the frames a follower reads.
pub struct Snapshot {
    pub version: u64,
    pub body: Bytes,
}

/// What a follower is sent before the live deltas.
pub enum Start {
    /// Only the deltas after its position.
    Resume(Vec<Delta>),
    /// A full resync: the snapshot, then the deltas after it.
    Resync(Arc<Snapshot>, Vec<Delta>),
}

#[derive(Clone)]
pub struct JournalMetrics {
    pub followers: IntGauge,
    pub version: IntGauge,
    /// Bytes sent, by `part` (snapshot, delta, heartbeat).
    pub bytes: IntCounterVec,
    /// Frames sent, by `part`.
    pub frames: IntCounterVec,
    /// Streams started, by `start` (resume, resync).
    pub starts: IntCounterVec,
}

impl JournalMetrics {
    /// `frames` frames of `bytes` bytes sent as `part` of a stream.
    pub fn sent(&self, part: &str, frames: u64, bytes: usize) {
        self.frames.with_label_values(&[part]).inc_by(frames);
        self.bytes.with_label_values(&[part]).inc_by(bytes as u64);
    }

    pub fn new(r: &Registry) -> prometheus::Result<Self> {
        let followers = register(
            r,
            IntGauge::new(
                "tenantflow_index_followers",
                "Agents following the index now.",
            ),
        )?;
        let version = register(
            r,
            IntGauge::new(
                "tenantflow_index_version",
                "Version of the index's inventory (one per change).",
            ),
        )?;
        let bytes = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "tenantflow_index_sent_bytes_total",
                    "Bytes sent to followers, by part of the stream.",
                ),
                &["part"],
            ),
        )?;
        let frames = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "tenantflow_index_sent_frames_total",
                    "Frames sent to followers, by part of the stream.",
                ),
                &["part"],
            ),
        )?;
        let starts = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "tenantflow_index_streams_total",
                    "Follower streams started: `resume` (deltas only) or `resync` (snapshot).",
                ),
                &["start"],
            ),
        )?;
        Ok(Self {
            followers,
            version,
            bytes,
            frames,
            starts,
        })
    }
}

struct Inner {
    version: u64,
    ring: VecDeque<Delta>,
    ring_bytes: usize,
    snapshot: Option<Arc<Snapshot>>,
}

pub struct Journal {
    /// This process's life: versions of another epoch mean nothing here.
    pub epoch: u64,
    store: SharedStore,
    inner: Mutex<Inner>,
    live: broadcast::Sender<Delta>,
    /// The index's own inventory is not current (a watch down or relisting).
    stale: watch::Sender<bool>,
    ring_limit: usize,
    pub metrics: JournalMetrics,
}

/// Deltas waiting for a slow follower before it is cut off (it reconnects and resumes
/// from the ring).
const LIVE: usize = 16_384;

impl Journal {
    /// Keep at most `ring_limit` bytes of deltas for resuming followers.
    pub fn new(store: SharedStore, ring_limit: usize, metrics: JournalMetrics) -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Self {
            epoch,
            store,
            inner: Mutex::new(Inner {
                version: 0,
                ring: VecDeque::new(),
                ring_bytes: 0,
                snapshot: None,
            }),
            live: broadcast::channel(LIVE).0,
            stale: watch::Sender::new(true),
            ring_limit,
            metrics,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Version and pass on the changes the store recorded. Called with the store's write
    /// lock held, so versions follow the order the store applied them in.
    pub fn publish(&self, store: &mut Store) {
        let changes = store.take_journal();
        if changes.is_empty() {
            return;
        }
        let mut inner = self.inner();
        for c in changes {
            let v = inner.version + 1;
            let frame = match c {
                Change::Apply(object) => Frame::Apply { v, object },
                Change::Delete(object) => Frame::Delete { v, object },
                // The store journals only these two.
                _ => continue,
            };
            inner.version = v;
            let d = Delta {
                v,
                line: Bytes::from(frame.encode()),
            };
            inner.ring_bytes += d.line.len();
            inner.ring.push_back(d.clone());
            while inner.ring_bytes > self.ring_limit {
                match inner.ring.pop_front() {
                    Some(old) => inner.ring_bytes -= old.line.len(),
                    None => break,
                }
            }
            // No follower connected is not an error.
            let _ = self.live.send(d);
        }
        self.metrics.version.set(inner.version as i64);
    }

    /// Tell followers whether the index's inventory is current.
    pub fn set_stale(&self, stale: bool) {
        self.stale
            .send_if_modified(|s| std::mem::replace(s, stale) != stale);
    }

    /// The index's staleness now and as it changes.
    pub fn staleness(&self) -> watch::Receiver<bool> {
        self.stale.subscribe()
    }

    /// Where a follower at `at` starts, and its subscription to what comes after. Taken
    /// under the store's read lock, so no change can fall between the two.
    pub fn start(&self, at: Position) -> (Start, broadcast::Receiver<Delta>) {
        let store = self.store.read();
        let rx = self.live.subscribe();
        let mut inner = self.inner();
        // The oldest version a follower may stand at and still be resumed.
        let oldest = inner.ring.front().map_or(inner.version, |d| d.v - 1);
        let after = |ring: &VecDeque<Delta>, v: u64| -> Vec<Delta> {
            ring.iter().filter(|d| d.v > v).cloned().collect()
        };
        if at.epoch == self.epoch && (oldest..=inner.version).contains(&at.after) {
            self.metrics.starts.with_label_values(&["resume"]).inc();
            return (Start::Resume(after(&inner.ring, at.after)), rx);
        }
        self.metrics.starts.with_label_values(&["resync"]).inc();
        let snapshot = match &inner.snapshot {
            Some(s) if s.version >= oldest => s.clone(),
            _ => {
                let s = Arc::new(encode_snapshot(&store, self.epoch, inner.version));
                inner.snapshot = Some(s.clone());
                s
            }
        };
        let rest = after(&inner.ring, snapshot.version);
        (Start::Resync(snapshot, rest), rx)
    }
}

/// Every object held, as the frames of a resync.
fn encode_snapshot(store: &Store, epoch: u64, version: u64) -> Snapshot {
    let mut body = Frame::Snapshot {
        epoch,
        version,
        objects: store.len() as u64,
        labels: store.kept_pod_labels().map(|k| k.iter().cloned().collect()),
    }
    .encode();
    for o in store.objects() {
        body.extend(
            Frame::Apply {
                v: version,
                object: o.clone(),
            }
            .encode(),
        );
    }
    Snapshot {
        version,
        body: Bytes::from(body),
    }
}
