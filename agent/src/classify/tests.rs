//! Table-driven: every flow class, scope and verdict from one small inventory.

use super::*;
use crate::{
    flow::Connection,
    identity::snapshot,
    net::{FlowTuple, PROTO_ICMP, PROTO_TCP},
};

const INVENTORY: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: alpha-web, labels: {tenant: alpha}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: alpha-jobs, labels: {tenant: alpha}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: beta-api, labels: {tenant: beta}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: kube-system}}
- {apiVersion: v1, kind: Namespace, metadata: {name: egress-system}}
- {apiVersion: v1, kind: Node, metadata: {name: node1}, status: {addresses: [{type: InternalIP, address: 10.224.0.4}, {type: Hostname, address: node1}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node2}, status: {addresses: [{type: InternalIP, address: 10.224.0.5}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: web-1, namespace: alpha-web, labels: {app: web}}, spec: {nodeName: node1, containers: []}, status: {podIP: 10.244.1.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: web-2, namespace: alpha-web}, spec: {nodeName: node2, containers: []}, status: {podIP: 10.244.2.10}}
- {apiVersion: v1, kind: Pod, metadata: {name: jobs-1, namespace: alpha-jobs}, spec: {nodeName: node1, containers: []}, status: {podIP: 10.244.1.11}}
- {apiVersion: v1, kind: Pod, metadata: {name: api-1, namespace: beta-api}, spec: {nodeName: node1, containers: []}, status: {podIP: 10.244.1.12}}
- {apiVersion: v1, kind: Pod, metadata: {name: api-2, namespace: beta-api}, spec: {nodeName: node2, containers: []}, status: {podIP: 10.244.2.12}}
- {apiVersion: v1, kind: Pod, metadata: {name: coredns-1, namespace: kube-system}, spec: {nodeName: node1, containers: []}, status: {podIP: 10.244.1.13}}
- {apiVersion: v1, kind: Pod, metadata: {name: egress-gw-1, namespace: egress-system, labels: {app: egress-gateway}}, spec: {nodeName: node1, containers: []}, status: {podIP: 10.244.1.14}}
- {apiVersion: v1, kind: Pod, metadata: {name: decoy-gw, namespace: egress-system, labels: {app: other}}, spec: {nodeName: node1, containers: []}, status: {podIP: 10.244.1.15}}
- {apiVersion: v1, kind: Pod, metadata: {name: kube-proxy-x, namespace: kube-system}, spec: {nodeName: node1, hostNetwork: true, containers: []}, status: {podIP: 10.224.0.4}}
- {apiVersion: v1, kind: Service, metadata: {name: web, namespace: alpha-web}, spec: {clusterIP: 10.0.0.10}}
"#;

const CONFIG: &str = r#"
network:
  pod_cidrs: [10.244.0.0/16]
  service_cidrs: [10.0.0.0/16]
egress:
  gateways: [{namespace: egress-system, labels: {app: egress-gateway}}]
  proxies: ["10.50.0.0/24:3128"]
  exempt: [10.60.0.0/16]
"#;

fn conn(proto: u8, src: &str, sport: u16, dst: &str, dport: u16, dnat: Option<&str>) -> Connection {
    let mut c = Connection::new(FlowTuple {
        proto,
        src: src.parse().unwrap(),
        sport,
        dst: dst.parse().unwrap(),
        dport,
    });
    c.dnat = dnat.map(|d| (d.parse().unwrap(), 8080));
    c
}

struct Case {
    why: &'static str,
    c: Connection,
    class: FlowClass,
    scope: Scope,
    tenants: TenantRelation,
    cross: bool,
    egress: Egress,
    sensitive: Option<&'static str>,
}

#[allow(clippy::too_many_arguments)]
fn case(
    why: &'static str,
    c: Connection,
    class: FlowClass,
    scope: Scope,
    tenants: TenantRelation,
    cross: bool,
    egress: Egress,
    sensitive: Option<&'static str>,
) -> Case {
    Case {
        why,
        c,
        class,
        scope,
        tenants,
        cross,
        egress,
        sensitive,
    }
}

#[test]
fn every_class_scope_and_verdict() {
    use Egress as E;
    use FlowClass as F;
    use Scope as S;
    use TenantRelation as T;
    let store = Store::from_objects(snapshot::parse(INVENTORY).unwrap());
    let config = Config::parse(CONFIG, "test").unwrap();
    let tcp = |s: &str, sp, d: &str, dp| conn(PROTO_TCP, s, sp, d, dp, None);
    let cases = [
        case(
            "same tenant, same node",
            tcp("10.244.1.10", 40000, "10.244.1.11", 80),
            F::PodToPod,
            S::SameNode,
            T::Same,
            false,
            E::None,
            None,
        ),
        case(
            "cross tenant, cross node",
            tcp("10.244.1.10", 40000, "10.244.2.12", 80),
            F::PodToPod,
            S::CrossNode,
            T::Cross,
            true,
            E::None,
            None,
        ),
        case(
            "tenant to platform is reported apart",
            tcp("10.244.1.10", 40000, "10.244.1.13", 53),
            F::PodToPod,
            S::SameNode,
            T::Platform,
            false,
            E::None,
            None,
        ),
        case(
            "unknown namespace tenant",
            tcp("10.244.1.10", 40000, "10.244.1.15", 80),
            F::PodToPod,
            S::SameNode,
            T::None,
            false,
            E::None,
            None,
        ),
        case(
            "address in the pod CIDR nobody owns",
            tcp("10.244.1.10", 40000, "10.244.3.3", 80),
            F::PodToPod,
            S::Cluster,
            T::None,
            false,
            E::None,
            None,
        ),
        case(
            "kubelet on another node",
            tcp("10.244.1.12", 40000, "10.224.0.5", 10250),
            F::PodToNode,
            S::CrossNode,
            T::None,
            false,
            E::None,
            Some("kubelet"),
        ),
        case(
            "SSH on own node",
            tcp("10.244.1.12", 40000, "10.224.0.4", 22),
            F::PodToNode,
            S::SameNode,
            T::None,
            false,
            E::None,
            Some("node_ssh"),
        ),
        case(
            "ICMP to a node is not a port",
            conn(PROTO_ICMP, "10.244.1.12", 7, "10.224.0.4", 22 << 8, None),
            F::PodToNode,
            S::SameNode,
            T::None,
            false,
            E::None,
            None,
        ),
        case(
            "service: tenant and node of the backend",
            conn(
                PROTO_TCP,
                "10.244.1.12",
                40000,
                "10.0.0.10",
                80,
                Some("10.244.2.10"),
            ),
            F::PodToService,
            S::CrossNode,
            T::Cross,
            true,
            E::None,
            None,
        ),
        case(
            "service without DNAT join: the service's tenant",
            tcp("10.244.1.10", 40000, "10.0.0.10", 80),
            F::PodToService,
            S::Cluster,
            T::Same,
            false,
            E::None,
            None,
        ),
        case(
            "internet, no mediator",
            tcp("10.244.1.11", 40000, "203.0.113.10", 443),
            F::PodToEgress,
            S::Internet,
            T::None,
            false,
            E::Unmediated,
            None,
        ),
        case(
            "via the approved proxy",
            tcp("10.244.1.11", 40000, "10.50.0.7", 3128),
            F::PodToEgress,
            S::Private,
            T::None,
            false,
            E::Mediated,
            None,
        ),
        case(
            "proxy address, wrong port",
            tcp("10.244.1.11", 40000, "10.50.0.7", 80),
            F::PodToEgress,
            S::Private,
            T::None,
            false,
            E::Unmediated,
            None,
        ),
        case(
            "exempt private endpoint",
            tcp("10.244.1.11", 40000, "10.60.1.1", 443),
            F::PodToEgress,
            S::Private,
            T::None,
            false,
            E::Exempt,
            None,
        ),
        case(
            "the gateway's own egress",
            tcp("10.244.1.14", 40000, "203.0.113.10", 443),
            F::PodToEgress,
            S::Internet,
            T::None,
            false,
            E::Mediated,
            None,
        ),
        case(
            "pod to the gateway is not egress",
            tcp("10.244.1.11", 40000, "10.244.1.14", 3128),
            F::PodToPod,
            S::SameNode,
            T::None,
            false,
            E::None,
            None,
        ),
        case(
            "a pod labelled otherwise is no gateway",
            tcp("10.244.1.15", 40000, "203.0.113.10", 443),
            F::PodToEgress,
            S::Internet,
            T::None,
            false,
            E::Unmediated,
            None,
        ),
        case(
            "IMDS from a pod",
            tcp("10.244.1.11", 40000, "169.254.169.254", 80),
            F::PodToEgress,
            S::AzurePlatform,
            T::None,
            false,
            E::Unmediated,
            Some("imds"),
        ),
        case(
            "wireserver from a pod",
            tcp("10.244.1.11", 40000, "168.63.129.16", 80),
            F::PodToEgress,
            S::AzurePlatform,
            T::None,
            false,
            E::Unmediated,
            Some("wireserver"),
        ),
        case(
            "node to pod",
            tcp("10.224.0.4", 40000, "10.244.1.10", 80),
            F::NodeToPod,
            S::SameNode,
            T::None,
            false,
            E::None,
            None,
        ),
        case(
            "node to node kubelet",
            tcp("10.224.0.4", 40000, "10.224.0.5", 10250),
            F::NodeToNode,
            S::CrossNode,
            T::None,
            false,
            E::None,
            Some("kubelet"),
        ),
        case(
            "node to service",
            conn(
                PROTO_TCP,
                "10.224.0.5",
                40000,
                "10.0.0.10",
                80,
                Some("10.244.2.10"),
            ),
            F::NodeToService,
            S::SameNode,
            T::None,
            false,
            E::None,
            None,
        ),
        case(
            "node to internet",
            tcp("10.224.0.5", 40000, "203.0.113.10", 443),
            F::NodeToEgress,
            S::Internet,
            T::None,
            false,
            E::Unmediated,
            None,
        ),
        case(
            "node to exempt range",
            tcp("10.224.0.5", 40000, "10.60.0.1", 443),
            F::NodeToEgress,
            S::Private,
            T::None,
            false,
            E::Exempt,
            None,
        ),
        case(
            "internet to pod",
            tcp("203.0.113.10", 40000, "10.244.1.10", 80),
            F::ExternalToPod,
            S::Internet,
            T::None,
            false,
            E::None,
            None,
        ),
        case(
            "on-prem to node SSH",
            tcp("192.168.5.5", 40000, "10.224.0.4", 22),
            F::ExternalToNode,
            S::Private,
            T::None,
            false,
            E::None,
            Some("node_ssh"),
        ),
        case(
            "transit",
            tcp("192.168.5.5", 40000, "203.0.113.10", 22),
            F::Other,
            S::Private,
            T::None,
            false,
            E::None,
            None,
        ),
    ];
    for k in cases {
        let got = classify(&config, &store, &k.c);
        let have = (
            got.flow_class,
            got.scope,
            got.tenants,
            got.cross_tenant,
            got.egress,
            got.sensitive.as_deref(),
        );
        assert_eq!(
            have,
            (k.class, k.scope, k.tenants, k.cross, k.egress, k.sensitive),
            "{}",
            k.why
        );
    }
}

#[test]
fn identities_carry_pod_namespace_tenant_and_node() {
    let store = Store::from_objects(snapshot::parse(INVENTORY).unwrap());
    let config = Config::parse(CONFIG, "test").unwrap();
    let got = classify(
        &config,
        &store,
        &conn(
            PROTO_TCP,
            "10.244.1.12",
            1,
            "10.0.0.10",
            80,
            Some("10.244.2.10"),
        ),
    );
    let json = serde_json::to_value(&got).unwrap();
    assert_eq!(
        json["src_identity"],
        serde_json::json!({"kind": "pod", "pod": "api-1", "namespace": "beta-api", "tenant": "beta", "node": "node1"})
    );
    assert_eq!(
        json["dst_identity"],
        serde_json::json!({"kind": "service", "service": "web", "namespace": "alpha-web", "tenant": "alpha"})
    );
    assert_eq!(json["backend_identity"]["pod"], "web-2");
    assert_eq!(json["flow_class"], "pod_to_service");
    assert_eq!(json["egress"], "none");
    // hostNetwork pods share the node's address, which stays the node's.
    let node = classify(
        &config,
        &store,
        &conn(PROTO_TCP, "10.224.0.4", 1, "203.0.113.10", 80, None),
    );
    assert_eq!(node.src_identity.kind, EndpointKind::Node);
    assert_eq!(node.src_identity.node.as_deref(), Some("node1"));
}

#[test]
fn platform_counts_as_cross_tenant_when_configured() {
    let store = Store::from_objects(snapshot::parse(INVENTORY).unwrap());
    let config = Config::parse("tenancy: {platform_is_cross_tenant: true}", "test").unwrap();
    let got = classify(
        &config,
        &store,
        &conn(PROTO_TCP, "10.244.1.10", 1, "10.244.1.13", 53, None),
    );
    assert_eq!(
        (got.tenants, got.cross_tenant),
        (TenantRelation::Platform, true)
    );
}

/// Egress rules by name judge the name the source pod resolved the destination from; an
/// address no name covers stays judged by address; user-defined routing mediates all.
#[test]
fn egress_by_name_and_by_outbound_type() {
    let store = Store::from_objects(snapshot::parse(INVENTORY).unwrap());
    let config = Config::parse(
        r#"
network: {pod_cidrs: [10.244.0.0/16], service_cidrs: [10.0.0.0/16]}
egress:
  proxies: [proxy.corp.example]
  exempt: ["*.blob.core.windows.net", login.microsoftonline.com, 10.60.0.0/16]
"#,
        "test",
    )
    .unwrap();
    let c = conn(PROTO_TCP, "10.244.1.11", 40000, "20.60.12.4", 443, None);
    let judge = |cfg: &Config, name: Option<&str>| classify_named(cfg, &store, &c, name).egress;
    assert_eq!(
        judge(&config, Some("acct1.blob.core.windows.net")),
        Egress::Exempt
    );
    assert_eq!(
        judge(&config, Some("login.microsoftonline.com")),
        Egress::Exempt
    );
    assert_eq!(judge(&config, Some("proxy.corp.example")), Egress::Mediated);
    assert_eq!(
        judge(&config, Some("blob.core.windows.net")),
        Egress::Unmediated
    );
    assert_eq!(judge(&config, None), Egress::Unmediated, "dialled directly");
    let udr = Config::parse(
        "egress: {outbound_type: user_defined_routing}\nnetwork: {pod_cidrs: [10.244.0.0/16]}\n",
        "test",
    )
    .unwrap();
    assert_eq!(judge(&udr, None), Egress::Mediated);
    for (bad, field, says) in [
        (
            "egress: {exempt: [\"a..b.com\"]}",
            "egress.exempt[0]",
            "not a name pattern",
        ),
        (
            "egress: {exempt: [\"10.0.0.0/33\"]}",
            "egress.exempt[0]",
            "or a name pattern",
        ),
        (
            "egress: {proxies: [\"*.x.*\"]}",
            "egress.proxies[0]",
            "`*` is allowed only",
        ),
        (
            "egress: {outbound_type: udr}",
            "egress.outbound_type",
            "unknown variant",
        ),
    ] {
        let e = Config::parse(bad, "test").unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(says), "{bad}: {e}");
    }
}

/// Azure DNS shares the wireserver's address: DNS to it is not a sensitive access, other
/// ports are.
#[test]
fn dns_to_azure_dns_is_not_a_wireserver_visit() {
    let store = Store::from_objects(snapshot::parse(INVENTORY).unwrap());
    let config = Config::parse(CONFIG, "test").unwrap();
    let to = |proto, port| {
        classify(
            &config,
            &store,
            &conn(proto, "10.244.1.11", 40000, "168.63.129.16", port, None),
        )
        .sensitive
    };
    assert_eq!(to(17, 53), None);
    assert_eq!(to(PROTO_TCP, 53), None);
    assert_eq!(to(PROTO_TCP, 80).as_deref(), Some("wireserver"));
    assert_eq!(to(PROTO_TCP, 32526).as_deref(), Some("wireserver"));
}
