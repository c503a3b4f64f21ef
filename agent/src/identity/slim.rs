//! Slim decoding of watched objects: only the fields the agent reads are decoded into the
//! k8s-openapi type, everything else (managedFields, containers, conditions, a node's
//! image list, annotations of pods) is skipped by the parser and never allocated. A node
//! object is tens of kilobytes, of which the agent keeps its name and addresses.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    api::core::v1::{
        Namespace, Node, NodeAddress, NodeStatus, Pod, PodIP, PodSpec, PodStatus, Service,
        ServiceSpec,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::Resource;
use serde::{Deserialize, Deserializer};

/// A k8s-openapi object decoded with only what the agent reads filled in.
#[derive(Clone, Debug)]
pub struct Slim<K>(pub K);

impl<K: Resource<DynamicType = ()>> Resource for Slim<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Owner {
    kind: String,
    name: String,
    controller: Option<bool>,
}

/// The metadata every kind keeps; `annotations` only where asked (namespaces).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta<A = Skip> {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    owner_references: Option<Vec<Owner>>,
    #[serde(default)]
    annotations: A,
}

/// A field present on the wire but not kept.
#[derive(Default)]
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Skip)
    }
}

impl<A> Meta<A> {
    fn into_meta(self, annotations: Option<BTreeMap<String, String>>) -> ObjectMeta {
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            uid: self.uid,
            resource_version: self.resource_version,
            labels: self.labels,
            annotations,
            owner_references: self.owner_references.map(|v| {
                v.into_iter()
                    .map(|o| OwnerReference {
                        kind: o.kind,
                        name: o.name,
                        controller: o.controller,
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        }
    }
}

impl<'de> Deserialize<'de> for Slim<Pod> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            node_name: Option<String>,
            host_network: Option<bool>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Status {
            phase: Option<String>,
            #[serde(rename = "podIP")]
            pod_ip: Option<String>,
            #[serde(rename = "podIPs")]
            pod_ips: Option<Vec<PodIP>>,
        }
        #[derive(Deserialize)]
        struct Wire {
            metadata: Meta,
            spec: Option<Spec>,
            status: Option<Status>,
        }
        let w = Wire::deserialize(d)?;
        Ok(Slim(Pod {
            metadata: w.metadata.into_meta(None),
            spec: w.spec.map(|s| PodSpec {
                node_name: s.node_name,
                host_network: s.host_network,
                ..Default::default()
            }),
            status: w.status.map(|s| PodStatus {
                phase: s.phase,
                pod_ip: s.pod_ip,
                pod_ips: s.pod_ips,
                ..Default::default()
            }),
        }))
    }
}

impl<'de> Deserialize<'de> for Slim<Namespace> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            metadata: Meta<Option<BTreeMap<String, String>>>,
        }
        let mut w = Wire::deserialize(d)?;
        let annotations = w.metadata.annotations.take();
        Ok(Slim(Namespace {
            metadata: w.metadata.into_meta(annotations),
            ..Default::default()
        }))
    }
}

impl<'de> Deserialize<'de> for Slim<Node> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Status {
            addresses: Option<Vec<NodeAddress>>,
        }
        #[derive(Deserialize)]
        struct Wire {
            metadata: Meta,
            status: Option<Status>,
        }
        let w = Wire::deserialize(d)?;
        Ok(Slim(Node {
            metadata: w.metadata.into_meta(None),
            status: w.status.map(|s| NodeStatus {
                addresses: s.addresses,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

impl<'de> Deserialize<'de> for Slim<Service> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            #[serde(rename = "clusterIP")]
            cluster_ip: Option<String>,
            #[serde(rename = "clusterIPs")]
            cluster_ips: Option<Vec<String>>,
        }
        #[derive(Deserialize)]
        struct Wire {
            metadata: Meta,
            spec: Option<Spec>,
        }
        let w = Wire::deserialize(d)?;
        Ok(Slim(Service {
            metadata: w.metadata.into_meta(None),
            spec: w.spec.map(|s| ServiceSpec {
                cluster_ip: s.cluster_ip,
                cluster_ips: s.cluster_ips,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}
