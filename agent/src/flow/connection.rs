//! One record per connection: every sighting (pod veth, uplink; before and after NAT) is
//! attached to the connection it belongs to, keyed by the initiator's pre-NAT tuple, and
//! each direction is counted at exactly one observation point. The table that keeps these
//! across harvests is [`super::tracker`].

use std::net::IpAddr;

use crate::datapath::Role;
use crate::net::FlowTuple;

/// Packets and bytes of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

impl Counts {
    /// What `self` adds over `before` (never negative: a counting point that changed to
    /// one with fewer packets adds nothing until it passes the old one).
    pub fn since(self, before: Counts) -> Counts {
        Counts {
            packets: self.packets.saturating_sub(before.packets),
            bytes: self.bytes.saturating_sub(before.bytes),
        }
    }

    pub fn max(self, o: Counts) -> Counts {
        Counts {
            packets: self.packets.max(o.packets),
            bytes: self.bytes.max(o.bytes),
        }
    }

    pub fn is_zero(self) -> bool {
        self.packets == 0 && self.bytes == 0
    }
}

/// One observation point's view of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub ifindex: u32,
    pub iface: crate::identity::Name,
    pub role: Option<Role>,
    /// TC hook: true for ingress.
    pub ingress: bool,
    /// Initiator → responder (true) or back.
    pub forward: bool,
    /// Seen with translated addresses (after SNAT/DNAT, before un-NAT).
    pub post_nat: bool,
    pub counts: Counts,
}

/// Lower is preferred as the counting point: the packet's own pod veth as it leaves the
/// pod, then the pod veth it enters, then the uplink.
pub fn rank(role: Option<Role>, ingress: bool, ifindex: u32) -> (u8, u32) {
    let r = match (role, ingress) {
        (Some(Role::Pod), true) => 0,
        (Some(Role::Pod), false) => 1,
        (Some(Role::Uplink), _) => 2,
        (None, _) => 3,
    };
    (r, ifindex)
}

impl Sighting {
    pub fn rank(&self) -> (u8, u32) {
        rank(self.role, self.ingress, self.ifindex)
    }
}

/// A connection as users see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Initiator → responder, before any NAT.
    pub tuple: FlowTuple,
    /// Source after SNAT (what firewalls outside the node see), if translated.
    pub snat: Option<(IpAddr, u16)>,
    /// Destination after DNAT (the Service backend), if translated.
    pub dnat: Option<(IpAddr, u16)>,
    /// A conntrack entry was joined.
    pub nat_joined: bool,
    /// `snat` was inferred by pairing the uplink's post-SNAT sighting with the pod's,
    /// because conntrack never told (its events were lost or late).
    pub snat_inferred: bool,
    /// Counted once per direction, at the preferred sighting (the connection table's
    /// observation points are the sightings: [`super::Tracked::sightings`]).
    pub forward: Counts,
    pub reply: Counts,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u8,
    /// TCP flags seen from the initiator, and from the responder (for the outcome).
    pub fwd_flags: u8,
    pub rep_flags: u8,
    /// An ICMP error came back from the responder's way (for the outcome).
    pub rep_icmp_error: bool,
}

impl Connection {
    pub fn new(tuple: FlowTuple) -> Self {
        Self {
            tuple,
            snat: None,
            dnat: None,
            nat_joined: false,
            snat_inferred: false,
            forward: Counts::default(),
            reply: Counts::default(),
            first_seen_ns: u64::MAX,
            last_seen_ns: 0,
            tcp_flags: 0,
            fwd_flags: 0,
            rep_flags: 0,
            rep_icmp_error: false,
        }
    }
}
