//! The flow class: who talks to what, from the initiator's side.

use serde::{Deserialize, Serialize};

use super::{EndpointIdentity, EndpointKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowClass {
    PodToPod,
    PodToNode,
    PodToService,
    PodToEgress,
    NodeToPod,
    NodeToNode,
    NodeToService,
    NodeToEgress,
    ExternalToPod,
    ExternalToNode,
    /// Neither end is a pod or a node of this cluster (transit, unknown peers).
    Other,
}

impl FlowClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowClass::PodToPod => "pod_to_pod",
            FlowClass::PodToNode => "pod_to_node",
            FlowClass::PodToService => "pod_to_service",
            FlowClass::PodToEgress => "pod_to_egress",
            FlowClass::NodeToPod => "node_to_pod",
            FlowClass::NodeToNode => "node_to_node",
            FlowClass::NodeToService => "node_to_service",
            FlowClass::NodeToEgress => "node_to_egress",
            FlowClass::ExternalToPod => "external_to_pod",
            FlowClass::ExternalToNode => "external_to_node",
            FlowClass::Other => "other",
        }
    }

    pub fn is_egress(self) -> bool {
        matches!(self, FlowClass::PodToEgress | FlowClass::NodeToEgress)
    }
}

/// The qualifier of a class: same or cross node inside the cluster, and which kind of
/// network an egress flow leaves for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    SameNode,
    CrossNode,
    /// Inside the cluster, but one end's node is not known.
    Cluster,
    Private,
    AzurePlatform,
    Internet,
    /// Link-local, multicast or loopback: stays on the segment.
    Local,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SameNode => "same_node",
            Scope::CrossNode => "cross_node",
            Scope::Cluster => "cluster",
            Scope::Private => "private",
            Scope::AzurePlatform => "azure_platform",
            Scope::Internet => "internet",
            Scope::Local => "local",
        }
    }
}

/// Class and scope of a flow from `src` (initiator) to `dst`; `backend` is the pod a
/// Service VIP was translated to, which decides same/cross node.
pub fn classify(
    src: &EndpointIdentity,
    dst: &EndpointIdentity,
    backend: Option<&EndpointIdentity>,
) -> (FlowClass, Scope) {
    use EndpointKind as K;
    let locality = |a: &EndpointIdentity, b: &EndpointIdentity| match (&a.node, &b.node) {
        (Some(x), Some(y)) if x == y => Scope::SameNode,
        (Some(_), Some(_)) => Scope::CrossNode,
        _ => Scope::Cluster,
    };
    let external = |k: K| match k {
        K::AzurePlatform => Scope::AzurePlatform,
        K::Private => Scope::Private,
        _ => Scope::Internet,
    };
    let inner = backend.unwrap_or(dst);
    match (src.kind, dst.kind) {
        // Neighbour discovery, MLD, DHCP: not a conversation between workloads.
        (K::Local, _) | (_, K::Local) => (FlowClass::Other, Scope::Local),
        (K::Pod, K::Pod | K::ClusterUnknown) => (FlowClass::PodToPod, locality(src, dst)),
        (K::Pod, K::Node) => (FlowClass::PodToNode, locality(src, dst)),
        (K::Pod, K::Service) => (FlowClass::PodToService, locality(src, inner)),
        (K::Pod, k) => (FlowClass::PodToEgress, external(k)),
        (K::Node, K::Pod | K::ClusterUnknown) => (FlowClass::NodeToPod, locality(src, dst)),
        (K::Node, K::Node) => (FlowClass::NodeToNode, locality(src, dst)),
        (K::Node, K::Service) => (FlowClass::NodeToService, locality(src, inner)),
        (K::Node, k) => (FlowClass::NodeToEgress, external(k)),
        (s, K::Pod | K::Service) if s.is_external() => (FlowClass::ExternalToPod, external(s)),
        (s, K::Node) if s.is_external() => (FlowClass::ExternalToNode, external(s)),
        (s, _) if s.is_external() => (FlowClass::Other, external(s)),
        _ => (FlowClass::Other, Scope::Cluster),
    }
}
