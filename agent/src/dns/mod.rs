//! DNS as the pods see it: the queries they send and the answers they receive, captured
//! on their own interfaces before any NAT, so each egress flow can carry the name its pod
//! resolved for the address (`dst_fqdn`), egress rules can be written by name, and DNS
//! itself becomes a signal (outside resolvers, NXDOMAIN storms, spoofed answers).
//!
//! `message` parses one DNS message (hickory-proto); `names` keeps, per pod, what each
//! address was resolved from, bounded and honouring TTLs; `tracker` matches answers to the
//! pods' own queries and feeds `names`.

pub mod message;
pub mod names;
pub mod tracker;

/// Name patterns live in `net`: the config judges egress by them too.
pub use crate::net::{NamePattern, PatternError};
pub use message::{parse, Answer, DnsError, Parsed, Rcode};
pub use names::{Names, NamesLimits};
pub use tracker::{DnsCounts, DnsTracker, NxDomain, Signals};
