//! Snapshot parsing errors and the store's watch semantics.

use super::*;

fn pod(name: &str, ns: &str, ip: &str) -> Object {
    Object::Pod(PodMeta {
        uid: Some(format!("uid-{name}").into()),
        name: name.into(),
        namespace: ns.into(),
        node: Some("n1".into()),
        host_network: false,
        labels: PodLabels::default(),
        owner: None,
        ips: vec![ip.parse().unwrap()].into(),
    })
}

fn owner_name(s: &Store, ip: &str) -> Option<String> {
    s.owner(ip.parse().unwrap()).map(|o| match o {
        Owner::Pod(p) => format!("pod {}", p.name),
        Owner::Node(n) => format!("node {}", n.name),
        Owner::Service(v) => format!("service {}", v.name),
    })
}

const KUBECTL_LIST: &str = r#"
apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: web-7d4b9c-x2x9z
    namespace: alpha-web
    labels: {app: web}
    ownerReferences:
    - {apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9c, uid: 1b0c, controller: true}
  spec:
    nodeName: aks-nodepool1-1
    containers: [{name: web, image: nginx}]
  status:
    phase: Running
    podIP: 10.244.1.10
    podIPs: [{ip: 10.244.1.10}, {ip: "fd00:244:1::10"}]
- {apiVersion: v1, kind: Pod, metadata: {name: done, namespace: alpha-web}, spec: {containers: []}, status: {phase: Succeeded, podIP: 10.244.1.99}}
- {apiVersion: v1, kind: Namespace, metadata: {name: alpha-web, labels: {tenant: alpha}, annotations: {owner: team-a}}}
- {apiVersion: v1, kind: Node, metadata: {name: aks-nodepool1-1}, status: {addresses: [{type: InternalIP, address: 10.224.0.4}, {type: Hostname, address: aks-nodepool1-1}]}}
- {apiVersion: v1, kind: Service, metadata: {name: web, namespace: alpha-web}, spec: {clusterIP: 10.0.0.10, clusterIPs: [10.0.0.10, "fd00:10::10"]}}
- {apiVersion: v1, kind: Service, metadata: {name: headless, namespace: alpha-web}, spec: {clusterIP: None}}
"#;

#[test]
fn a_kubectl_list_parses_into_all_four_kinds() {
    let objects = snapshot::parse(KUBECTL_LIST).unwrap();
    assert_eq!(objects.len(), 6);
    let Object::Pod(p) = &objects[0] else {
        panic!("first item is the pod")
    };
    assert_eq!(p.owner.as_deref(), Some("ReplicaSet/web-7d4b9c"));
    assert_eq!(p.ips.len(), 2);
    let s = Store::from_objects(objects);
    assert_eq!(
        owner_name(&s, "fd00:244:1::10").as_deref(),
        Some("pod web-7d4b9c-x2x9z")
    );
    assert_eq!(
        owner_name(&s, "10.244.1.99"),
        None,
        "finished pods give up their address"
    );
    assert_eq!(
        owner_name(&s, "10.224.0.4").as_deref(),
        Some("node aks-nodepool1-1")
    );
    assert_eq!(
        owner_name(&s, "fd00:10::10").as_deref(),
        Some("service web")
    );
    assert_eq!(
        s.namespace("alpha-web").unwrap().annotations["owner"],
        "team-a"
    );
    assert_eq!(s.len(), 6);
}

#[test]
fn bad_snapshots_name_the_object_and_the_field() {
    let cases = [
        ("kind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x}, spec: {containers: []}, status: {podIP: 10.244.1.300}}\n",
         "items[0] (Pod a): field `status.podIP`: \"10.244.1.300\" is not an IP address"),
        ("kind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x}, spec: {nodeName: [1]}}\n",
         "items[0] (Pod a): field `spec.nodeName`"),
        ("kind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {containers: []}}\n",
         "items[0] (Pod a): field `metadata.namespace`: is missing"),
        ("kind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {labels: {a: b}}}\n",
         "items[0] (Namespace <unnamed>): field `metadata.name`: is missing"),
        ("kind: List\nitems:\n- {apiVersion: apps/v1, kind: Deployment, metadata: {name: d}}\n",
         "items[0] (Deployment d): field `kind`: \"Deployment\" is not one of Pod, Namespace, Node, Service"),
        ("kind: PodList\n", "kind \"PodList\" is not supported"),
        ("items: []\n", "has no `kind`"),
        ("kind: List\nitems: {a: b}\n", "kind List without an `items` array"),
        ("kind: [\n", "is not YAML"),
        ("kind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a, name: b}}\n",
         "key \"name\" appears twice in one mapping (line 3"),
        ("kind: List\nbase: &p {apiVersion: v1, kind: Namespace, metadata: {name: a}}\nitems: [*p, *p]\n",
         "it uses a YAML alias (line 3"),
        ("kind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Pod, metadata: {name: p, namespace: a}}\n- {apiVersion: v1, kind: Pod, metadata: {name: p, namespace: a}}\n",
         "items[2] (Pod a/p): field `metadata.name`: the same Pod as items[1]: each object once"),
    ];
    for (text, want) in cases {
        let e = snapshot::parse(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}\n got: {e}\nwant: {want}");
    }
}

#[test]
fn missing_file_names_the_path_and_the_kubectl_command() {
    let e = snapshot::load(std::path::Path::new("/nonexistent/snap.yaml")).unwrap_err();
    let e = e.to_string();
    assert!(
        e.starts_with("snapshot /nonexistent/snap.yaml: cannot read it"),
        "{e}"
    );
    assert!(
        e.contains("kubectl get pods,namespaces,nodes,services -A -o yaml"),
        "{e}"
    );
}

#[test]
fn watch_changes_update_the_address_index() {
    let mut s = Store::new();
    s.apply(Change::Apply(pod("a", "x", "10.244.1.5")));
    assert_eq!(owner_name(&s, "10.244.1.5").as_deref(), Some("pod a"));
    // Modified: the pod moved address; the old one is free.
    s.apply(Change::Apply(pod("a", "x", "10.244.1.6")));
    assert_eq!(owner_name(&s, "10.244.1.5"), None);
    assert_eq!(owner_name(&s, "10.244.1.6").as_deref(), Some("pod a"));
    // A new pod reuses the address before the old pod's delete arrives…
    s.apply(Change::Apply(pod("b", "x", "10.244.1.6")));
    assert_eq!(owner_name(&s, "10.244.1.6").as_deref(), Some("pod b"));
    // …and the late delete does not take it away from the new owner.
    s.apply(Change::Delete(pod("a", "x", "10.244.1.6")));
    assert_eq!(owner_name(&s, "10.244.1.6").as_deref(), Some("pod b"));
    // Deleting the new owner while the old one still claims it hands it back.
    s.apply(Change::Apply(pod("c", "x", "10.244.1.7")));
    s.apply(Change::Apply(pod("d", "x", "10.244.1.7")));
    s.apply(Change::Delete(pod("d", "x", "10.244.1.7")));
    assert_eq!(owner_name(&s, "10.244.1.7").as_deref(), Some("pod c"));
    // A relist replaces exactly one kind.
    s.apply(Change::Apply(Object::Namespace(NamespaceMeta {
        name: "x".into(),
        labels: Labels::new(),
        annotations: Labels::new(),
    })));
    s.apply(Change::Replace(
        Kind::Pod,
        vec![pod("e", "x", "10.244.1.8")],
    ));
    assert_eq!(owner_name(&s, "10.244.1.6"), None);
    assert_eq!(owner_name(&s, "10.244.1.8").as_deref(), Some("pod e"));
    assert_eq!(s.pod_by_uid("uid-e").map(|p| &*p.name), Some("e"));
    assert!(s.pod_by_uid("uid-a").is_none(), "gone with the relist");
    assert!(
        s.namespace("x").is_some(),
        "namespaces survive a pod relist"
    );
    assert_eq!(s.len(), 2);
}

#[test]
fn a_contested_address_goes_back_to_the_next_claimant_newest_first() {
    let mut s = Store::new();
    for name in ["a", "b", "c"] {
        s.apply(Change::Apply(pod(name, "x", "10.244.1.9")));
    }
    assert_eq!(owner_name(&s, "10.244.1.9").as_deref(), Some("pod c"));
    assert_eq!(s.ip_conflicts(), 1);
    // Removing a waiting claimant changes nothing visible.
    s.apply(Change::Delete(pod("b", "x", "10.244.1.9")));
    assert_eq!(owner_name(&s, "10.244.1.9").as_deref(), Some("pod c"));
    s.apply(Change::Delete(pod("c", "x", "10.244.1.9")));
    assert_eq!(owner_name(&s, "10.244.1.9").as_deref(), Some("pod a"));
    assert_eq!(s.ip_conflicts(), 0, "one claimant left");
    s.apply(Change::Delete(pod("a", "x", "10.244.1.9")));
    assert_eq!(owner_name(&s, "10.244.1.9"), None);
}

/// A relist of 20,000 pods into a store of 20,000 (every address changing hands) leaves
/// exactly the new inventory: each removal is O(1), so this is linear, not quadratic.
#[test]
fn a_large_relist_leaves_exactly_the_new_inventory() {
    let ip = |i: u32| format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255);
    let old: Vec<Object> = (0..20_000)
        .map(|i| pod(&format!("old-{i}"), "x", &ip(i)))
        .collect();
    let mut s = Store::from_objects(old);
    let new: Vec<Object> = (0..20_000)
        .map(|i| pod(&format!("new-{i}"), "x", &ip(i + 10_000)))
        .collect();
    s.apply(Change::Replace(Kind::Pod, new));
    assert_eq!(s.len(), 20_000);
    assert_eq!(s.ip_conflicts(), 0);
    assert_eq!(owner_name(&s, &ip(5_000)), None);
    assert_eq!(owner_name(&s, &ip(10_000)).as_deref(), Some("pod new-0"));
    assert_eq!(
        owner_name(&s, &ip(29_999)).as_deref(),
        Some("pod new-19999")
    );
}

/// A relist repeating most of the inventory re-indexes only what changed: a moved pod
/// gets its new address, a pod the list lacks goes, a new one comes, the rest stay.
#[test]
fn a_relist_applies_only_the_difference() {
    let mut s = Store::from_objects(vec![
        pod("a", "x", "10.1.0.1"),
        pod("b", "x", "10.1.0.2"),
        pod("c", "x", "10.1.0.3"),
    ]);
    s.apply(Change::Replace(
        Kind::Pod,
        vec![
            pod("a", "x", "10.1.0.1"),
            pod("b", "x", "10.1.0.9"),
            pod("d", "x", "10.1.0.3"),
        ],
    ));
    assert_eq!(s.len(), 3);
    assert_eq!(owner_name(&s, "10.1.0.1").as_deref(), Some("pod a"));
    assert_eq!(owner_name(&s, "10.1.0.2"), None, "b moved");
    assert_eq!(owner_name(&s, "10.1.0.9").as_deref(), Some("pod b"));
    assert_eq!(
        owner_name(&s, "10.1.0.3").as_deref(),
        Some("pod d"),
        "c gone, d took its address"
    );
    assert_eq!(s.ip_conflicts(), 0);
    assert!(s.pod_by_uid("uid-c").is_none());
}

/// Only the pod labels egress-gateway selectors use are kept, in pods already held and in
/// those applied later.
#[test]
fn pod_labels_are_kept_only_for_the_keys_asked_for() {
    let labelled = |name: &str, ip: &str| {
        let Object::Pod(mut p) = pod(name, "x", ip) else {
            unreachable!()
        };
        p.labels = [("app", "gw"), ("team", "a"), ("version", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Labels>()
            .into();
        Object::Pod(p)
    };
    let mut s = Store::from_objects(vec![labelled("a", "10.1.0.1")]);
    s.keep_pod_labels(["app".to_owned()].into());
    s.apply(Change::Apply(labelled("b", "10.1.0.2")));
    for ip in ["10.1.0.1", "10.1.0.2"] {
        let Some(Owner::Pod(p)) = s.owner(ip.parse().unwrap()) else {
            panic!("pod at {ip}")
        };
        assert_eq!(p.labels.keys().collect::<Vec<_>>(), ["app"]);
    }
}

/// A streamed relist keeps serving the old inventory until it is complete; only then
/// does what it did not repeat go. A relist that breaks off (no `Listed`) removes nothing,
/// and the next complete one sweeps as usual. Repeating what is held changes no version.
#[test]
fn a_streamed_relist_sweeps_only_when_complete() {
    let mut s = Store::from_objects(vec![pod("a", "x", "10.1.0.1"), pod("b", "x", "10.1.0.2")]);
    let v = s.version();
    s.apply(Change::Relist(Kind::Pod));
    s.apply(Change::Apply(pod("a", "x", "10.1.0.1")));
    assert_eq!(s.version(), v, "a repeated object is no change");
    assert_eq!(
        owner_name(&s, "10.1.0.2").as_deref(),
        Some("pod b"),
        "kept until Listed"
    );
    // Broken off: a new relist starts over.
    s.apply(Change::Relist(Kind::Pod));
    s.apply(Change::Apply(pod("b", "x", "10.1.0.2")));
    s.apply(Change::Apply(pod("c", "x", "10.1.0.3")));
    s.apply(Change::Listed(Kind::Pod));
    assert_eq!(
        owner_name(&s, "10.1.0.1"),
        None,
        "a was not in the complete relist"
    );
    assert_eq!(owner_name(&s, "10.1.0.2").as_deref(), Some("pod b"));
    assert_eq!(owner_name(&s, "10.1.0.3").as_deref(), Some("pod c"));
    assert_eq!(s.len(), 2);
    assert_eq!(s.version(), v + 2, "c added, a swept");
    // A `Listed` without a relist in progress sweeps nothing.
    s.apply(Change::Listed(Kind::Pod));
    assert_eq!(s.len(), 2);
}

/// An agent keeps uids only for its own node's pods: they are what its cgroups hold.
#[test]
fn uids_are_kept_for_this_nodes_pods_only() {
    let mut s = Store::new();
    s.keep_uids_of("n1");
    let Object::Pod(mut remote) = pod("r", "x", "10.1.0.9") else {
        unreachable!()
    };
    remote.node = Some("n2".into());
    s.apply(Change::Apply(pod("l", "x", "10.1.0.1")));
    s.apply(Change::Apply(Object::Pod(remote)));
    assert_eq!(s.pod_by_uid("uid-l").map(|p| &*p.name), Some("l"));
    assert!(s.pod_by_uid("uid-r").is_none());
    assert_eq!(owner_name(&s, "10.1.0.9").as_deref(), Some("pod r"));
}

/// The journal an index passes on: what changed, in order, including what a relist swept;
/// nothing for an object applied again unchanged.
#[test]
fn the_journal_records_every_change_once() {
    let mut s = Store::new();
    s.keep_journal();
    let describe = |c: &Change| match c {
        Change::Apply(o) => format!("apply {}", o.describe()),
        Change::Delete(o) => format!("delete {}", o.describe()),
        other => format!("{other:?}"),
    };
    s.apply(Change::Apply(pod("a", "x", "10.1.0.1")));
    s.apply(Change::Apply(pod("a", "x", "10.1.0.1")));
    s.apply(Change::Apply(pod("a", "x", "10.1.0.5")));
    s.apply(Change::Apply(pod("b", "x", "10.1.0.2")));
    s.apply(Change::Replace(Kind::Pod, vec![pod("b", "x", "10.1.0.2")]));
    s.apply(Change::Delete(pod("b", "x", "10.1.0.2")));
    s.apply(Change::Delete(pod("b", "x", "10.1.0.2")));
    let j: Vec<String> = s.take_journal().iter().map(describe).collect();
    assert_eq!(
        j,
        [
            "apply Pod x/a",
            "apply Pod x/a",
            "apply Pod x/b",
            "delete Pod x/a",
            "delete Pod x/b",
        ]
    );
    assert!(s.take_journal().is_empty());
}

/// Classification revisits only connections whose addresses changed owner: the store
/// says which addresses a version range touched, and "all" when a namespace (tenancy)
/// changed or the range is older than it remembers.
#[test]
fn the_store_says_which_addresses_changed_since_a_version() {
    let ips = |v: &[&str]| -> std::collections::HashSet<std::net::IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    };
    let mut s = Store::from_objects(vec![pod("a", "x", "10.1.0.1"), pod("b", "x", "10.1.0.2")]);
    let v0 = s.version();
    assert_eq!(s.touched_since(v0), Some(ips(&[])));
    s.apply(Change::Apply(pod("a", "x", "10.1.0.1"))); // unchanged: no version
    s.apply(Change::Apply(pod("a", "x", "10.1.0.3"))); // moved
    s.apply(Change::Delete(pod("b", "x", "10.1.0.2")));
    assert_eq!(
        s.touched_since(v0),
        Some(ips(&["10.1.0.1", "10.1.0.3", "10.1.0.2"]))
    );
    assert_eq!(s.touched_since(v0 + 1), Some(ips(&["10.1.0.2"])));
    let v1 = s.version();
    s.apply(Change::Apply(Object::Namespace(NamespaceMeta {
        name: "x".into(),
        labels: Labels::new(),
        annotations: Labels::new(),
    })));
    assert_eq!(
        s.touched_since(v1),
        None,
        "a namespace may change any tenant"
    );
    let mut fresh = Store::new();
    fresh.resume_after(s.version());
    assert_eq!(
        fresh.touched_since(s.version()),
        None,
        "a swapped store: all"
    );
}

/// A change touching more addresses than the log keeps is never reported in part: the
/// log drops whole versions, so the classifier re-checks everything instead.
#[test]
fn a_version_too_large_for_the_touched_log_means_check_everything() {
    let ip = |i: u32| format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255);
    let mut s = Store::from_objects(
        (0..20_000)
            .map(|i| pod(&format!("p-{i}"), "x", &ip(i)))
            .collect(),
    );
    let v = s.version();
    // One relist that lists nothing: every pod goes in one version.
    s.apply(Change::Replace(Kind::Pod, vec![]));
    assert_eq!(s.version(), v + 1);
    assert_eq!(s.touched_since(v), None);
}

/// kubectl writes `kind: List` after the items, so a file cut at an item boundary has no
/// kind and is refused rather than taken for a smaller cluster.
#[test]
fn a_kubectl_list_cut_between_items_is_refused() {
    let cut = &KUBECTL_LIST[..KUBECTL_LIST
        .find("- {apiVersion: v1, kind: Namespace")
        .unwrap()];
    let cut = cut.replace("kind: List\n", "");
    assert!(snapshot::parse(&cut)
        .unwrap_err()
        .to_string()
        .contains("has no `kind`"));
}

proptest::proptest! {
    #![proptest_config(crate::fuzz_support::config())]
    /// Mutations of a kubectl List (YAML and JSON), through the same checks a snapshot load
    /// runs, and indexed as the agent would: no panic, whatever the input.
    #[test]
    fn fuzz_snapshot_parser(text in crate::fuzz_support::mutated_text(&[
        KUBECTL_LIST,
        r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"b","uid":"u"},"status":{"podIP":"10.0.0.1","podIPs":[{"ip":"10.0.0.1"}]},"spec":{"hostNetwork":true}}]}"#,
    ])) {
        if crate::yaml_shape::check(&text).is_ok() {
            if let Ok(objects) = snapshot::parse(&text) {
                let _ = Store::from_objects(objects);
            }
        }
    }
}
