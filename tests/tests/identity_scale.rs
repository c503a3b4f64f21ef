//! Identity at cluster scale, against the synthetic API server (tests/src/kube_api.rs):
//! `tenantflow index` reaches ready at 200k pods and stays exact through pod churn with
//! address reuse and a forced 410 Gone; a hundred followers converge on the same table,
//! and keep it while the index is killed, then resync from the new one.

use std::time::{Duration, Instant};

use tenantflow_tests::{
    eventually,
    index_follower::{Follower, View},
    index_process::{free_port, Index},
    kube_api::{pod_ip, KubeApi, Size},
};

/// Wait until every follower's pod table is `truth`; panics with the first difference.
fn converge(
    followers: &[Follower],
    truth: &std::collections::BTreeMap<String, String>,
) -> Vec<View> {
    let views = eventually(Duration::from_secs(120), || {
        let views: Vec<View> = followers.iter().map(Follower::view).collect();
        views
            .iter()
            .all(|v| v.synced && &v.pods == truth)
            .then_some(views)
    });
    views.unwrap_or_else(|| {
        let v = followers[0].view();
        let missing = truth.iter().find(|(k, val)| v.pods.get(*k) != Some(val));
        let extra = v.pods.iter().find(|(k, _)| !truth.contains_key(*k));
        panic!(
            "followers did not converge: first has {} pods, truth {}; missing {missing:?}, extra {extra:?}",
            v.pods.len(),
            truth.len()
        )
    })
}

/// The agents' token, which the synthetic API's RBAC grants `get` on /v1/identity (as the
/// chart's ClusterRole does for the agents' service account).
const AGENT: &str = "agent-token";

fn api_with_agents(size: Size) -> KubeApi {
    let api = KubeApi::start(size, vec![], None);
    api.grant(
        AGENT,
        "system:serviceaccount:tenantflow:tenantflow",
        &["/v1/identity"],
    );
    api
}

#[test]
fn the_index_reaches_ready_at_200k_pods_and_stays_exact_through_churn_and_a_410() {
    let size = Size {
        pods: 200_000,
        nodes: 5_000,
        namespaces: 2_000,
        services: 10_000,
    };
    let api = api_with_agents(size);
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let index = Index::start(&api, &addr, None, None, "200k");
    eprintln!("index ready at 200k pods in {:?}", started.elapsed());
    // One list and one watch per kind, cluster-wide, from the watch cache.
    let s = api.stats("index");
    let mut lists = s.lists.clone();
    lists.sort();
    assert_eq!(lists, ["namespaces?", "nodes?", "pods?", "services?"]);
    assert_eq!(s.watches_open, 4);
    assert_eq!(
        index.metric("tenantflow_metadata_objects{kind=\"pod\",source=\"kubernetes\"}"),
        Some(200_000.0)
    );

    let followers: Vec<Follower> = (0..2).map(|_| Follower::start(&addr, AGENT)).collect();
    let first = converge(&followers, &api.generated_pods());
    assert_eq!(first[0].pods.len(), 200_000);

    // Churn. Deleted pods' addresses go to new pods (a delete, then a create)…
    for id in 0..500 {
        api.delete_pod(id);
        api.create_pod(&pod_ip(id));
    }
    // …or the new pod arrives before the old one's delete: the late delete must not
    // take the address from its new owner.
    for id in 500..1_000 {
        api.create_pod(&pod_ip(id));
        api.delete_pod(id);
    }
    for id in 1_000..1_100 {
        api.move_pod(id, &format!("10.200.0.{}", id - 1_000));
    }
    // Deleted while no watch saw it: only the relist after the 410 removes them.
    for id in 2_000..2_050 {
        api.delete_pod_silently(id);
    }
    api.force_gone();
    let truth = api.generated_pods();
    assert_eq!(truth.len(), 200_000 - 50);
    let views = converge(&followers, &truth);
    // 500 deletes + 500 creates, 500 creates + 500 late deletes, 100 moves, 50 swept.
    for v in &views {
        assert_eq!(v.deltas, 2_150, "one delta per change, nothing else");
        assert_eq!(v.resyncs, 1, "deltas only after the first snapshot");
    }
    assert_eq!(views[0].version, views[1].version);
    // Every kind relisted once more after the 410.
    let relisted = api.stats("index").lists.len();
    assert_eq!(relisted, 8, "{:?}", api.stats("index").lists);
    let bytes_per_delta = views[0].delta_bytes as f64 / views[0].deltas as f64;
    eprintln!("bytes_per_delta={bytes_per_delta:.0}");
    // The index's gauge follows its inventory's next publish, which may come after the
    // followers have the deltas: wait for it, then assert it exactly.
    let objects = "tenantflow_metadata_objects{kind=\"pod\",source=\"kubernetes\"}";
    tenantflow_tests::eventually(std::time::Duration::from_secs(10), || {
        (index.metric(objects) == Some(199_950.0)).then_some(())
    });
    assert_eq!(index.metric(objects), Some(199_950.0));
    drop(index);
}

#[test]
fn a_hundred_followers_converge_keep_their_table_while_the_index_is_down_and_resync() {
    let size = Size {
        pods: 2_000,
        nodes: 50,
        namespaces: 20,
        services: 100,
    };
    let api = api_with_agents(size);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut index = Index::start(&api, &addr, None, None, "followers");
    let followers: Vec<Follower> = (0..100).map(|_| Follower::start(&addr, AGENT)).collect();
    converge(&followers, &api.generated_pods());
    // Only a token RBAC grants /v1/identity follows: an unknown one gets 401, a known
    // user without the grant 403, and neither a single frame.
    api.grant(
        "reader",
        "system:serviceaccount:team-a:reader",
        &["/metrics"],
    );
    let strangers = [
        Follower::start(&addr, "intruder"),
        Follower::start(&addr, "reader"),
    ];
    let refused = eventually(Duration::from_secs(10), || {
        let s: Vec<u16> = strangers.iter().map(|f| f.view().status).collect();
        (s == [401, 403]).then_some(())
    });
    assert!(
        refused.is_some(),
        "{:?}",
        strangers
            .iter()
            .map(|f| f.view().status)
            .collect::<Vec<_>>()
    );
    assert!(strangers
        .iter()
        .all(|f| f.view().pods.is_empty() && f.view().resyncs == 0));
    drop(strangers);
    assert_eq!(index.metric("tenantflow_index_followers"), Some(100.0));
    assert_eq!(
        index.metric("tenantflow_index_streams_total{start=\"resync\"}"),
        Some(100.0)
    );
    for id in 0..100 {
        api.move_pod(id, &format!("10.201.0.{id}"));
    }
    let truth = api.generated_pods();
    let views = converge(&followers, &truth);
    assert!(views
        .iter()
        .all(|v| v.deltas == 100 && v.version == views[0].version));
    let sent = index
        .metric("tenantflow_index_sent_bytes_total{part=\"delta\"}")
        .unwrap();
    eprintln!(
        "bytes_per_delta={:.0} (index: {sent} bytes for 100 deltas to 100 followers)",
        views[0].delta_bytes as f64 / 100.0
    );
    assert_eq!(
        sent as u64,
        views.iter().map(|v| v.delta_bytes).sum::<u64>()
    );

    // The index dies mid-stream: followers keep their table while it is away…
    index.kill();
    let down = eventually(Duration::from_secs(10), || {
        followers.iter().all(|f| !f.view().connected).then_some(())
    });
    assert!(down.is_some(), "followers noticed the index went away");
    for id in 100..150 {
        api.delete_pod(id);
    }
    for f in &followers {
        assert_eq!(
            f.view().pods,
            truth,
            "last state kept while the index is down"
        );
    }
    // …and a new index (another epoch) resyncs every one of them to the new truth.
    let index = Index::start(&api, &addr, None, None, "followers-2");
    let truth = api.generated_pods();
    let views = converge(&followers, &truth);
    assert!(views.iter().all(|v| v.resyncs == 2));
    assert_eq!(index.metric("tenantflow_index_followers"), Some(100.0));
}
