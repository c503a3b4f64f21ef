//! Turns a connection's addresses into answers: who each end is, the flow class, and the
//! verdicts (cross-tenant, egress mediation, sensitive target). Pure: config + inventory in,
//! classification out.

mod class;
pub mod endpoint;
mod shared;
mod verdict;

use serde::{Deserialize, Serialize};

pub use class::{FlowClass, Scope};
pub use endpoint::{EndpointIdentity, EndpointKind, AZURE_PLATFORM};
pub use shared::SharedClasses;
pub use verdict::{Egress, TenantRelation};

use crate::{config::Config, flow::Connection, identity::Store};

/// Everything the agent concludes about one connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Classification {
    /// The initiator, before SNAT.
    pub src_identity: EndpointIdentity,
    /// The destination as the initiator addressed it (a Service VIP before DNAT).
    pub dst_identity: EndpointIdentity,
    /// Where DNAT sent it (the Service backend), when translated.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backend_identity: Option<EndpointIdentity>,
    pub flow_class: FlowClass,
    pub scope: Scope,
    pub tenants: TenantRelation,
    pub cross_tenant: bool,
    pub egress: Egress,
    /// Name of the sensitive target reached (imds, wireserver, kubelet, node_ssh…).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sensitive: Option<String>,
}

/// The addresses classification looks up: when the owner of none of them changed, the
/// classification stands.
pub fn addresses(c: &Connection) -> impl Iterator<Item = std::net::IpAddr> {
    [
        Some(c.tuple.src),
        Some(c.tuple.dst),
        c.dnat.map(|(ip, _)| ip),
    ]
    .into_iter()
    .flatten()
}

pub fn classify(config: &Config, store: &Store, c: &Connection) -> Classification {
    classify_named(config, store, c, None)
}

/// As [`classify`], with the name the source pod resolved the destination from (egress
/// rules by name judge it).
pub fn classify_named(
    config: &Config,
    store: &Store,
    c: &Connection,
    dst_name: Option<&str>,
) -> Classification {
    let t = &c.tuple;
    let src = endpoint::resolve(config, store, t.src);
    let dst = endpoint::resolve(config, store, t.dst);
    let backend = c.dnat.map(|(ip, _)| endpoint::resolve(config, store, ip));
    let (flow_class, scope) = class::classify(&src, &dst, backend.as_ref());
    // The tenant a Service leads to is its backend's, when DNAT tells us which it was.
    let far = match (&dst.kind, &backend) {
        (EndpointKind::Service, Some(b)) if b.known_tenant().is_some() => b,
        _ => &dst,
    };
    let tenants = verdict::tenants(&src, far);
    Classification {
        cross_tenant: verdict::is_cross_tenant(config, tenants),
        egress: verdict::egress(config, flow_class, &src, (t.dst, t.dport), dst_name),
        sensitive: verdict::sensitive(config, &dst, t.dst, t.dport, !t.is_icmp()),
        src_identity: src,
        dst_identity: dst,
        backend_identity: backend,
        flow_class,
        scope,
        tenants,
    }
}

#[cfg(test)]
mod tests;
