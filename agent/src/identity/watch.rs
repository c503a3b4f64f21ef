//! Live identity from the Kubernetes API: one watcher per kind (pods, namespaces, nodes,
//! services) of slim objects, relisting after a 410 Gone, retrying with backoff while the
//! API server is unreachable. Every change goes through the same [`Change`] path as the
//! snapshot file; the last-known inventory stays in use while the API is away.

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::Sender;

use super::{
    slim::Slim, Change, IdentityError, Kind, NamespaceMeta, NodeMeta, Object, PodMeta, ServiceMeta,
};

/// What a watcher reports.
#[derive(Debug)]
pub enum WatchEvent {
    Change(Change),
    /// A full list of `Kind` was applied: the inventory of that kind is complete.
    Synced(Kind),
    /// An object the agent could not read (skipped; the rest continues).
    BadObject(IdentityError),
    /// The API server is unreachable or refused the watch; the last state stays in use.
    Unavailable(String),
    /// The source is reachable again (a change would say so too, but a quiet one sends none).
    Available,
}

/// The k8s-openapi types the agent watches, with their conversion.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: Kind;
    fn to_object(&self) -> Result<Object, IdentityError>;
}

impl Watched for Pod {
    const KIND: Kind = Kind::Pod;
    fn to_object(&self) -> Result<Object, IdentityError> {
        PodMeta::try_from(self).map(Object::Pod)
    }
}

impl Watched for Namespace {
    const KIND: Kind = Kind::Namespace;
    fn to_object(&self) -> Result<Object, IdentityError> {
        NamespaceMeta::try_from(self).map(Object::Namespace)
    }
}

impl Watched for Node {
    const KIND: Kind = Kind::Node;
    fn to_object(&self) -> Result<Object, IdentityError> {
        NodeMeta::try_from(self).map(Object::Node)
    }
}

impl Watched for Service {
    const KIND: Kind = Kind::Service;
    fn to_object(&self) -> Result<Object, IdentityError> {
        ServiceMeta::try_from(self).map(Object::Service)
    }
}

impl<K: Watched> Watched for Slim<K>
where
    Slim<K>: DeserializeOwned,
{
    const KIND: Kind = K::KIND;
    fn to_object(&self) -> Result<Object, IdentityError> {
        self.0.to_object()
    }
}

/// How the watchers (re)list, which decides what a list costs the API server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialList {
    /// `resourceVersion=0`: served from the API server's watch cache, never a quorum read
    /// from etcd (what client-go informers do). The cache ignores `limit`, so each kind
    /// arrives as one response.
    #[default]
    Cache,
    /// Consistent paged lists, 500 objects per page: bounded response size, but each page
    /// may be read from etcd.
    Paged,
    /// One watch that streams the initial state (`sendInitialEvents`, Kubernetes 1.27+
    /// with the WatchList feature on): from the cache, object by object.
    Streaming,
}

fn config(list: InitialList) -> watcher::Config {
    let c = watcher::Config::default().page_size(500);
    match list {
        // kube leaves `resourceVersion=0` out of a list that has a limit (a limit would
        // make the API server read etcd anyway), so the cache list has none.
        InitialList::Cache => watcher::Config {
            page_size: None,
            ..c.any_semantic()
        },
        InitialList::Paged => c,
        InitialList::Streaming => c.streaming_lists(),
    }
}

/// Start the four cluster-wide watchers (slim objects); events arrive on `tx` until it
/// is dropped.
pub fn spawn_all(client: Client, list: InitialList, tx: Sender<WatchEvent>) {
    tokio::spawn(run(Api::<Slim<Pod>>::all(client.clone()), list, tx.clone()));
    tokio::spawn(run(
        Api::<Slim<Namespace>>::all(client.clone()),
        list,
        tx.clone(),
    ));
    tokio::spawn(run(
        Api::<Slim<Node>>::all(client.clone()),
        list,
        tx.clone(),
    ));
    tokio::spawn(run(Api::<Slim<Service>>::all(client), list, tx));
}

/// Watch one kind until the receiver goes away.
pub async fn run<K: Watched>(api: Api<K>, list: InitialList, tx: Sender<WatchEvent>) {
    let stream = watcher(api, config(list)).default_backoff();
    translate::<K>(stream, tx, true).await
}

/// Index mode: the pods of this node only (`spec.nodeName` field selector), straight from
/// the API so a new local pod is known without a hop through the index. Its lists are
/// not relists of the inventory (the index's snapshot is): they only add and update.
pub fn spawn_local_pods(client: Client, node: &str, list: InitialList, tx: Sender<WatchEvent>) {
    let cfg = config(list).fields(&format!("spec.nodeName={node}"));
    let stream = watcher(Api::<Slim<Pod>>::all(client), cfg).default_backoff();
    tokio::spawn(translate::<Slim<Pod>>(stream, tx, false));
}

/// Turn watcher events into inventory changes. A relist is streamed through the store
/// (`Relist`, each object, `Listed`), never buffered: objects it does not repeat, those
/// deleted while the watch was down, go at its end.
pub async fn translate<K: Watched>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    tx: Sender<WatchEvent>,
    relists: bool,
) {
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let out = match ev {
            Ok(watcher::Event::Init | watcher::Event::InitDone) if !relists => continue,
            Ok(watcher::Event::Init) => WatchEvent::Change(Change::Relist(K::KIND)),
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => match o.to_object() {
                Ok(obj) => WatchEvent::Change(Change::Apply(obj)),
                Err(e) => WatchEvent::BadObject(e),
            },
            Ok(watcher::Event::InitDone) => {
                if tx
                    .send(WatchEvent::Change(Change::Listed(K::KIND)))
                    .await
                    .is_err()
                {
                    return;
                }
                WatchEvent::Synced(K::KIND)
            }
            Ok(watcher::Event::Delete(o)) => match o.to_object() {
                Ok(obj) => WatchEvent::Change(Change::Delete(obj)),
                Err(e) => WatchEvent::BadObject(e),
            },
            Err(e) => WatchEvent::Unavailable(format!("{:?} watch: {e}", K::KIND)),
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}
