//! One kind kept in step with the API server: list, watch from the list's version, and
//! list again whenever the server says that version is gone. Written here rather than
//! taken from `kube::runtime::watcher` for three reasons found at cluster scale: its
//! lists read the whole response before decoding it (a gigabyte of pods peaks at three),
//! it retries a watch answered `410 Gone` as an HTTP status with the same expired version
//! forever, and it cannot say when a relist starts and ends.
//!
//! Every path that means "your version is gone" relists: 410 as a status or as an ERROR
//! event, an expired continue token, and "too large resource version" (the server is
//! behind the client, as after an etcd restore), which relists with a consistent read.
//! Anything else (unreachable, 5xx, 429) retries the same step with jittered backoff;
//! a watch resumed at its version misses nothing and needs no relist.

use futures::{stream::BoxStream, StreamExt};
use kube::{
    api::{ListParams, WatchParams},
    core::{Status, WatchEvent as Wire},
    Api, Client,
};
use tokio::sync::mpsc::Sender;
use tokio_util::{compat::FuturesAsyncReadCompatExt, io::SyncIoBridge};
use tracing::{debug, warn};

use crate::backoff::Backoff;

use super::{
    list::{self, DecodeError},
    watch::{InitialList, Reason, Source, WatchEvent, Watched},
    Change, IdentityError,
};

/// How one reflector lists and what its lists mean.
#[derive(Clone, Debug)]
pub struct Setup {
    pub list: InitialList,
    /// A field selector (`spec.nodeName=…` for this node's pods).
    pub fields: Option<String>,
    pub source: Source,
    /// A list is the whole inventory of its kind: what it does not repeat goes
    /// (`Relist` … `Listed`). False for a partial view (this node's pods).
    pub sweeps: bool,
}

/// Objects per page of a paged (consistent) list.
const PAGE: u32 = 500;
/// The server ends a watch after this long; the reflector resumes from its version.
const WATCH_TIMEOUT_S: u32 = 290;

/// Why a step did not complete.
enum Failure {
    /// The version is gone: list again, for this reason.
    Relist(Reason),
    /// The server is unreachable or refused: retry after a backoff.
    Down(String),
    /// The receiver went away: the agent is stopping.
    Stopped,
}

type Events<K> = BoxStream<'static, Result<Wire<K>, kube::Error>>;

/// Run one kind until the receiver goes away.
pub async fn run<K: Watched>(api: Api<K>, setup: Setup, tx: Sender<WatchEvent>) {
    let client = api.clone().into_client();
    let mut r = Reflector {
        api,
        client,
        setup,
        tx,
        backoff: Backoff::default(),
        down: false,
    };
    r.run().await;
}

struct Reflector<K: Watched> {
    api: Api<K>,
    client: Client,
    setup: Setup,
    tx: Sender<WatchEvent>,
    backoff: Backoff,
    /// `Unavailable` was reported and nothing has succeeded since.
    down: bool,
}

impl<K: Watched> Reflector<K> {
    async fn run(&mut self) {
        let src = self.setup.source;
        let mut reason = Reason::Start;
        // Each attempt is announced before any wait: from then until `Synced` the source
        // is not current, however long the backoff before the list.
        if self.send(WatchEvent::Relisting(src, reason)).await.is_err() {
            return;
        }
        loop {
            match self.list_then_watch(reason).await {
                Failure::Stopped => return,
                Failure::Relist(r) => {
                    debug!(source = ?src, reason = r.label(), "identity: version gone, listing again");
                    reason = r;
                }
                Failure::Down(why) => {
                    if self.unavailable(why).await.is_err() {
                        return;
                    }
                }
            }
            if self.send(WatchEvent::Relisting(src, reason)).await.is_err() {
                return;
            }
            // Relists in a row (a server that expires every watch) and failed steps back
            // off; a watch that delivered anything reset the backoff.
            tokio::time::sleep(self.backoff.delay()).await;
        }
    }

    /// One cycle (announced by the caller): list, then watch until the version is gone or
    /// the server is.
    async fn list_then_watch(&mut self, reason: Reason) -> Failure {
        let src = self.setup.source;
        if self.setup.sweeps && self.change(Change::Relist(K::KIND)).await.is_err() {
            return Failure::Stopped;
        }
        // After "too large", the watch cache cannot be trusted to be current: read etcd.
        let listed = match (self.setup.list, reason) {
            (_, Reason::TooLarge) => self.list(true).await.map(|rv| (rv, None)),
            (InitialList::Streaming, _) => self.watch_list().await.map(|(rv, s)| (rv, Some(s))),
            (InitialList::Paged, _) => self.list(true).await.map(|rv| (rv, None)),
            (InitialList::Cache, _) => self.list(false).await.map(|rv| (rv, None)),
        };
        let (mut rv, stream) = match listed {
            Ok(l) => l,
            Err(f) => return f,
        };
        if self.setup.sweeps && self.change(Change::Listed(K::KIND)).await.is_err() {
            return Failure::Stopped;
        }
        self.down = false;
        if self.send(WatchEvent::Synced(src)).await.is_err() {
            return Failure::Stopped;
        }
        self.watch(&mut rv, stream).await
    }

    async fn send(&self, ev: WatchEvent) -> Result<(), ()> {
        self.tx.send(ev).await.map_err(|_| ())
    }

    async fn change(&self, c: Change) -> Result<(), ()> {
        self.send(WatchEvent::Change(c)).await
    }

    async fn unavailable(&mut self, why: String) -> Result<(), ()> {
        self.down = true;
        let ev = WatchEvent::Unavailable(self.setup.source, why);
        self.send(ev).await
    }

    /// A plain list, page by page (`consistent`: from etcd, 500 a page; otherwise the
    /// whole kind from the watch cache), each page decoded item by item. Returns the
    /// version to watch from.
    async fn list(&mut self, consistent: bool) -> Result<String, Failure> {
        let mut lp = ListParams {
            field_selector: self.setup.fields.clone(),
            ..Default::default()
        };
        if consistent {
            lp = lp.limit(PAGE);
        } else {
            lp.resource_version = Some("0".into());
        }
        loop {
            let req = kube::core::Request::new(self.api.resource_url())
                .list(&lp)
                .map_err(|e| Failure::Down(format!("{}: {e}", self.what())))?;
            let body = self
                .client
                .request_stream(req)
                .await
                .map_err(|e| self.failure(e))?;
            let page = self.decode(body).await?;
            match page.continue_token {
                Some(c) => lp.continue_token = Some(c),
                None => return Ok(page.resource_version),
            }
        }
    }

    /// Decode one list response on a blocking thread, each item straight onto the
    /// identity queue (whose bound is the backpressure).
    async fn decode(
        &self,
        body: impl futures::AsyncBufRead + Send + Unpin + 'static,
    ) -> Result<list::Page, Failure> {
        let reader = SyncIoBridge::new(body.compat());
        let tx = self.tx.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            list::decode(reader, |raw| {
                let ev = match serde_json::from_str::<K>(raw.get()) {
                    Ok(o) => object_event(&o, Change::Apply),
                    Err(e) => WatchEvent::BadObject(unreadable::<K>(&e)),
                };
                tx.blocking_send(ev).is_ok()
            })
        })
        .await;
        match decoded {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(DecodeError::Stopped)) => Err(Failure::Stopped),
            Ok(Err(e)) => Err(Failure::Down(format!("{}: {e}", self.what()))),
            Err(e) => Err(Failure::Down(format!("{}: list decoder: {e}", self.what()))),
        }
    }

    /// A watch-list (`sendInitialEvents`): the initial state as events up to the bookmark
    /// that ends it; the same stream goes on as the watch.
    async fn watch_list(&mut self) -> Result<(String, Events<K>), Failure> {
        let mut wp = WatchParams::streaming_lists().timeout(WATCH_TIMEOUT_S);
        wp.field_selector = self.setup.fields.clone();
        let mut stream = match self.api.watch(&wp, "").await {
            Ok(s) => s.boxed(),
            // An API server without the WatchList feature rejects the request as invalid:
            // list from the watch cache instead, from now on.
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 422) => {
                warn!(
                    source = self.setup.source.label(),
                    status = %s,
                    "identity: the API server refuses watch-lists (--initial-list streaming needs the WatchList feature); listing from its watch cache instead"
                );
                self.setup.list = InitialList::Cache;
                return Err(Failure::Relist(Reason::Start));
            }
            Err(e) => return Err(self.failure(e)),
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Wire::Bookmark(b))
                    if b.metadata.annotations.get("k8s.io/initial-events-end")
                        == Some(&"true".to_owned()) =>
                {
                    return Ok((b.metadata.resource_version, stream));
                }
                Ok(Wire::Bookmark(_)) => {}
                Ok(Wire::Error(s)) => return Err(self.status_failure(&s)),
                Ok(ev) => self.event(ev, &mut String::new()).await?,
                Err(e) => return Err(self.failure(e)),
            }
        }
        Err(Failure::Down(format!(
            "{}: the watch-list ended before its initial events did",
            self.what()
        )))
    }

    /// Watch from `rv` (continuing `first` if the list phase left a stream open) until the
    /// version is gone. A watch the server ends on time resumes at once; one that fails
    /// resumes at the same version after a backoff (nothing is missed, no relist).
    async fn watch(&mut self, rv: &mut String, mut first: Option<Events<K>>) -> Failure {
        let mut wp = WatchParams::default().timeout(WATCH_TIMEOUT_S);
        wp.field_selector = self.setup.fields.clone();
        loop {
            let opened = match first.take() {
                Some(s) => Ok(s),
                None => self.api.watch(&wp, rv).await.map(StreamExt::boxed),
            };
            let ended = match opened {
                Ok(stream) => self.follow(stream, rv).await,
                Err(e) => Some(self.failure(e)),
            };
            match ended {
                None => continue,
                Some(Failure::Down(why)) => {
                    if self.unavailable(why).await.is_err() {
                        return Failure::Stopped;
                    }
                    tokio::time::sleep(self.backoff.delay()).await;
                }
                Some(f) => return f,
            }
        }
    }

    /// Apply a watch stream's events until it ends (None: on time) or fails.
    async fn follow(&mut self, mut stream: Events<K>, rv: &mut String) -> Option<Failure> {
        if std::mem::take(&mut self.down)
            && self
                .send(WatchEvent::Available(self.setup.source))
                .await
                .is_err()
        {
            return Some(Failure::Stopped);
        }
        while let Some(ev) = stream.next().await {
            let step = match ev {
                Ok(ev) => self.event(ev, rv).await,
                Err(e) => Err(self.failure(e)),
            };
            if let Err(f) = step {
                return Some(f);
            }
            self.backoff.reset();
        }
        None
    }

    /// Apply one watch event, moving `rv` past it.
    async fn event(&self, ev: Wire<K>, rv: &mut String) -> Result<(), Failure> {
        let (obj, change): (K, fn(_) -> _) = match ev {
            Wire::Added(o) | Wire::Modified(o) => (o, Change::Apply),
            Wire::Deleted(o) => (o, Change::Delete),
            Wire::Bookmark(b) => {
                *rv = b.metadata.resource_version;
                return Ok(());
            }
            Wire::Error(s) => return Err(self.status_failure(&s)),
        };
        if let Some(v) = &obj.meta().resource_version {
            v.clone_into(rv);
        }
        self.send(object_event(&obj, change))
            .await
            .map_err(|_| Failure::Stopped)
    }

    fn what(&self) -> String {
        format!("{} watch", self.setup.source.label())
    }

    fn failure(&self, e: kube::Error) -> Failure {
        match e {
            kube::Error::Api(s) => self.status_failure(&s),
            e => Failure::Down(format!("{}: {e}", self.what())),
        }
    }

    fn status_failure(&self, s: &Status) -> Failure {
        match expiry(s) {
            Some(r) => Failure::Relist(r),
            None => Failure::Down(format!(
                "{}: {} ({}, {})",
                self.what(),
                s.message,
                s.reason,
                s.code
            )),
        }
    }
}

/// Does this status say the version asked for is gone, and so a relist is needed?
pub fn expiry(s: &Status) -> Option<Reason> {
    let too_large = s.details.as_ref().is_some_and(|d| {
        d.causes
            .iter()
            .any(|c| c.reason == "ResourceVersionTooLarge")
    }) || s
        .message
        .to_ascii_lowercase()
        .contains("too large resource version");
    if too_large {
        return Some(Reason::TooLarge);
    }
    (s.code == 410 || s.reason == "Expired" || s.reason == "Gone").then_some(Reason::Expired)
}

fn object_event<K: Watched>(o: &K, change: fn(super::Object) -> Change) -> WatchEvent {
    match o.to_object() {
        Ok(obj) => WatchEvent::Change(change(obj)),
        Err(e) => WatchEvent::BadObject(e),
    }
}

fn unreadable<K: Watched>(e: &serde_json::Error) -> IdentityError {
    IdentityError::Unreadable {
        kind: format!("{:?}", K::KIND),
        message: e.to_string(),
    }
}
