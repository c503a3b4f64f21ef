//! The few fields of each Kubernetes object the agent needs, taken from the k8s-openapi
//! types both identity sources (API watch, offline snapshot) produce.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::IdentityError;

pub type Labels = BTreeMap<String, String>;

/// A name many objects share (namespace, node, owning workload): the store interns it, so
/// 200k pods in 2k namespaces hold 2k copies, not 200k.
pub type Name = Arc<str>;

/// A pod's labels in one sorted slice: a `BTreeMap` allocates a node for eleven entries
/// however few it holds (~560 bytes), which at 200k pods is most of what a pod costs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodLabels(Box<[(Box<str>, Box<str>)]>);

impl PodLabels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// Keep only the labels whose key `keep` accepts (reallocated to fit).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        if self.0.iter().all(|(k, _)| keep(k)) {
            return;
        }
        self.0 = std::mem::take(&mut self.0)
            .into_vec()
            .into_iter()
            .filter(|(k, _)| keep(k))
            .collect();
    }
}

impl From<Labels> for PodLabels {
    fn from(m: Labels) -> Self {
        // A BTreeMap iterates in key order: the slice comes out sorted.
        Self(
            m.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }
}

/// What classification needs of a pod, and nothing else: at 200k pods every field costs
/// megabytes (boxed slices instead of `String`/`Vec` save their capacity word).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodMeta {
    pub name: Box<str>,
    /// metadata.uid: what the pod's cgroup path carries.
    pub uid: Option<Box<str>>,
    pub namespace: Name,
    pub node: Option<Name>,
    pub host_network: bool,
    pub labels: PodLabels,
    /// `Kind/name` of the controlling owner (ReplicaSet, DaemonSet, Job…), if any.
    pub owner: Option<Name>,
    pub ips: Box<[IpAddr]>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamespaceMeta {
    pub name: Name,
    pub labels: Labels,
    pub annotations: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeMeta {
    pub name: Name,
    pub ips: Box<[IpAddr]>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceMeta {
    pub name: Box<str>,
    pub namespace: Name,
    pub ips: Box<[IpAddr]>,
}

/// One object of any of the four kinds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Object {
    Pod(PodMeta),
    Namespace(NamespaceMeta),
    Node(NodeMeta),
    Service(ServiceMeta),
}

impl Object {
    /// `Kind namespace/name`, the way errors and logs name it.
    pub fn describe(&self) -> String {
        match self {
            Object::Pod(p) => format!("Pod {}/{}", p.namespace, p.name),
            Object::Namespace(n) => format!("Namespace {}", n.name),
            Object::Node(n) => format!("Node {}", n.name),
            Object::Service(s) => format!("Service {}/{}", s.namespace, s.name),
        }
    }
}

fn name(kind: &str, m: &ObjectMeta) -> Result<String, IdentityError> {
    m.name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| IdentityError::Object {
            object: format!("{kind} <unnamed>"),
            field: "metadata.name".into(),
            message: "is missing: every object needs a name".into(),
        })
}

fn namespace(kind: &str, name: &str, m: &ObjectMeta) -> Result<String, IdentityError> {
    m.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| IdentityError::Object {
            object: format!("{kind} {name}"),
            field: "metadata.namespace".into(),
            message:
                "is missing: export with `kubectl get … -A -o yaml` so objects keep their namespace"
                    .into(),
        })
}

fn ip(object: &str, field: &str, s: &str) -> Result<IpAddr, IdentityError> {
    s.parse().map_err(|_| IdentityError::Object {
        object: object.into(),
        field: field.into(),
        message: format!("{s:?} is not an IP address"),
    })
}

impl TryFrom<&Pod> for PodMeta {
    type Error = IdentityError;
    fn try_from(p: &Pod) -> Result<Self, IdentityError> {
        let name = name("Pod", &p.metadata)?;
        let namespace = namespace("Pod", &name, &p.metadata)?;
        let object = format!("Pod {namespace}/{name}");
        let spec = p.spec.as_ref();
        let status = p.status.as_ref();
        // A pending pod has no address yet; that is a state, not an error. A finished pod
        // keeps its old address in status, but the address may already be someone else's.
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let mut ips = Vec::new();
        if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()) {
            for (i, a) in list.iter().enumerate() {
                ips.push(ip(&object, &format!("status.podIPs[{i}].ip"), &a.ip)?);
            }
        }
        if let Some(a) = status.and_then(|s| s.pod_ip.as_deref()) {
            let a = ip(&object, "status.podIP", a)?;
            if !ips.contains(&a) {
                ips.insert(0, a);
            }
        }
        if finished {
            ips.clear();
        }
        let owner = p
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.iter().find(|r| r.controller == Some(true)).or(o.first()))
            .map(|r| format!("{}/{}", r.kind, r.name));
        Ok(PodMeta {
            uid: p.metadata.uid.as_deref().map(Into::into),
            name: name.into(),
            namespace: namespace.into(),
            node: spec.and_then(|s| s.node_name.as_deref()).map(Into::into),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            labels: p.metadata.labels.clone().unwrap_or_default().into(),
            owner: owner.map(Into::into),
            ips: ips.into(),
        })
    }
}

impl TryFrom<&Namespace> for NamespaceMeta {
    type Error = IdentityError;
    fn try_from(n: &Namespace) -> Result<Self, IdentityError> {
        Ok(NamespaceMeta {
            name: name("Namespace", &n.metadata)?.into(),
            labels: n.metadata.labels.clone().unwrap_or_default(),
            annotations: n.metadata.annotations.clone().unwrap_or_default(),
        })
    }
}

impl TryFrom<&Node> for NodeMeta {
    type Error = IdentityError;
    fn try_from(n: &Node) -> Result<Self, IdentityError> {
        let name = name("Node", &n.metadata)?;
        let object = format!("Node {name}");
        let mut ips = Vec::new();
        let addresses = n.status.as_ref().and_then(|s| s.addresses.as_ref());
        for (i, a) in addresses.into_iter().flatten().enumerate() {
            // Hostnames and DNS names are not addresses a packet carries.
            if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                ips.push(ip(
                    &object,
                    &format!("status.addresses[{i}].address"),
                    &a.address,
                )?);
            }
        }
        Ok(NodeMeta {
            name: name.into(),
            ips: ips.into(),
        })
    }
}

impl TryFrom<&Service> for ServiceMeta {
    type Error = IdentityError;
    fn try_from(s: &Service) -> Result<Self, IdentityError> {
        let name = name("Service", &s.metadata)?;
        let namespace = namespace("Service", &name, &s.metadata)?;
        let object = format!("Service {namespace}/{name}");
        let spec = s.spec.as_ref();
        let mut ips = Vec::new();
        let mut add = |field: String, v: &str| -> Result<(), IdentityError> {
            // Headless services have no VIP; their endpoints are pods.
            if v.is_empty() || v == "None" {
                return Ok(());
            }
            let a = ip(&object, &field, v)?;
            if !ips.contains(&a) {
                ips.push(a);
            }
            Ok(())
        };
        if let Some(v) = spec.and_then(|s| s.cluster_ip.as_deref()) {
            add("spec.clusterIP".into(), v)?;
        }
        for (i, v) in spec
            .and_then(|s| s.cluster_ips.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            add(format!("spec.clusterIPs[{i}]"), v)?;
        }
        Ok(ServiceMeta {
            name: name.into(),
            namespace: namespace.into(),
            ips: ips.into(),
        })
    }
}
