//! Re-reads the snapshot file when it changes, so an updated export (or a deleted
//! namespace) reaches the agent without a restart. A bad new file keeps the last good one.

use std::{path::PathBuf, time::SystemTime};

use super::{snapshot, IdentityError, Object};

pub struct SnapshotFile {
    path: PathBuf,
    modified: Option<SystemTime>,
}

impl SnapshotFile {
    /// `loaded_at`: the modification time of the copy already loaded.
    pub fn new(path: PathBuf) -> Self {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Self { path, modified }
    }

    /// The new contents if the file changed since the last call.
    pub fn poll(&mut self) -> Option<Result<Vec<Object>, IdentityError>> {
        let m = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if m.is_none() || m == self.modified {
            return None;
        }
        self.modified = m;
        Some(snapshot::load(&self.path))
    }
}
