//! The Kubernetes API watch against a mocked API server (tower-test) answering with
//! API-server payloads: a PodList, a watch stream with ADDED/MODIFIED/DELETED, a bookmark,
//! an unreadable object, and every way an API server says a version is gone (410 as an
//! ERROR event, 410 as the HTTP status, "too large resource version") each forcing a
//! relist in which a pod deleted during the gap disappears. No API server can run here;
//! the payloads follow the wire format byte for byte (fixtures/kube-api). Pods are
//! slim-decoded and relists streamed through the store (relist, objects, listed) as the
//! agent does.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::{client::Body, Api, Client};
use tenantflow::identity::{
    reflector::{self, Setup},
    slim::Slim,
    watch::{InitialList, Source, WatchEvent},
    Change, Kind, Owner, Store,
};
use tokio::sync::mpsc;

const LIST: &str = include_str!("fixtures/kube-api/pods-list.json");
const WATCH: &str = include_str!("fixtures/kube-api/pods-watch.ndjson");
const RELIST: &str = include_str!("fixtures/kube-api/pods-relist.json");

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answer the next request, checking it is a list (`watch` false) or a watch from `rv`;
/// returns the request's URI.
async fn answer(handle: &mut Handle, watch: Option<&str>, body: &str) -> String {
    answer_with(handle, watch, StatusCode::OK, body).await
}

async fn answer_with(
    handle: &mut Handle,
    watch: Option<&str>,
    status: StatusCode,
    body: &str,
) -> String {
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
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.as_bytes().to_vec()))
            .unwrap(),
    );
    uri
}

/// The cluster-wide pod reflector, listing from the watch cache.
fn pods(client: Client, tx: mpsc::Sender<WatchEvent>) {
    pods_listing(InitialList::Cache, client, tx);
}

fn pods_listing(list: InitialList, client: Client, tx: mpsc::Sender<WatchEvent>) {
    let setup = Setup {
        list,
        fields: None,
        source: Source::Api(Kind::Pod),
        sweeps: true,
    };
    tokio::spawn(reflector::run(Api::<Slim<Pod>>::all(client), setup, tx));
}

/// A short tag for each event, for comparing sequences.
fn tag(ev: &WatchEvent) -> String {
    match ev {
        WatchEvent::Change(Change::Relist(k)) => format!("relist {k:?}"),
        WatchEvent::Change(Change::Listed(k)) => format!("listed {k:?}"),
        WatchEvent::Change(Change::Replace(k, v)) => format!("replace {k:?} {}", v.len()),
        WatchEvent::Change(Change::Apply(o)) => format!("apply {}", o.describe()),
        WatchEvent::Change(Change::Delete(o)) => format!("delete {}", o.describe()),
        WatchEvent::Relisting(s, r) => format!("relisting {} {}", s.label(), r.label()),
        WatchEvent::Synced(s) => format!("synced {}", s.label()),
        WatchEvent::BadObject(e) => format!("bad {e}"),
        WatchEvent::Unavailable(s, e) => format!("unavailable {} {e}", s.label()),
        WatchEvent::Available(s) => format!("available {}", s.label()),
    }
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

/// Take `n` events, applying changes to `store`; returns their tags.
async fn take(rx: &mut mpsc::Receiver<WatchEvent>, store: &mut Store, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let ev = next(rx).await;
        seen.push(tag(&ev));
        if let WatchEvent::Change(c) = ev {
            store.apply(c);
        }
    }
    seen
}

const FIRST_LIST: [&str; 6] = [
    "relisting pods start",
    "relist Pod",
    "apply Pod alpha-web/web-6d5b8c7f9-abcde",
    "apply Pod beta-api/api-58c7d9b6f4-fghij",
    "listed Pod",
    "synced pods",
];

fn relisted(reason: &str) -> Vec<String> {
    [
        &format!("relisting pods {reason}"),
        "relist Pod",
        "apply Pod beta-api/api-58c7d9b6f4-fghij",
        "apply Pod alpha-jobs/cron-28912345-pqrst",
        "listed Pod",
        "synced pods",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// After the relist: jobs was deleted while the watch was gone, cron is new.
fn assert_relisted(store: &Store) {
    assert_eq!(pod_at(store, "10.244.1.11"), None, "gone in the relist");
    assert_eq!(
        pod_at(store, "10.244.1.20").as_deref(),
        Some("alpha-jobs/cron-28912345-pqrst")
    );
    assert_eq!(
        pod_at(store, "10.244.1.12").as_deref(),
        Some("beta-api/api-58c7d9b6f4-fghij")
    );
    assert_eq!(store.counts().get(&Kind::Pod), Some(&2));
}

#[tokio::test]
async fn watch_applies_events_and_relists_after_410_gone() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, mut rx) = mpsc::channel(64);
    pods(Client::new(svc, "default"), tx);

    let server = tokio::spawn(async move {
        let first = answer(&mut handle, None, LIST).await;
        assert!(
            first.contains("resourceVersion=0"),
            "from the watch cache: {first}"
        );
        answer(&mut handle, Some("1000"), WATCH).await;
        answer(&mut handle, None, RELIST).await;
        // The watcher resumes from the relist; leave that watch open.
        let (req, _send) = handle.next_request().await.expect("watch after relist");
        assert!(req.uri().to_string().contains("resourceVersion=2000"));
        std::future::pending::<()>().await;
    });

    let mut store = Store::new();
    assert_eq!(take(&mut rx, &mut store, 6).await, FIRST_LIST);
    assert_eq!(
        pod_at(&store, "10.244.1.10").as_deref(),
        Some("alpha-web/web-6d5b8c7f9-abcde")
    );
    // Watch events up to the 410, which is a relist, not an outage.
    let watched = take(&mut rx, &mut store, 4).await;
    assert_eq!(
        watched,
        [
            "apply Pod alpha-jobs/jobs-5f6d7c8b9-klmno",
            "apply Pod alpha-jobs/jobs-5f6d7c8b9-klmno",
            "bad Pod alpha-jobs/broken-1: field `status.podIPs[0].ip`: \"10.244.1.999\" is not an IP address",
            "delete Pod alpha-web/web-6d5b8c7f9-abcde",
        ]
    );
    assert_eq!(pod_at(&store, "10.244.1.10"), None, "deleted");
    assert_eq!(take(&mut rx, &mut store, 6).await, relisted("expired"));
    assert_relisted(&store);
    server.abort();
}

/// A 410 answered as the HTTP status of the watch request (not as an event in a stream)
/// relists too: retrying the same expired version would never recover.
#[tokio::test]
async fn a_410_status_on_the_watch_request_relists() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, mut rx) = mpsc::channel(64);
    pods(Client::new(svc, "default"), tx);
    let server = tokio::spawn(async move {
        answer(&mut handle, None, LIST).await;
        answer_with(&mut handle, Some("1000"), StatusCode::GONE, GONE).await;
        answer(&mut handle, None, RELIST).await;
        let (_req, _send) = handle.next_request().await.expect("watch after relist");
        std::future::pending::<()>().await;
    });
    let mut store = Store::new();
    assert_eq!(take(&mut rx, &mut store, 6).await, FIRST_LIST);
    assert_eq!(take(&mut rx, &mut store, 6).await, relisted("expired"));
    assert_relisted(&store);
    server.abort();
}

const GONE: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1000 (1800)","reason":"Expired","code":410}"#;
/// What the API server answers a watch from a version it has not reached (etcd restored
/// from a backup, or a lagging watch cache).
const TOO_LARGE: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Too large resource version: 1000, current: 640","reason":"Timeout","details":{"causes":[{"reason":"ResourceVersionTooLarge","message":"Too large resource version"}],"retryAfterSeconds":1},"code":504}"#;

/// "Too large resource version" relists with a consistent read (paged, not from the watch
/// cache, which is what is behind), then watches from the new version.
#[tokio::test]
async fn a_too_large_resource_version_relists_from_etcd() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, mut rx) = mpsc::channel(64);
    pods(Client::new(svc, "default"), tx);
    let server = tokio::spawn(async move {
        answer(&mut handle, None, LIST).await;
        answer_with(
            &mut handle,
            Some("1000"),
            StatusCode::GATEWAY_TIMEOUT,
            TOO_LARGE,
        )
        .await;
        let relist = answer(&mut handle, None, RELIST).await;
        assert!(
            relist.contains("limit=500") && !relist.contains("resourceVersion=0"),
            "a consistent paged read: {relist}"
        );
        let (req, _send) = handle.next_request().await.expect("watch after relist");
        assert!(req.uri().to_string().contains("resourceVersion=2000"));
        std::future::pending::<()>().await;
    });
    let mut store = Store::new();
    assert_eq!(take(&mut rx, &mut store, 6).await, FIRST_LIST);
    assert_eq!(take(&mut rx, &mut store, 6).await, relisted("too_large"));
    assert_relisted(&store);
    server.abort();
}

/// A watch that fails for any other reason (the API server restarting) is retried at the
/// same version: nothing was missed, so no relist, and the source says when it is back.
#[tokio::test]
async fn a_failed_watch_resumes_at_its_version_without_a_relist() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, mut rx) = mpsc::channel(64);
    pods(Client::new(svc, "default"), tx);
    let server = tokio::spawn(async move {
        answer(&mut handle, None, LIST).await;
        answer_with(
            &mut handle,
            Some("1000"),
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE,
        )
        .await;
        // The retry at the same version is answered (a bookmark, then the server ends the
        // watch on time), and the next resumes from the bookmark.
        answer(&mut handle, Some("1000"), BOOKMARK).await;
        let (req, _send) = handle.next_request().await.expect("the watch again");
        let uri = req.uri().to_string();
        assert!(
            uri.contains("watch=true") && uri.contains("resourceVersion=1005"),
            "{uri}"
        );
        std::future::pending::<()>().await;
    });
    let mut store = Store::new();
    assert_eq!(take(&mut rx, &mut store, 6).await, FIRST_LIST);
    assert_eq!(
        take(&mut rx, &mut store, 2).await,
        [
            "unavailable pods pods watch: service unavailable (ServiceUnavailable, 503)",
            "available pods"
        ]
    );
    server.abort();
}

const BOOKMARK: &str = r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"1005"}}}
"#;
const UNAVAILABLE: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"service unavailable","reason":"ServiceUnavailable","code":503}"#;

/// One object the agent cannot decode (a type the API would never send, but a proxy or
/// a newer server might) is reported and skipped; the rest of the list is applied.
#[tokio::test]
async fn an_unreadable_item_in_a_list_is_skipped_not_fatal() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, mut rx) = mpsc::channel(64);
    pods(Client::new(svc, "default"), tx);
    let list = LIST.replacen(
        "\"items\": [",
        "\"items\": [{\"metadata\": {\"name\": 7}},",
        1,
    );
    assert_ne!(list, LIST);
    let server = tokio::spawn(async move {
        answer(&mut handle, None, &list).await;
        let (_req, _send) = handle.next_request().await.expect("watch");
        std::future::pending::<()>().await;
    });
    let mut store = Store::new();
    let seen = take(&mut rx, &mut store, 7).await;
    assert_eq!(seen[..2], FIRST_LIST[..2]);
    assert!(
        seen[2].starts_with(
            "bad a Pod from the API could not be read (skipped): invalid type: integer `7`"
        ),
        "{}",
        seen[2]
    );
    assert_eq!(seen[3..], FIRST_LIST[2..]);
    server.abort();
}

#[tokio::test]
async fn an_unreachable_api_server_is_reported_and_retried() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, mut rx) = mpsc::channel(64);
    pods(Client::new(svc, "default"), tx);
    let server = tokio::spawn(async move {
        // First attempt: the API server answers 503; the retry gets the list.
        answer_with(
            &mut handle,
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE,
        )
        .await;
        answer(&mut handle, None, LIST).await;
        let (_req, _send) = handle.next_request().await.unwrap();
        std::future::pending::<()>().await;
    });
    let mut store = Store::new();
    let seen = take(&mut rx, &mut store, 5).await;
    // A relist begins, fails (the store keeps everything: only `Listed` sweeps), and the
    // retry lists.
    assert_eq!(
        seen,
        [
            "relisting pods start",
            "relist Pod",
            "unavailable pods pods watch: service unavailable (ServiceUnavailable, 503)",
            "relisting pods start",
            "relist Pod",
        ]
    );
    server.abort();
}

const INVALID: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled","reason":"Invalid","code":422}"#;

/// `--initial-list streaming` against an API server without the WatchList feature: the
/// watch-list is refused as invalid, and the reflector lists from the watch cache instead
/// of retrying a request that can never succeed.
#[tokio::test]
async fn a_refused_watch_list_falls_back_to_a_cache_list() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (tx, mut rx) = mpsc::channel(64);
    pods_listing(InitialList::Streaming, Client::new(svc, "default"), tx);
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("a watch-list");
        let uri = req.uri().to_string();
        assert!(uri.contains("sendInitialEvents=true"), "{uri}");
        send.send_response(
            Response::builder()
                .status(StatusCode::UNPROCESSABLE_ENTITY)
                .body(Body::from(INVALID.as_bytes().to_vec()))
                .unwrap(),
        );
        let list = answer(&mut handle, None, LIST).await;
        assert!(list.contains("resourceVersion=0"), "{list}");
        let (_req, _send) = handle.next_request().await.expect("watch");
        std::future::pending::<()>().await;
    });
    let mut store = Store::new();
    let seen = take(&mut rx, &mut store, 8).await;
    assert_eq!(seen[..2], ["relisting pods start", "relist Pod"]);
    assert_eq!(seen[2..], FIRST_LIST);
    server.abort();
}
