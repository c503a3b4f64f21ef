//! How the node translated a flow: the pod's own address before SNAT, the node address
//! after it, the Service VIP before DNAT and the backend after it.
//!
//! Sources: conntrack over netlink (see docs/nat.md for why). A dump at start-up covers
//! connections already open; NEW and DESTROY events follow; a lost event (ENOBUFS) is
//! counted and answered with a fresh dump. And Cilium's BPF masquerade maps, read-only, on
//! nodes where Cilium masquerades in eBPF (no conntrack entry exists there).

pub mod cilium;
mod conntrack;
mod entry;
pub mod socket_lb;
mod table;

pub use conntrack::{spawn_conntrack, Faults, NatError, NatEvent};
pub use entry::{NatEntry, Side};
pub use table::{Fresh, NatTable};

/// Which NAT source is active (exported as a metric label and logged at start-up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Netfilter conntrack over netlink: kube-proxy iptables/IPVS DNAT, MASQUERADE/SNAT.
    Conntrack,
    /// Cilium's BPF masquerade maps only (conntrack netlink unavailable).
    CiliumBpf,
    /// Both: conntrack for netfilter's NAT, Cilium's maps for its BPF masquerade.
    ConntrackAndCiliumBpf,
    /// No NAT source could be opened: flows carry no translation.
    None,
}

impl Mechanism {
    /// What the chosen sources add up to.
    pub fn of(conntrack: bool, cilium: bool) -> Self {
        match (conntrack, cilium) {
            (true, false) => Mechanism::Conntrack,
            (false, true) => Mechanism::CiliumBpf,
            (true, true) => Mechanism::ConntrackAndCiliumBpf,
            (false, false) => Mechanism::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Conntrack => "conntrack",
            Mechanism::CiliumBpf => "cilium_bpf_masquerade",
            Mechanism::ConntrackAndCiliumBpf => "conntrack+cilium_bpf_masquerade",
            Mechanism::None => "none",
        }
    }
}
