//! Plain network types every layer above the kernel shares: the 5-tuple, protocol numbers,
//! key addresses, DNS name patterns, the fast hash maps and the monotonic clock. The lowest layer of the
//! agent: it imports nothing from the crate (docs/architecture.md).

mod addr;
mod clock;
mod fast;
mod name_pattern;
mod protocol;
mod tuple;

pub use addr::addr;
pub use clock::{monotonic_ns, unix_seconds, WallClock};
pub use fast::{FastMap, FastSet};
pub use name_pattern::{NamePattern, PatternError};
pub use protocol::{Protocol, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
#[cfg(test)]
pub use tuple::t as test_tuple;
pub use tuple::FlowTuple;
