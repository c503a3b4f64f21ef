//! The Kubernetes API watch against a mocked API server (tower-test) answering with
//! API-server payloads: a PodList, a watch stream with ADDED/MODIFIED/DELETED, a bookmark,
//! an unreadable object, and a 410 Gone that forces a relist in which a pod deleted during
//! the gap disappears. No API server can run here; the payloads follow the wire format
//! byte for byte (fixtures/kube-api). Pods are slim-decoded and relists streamed through
//! the store (relist, objects, listed) as the agent does.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::{client::Body, Api, Client};
use tenantflow::identity::{
    slim::Slim,
    watch::{self, InitialList, WatchEvent},
    Change, Kind, Owner, Store,
};
use tokio::sync::mpsc;

const LIST: &str = include_str!("fixtures/kube-api/pods-list.json");
const WATCH: &str = include_str!("fixtures/kube-api/pods-watch.ndjson");
const RELIST: &str = include_str!("fixtures/kube-api/pods-relist.json");

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answer the next request, checking it is a list (`watch` false) or a watch from `rv`.
async fn answer(handle: &mut Handle, watch: Option<&str>, body: &str) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("the watcher asked in time")
        .expect("a request");
    let uri = req.uri().to_string();
    assert!(uri.starts_with("/api/v1/pods?"), "{uri}");
    match watch {
        None => assert!(!uri.contains("watch=true"), "expected a list: {uri}"),
        Some(rv) => {
            assert!(uri.contains("watch=true"), "expected a watch: {uri}");
            assert!(
                uri.contains(&format!("resourceVersion={rv}")),
                "watch from {rv}: {uri}"
            );
        }
    }
    send.send_response(
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from(body.as_bytes().to_vec()))
            .unwrap(),
    );
}

async fn next(rx: &mut mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event in time")
        .expect("stream open")
}

fn pod_at(store: &Store, ip: &str) -> Option<String> {
    match store.owner(ip.parse().unwrap()) {
        Some(Owner::Pod(p)) => Some(format!("{}/{}", p.namespace, p.name)),
        _ => None,
    }
}

#[tokio::test]
async fn watch_applies_events_and_relists_after_410_gone() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(watch::run(
        Api::<Slim<Pod>>::all(client),
        InitialList::Cache,
        tx,
    ));

    let server = tokio::spawn(async move {
        answer(&mut handle, None, LIST).await;
        answer(&mut handle, Some("1000"), WATCH).await;
        answer(&mut handle, None, RELIST).await;
        // The watcher resumes from the relist; leave that watch open.
        let (_req, _send) = handle.next_request().await.expect("watch after relist");
        std::future::pending::<()>().await;
    });

    let mut store = Store::new();
    let mut seen = Vec::new();
    // Initial list.
    let apply = |store: &mut Store, ev: WatchEvent, seen: &mut Vec<String>| {
        let tag = match &ev {
            WatchEvent::Change(Change::Relist(k)) => format!("relist {k:?}"),
            WatchEvent::Change(Change::Listed(k)) => format!("listed {k:?}"),
            WatchEvent::Change(Change::Replace(k, v)) => format!("replace {k:?} {}", v.len()),
            WatchEvent::Change(Change::Apply(o)) => format!("apply {}", o.describe()),
            WatchEvent::Change(Change::Delete(o)) => format!("delete {}", o.describe()),
            WatchEvent::Synced(k) => format!("synced {k:?}"),
            WatchEvent::BadObject(e) => format!("bad {e}"),
            WatchEvent::Unavailable(e) => {
                format!("unavailable {}", e.contains("too old resource version"))
            }
            WatchEvent::Available => "available".into(),
        };
        seen.push(tag);
        if let WatchEvent::Change(c) = ev {
            store.apply(c);
        }
    };
    for _ in 0..5 {
        let ev = next(&mut rx).await;
        apply(&mut store, ev, &mut seen);
    }
    assert_eq!(
        pod_at(&store, "10.244.1.10").as_deref(),
        Some("alpha-web/web-6d5b8c7f9-abcde")
    );
    assert_eq!(
        pod_at(&store, "10.244.1.12").as_deref(),
        Some("beta-api/api-58c7d9b6f4-fghij")
    );
    // Watch events up to the 410.
    for _ in 0..5 {
        let ev = next(&mut rx).await;
        apply(&mut store, ev, &mut seen);
    }
    assert_eq!(pod_at(&store, "10.244.1.10"), None, "deleted");
    assert_eq!(
        pod_at(&store, "10.244.1.11").as_deref(),
        Some("alpha-jobs/jobs-5f6d7c8b9-klmno")
    );
    // Relist after the 410: jobs was deleted while the watch was gone, cron is new.
    for _ in 0..5 {
        let ev = next(&mut rx).await;
        apply(&mut store, ev, &mut seen);
    }
    assert_eq!(
        seen,
        [
            "relist Pod",
            "apply Pod alpha-web/web-6d5b8c7f9-abcde",
            "apply Pod beta-api/api-58c7d9b6f4-fghij",
            "listed Pod",
            "synced Pod",
            "apply Pod alpha-jobs/jobs-5f6d7c8b9-klmno",
            "apply Pod alpha-jobs/jobs-5f6d7c8b9-klmno",
            "bad Pod alpha-jobs/broken-1: field `status.podIPs[0].ip`: \"10.244.1.999\" is not an IP address",
            "delete Pod alpha-web/web-6d5b8c7f9-abcde",
            "unavailable true",
            "relist Pod",
            "apply Pod beta-api/api-58c7d9b6f4-fghij",
            "apply Pod alpha-jobs/cron-28912345-pqrst",
            "listed Pod",
            "synced Pod",
        ]
    );
    assert_eq!(pod_at(&store, "10.244.1.11"), None, "gone in the relist");
    assert_eq!(
        pod_at(&store, "10.244.1.20").as_deref(),
        Some("alpha-jobs/cron-28912345-pqrst")
    );
    assert_eq!(
        pod_at(&store, "10.244.1.12").as_deref(),
        Some("beta-api/api-58c7d9b6f4-fghij")
    );
    assert_eq!(store.counts().get(&Kind::Pod), Some(&2));
    server.abort();
}

#[tokio::test]
async fn an_unreachable_api_server_is_reported_and_retried() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(watch::run(
        Api::<Slim<Pod>>::all(client),
        InitialList::Cache,
        tx,
    ));
    let server = tokio::spawn(async move {
        // First attempt: the API server answers 503; the retry gets the list.
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Body::from(br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"service unavailable","reason":"ServiceUnavailable","code":503}"#.to_vec()))
                .unwrap(),
        );
        answer(&mut handle, None, LIST).await;
        let (_req, _send) = handle.next_request().await.unwrap();
        std::future::pending::<()>().await;
    });
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ev = next(&mut rx).await;
        seen.push(match ev {
            WatchEvent::Change(Change::Relist(k)) => format!("relist {k:?}"),
            WatchEvent::Change(Change::Apply(o)) => format!("apply {}", o.describe()),
            WatchEvent::Unavailable(e) => format!("unavailable {}", e.contains("503")),
            other => format!("{other:?}"),
        });
    }
    // A relist begins, fails (the store keeps everything: only `Listed` sweeps), and the
    // retry lists.
    assert_eq!(
        seen,
        [
            "relist Pod",
            "unavailable true",
            "relist Pod",
            "apply Pod alpha-web/web-6d5b8c7f9-abcde",
        ]
    );
    server.abort();
}
