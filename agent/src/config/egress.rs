//! The egress rules of the config: which paths out of the cluster are approved (gateways,
//! proxies and firewalls, by address or by the name the pod resolved), which destinations
//! need no mediation (by address or name), and how the cluster's outbound traffic leaves
//! (AKS `outboundType`: with user-defined routing through a firewall, all of it is
//! mediated).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{parse_endpoint, parse_net, Endpoint};
use crate::net::NamePattern;

/// How the cluster's traffic leaves, as AKS' `outboundType` says it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outbound {
    /// A load balancer or NAT gateway: nothing is mediated on the way out by default.
    #[default]
    LoadBalancer,
    ManagedNatGateway,
    UserAssignedNatGateway,
    /// A route table sends the default route through a firewall (Azure Firewall or an
    /// NVA): every egress flow is mediated.
    UserDefinedRouting,
}

impl Outbound {
    /// Every flow leaving by the default route passes the firewall.
    pub fn mediates_all(self) -> bool {
        self == Outbound::UserDefinedRouting
    }
}

/// Address entries and name entries of one list.
pub(super) struct Split<T> {
    pub addresses: Vec<T>,
    pub names: Vec<NamePattern>,
}

/// An entry that is not an address is a name pattern; one that is neither is refused
/// with both forms named.
fn split<T>(
    field: &str,
    entries: &[String],
    address: impl Fn(&str) -> Result<T, String>,
) -> Result<Split<T>, (String, String)> {
    let mut out = Split {
        addresses: Vec::new(),
        names: Vec::new(),
    };
    for (i, s) in entries.iter().enumerate() {
        let at = || format!("{field}[{i}]");
        match address(s) {
            Ok(a) => out.addresses.push(a),
            // Something with a letter and no slash or colon reads as a name.
            Err(m) if s.bytes().any(|b| b.is_ascii_alphabetic()) && !s.contains(['/', ':']) => {
                match NamePattern::parse(s) {
                    Ok(p) => out.names.push(p),
                    Err(e) => return Err((at(), format!("{e}; as an address it {m}"))),
                }
            }
            Err(m) => return Err((at(), format!("{s:?} {m}, or a name pattern"))),
        }
    }
    Ok(out)
}

pub(super) fn proxies(entries: &[String]) -> Result<Split<Endpoint>, (String, String)> {
    split("egress.proxies", entries, parse_endpoint)
}

pub(super) fn exempt(entries: &[String]) -> Result<Split<IpNet>, (String, String)> {
    split("egress.exempt", entries, parse_net)
}
