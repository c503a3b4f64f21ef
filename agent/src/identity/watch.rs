//! Live identity from the Kubernetes API: one reflector per kind (pods, namespaces, nodes,
//! services) of slim objects (see [`super::reflector`] for how it lists, watches and
//! relists). Every change goes through the same [`Change`] path as the snapshot file; the
//! last-known inventory stays in use while the API is away.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::Sender;

use super::{
    reflector::{self, Setup},
    slim::Slim,
    Change, IdentityError, Kind, NamespaceMeta, NodeMeta, Object, PodMeta, ServiceMeta,
};

/// Which identity input an event is about: readiness and staleness are judged per source,
/// so one healthy input never hides another that is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A cluster-wide watch of one kind (direct mode, and the index itself).
    Api(Kind),
    /// This node's pods (`spec.nodeName`), watched beside the index stream.
    LocalPods,
    /// The identity index stream.
    Index,
}

impl Source {
    /// The four cluster-wide watches of direct mode and of the index.
    pub const CLUSTER: [Source; 4] = [
        Source::Api(Kind::Pod),
        Source::Api(Kind::Namespace),
        Source::Api(Kind::Node),
        Source::Api(Kind::Service),
    ];

    /// The `source` label of the identity source series.
    pub fn label(self) -> &'static str {
        match self {
            Source::Api(Kind::Pod) => "pods",
            Source::Api(Kind::Namespace) => "namespaces",
            Source::Api(Kind::Node) => "nodes",
            Source::Api(Kind::Service) => "services",
            Source::LocalPods => "local_pods",
            Source::Index => "index",
        }
    }
}

/// Why a source lists (again): the `reason` label of the relist series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The first list after start-up.
    Start,
    /// The version a watch resumed from was compacted away (410 Gone, as an HTTP status
    /// or as an ERROR event).
    Expired,
    /// The server is behind the version asked for ("too large resource version", e.g.
    /// after etcd was restored from a backup): relisted with a consistent read.
    TooLarge,
    /// The index sent a full snapshot (a new follower, another replica, too far behind).
    Resync,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Expired => "expired",
            Reason::TooLarge => "too_large",
            Reason::Resync => "resync",
        }
    }
}

/// What a watcher reports.
#[derive(Debug)]
pub enum WatchEvent {
    Change(Change),
    /// A (re)list of the source begins: it is not current until `Synced`.
    Relisting(Source, Reason),
    /// The source's full state was applied and it is current.
    Synced(Source),
    /// An object the agent could not read (skipped; the rest continues).
    BadObject(IdentityError),
    /// The source is unreachable or refused; the last state stays in use.
    Unavailable(Source, String),
    /// The source answers again and missed nothing (a watch resumed from its version).
    Available(Source),
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

/// How the watchers (re)list, which decides what a list costs the API server. Every mode
/// decodes item by item, so none costs the agent more than one object at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialList {
    /// `resourceVersion=0`: served from the API server's watch cache, never a quorum read
    /// from etcd (what client-go informers do). The cache ignores `limit`, so each kind
    /// arrives as one response, which the API server builds whole in its own memory.
    #[default]
    Cache,
    /// Consistent paged lists, 500 objects per page: bounded response size, but each page
    /// may be read from etcd.
    Paged,
    /// One watch that streams the initial state (`sendInitialEvents`, Kubernetes 1.27+
    /// with the WatchList feature on): from the cache, object by object, the cheapest
    /// for the API server.
    Streaming,
}

/// Start the four cluster-wide watchers (slim objects); events arrive on `tx` until it
/// is dropped.
pub fn spawn_all(client: Client, list: InitialList, tx: Sender<WatchEvent>) {
    let setup = |kind| Setup {
        list,
        fields: None,
        source: Source::Api(kind),
        sweeps: true,
    };
    tokio::spawn(reflector::run(
        Api::<Slim<Pod>>::all(client.clone()),
        setup(Kind::Pod),
        tx.clone(),
    ));
    tokio::spawn(reflector::run(
        Api::<Slim<Namespace>>::all(client.clone()),
        setup(Kind::Namespace),
        tx.clone(),
    ));
    tokio::spawn(reflector::run(
        Api::<Slim<Node>>::all(client.clone()),
        setup(Kind::Node),
        tx.clone(),
    ));
    tokio::spawn(reflector::run(
        Api::<Slim<Service>>::all(client),
        setup(Kind::Service),
        tx,
    ));
}

/// Index mode: the pods of this node only (`spec.nodeName` field selector), straight from
/// the API so a new local pod is known without a hop through the index. Its lists are
/// not relists of the inventory (the index's snapshot is): they only add and update.
pub fn spawn_local_pods(client: Client, node: &str, list: InitialList, tx: Sender<WatchEvent>) {
    let setup = Setup {
        list,
        fields: Some(format!("spec.nodeName={node}")),
        source: Source::LocalPods,
        sweeps: false,
    };
    tokio::spawn(reflector::run(Api::<Slim<Pod>>::all(client), setup, tx));
}
