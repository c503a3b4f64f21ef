//! The config file as written by users: plain strings, every default in one place.
//! Validation into typed values happens in `super::Config::from_raw`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Namespaces that belong to the platform team on AKS (globs allowed).
pub const DEFAULT_PLATFORM_NAMESPACES: [&str; 8] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "gatekeeper-system",
    "calico-system",
    "tigera-operator",
    "istio-system",
    "aks-istio-*",
];

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub identity: RawIdentity,
    pub tenancy: RawTenancy,
    pub network: RawNetwork,
    pub egress: RawEgress,
    pub sensitive: RawSensitive,
    pub dns: RawDns,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    /// Resolvers pods may ask besides the cluster's own (any address in
    /// `network.service_cidrs`, where kube-dns lives): Azure DNS and NodeLocal DNSCache by
    /// default. A query to any other address is unmediated DNS.
    pub resolvers: Vec<String>,
}

impl Default for RawDns {
    fn default() -> Self {
        Self {
            resolvers: vec!["168.63.129.16/32".into(), "169.254.20.10/32".into()],
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdentity {
    /// A `kubectl get pods,namespaces,nodes,services -A -o yaml` file.
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTenancy {
    pub namespace_label: Option<String>,
    pub namespace_annotation: Option<String>,
    pub namespace_map: BTreeMap<String, String>,
    pub namespace_regex: Option<String>,
    pub platform_namespaces: Vec<String>,
    pub platform_is_cross_tenant: bool,
}

impl Default for RawTenancy {
    fn default() -> Self {
        Self {
            namespace_label: Some("tenant".into()),
            namespace_annotation: None,
            namespace_map: BTreeMap::new(),
            namespace_regex: None,
            platform_namespaces: DEFAULT_PLATFORM_NAMESPACES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            platform_is_cross_tenant: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNetwork {
    pub pod_cidrs: Vec<String>,
    pub service_cidrs: Vec<String>,
    pub private_cidrs: Vec<String>,
}

impl Default for RawNetwork {
    fn default() -> Self {
        Self {
            pod_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            private_cidrs: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEgress {
    pub gateways: Vec<RawGateway>,
    /// `CIDR` or `CIDR:port` (IPv6: `[CIDR]:port`), or a name pattern.
    pub proxies: Vec<String>,
    /// CIDRs or name patterns.
    pub exempt: Vec<String>,
    /// AKS `outboundType`; `user_defined_routing` mediates every egress flow.
    pub outbound_type: super::egress::Outbound,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSensitive {
    /// Ports on node addresses that pods have no business reaching.
    pub node_ports: BTreeMap<u16, String>,
    /// Named addresses (CIDRs) that are sensitive from any pod.
    pub addresses: BTreeMap<String, String>,
}

impl Default for RawSensitive {
    fn default() -> Self {
        Self {
            node_ports: [(10250, "kubelet"), (10255, "kubelet"), (22, "node_ssh")]
                .iter()
                .map(|(p, n)| (*p, n.to_string()))
                .collect(),
            addresses: [
                ("imds", "169.254.169.254/32"),
                ("wireserver", "168.63.129.16/32"),
            ]
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect(),
        }
    }
}
