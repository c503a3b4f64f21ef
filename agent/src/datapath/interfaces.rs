//! What the pipeline reads of an observed interface (its name and role), apart from how it
//! is attached: so a harvest's userspace work runs, and is benchmarked, without a kernel.

use std::{collections::BTreeMap, sync::Arc};

use super::{Attachments, Role};

pub trait Interfaces {
    fn role(&self, ifindex: u32) -> Option<Role>;
    /// Shared: every sighting on the interface holds the one name.
    fn name(&self, ifindex: u32) -> Option<&Arc<str>>;
}

impl Interfaces for Attachments {
    fn role(&self, ifindex: u32) -> Option<Role> {
        self.get(ifindex).map(|a| a.role)
    }

    fn name(&self, ifindex: u32) -> Option<&Arc<str>> {
        self.get(ifindex).map(|a| &a.name)
    }
}

/// Interfaces by ifindex, as a test or benchmark lays them out.
impl Interfaces for BTreeMap<u32, (Arc<str>, Role)> {
    fn role(&self, ifindex: u32) -> Option<Role> {
        self.get(&ifindex).map(|(_, r)| *r)
    }

    fn name(&self, ifindex: u32) -> Option<&Arc<str>> {
        self.get(&ifindex).map(|(n, _)| n)
    }
}
