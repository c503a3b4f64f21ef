//! What an address is: a pod, a node, a Service VIP, something inside the cluster's ranges
//! that no object claims, a private network, an Azure platform endpoint, or the internet.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    identity::{resolve_tenant, Name, Owner, PodMeta, Store},
};

/// Azure's fixed platform endpoints: the wireserver and IMDS.
pub const AZURE_PLATFORM: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    Pod,
    /// A node address (host processes and hostNetwork pods).
    Node,
    Service,
    /// Inside the configured pod or service CIDRs, but no object claims it.
    ClusterUnknown,
    Private,
    AzurePlatform,
    Internet,
    /// Never leaves the link: link-local, multicast, broadcast, loopback (IPv6 neighbour
    /// discovery, MLD, DHCP).
    Local,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Pod => "pod",
            EndpointKind::Node => "node",
            EndpointKind::Service => "service",
            EndpointKind::ClusterUnknown => "cluster_unknown",
            EndpointKind::Private => "private",
            EndpointKind::AzurePlatform => "azure_platform",
            EndpointKind::Internet => "internet",
            EndpointKind::Local => "local",
        }
    }

    /// Outside the cluster: the far end of an egress flow.
    pub fn is_external(self) -> bool {
        matches!(
            self,
            EndpointKind::Private | EndpointKind::AzurePlatform | EndpointKind::Internet
        )
    }
}

/// One end of a flow, as far as the agent knows it. Names are shared with the identity
/// store (interned), so a classified connection holds pointers, not copies: at 100k
/// connections the copies were most of what classification allocated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointIdentity {
    pub kind: EndpointKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tenant: Option<Name>,
    /// The node a pod runs on, or the node an address belongs to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service: Option<Name>,
    /// `Kind/name` of the pod's controlling owner.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub workload: Option<Name>,
    /// An approved egress mediator (a configured gateway pod).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub mediator: bool,
}

impl EndpointIdentity {
    /// An endpoint of this kind with nothing else known.
    pub(crate) fn bare(kind: EndpointKind) -> Self {
        Self {
            kind,
            pod: None,
            namespace: None,
            tenant: None,
            node: None,
            service: None,
            workload: None,
            mediator: false,
        }
    }

    /// A known tenant (not `unknown`), if any.
    pub fn known_tenant(&self) -> Option<&str> {
        self.tenant
            .as_deref()
            .filter(|t| *t != crate::identity::tenant::UNKNOWN)
    }
}

fn is_mediator(config: &Config, p: &PodMeta) -> bool {
    config.gateways.iter().any(|g| {
        *g.namespace == *p.namespace
            && g.labels
                .iter()
                .all(|(k, v)| p.labels.get(k) == Some(v.as_str()))
    })
}

/// Resolve one address.
pub fn resolve(config: &Config, store: &Store, ip: IpAddr) -> EndpointIdentity {
    let tenant = |ns: &str| {
        Some(Name::from(resolve_tenant(
            &config.tenancy,
            ns,
            store.namespace(ns),
        )))
    };
    match store.owner(ip) {
        Some(Owner::Pod(p)) => EndpointIdentity {
            pod: Some(Name::from(&*p.name)),
            tenant: tenant(&p.namespace),
            namespace: Some(p.namespace.clone()),
            node: p.node.clone(),
            workload: p.owner.clone(),
            mediator: is_mediator(config, p),
            ..EndpointIdentity::bare(EndpointKind::Pod)
        },
        Some(Owner::Node(n)) => EndpointIdentity {
            node: Some(n.name.clone()),
            ..EndpointIdentity::bare(EndpointKind::Node)
        },
        Some(Owner::Service(s)) => EndpointIdentity {
            service: Some(Name::from(&*s.name)),
            tenant: tenant(&s.namespace),
            namespace: Some(s.namespace.clone()),
            ..EndpointIdentity::bare(EndpointKind::Service)
        },
        None => {
            let kind = if config
                .pod_cidrs
                .iter()
                .chain(&config.service_cidrs)
                .any(|n| n.contains(&ip))
            {
                EndpointKind::ClusterUnknown
            } else if AZURE_PLATFORM.contains(&ip) {
                EndpointKind::AzurePlatform
            } else if is_local(ip) {
                EndpointKind::Local
            } else if config.private_cidrs.iter().any(|n| n.contains(&ip)) {
                EndpointKind::Private
            } else {
                EndpointKind::Internet
            };
            EndpointIdentity::bare(kind)
        }
    }
}

/// Addresses that never leave the link.
fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_loopback()
                || a.is_unspecified()
        }
        IpAddr::V6(a) => {
            (a.segments()[0] & 0xffc0) == 0xfe80
                || a.is_multicast()
                || a.is_loopback()
                || a.is_unspecified()
        }
    }
}
