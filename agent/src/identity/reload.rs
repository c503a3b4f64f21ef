//! Re-reads the snapshot file when it changes, so an updated export (or a deleted
//! namespace) reaches the agent without a restart.
//!
//! All of it happens on its own thread: parsing and indexing 200,000 pods takes seconds,
//! and the harvest must never wait for it. The agent swaps the finished store in at once.
//! A file is read only once it has stopped changing (same size, mtime and inode over one
//! poll), and read again if it changed while being read, so a rewrite caught half-written
//! is never taken for the whole inventory. A bad new file keeps the last good one.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

use super::{snapshot, IdentityError, Store};

/// What the reloader hands the agent.
pub enum Reloaded {
    /// The new file, parsed and indexed.
    Store(Box<Store>),
    /// The file changed but is not a valid snapshot.
    Invalid(IdentityError),
}

/// Identity of one version of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Watch `path` every `poll` from a thread of its own. Call right after the first load,
/// so the version loaded is the baseline. The thread ends when `tx` is closed.
pub fn spawn(path: PathBuf, poll: Duration, tx: UnboundedSender<Reloaded>) {
    let mut loaded = stamp(&path);
    std::thread::Builder::new()
        .name("snapshot-reload".into())
        .spawn(move || {
            let mut pending: Option<Stamp> = None;
            loop {
                std::thread::sleep(poll);
                if tx.is_closed() {
                    return;
                }
                let now = stamp(&path);
                if now.is_none() || now == loaded {
                    pending = None;
                    continue;
                }
                // Changed: wait until it holds still for one poll before reading.
                if pending != now {
                    debug!(file = %path.display(), "snapshot changed; waiting for it to settle");
                    pending = now;
                    continue;
                }
                let result = snapshot::load(&path);
                if stamp(&path) != now {
                    // Rewritten while we read it: start over.
                    pending = None;
                    continue;
                }
                loaded = now;
                pending = None;
                let msg = match result {
                    Ok(objects) => Reloaded::Store(Box::new(Store::from_objects(objects))),
                    Err(e) => Reloaded::Invalid(e),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        })
        .expect("spawning the snapshot reload thread");
}
