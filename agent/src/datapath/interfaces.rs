//! What the pipeline reads of an observed interface (its name and role), apart from how it
//! is attached: so a harvest's userspace work runs, and is benchmarked, without a kernel.

use std::collections::BTreeMap;

use super::{Attachments, Role};

pub trait Interfaces {
    fn role(&self, ifindex: u32) -> Option<Role>;
    fn name(&self, ifindex: u32) -> Option<&str>;
}

impl Interfaces for Attachments {
    fn role(&self, ifindex: u32) -> Option<Role> {
        self.get(ifindex).map(|a| a.role)
    }

    fn name(&self, ifindex: u32) -> Option<&str> {
        self.get(ifindex).map(|a| a.name.as_str())
    }
}

/// Interfaces by ifindex, as a test or benchmark lays them out.
impl Interfaces for BTreeMap<u32, (String, Role)> {
    fn role(&self, ifindex: u32) -> Option<Role> {
        self.get(&ifindex).map(|(_, r)| *r)
    }

    fn name(&self, ifindex: u32) -> Option<&str> {
        self.get(&ifindex).map(|(n, _)| n.as_str())
    }
}
