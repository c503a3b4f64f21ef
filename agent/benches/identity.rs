//! Identity at cluster scale: the identity store fed a synthetic cluster the size of the
//! largest AKS clusters (200k pods with 5 labels each, 5k nodes, 2k namespaces, 10k
//! services) the way the API watch feeds it: each listed object slim-decoded from JSON
//! (only the fields the agent reads), reduced to what the agent keeps and streamed into the
//! store (`Relist`, objects, `Listed`: no list buffered); then single pod updates, and a
//! full relist (what every 410 Gone costs). Memory is counted by a counting
//! allocator, so the numbers are live heap bytes, not RSS.
//!
//! `cargo xtask bench-identity [--pods N]` (or `cargo bench -p tenantflow --bench identity
//! -- --pods N`). The last lines are `key=value`: store_bytes_per_pod, store_live_mib,
//! relist_peak_mib, apply_us_p99, replace_s (applying a relist), relist_s (decoding and
//! applying it), snapshot_mib (what index mode streams a new follower), ready_s (a cold
//! start: every kind's list decoded and applied).

mod common;

use std::{sync::atomic::Ordering, time::Instant};

use common::{live, mib, PEAK};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use serde_json::{json, Value};
use tenantflow::{
    identity::{
        slim::Slim, Change, Kind, NamespaceMeta, NodeMeta, Object, PodMeta, ServiceMeta, Store,
    },
    index::protocol::Frame,
};

struct Size {
    pods: usize,
    nodes: usize,
    namespaces: usize,
    services: usize,
}

fn args() -> Size {
    let mut s = Size {
        pods: 200_000,
        nodes: 5_000,
        namespaces: 2_000,
        services: 10_000,
    };
    let a: Vec<String> = std::env::args().collect();
    for w in a.windows(2) {
        let n = || w[1].parse().expect("a number");
        match w[0].as_str() {
            "--pods" => s.pods = n(),
            "--nodes" => s.nodes = n(),
            "--namespaces" => s.namespaces = n(),
            "--services" => s.services = n(),
            _ => {}
        }
    }
    s
}

fn v4(prefix: u8, i: usize) -> String {
    format!(
        "{prefix}.{}.{}.{}",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
}

fn pod(i: usize, s: &Size, generation: u32) -> Value {
    // A workload's pods share its namespace (ten pods per ReplicaSet).
    let ns = format!("ns-{}", (i / 10) % s.namespaces);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("app-{}-{i:06x}", i / 10),
            "namespace": ns,
            "uid": format!("{i:08x}-0000-4000-8000-000000000000"),
            "labels": {
                "app": format!("app-{}", i / 10),
                "pod-template-hash": format!("{:010x}", i / 10),
                "team": format!("team-{}", i % 97),
                "tier": "backend",
                "version": format!("v{generation}"),
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("app-{}-{:010x}", i / 10, i / 10),
                "uid": format!("{:08x}-1111-4000-8000-000000000000", i / 10),
                "controller": true,
            }],
        },
        "spec": {"nodeName": format!("aks-pool-{}", i % s.nodes), "containers": []},
        "status": {"podIP": v4(10, i + 1), "podIPs": [{"ip": v4(10, i + 1)}]},
    })
}

/// A JSON list as the API server sends it.
fn list(items: Vec<Value>) -> String {
    serde_json::to_string(&json!({"kind": "List", "items": items})).expect("json")
}

/// Decoded (slim) and reduced the way the watch does, and streamed into the store.
fn relist<K>(store: &mut Store, kind: Kind, text: &str, reduce: impl Fn(&K) -> Object)
where
    Slim<K>: serde::de::DeserializeOwned,
{
    #[derive(serde::Deserialize)]
    struct List<K> {
        items: Vec<K>,
    }
    // A page of the list: the watch holds at most one page (500 objects) at a time.
    let list: List<Slim<K>> = serde_json::from_str(text).expect("decodes");
    store.apply(Change::Relist(kind));
    for item in list.items {
        store.apply(Change::Apply(reduce(&item.0)));
    }
    store.apply(Change::Listed(kind));
}

/// Pods as the watch receives them: one object at a time (a list arrives in pages and the
/// watcher hands out each object; the agent buffers only the reduced form until the
/// relist is complete).
fn pod_list(s: &Size, generation: u32) -> Vec<String> {
    (0..s.pods)
        .map(|i| pod(i, s, generation).to_string())
        .collect()
}

fn pod_object(text: &str) -> Object {
    let p: Slim<Pod> = serde_json::from_str(text).expect("decodes");
    Object::Pod(PodMeta::try_from(&p.0).expect("valid pod"))
}

/// A pod relist streamed through the store, one decoded object at a time.
fn relist_pods(store: &mut Store, texts: &[String]) {
    store.apply(Change::Relist(Kind::Pod));
    for t in texts {
        store.apply(Change::Apply(pod_object(t)));
    }
    store.apply(Change::Listed(Kind::Pod));
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn main() {
    let s = args();
    // What the API server would send, made before anything is measured.
    let ns_text = list(
        (0..s.namespaces)
            .map(|i| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{i}"), "labels": {"tenant": format!("tenant-{}", i % 50)}}}))
            .collect(),
    );
    let node_text = list(
        (0..s.nodes)
            .map(|i| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("aks-pool-{i}")}, "status": {"addresses": [{"type": "InternalIP", "address": v4(11, i + 1)}]}}))
            .collect(),
    );
    let svc_text = list(
        (0..s.services)
            .map(|i| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % s.namespaces)}, "spec": {"clusterIP": v4(12, i + 1), "clusterIPs": [v4(12, i + 1)]}}))
            .collect(),
    );
    let pod_text = pod_list(&s, 0);
    let relist_text = pod_list(&s, 2);
    let base = live();

    // Cold start: decode, reduce and apply each kind's list.
    let started = Instant::now();
    let mut store = Store::new();
    // What the agent keeps of a pod's labels: the keys egress-gateway selectors use (here
    // one, `app`, as in the chart's example).
    store.keep_pod_labels(["app".to_owned()].into());
    // And the uids of this node's pods only (an agent's own node).
    store.keep_uids_of("aks-pool-0");
    relist(&mut store, Kind::Namespace, &ns_text, |n: &Namespace| {
        Object::Namespace(NamespaceMeta::try_from(n).expect("valid"))
    });
    relist(&mut store, Kind::Node, &node_text, |n: &Node| {
        Object::Node(NodeMeta::try_from(n).expect("valid"))
    });
    relist(&mut store, Kind::Service, &svc_text, |n: &Service| {
        Object::Service(ServiceMeta::try_from(n).expect("valid"))
    });
    let without_pods = live();
    relist_pods(&mut store, &pod_text);
    let ready_s = started.elapsed().as_secs_f64();
    let with_pods = live();
    let per_pod = (with_pods - without_pods) as f64 / s.pods as f64;
    let store_bytes = with_pods - base;

    // What index mode sends a new follower: every object as one frame of its stream.
    let snapshot_bytes: usize = store
        .objects()
        .map(|o| {
            Frame::Apply {
                v: 1,
                object: o.clone(),
            }
            .encode()
            .len()
        })
        .sum();

    // Single updates: a pod relabelled (MODIFIED), and one deleted then re-added.
    let changes = 20_000.min(s.pods);
    let updated: Vec<Object> = pod_list(&Size { pods: changes, ..s }, 1)
        .iter()
        .map(|t| pod_object(t))
        .collect();
    let mut times = Vec::with_capacity(changes * 2);
    for o in updated {
        let t = Instant::now();
        store.apply(Change::Apply(o.clone()));
        times.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        store.apply(Change::Delete(o.clone()));
        store.apply(Change::Apply(o));
        times.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
    }

    // A relist (410 Gone): every pod decoded and streamed through the store as the watch
    // does. The peak is what that adds on top of the store; `replace_s` is the store's
    // share of the time (decoding excluded).
    let again: Vec<Object> = relist_text.iter().map(|t| pod_object(t)).collect();
    let replace = Instant::now();
    store.apply(Change::Replace(Kind::Pod, again));
    let replace_s = replace.elapsed().as_secs_f64();
    let before_relist = live();
    PEAK.store(before_relist, Ordering::Relaxed);
    let t = Instant::now();
    relist_pods(&mut store, &pod_text);
    let relist_s = t.elapsed().as_secs_f64();
    let relist_peak = PEAK.load(Ordering::Relaxed) - before_relist;
    assert_eq!(store.counts().get(&Kind::Pod), Some(&s.pods));

    println!(
        "identity bench: {} pods, {} nodes, {} namespaces, {} services",
        s.pods, s.nodes, s.namespaces, s.services
    );
    println!("store_bytes_per_pod={per_pod:.0}");
    println!("store_live_mib={:.1}", mib(store_bytes));
    println!("relist_peak_mib={:.1}", mib(relist_peak));
    println!("apply_us_p99={:.1}", p99(times));
    println!("replace_s={replace_s:.2}");
    println!("relist_s={relist_s:.2}");
    println!("snapshot_mib={:.1}", mib(snapshot_bytes));
    println!("ready_s={ready_s:.2}");
}
