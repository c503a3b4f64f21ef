//! The lab as data: which namespaces, addresses and pods exist. Pure, so tests can ask for
//! addresses without touching the machine.
//!
//! Shape (kubenet on AKS): each node has a bridge `cbr0` with its own pod /24, an uplink
//! `eth0` on the shared VNet segment, routes to the other node's pod CIDR, and iptables
//! MASQUERADE for pod traffic leaving the cluster CIDR. The VNet namespace is the Azure
//! fabric: it routes to an "internet" host and answers for IMDS and the wireserver.

/// Cluster-wide pod CIDR (kubenet default on AKS).
pub const POD_CIDR: &str = "10.244.0.0/16";
/// Cluster-wide IPv6 pod range: each node takes a /64 from it (fd00:244:N::/64).
pub const POD_CIDR6: &str = "fd00:244::/32";
/// Service CIDR (AKS default).
pub const SERVICE_CIDR: &str = "10.0.0.0/16";
/// IPv6 Service CIDR of the dual-stack (kubenet) lab: a /108, as AKS dual-stack uses.
pub const SERVICE_CIDR6: &str = "fd00:10::/108";
/// VNet router (Azure fabric) on the node subnet.
pub const VNET_GW: &str = "10.224.0.1";
pub const VNET_GW6: &str = "fd00:224::1";
/// The "internet" host outside the VNet.
pub const INTERNET_HOST: &str = "203.0.113.10";
pub const INTERNET_GW: &str = "203.0.113.1";
/// The internet host's IPv6 address (documentation prefix) and its router.
pub const INTERNET_HOST6: &str = "2001:db8:113::10";
pub const INTERNET_GW6: &str = "2001:db8:113::1";
/// Azure platform endpoints, answered by the fabric namespace.
pub const IMDS: &str = "169.254.169.254";
pub const WIRESERVER: &str = "168.63.129.16";
/// A private endpoint (e.g. a storage account's) in a peered range: exempt egress.
pub const PRIVATE_ENDPOINT: &str = "10.225.0.5";
pub const PRIVATE_ENDPOINT_CIDR: &str = "10.225.0.0/24";

/// Which AKS network model the lab reproduces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// Pods on a per-node bridge `cbr0` with host veths `veth*`, a /24 per node from
    /// 10.244.0.0/16 routed via the nodes, SNAT for everything leaving the pod CIDR.
    #[default]
    Kubenet,
    /// Azure CNI (flat): pods take VNet addresses (10.224.N.x), host veths `azv*` with /32
    /// routes and proxy ARP (no bridge, gateway 169.254.1.1), the VNet reaches them through
    /// their node; SNAT only for destinations outside the VNet. IPv4 only in the lab.
    AzureCni,
    /// Azure CNI Overlay: pods in 10.244.0.0/16 outside the VNet, host veths `azv*` with /32
    /// routes and proxy ARP, other nodes' pod CIDRs routed via the nodes; SNAT to the node
    /// for everything leaving the pod CIDR. IPv4 only in the lab.
    Overlay,
    /// Azure CNI powered by Cilium, AKS's default configuration: routing as Overlay, host
    /// veths `lxc*`, SNAT by iptables (ip-masq-agent, as AKS configures Cilium), and
    /// Cilium-like programs (`chain_end.rs`) on every `lxc*` and the uplink, both
    /// directions, attached with tcx ahead of everything before any agent starts: they end
    /// the TC chain, so an observer placed after them sees nothing. IPv4 only in the lab.
    Cilium,
}

/// The VNet address space (node subnet, and Azure CNI pods).
pub const VNET_CIDR: &str = "10.224.0.0/16";
/// Where an Azure CNI pod sends everything: the host veth answers ARP for it.
pub const AZURE_GW: &str = "169.254.1.1";

/// One node of the lab cluster (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub n: u8,
    pub name: String,
}

impl Node {
    pub fn ip(&self) -> String {
        format!("10.224.0.{}", 3 + self.n)
    }
    pub fn ip6(&self) -> String {
        format!("fd00:224::{}", 3 + self.n)
    }
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.n)
    }
    pub fn pod_cidr6(&self) -> String {
        format!("fd00:244:{}::/64", self.n)
    }
    pub fn pod_gw(&self) -> String {
        format!("10.244.{}.1", self.n)
    }
    pub fn pod_gw6(&self) -> String {
        format!("fd00:244:{}::1", self.n)
    }
}

/// A pod: its own network namespace with `eth0`, host side `veth<idx>` (kubenet) or
/// `azv<idx>` (Azure CNI, Overlay) on its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: u8,
    /// Host index within the node's pod CIDR (also names the host-side veth).
    pub idx: u8,
    pub labels: Vec<(String, String)>,
    pub model: Model,
}

impl Pod {
    pub fn ip(&self) -> String {
        match self.model {
            Model::AzureCni => format!("10.224.{}.{}", self.node, self.idx),
            _ => format!("10.244.{}.{}", self.node, self.idx),
        }
    }
    pub fn ip6(&self) -> String {
        format!("fd00:244:{}::{}", self.node, self.idx)
    }
    /// metadata.uid, as a real API server would assign (and kubelet puts in cgroup paths).
    pub fn uid(&self) -> String {
        format!("5eed{:04x}-1c2d-4e5f-8a9b-{:012x}", self.node, self.idx)
    }
    /// Host-side interface name on the node.
    pub fn host_iface(&self) -> String {
        match self.model {
            Model::Kubenet => format!("veth{}", self.idx),
            Model::Cilium => format!("lxc{}", self.idx),
            _ => format!("azv{}", self.idx),
        }
    }
}

/// A ClusterIP Service programmed kube-proxy style (iptables DNAT, random split).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vip: String,
    /// The IPv6 ClusterIP (programmed in the dual-stack kubenet lab only).
    pub vip6: String,
    pub port: u16,
    pub target_port: u16,
    /// Names of the backend pods.
    pub backends: Vec<String>,
}

/// Namespaces, tenants and pods of the lab.
#[derive(Clone, Debug)]
pub struct Topology {
    pub prefix: String,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    /// Kubernetes namespace → tenant label (platform namespaces carry none).
    pub namespaces: Vec<(String, Option<String>)>,
    pub model: Model,
}

fn pod(name: &str, namespace: &str, node: u8, idx: u8, app: &str) -> Pod {
    Pod {
        name: name.into(),
        namespace: namespace.into(),
        node,
        idx,
        labels: vec![("app".into(), app.into())],
        model: Model::Kubenet,
    }
}

impl Topology {
    /// The standard lab: two tenants (alpha: two namespaces, beta: one), kube-system, and
    /// an egress gateway, spread over two nodes.
    pub fn standard(prefix: &str) -> Self {
        let nodes = (1..=2)
            .map(|n| Node {
                n,
                name: format!("{prefix}-node{n}"),
            })
            .collect();
        let pods = vec![
            pod("web-1", "alpha-web", 1, 10, "web"),
            pod("jobs-1", "alpha-jobs", 1, 11, "jobs"),
            pod("api-1", "beta-api", 1, 12, "api"),
            pod("coredns-1", "kube-system", 1, 13, "coredns"),
            pod("egress-gw-1", "egress-system", 1, 14, "egress-gateway"),
            pod("web-2", "alpha-web", 2, 10, "web"),
            pod("api-2", "beta-api", 2, 12, "api"),
            pod("coredns-2", "kube-system", 2, 13, "coredns"),
        ];
        let services = vec![Service {
            name: "web".into(),
            namespace: "alpha-web".into(),
            vip: "10.0.0.10".into(),
            vip6: "fd00:10::a".into(),
            port: 80,
            target_port: 8080,
            backends: vec!["web-1".into(), "web-2".into()],
        }];
        let namespaces = vec![
            ("alpha-web".into(), Some("alpha".into())),
            ("alpha-jobs".into(), Some("alpha".into())),
            ("beta-api".into(), Some("beta".into())),
            ("kube-system".into(), None),
            ("egress-system".into(), None),
        ];
        Self {
            prefix: prefix.into(),
            nodes,
            pods,
            services,
            namespaces,
            model: Model::Kubenet,
        }
    }

    /// The standard lab in another network model.
    pub fn with_model(prefix: &str, model: Model) -> Self {
        let mut t = Self::standard(prefix);
        t.model = model;
        for p in &mut t.pods {
            p.model = model;
        }
        t
    }

    /// The IPv4 ranges pods take addresses from (the config's `network.pod_cidrs`).
    pub fn pod_cidrs(&self) -> Vec<String> {
        match self.model {
            Model::AzureCni => self
                .nodes
                .iter()
                .map(|n| format!("10.224.{}.0/24", n.n))
                .collect(),
            _ => vec![POD_CIDR.to_owned()],
        }
    }

    pub fn vnet_ns(&self) -> String {
        format!("{}-vnet", self.prefix)
    }
    pub fn internet_ns(&self) -> String {
        format!("{}-inet", self.prefix)
    }
    pub fn node(&self, n: u8) -> &Node {
        &self.nodes[(n - 1) as usize]
    }
    pub fn node_ns(&self, n: u8) -> String {
        self.node(n).name.clone()
    }
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the lab topology"))
    }
    pub fn pod_ns(&self, pod: &Pod) -> String {
        format!("{}-n{}-{}", self.prefix, pod.node, pod.name)
    }
    /// Every network namespace, in creation order.
    pub fn all_netns(&self) -> Vec<String> {
        let mut v = vec![self.vnet_ns(), self.internet_ns()];
        v.extend(self.nodes.iter().map(|n| n.name.clone()));
        v.extend(self.pods.iter().map(|p| self.pod_ns(p)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_kubenet_plan() {
        let t = Topology::standard("tf");
        let web2 = t.pod("web-2");
        assert_eq!(web2.ip(), "10.244.2.10");
        assert_eq!(web2.ip6(), "fd00:244:2::10");
        assert_eq!(web2.host_iface(), "veth10");
        assert_eq!(t.node(1).ip(), "10.224.0.4");
        assert_eq!(t.pod_ns(web2), "tf-n2-web-2");
        assert_eq!(t.all_netns().len(), 2 + 2 + 8);
    }

    #[test]
    fn azure_cni_pods_take_vnet_addresses_and_azv_interfaces() {
        let t = Topology::with_model("tf", Model::AzureCni);
        let web2 = t.pod("web-2");
        assert_eq!(web2.ip(), "10.224.2.10");
        assert_eq!(web2.host_iface(), "azv10");
        assert_eq!(t.pod_cidrs(), ["10.224.1.0/24", "10.224.2.0/24"]);
        let o = Topology::with_model("tf", Model::Overlay);
        assert_eq!(o.pod("web-2").ip(), "10.244.2.10");
        assert_eq!(o.pod("web-2").host_iface(), "azv10");
    }

    #[test]
    fn two_tenants_three_namespaces_plus_platform() {
        let t = Topology::standard("x");
        let tenants: std::collections::BTreeSet<_> =
            t.namespaces.iter().filter_map(|(_, t)| t.clone()).collect();
        assert_eq!(tenants.into_iter().collect::<Vec<_>>(), ["alpha", "beta"]);
        assert_eq!(t.namespaces.iter().filter(|(_, t)| t.is_some()).count(), 3);
    }
}
