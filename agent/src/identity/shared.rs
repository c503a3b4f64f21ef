//! The identity store as the harvest reads it and the identity task (`crate::inventory`)
//! writes it: one lock, so a harvest sees one consistent inventory.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::Store;

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

    /// For the identity task, its one writer.
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}
