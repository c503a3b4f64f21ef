//! Verdicts a security team acts on: tenants crossed, egress that bypassed the approved
//! path, sensitive targets reached.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{EndpointIdentity, EndpointKind, FlowClass};
use crate::{config::Config, identity::tenant::PLATFORM};

/// How the tenants of the two ends relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantRelation {
    Same,
    Cross,
    /// One end is the platform, the other a tenant: reported apart from tenant-to-tenant.
    Platform,
    /// At least one end has no known tenant (nodes, external, unknown namespaces).
    None,
}

impl TenantRelation {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantRelation::Same => "same",
            TenantRelation::Cross => "cross",
            TenantRelation::Platform => "platform",
            TenantRelation::None => "none",
        }
    }
}

pub fn tenants(src: &EndpointIdentity, dst: &EndpointIdentity) -> TenantRelation {
    match (src.known_tenant(), dst.known_tenant()) {
        (Some(a), Some(b)) if a == b => TenantRelation::Same,
        (Some(a), Some(b)) if a == PLATFORM || b == PLATFORM => TenantRelation::Platform,
        (Some(_), Some(_)) => TenantRelation::Cross,
        _ => TenantRelation::None,
    }
}

pub fn is_cross_tenant(config: &Config, rel: TenantRelation) -> bool {
    rel == TenantRelation::Cross
        || (rel == TenantRelation::Platform && config.tenancy.platform_is_cross_tenant)
}

/// Egress mediation of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    /// Not an egress flow.
    None,
    Mediated,
    Exempt,
    Unmediated,
}

impl Egress {
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::None => "none",
            Egress::Mediated => "mediated",
            Egress::Exempt => "exempt",
            Egress::Unmediated => "unmediated",
        }
    }
}

/// `src` must be the pre-SNAT identity: after SNAT every pod looks like its node.
/// `dst_name` is the name the source pod resolved the destination from, if it did: name
/// rules judge only that; an address no name of the pod's covers is judged by address.
pub fn egress(
    config: &Config,
    class: FlowClass,
    src: &EndpointIdentity,
    (dst_ip, dst_port): (IpAddr, u16),
    dst_name: Option<&str>,
) -> Egress {
    if !class.is_egress() {
        return Egress::None;
    }
    let named = |patterns: &[crate::net::NamePattern]| {
        dst_name.is_some_and(|n| patterns.iter().any(|p| p.matches(n)))
    };
    if src.mediator
        || config.outbound.mediates_all()
        || config.proxies.iter().any(|p| p.matches(dst_ip, dst_port))
        || named(&config.proxy_names)
    {
        Egress::Mediated
    } else if config.exempt.iter().any(|n| n.contains(&dst_ip)) || named(&config.exempt_names) {
        Egress::Exempt
    } else {
        Egress::Unmediated
    }
}

/// The sensitive target a flow reaches, by name: a configured address (IMDS, wireserver),
/// or a configured port on a node address (kubelet, SSH).
pub fn sensitive(
    config: &Config,
    dst: &EndpointIdentity,
    dst_ip: IpAddr,
    dst_port: u16,
    has_ports: bool,
) -> Option<String> {
    // Azure DNS answers on the wireserver's address: asking a resolver of the cluster's on
    // port 53 is name resolution, not a visit to the wireserver.
    if has_ports && dst_port == 53 && config.approved_resolver(dst_ip) {
        return None;
    }
    if let Some((name, _)) = config
        .sensitive_addresses
        .iter()
        .find(|(_, n)| n.contains(&dst_ip))
    {
        return Some(name.clone());
    }
    if dst.kind == EndpointKind::Node && has_ports {
        return config.sensitive_ports.get(&dst_port).cloned();
    }
    None
}
