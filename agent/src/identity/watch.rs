//! Live identity from the Kubernetes API: one watcher per kind (pods, namespaces, nodes,
//! services), relisting after a 410 Gone, retrying with backoff while the API server is
//! unreachable. Every change goes through the same [`Change`] path as the snapshot file;
//! the last-known inventory stays in use while the API is away.

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;

use super::{Change, IdentityError, Kind, NamespaceMeta, NodeMeta, Object, PodMeta, ServiceMeta};

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

/// Start the four watchers; events arrive on `tx` until it is dropped.
pub fn spawn_all(client: Client, tx: UnboundedSender<WatchEvent>) {
    tokio::spawn(run(Api::<Pod>::all(client.clone()), tx.clone()));
    tokio::spawn(run(Api::<Namespace>::all(client.clone()), tx.clone()));
    tokio::spawn(run(Api::<Node>::all(client.clone()), tx.clone()));
    tokio::spawn(run(Api::<Service>::all(client), tx));
}

/// Watch one kind until the receiver goes away.
pub async fn run<K: Watched>(api: Api<K>, tx: UnboundedSender<WatchEvent>) {
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    translate::<K>(stream, tx).await
}

/// Turn watcher events into inventory changes: a relist is buffered and applied as one
/// `Replace`, so objects deleted while the watch was down disappear too.
pub async fn translate<K: Watched>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    tx: UnboundedSender<WatchEvent>,
) {
    futures::pin_mut!(stream);
    let mut relist: Vec<Object> = Vec::new();
    while let Some(ev) = stream.next().await {
        let out = match ev {
            Ok(watcher::Event::Init) => {
                relist.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                match o.to_object() {
                    Ok(obj) => relist.push(obj),
                    Err(e) => {
                        if tx.send(WatchEvent::BadObject(e)).is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let all = std::mem::take(&mut relist);
                if tx
                    .send(WatchEvent::Change(Change::Replace(K::KIND, all)))
                    .is_err()
                {
                    return;
                }
                WatchEvent::Synced(K::KIND)
            }
            Ok(watcher::Event::Apply(o)) => match o.to_object() {
                Ok(obj) => WatchEvent::Change(Change::Apply(obj)),
                Err(e) => WatchEvent::BadObject(e),
            },
            Ok(watcher::Event::Delete(o)) => match o.to_object() {
                Ok(obj) => WatchEvent::Change(Change::Delete(obj)),
                Err(e) => WatchEvent::BadObject(e),
            },
            Err(e) => WatchEvent::Unavailable(format!("{:?} watch: {e}", K::KIND)),
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}
