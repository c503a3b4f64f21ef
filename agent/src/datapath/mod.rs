//! The kernel side as the agent sees it: load the embedded programs, attach them to the
//! right interfaces, follow interface churn, and harvest the flow cache.
//!
//! Nothing here knows about Kubernetes; it deals in interfaces and 5-tuples.

mod attach;
mod batch;
mod cache_map;
mod caps;
pub mod cgroup_hooks;
mod clock;
mod error;
mod evictions;
mod harvest;
mod interfaces;
mod legacy;
mod links;
mod load;
mod lock;
mod object;
mod position;
mod select;
mod slots;
mod stay_first;
mod sys_bpf;

pub use attach::{remove_clsact, remove_stale_filters, AttachMode, Attached, Attachments};
pub(crate) use batch::{BatchAttr, BPF_MAP_LOOKUP_BATCH};
pub use clock::KernelClock;
pub use error::DatapathError;
pub use harvest::{DnsMessage, Harvest, Harvester, KernelCounters, RingFd};
pub use interfaces::Interfaces;
pub use legacy::{filters as legacy_filters, LegacyFilter};
pub use links::{default_route_interfaces, list_links, watch_links, Link, LinkEvent};
pub use load::{check_kernel, load, Loaded, Programs, MIN_KERNEL};
pub use lock::{acquire as lock_agent, AgentLock, LockError};
pub(crate) use object::{load_err, map_err, program, take_map, take_raw_map};
pub use select::{Role, Selector, DEFAULT_POD_PATTERNS};
pub use slots::{Delta, NO_SLOT};
pub use stay_first::{Moved, Positions};
pub(crate) use sys_bpf::bpf;
