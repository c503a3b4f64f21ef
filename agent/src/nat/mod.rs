//! How the node translated a flow: the pod's own address before SNAT, the node address
//! after it, the Service VIP before DNAT and the backend after it.
//!
//! Source: conntrack over netlink (see docs/nat.md for why). A dump at start-up covers
//! connections already open; NEW and DESTROY events follow; a lost event (ENOBUFS) is
//! counted and answered with a fresh dump.

mod conntrack;
mod entry;
mod table;

pub use conntrack::{spawn_conntrack, Faults, NatError, NatEvent};
pub use entry::{NatEntry, Side};
pub use table::NatTable;

/// Which NAT source is active (exported as a metric label and logged at start-up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Netfilter conntrack over netlink: kube-proxy iptables/IPVS DNAT, MASQUERADE/SNAT.
    Conntrack,
    /// No NAT source could be opened: flows carry no translation.
    None,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Conntrack => "conntrack",
            Mechanism::None => "none",
        }
    }
}
