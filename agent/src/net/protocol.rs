//! IP protocol numbers, one definition (agent-common's, shared with the kernel programs),
//! and the names users see.

use serde::{Deserialize, Serialize};

pub use agent_common::{
    IPPROTO_ICMP as PROTO_ICMP, IPPROTO_ICMPV6 as PROTO_ICMPV6, IPPROTO_TCP as PROTO_TCP,
    IPPROTO_UDP as PROTO_UDP,
};

/// IP protocol, named where users expect a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    #[serde(untagged)]
    Other(u8),
}

impl From<u8> for Protocol {
    fn from(p: u8) -> Self {
        match p {
            PROTO_TCP => Protocol::Tcp,
            PROTO_UDP => Protocol::Udp,
            PROTO_ICMP => Protocol::Icmp,
            PROTO_ICMPV6 => Protocol::Icmpv6,
            n => Protocol::Other(n),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("icmpv6"),
            Protocol::Other(n) => write!(f, "ip-{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_round_trip() {
        assert_eq!(
            serde_json::to_string(&Protocol::from(6)).unwrap(),
            "\"tcp\""
        );
        assert_eq!(serde_json::to_string(&Protocol::from(132)).unwrap(), "132");
        let p: Protocol = serde_json::from_str("\"icmpv6\"").unwrap();
        assert_eq!(p, Protocol::Icmpv6);
    }
}
