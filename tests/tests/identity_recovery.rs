//! Identity at real object sizes and through API failures, against the synthetic API
//! server serving pods as a real one does (about 6.8 KB each): the index and a direct-mode
//! agent keep their peak memory as the pod list grows fourfold; the index and its
//! followers come back exact after an outage ending in a 410 status, a 410 event and a
//! resourceVersion that moved backwards, saying they are stale while (and only while) they
//! are; and a follower joining after heavy churn is ready only once caught up.

use std::{collections::BTreeMap, time::Duration};

use tenantflow_tests::{
    eventually, identity_peak,
    index_follower::{Follower, View},
    index_process::{free_port, Index},
    kube_api::{pod_ip, KubeApi, Size},
    require_root, unix_now,
};

/// The agents' token, which the synthetic API's RBAC grants `get` on /v1/identity.
const AGENT: &str = "agent-token";

fn api(size: Size, realistic: bool) -> KubeApi {
    api_in(size, realistic, None)
}

fn api_in(size: Size, realistic: bool, netns: Option<&str>) -> KubeApi {
    let api = KubeApi::start(size, vec![], netns);
    api.set_realistic(realistic);
    api.grant(
        AGENT,
        "system:serviceaccount:tenantflow:tenantflow",
        &["/v1/identity"],
    );
    api
}

/// A metric sample by name and exact label set, whatever order the labels are printed in.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let mut got: Vec<&str> = rest
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
            .collect();
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        got.sort_unstable();
        want.sort();
        (got == want).then(|| value.parse().ok())?
    })
}

fn index_metrics(ix: &Index) -> String {
    ix.get("/metrics").expect("index /metrics").1
}

/// Relists of `source` started for `reason`, and completed.
fn relists(m: &str, source: &str, reason: &str) -> (Option<f64>, Option<f64>) {
    (
        sample(
            m,
            "tenantflow_identity_relists_total",
            &[("reason", reason), ("source", source)],
        ),
        sample(
            m,
            "tenantflow_identity_relists_completed_total",
            &[("source", source)],
        ),
    )
}

const KINDS: [&str; 4] = ["pods", "namespaces", "nodes", "services"];

/// Wait until every kind has started `want.0` lists for `reason` and completed `want.1`
/// lists in all: each kind learns its version is gone on its own watch, in its own time,
/// so the follower converging on pods says nothing of services.
fn wait_relisted(ix: &Index, reason: &str, want: (f64, f64)) {
    let want = (Some(want.0), Some(want.1));
    let done = eventually(Duration::from_secs(60), || {
        let m = index_metrics(ix);
        KINDS
            .iter()
            .all(|k| relists(&m, k, reason) == want)
            .then_some(())
    });
    let m = index_metrics(ix);
    assert!(
        done.is_some(),
        "{reason} relists, want {want:?}: {:?}",
        KINDS.map(|k| relists(&m, k, reason))
    );
}

fn converge(f: &Follower, truth: &BTreeMap<String, String>, within: Duration) -> View {
    eventually(within, || {
        let v = f.view();
        (v.synced && &v.pods == truth).then_some(v)
    })
    .unwrap_or_else(|| {
        let v = f.view();
        panic!(
            "follower did not converge within {within:?}: {} pods, truth {}",
            v.pods.len(),
            truth.len()
        )
    })
}

/// Wait until the index and its follower agree on staleness `stale`.
fn wait_stale(ix: &Index, f: &Follower, stale: bool) {
    let want = stale as u8 as f64;
    let ok = eventually(Duration::from_secs(40), || {
        let m = index_metrics(ix);
        (sample(&m, "tenantflow_metadata_stale", &[]) == Some(want)
            && f.view().index_stale == stale)
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "index stale={:?}, follower index_stale={}, want {stale}\n{}",
        sample(&index_metrics(ix), "tenantflow_metadata_stale", &[]),
        f.view().index_stale,
        ix.log_text()
    );
}

#[test]
fn the_index_and_its_followers_recover_exactly_from_every_expired_version_path() {
    let size = Size {
        pods: 3_000,
        nodes: 30,
        namespaces: 20,
        services: 50,
    };
    let api = api(size, true);
    let addr = format!("127.0.0.1:{}", free_port());
    let ix = Index::start(&api, &addr, None, None, "recovery");
    let f = Follower::start(&addr, AGENT);
    converge(&f, &api.generated_pods(), Duration::from_secs(60));
    wait_stale(&ix, &f, false);
    let m = index_metrics(&ix);
    for kind in KINDS {
        assert_eq!(relists(&m, kind, "start"), (Some(1.0), Some(1.0)), "{kind}");
        assert_eq!(
            sample(
                &m,
                "tenantflow_identity_source_current",
                &[("source", kind)]
            ),
            Some(1.0)
        );
    }

    // The API server goes away. Both say stale, and the last-sync time stops.
    api.set_down(true);
    wait_stale(&ix, &f, true);
    let m = index_metrics(&ix);
    assert_eq!(
        sample(
            &m,
            "tenantflow_identity_source_current",
            &[("source", "pods")]
        ),
        Some(0.0)
    );
    let synced_at = sample(&m, "tenantflow_metadata_last_sync_timestamp_seconds", &[]).unwrap();
    // Changes no watch sees: only a relist can find them.
    for id in 0..40 {
        api.delete_pod_silently(id);
    }
    for id in 3_000..3_020 {
        api.create_pod(&pod_ip(id));
    }
    // The failing watches retry several times, and a whole second passes (the last-sync
    // time is in whole seconds): it must not move while the source is down.
    let refused = api.stats("index").refused;
    eventually(Duration::from_secs(30), || {
        (api.stats("index").refused >= refused + 3 && unix_now() > synced_at as u64 + 1)
            .then_some(())
    })
    .expect("the index's watches keep retrying while the API is down");
    let m = index_metrics(&ix);
    assert_eq!(
        sample(&m, "tenantflow_metadata_last_sync_timestamp_seconds", &[]),
        Some(synced_at),
        "last sync moved during the outage"
    );
    assert_eq!(sample(&m, "tenantflow_metadata_stale", &[]), Some(1.0));

    // It comes back answering the watches' versions with a 410 status: every kind
    // relists, once, and the follower matches the server exactly.
    api.force_gone_status();
    api.set_down(false);
    let truth = api.generated_pods();
    assert_eq!(truth.len(), 3_000 - 40 + 20);
    wait_relisted(&ix, "expired", (1.0, 2.0));
    converge(&f, &truth, Duration::from_secs(60));
    wait_stale(&ix, &f, false);
    let m = index_metrics(&ix);
    for kind in KINDS {
        assert_eq!(
            relists(&m, kind, "expired"),
            (Some(1.0), Some(2.0)),
            "{kind}"
        );
    }
    assert!(
        sample(&m, "tenantflow_metadata_last_sync_timestamp_seconds", &[]).unwrap() > synced_at
    );
    let log = ix.log_text();
    assert!(
        log.contains("identity: listing completed, source current"),
        "{log}"
    );

    // A 410 as an ERROR event in the watch stream.
    for id in 40..60 {
        api.delete_pod_silently(id);
    }
    api.force_gone();
    let truth = api.generated_pods();
    wait_relisted(&ix, "expired", (2.0, 3.0));
    converge(&f, &truth, Duration::from_secs(60));
    wait_stale(&ix, &f, false);
    let m = index_metrics(&ix);
    assert_eq!(relists(&m, "pods", "expired"), (Some(2.0), Some(3.0)));

    // etcd restored from a backup: the watches' versions are now in the future.
    for id in 60..80 {
        api.delete_pod_silently(id);
    }
    api.restore_backwards(30);
    let truth = api.generated_pods();
    assert_eq!(truth.len(), 3_000 - 80 + 20);
    wait_relisted(&ix, "too_large", (1.0, 4.0));
    converge(&f, &truth, Duration::from_secs(60));
    wait_stale(&ix, &f, false);
    let m = index_metrics(&ix);
    for kind in KINDS {
        assert_eq!(
            relists(&m, kind, "too_large"),
            (Some(1.0), Some(4.0)),
            "{kind}"
        );
    }
    // Object counts are published once a second.
    let counted = eventually(Duration::from_secs(5), || {
        let m = index_metrics(&ix);
        let pods = &[("kind", "pod"), ("source", "kubernetes")];
        (sample(&m, "tenantflow_metadata_objects", pods) == Some(truth.len() as f64)).then_some(())
    });
    assert!(counted.is_some(), "the index counts {} pods", truth.len());
}

#[test]
fn a_follower_joining_after_heavy_churn_is_ready_only_once_caught_up() {
    let size = Size {
        pods: 2_000,
        nodes: 20,
        namespaces: 10,
        services: 20,
    };
    let api = api(size, false);
    let addr = format!("127.0.0.1:{}", free_port());
    let ix = Index::start(&api, &addr, None, None, "caughtup");
    // The first follower makes the index encode (and keep) a snapshot.
    let first = Follower::start(&addr, AGENT);
    converge(&first, &api.generated_pods(), Duration::from_secs(60));
    let before = sample(&index_metrics(&ix), "tenantflow_index_version", &[]).unwrap();
    // Heavy churn after that snapshot: 3,000 new pods, 1,000 deleted.
    for id in 2_000..5_000 {
        api.create_pod(&format!("10.250.{}.{}", id >> 8, id & 255));
    }
    for id in 0..1_000 {
        api.delete_pod(id);
    }
    let truth = api.generated_pods();
    assert_eq!(truth.len(), 4_000);
    converge(&first, &truth, Duration::from_secs(60));
    let now = sample(&index_metrics(&ix), "tenantflow_index_version", &[]).unwrap();
    assert_eq!(now - before, 4_000.0, "one version per change");
    // A new follower: its `synced` names the index's current version, and by then it
    // holds every pod the index does.
    let late = Follower::start(&addr, AGENT);
    let v = converge(&late, &truth, Duration::from_secs(60));
    assert_eq!(v.first_synced, Some((now as u64, 4_000)));
    assert_eq!(v.resyncs, 1);
}

const MIB: f64 = 1024.0 * 1024.0;

/// One size: the pod list's bytes, the index's and the direct-mode agent's peak RSS.
fn peaks(pods: u64, tag: &str) -> (u64, u64, u64) {
    let p = identity_peak::measure(pods, tag, false);
    eprintln!("{p:?}");
    (p.list_bytes, p.index.0, p.direct.0)
}

/// Reading the whole list before decoding it makes peak memory a multiple of the list;
/// decoded item by item, a list four times as long costs only what the store keeps of
/// the extra pods (a few hundred bytes each), not the extra hundreds of megabytes.
#[test]
fn peak_memory_of_the_index_and_a_direct_mode_agent_does_not_follow_the_list_size() {
    require_root();
    let (small_list, small_index, small_agent) = peaks(5_000, "s");
    let (big_list, big_index, big_agent) = peaks(20_000, "b");
    let list_growth = big_list - small_list;
    assert!(
        list_growth > 95 * 1024 * 1024,
        "the list grew by {:.0} MiB",
        list_growth as f64 / MIB
    );
    // 15,000 more pods: the store (and the index's resume ring) keep about 1 KiB each.
    let bound = 40 * 1024 * 1024;
    for (who, small, big) in [
        ("index", small_index, big_index),
        ("agent", small_agent, big_agent),
    ] {
        assert!(
            big.saturating_sub(small) < bound,
            "{who} peak grew {:.0} MiB ({:.0} -> {:.0}) while the list grew {:.0} MiB",
            big.saturating_sub(small) as f64 / MIB,
            small as f64 / MIB,
            big as f64 / MIB,
            list_growth as f64 / MIB
        );
    }
}

fn agent_metrics(a: &tenantflow_tests::Agent) -> String {
    a.get("/metrics").expect("agent /metrics").1
}

/// Wait until the agent's metrics satisfy `ok`; panics with its log.
fn wait_agent(a: &tenantflow_tests::Agent, what: &str, ok: impl Fn(&str) -> bool) {
    let done = eventually(Duration::from_secs(60), || {
        ok(&agent_metrics(a)).then_some(())
    });
    assert!(done.is_some(), "agent: {what}\n{}", a.log_text());
}

fn stale_is(m: &str, v: f64) -> bool {
    sample(m, "tenantflow_metadata_stale", &[]) == Some(v)
}

/// Real agents, both modes: an outage ending in a 410 status makes them stale and then
/// exact again; an agent following the index is stale while its index is (the index's own
/// watches down), not only while its own stream or watch is.
#[test]
fn real_agents_in_both_modes_recover_exactly_and_are_stale_while_their_source_is() {
    require_root();
    let ns = identity_peak::Netns::new(tenantflow_tests::prefix("rcag"));
    let api = api_in(identity_peak::size(2_000), true, Some(&ns.0));
    let kubeconfig = api.kubeconfig("agent");
    let kubeconfig = kubeconfig.to_str().unwrap();
    let pods_of = |m: &str, source: &str| {
        sample(
            m,
            "tenantflow_metadata_objects",
            &[("kind", "pod"), ("source", source)],
        )
    };

    // Direct mode.
    let (agent, _) = identity_peak::ready_agent(&ns.0, &[], kubeconfig);
    wait_agent(&agent, "current after start", |m| stale_is(m, 0.0));
    api.set_down(true);
    wait_agent(&agent, "stale while the API is down", |m| {
        stale_is(m, 1.0)
            && sample(
                m,
                "tenantflow_identity_source_current",
                &[("source", "pods")],
            ) == Some(0.0)
    });
    for id in 0..30 {
        api.delete_pod_silently(id);
    }
    api.force_gone_status();
    api.set_down(false);
    let truth = api.generated_pods().len() as f64;
    assert_eq!(truth, 1_970.0);
    wait_agent(&agent, "exact and current after the 410", |m| {
        stale_is(m, 0.0) && pods_of(m, "kubernetes") == Some(truth)
    });
    let m = agent_metrics(&agent);
    assert_eq!(relists(&m, "pods", "expired"), (Some(1.0), Some(2.0)));
    drop(agent);

    // Index mode: the index's staleness reaches the agent.
    let addr = format!("127.0.0.1:{}", free_port());
    let _ix = Index::start(&api, &addr, Some(&ns.0), None, "rcag");
    let (agent, _) = identity_peak::ready_follower(&ns.0, &addr, kubeconfig);
    let current = |m: &str, source: &str| {
        sample(
            m,
            "tenantflow_identity_source_current",
            &[("source", source)],
        )
    };
    wait_agent(&agent, "current following the index", |m| {
        stale_is(m, 0.0)
            && current(m, "index") == Some(1.0)
            && current(m, "local_pods") == Some(1.0)
            && pods_of(m, "index") == Some(truth)
    });
    api.set_down(true);
    wait_agent(&agent, "stale while its index is", |m| {
        stale_is(m, 1.0)
            && current(m, "index") == Some(0.0)
            && sample(m, "tenantflow_identity_index_connected", &[]) == Some(1.0)
    });
    for id in 30..60 {
        api.delete_pod_silently(id);
    }
    api.force_gone_status();
    api.set_down(false);
    let truth = api.generated_pods().len() as f64;
    assert_eq!(truth, 1_940.0);
    wait_agent(&agent, "exact and current after the index relisted", |m| {
        stale_is(m, 0.0) && current(m, "index") == Some(1.0) && pods_of(m, "index") == Some(truth)
    });
}
