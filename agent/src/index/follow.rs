//! An agent following the identity index: one long-lived HTTP/2 stream whose frames
//! become the same identity changes the API watch produces, so the store and everything
//! after it do not know which source fed them. While the index is unreachable the last
//! inventory stays in use and the agent says so; it reconnects with backoff, to the next
//! replica address each time, and resumes from its version when the index still can.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc::Sender;
use tracing::{error, info};

use super::protocol::{Frame, Position, PATH};
use crate::identity::{
    watch::{Reason, Source, WatchEvent},
    Change, Kind,
};

/// The follower's own series (registered with the agent's metrics).
#[derive(Clone)]
pub struct FollowMetrics {
    pub connected: prometheus::IntGauge,
    pub last_frame: prometheus::IntGauge,
    pub resyncs: prometheus::IntCounter,
    /// `tenantflow_metadata_errors_total`: a snapshot unfit for this agent's config.
    pub errors: prometheus::IntCounter,
    /// Pod label keys this agent's egress-gateway selectors use.
    pub wanted_labels: std::collections::BTreeSet<String>,
}

/// An error and every cause under it, `: `-separated.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
        next = cause.source();
    }
    text
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum Broken {
    /// With its causes: reqwest's own text hides them ("error sending request"), and
    /// "invalid peer certificate: UnknownIssuer" is what tells a wrong CA apart.
    #[error("{}", causes(.0))]
    Http(#[from] reqwest::Error),
    #[error("index answered {0}: {1}")]
    Status(reqwest::StatusCode, String),
    #[error("bad frame from the index ({0}); starting over with a full resync")]
    Frame(serde_json::Error),
    #[error("the stream ended")]
    Ended,
    #[error("the agent is stopping")]
    Closed,
}

/// The longest wait between reconnections; a stream that lived longer than this was
/// healthy, and the next failure starts the backoff over.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The service account token the agent shows the index (re-read at every connection:
/// projected tokens rotate).
pub const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A CA certificate (PEM) is a few KiB.
const CA_MAX: u64 = 1 << 20;

/// The CA an `https://` index is verified with, read and parsed; the error names the file.
pub fn read_ca(path: &std::path::Path) -> Result<reqwest::Certificate, String> {
    let pem = crate::input::read_bytes(path, CA_MAX, "a PEM CA certificate is a few KiB")
        .map_err(|e| format!("--identity-index-ca {}: {e}", path.display()))?;
    reqwest::Certificate::from_pem(&pem).map_err(|e| {
        format!(
            "--identity-index-ca {}: not a PEM certificate ({e}); give the CA that signed the index's certificate (ca.crt of the chart's TLS Secret)",
            path.display()
        )
    })
}

fn client(ca: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5));
    if let Some(path) = ca {
        b = b.add_root_certificate(read_ca(path)?);
    }
    b.build().map_err(|e| e.to_string())
}

/// Follow the index at `urls` (base URLs of its replicas, tried in turn) until `tx`
/// closes, showing the token in `token_file` (when it exists); `https://` replicas are
/// verified with the CA in `ca`.
pub async fn follow(
    urls: Vec<String>,
    token_file: std::path::PathBuf,
    ca: Option<std::path::PathBuf>,
    tx: Sender<WatchEvent>,
    m: FollowMetrics,
) {
    let client = match client(ca.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(WatchEvent::Unavailable(
                    Source::Index,
                    format!("identity index client: {e}"),
                ))
                .await;
            return;
        }
    };
    let mut at = Position::default();
    let mut backoff = crate::backoff::Backoff::up_to(BACKOFF_MAX);
    for url in urls.iter().cycle() {
        let began = std::time::Instant::now();
        // Bounded and never blocking, like every file the agent reads.
        let token = crate::input::read(&token_file, 64 * 1024, "a token is a few KiB").ok();
        let e = stream(&client, url, token.as_deref(), &mut at, &tx, &m).await;
        m.connected.set(0);
        if matches!(e, Broken::Closed) {
            return;
        }
        if matches!(e, Broken::Frame(_)) {
            at = Position::default();
        }
        let msg = format!("identity index {url}: {e}");
        if tx
            .send(WatchEvent::Unavailable(Source::Index, msg))
            .await
            .is_err()
        {
            return;
        }
        // A stream that lived a while was healthy: start the backoff over.
        if began.elapsed() > BACKOFF_MAX {
            backoff.reset();
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

/// One stream, until it breaks. `at` advances with every frame applied.
async fn stream(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    at: &mut Position,
    tx: &Sender<WatchEvent>,
    m: &FollowMetrics,
) -> Broken {
    let mut req = client
        .get(format!("{}{PATH}", url.trim_end_matches('/')))
        .query(&[("epoch", at.epoch), ("after", at.after)]);
    if let Some(t) = token {
        req = req.bearer_auth(t.trim());
    }
    let resp = match req.send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let status = r.status();
            let why = r.text().await.unwrap_or_default();
            return Broken::Status(status, why.trim().to_owned());
        }
        Err(e) => return e.into(),
    };
    info!(
        url,
        epoch = at.epoch,
        after = at.after,
        "identity: following the index"
    );
    m.connected.set(1);
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut st = StreamState::default();
    loop {
        let chunk = match body.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => return e.into(),
            None => return Broken::Ended,
        };
        m.last_frame.set(crate::net::unix_seconds() as i64);
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + end];
            start += end + 1;
            let frame: Frame = match serde_json::from_slice(line) {
                Ok(f) => f,
                Err(e) => return Broken::Frame(e),
            };
            for ev in events(frame, at, &mut st, m) {
                if tx.send(ev).await.is_err() {
                    return Broken::Closed;
                }
            }
        }
        buf.drain(..start);
    }
}

/// What a follower knows of the stream it is reading.
#[derive(Debug, Default)]
struct StreamState {
    /// The epoch of a snapshot being read: the position moves to it only once the
    /// snapshot is complete, so a stream cut inside one resyncs rather than resuming half
    /// a store.
    resync: Option<u64>,
    /// The index said its own inventory is not current.
    index_stale: bool,
}

const INDEX_STALE: &str =
    "the identity index reports its own inventory stale (its API watches are down or relisting)";

/// What one frame means for the store and the index source's health, advancing `at`.
fn events(
    frame: Frame,
    at: &mut Position,
    st: &mut StreamState,
    m: &FollowMetrics,
) -> Vec<WatchEvent> {
    let change = |c| vec![WatchEvent::Change(c)];
    match frame {
        Frame::Snapshot { epoch, labels, .. } => {
            m.resyncs.inc();
            if let Some(kept) = labels {
                let missing: Vec<&String> = m
                    .wanted_labels
                    .iter()
                    .filter(|k| !kept.contains(k))
                    .collect();
                if !missing.is_empty() {
                    m.errors.inc();
                    error!(
                        ?missing,
                        "identity index drops pod labels this agent's egress-gateway selectors use: no pod will match them; give the index the agents' config (--config)"
                    );
                }
            }
            // Until `Synced`, nothing to resume from.
            *at = Position::default();
            st.resync = Some(epoch);
            std::iter::once(WatchEvent::Relisting(Source::Index, Reason::Resync))
                .chain(
                    Kind::ALL
                        .into_iter()
                        .map(|k| WatchEvent::Change(Change::Relist(k))),
                )
                .collect()
        }
        Frame::Apply { v, object } => {
            if st.resync.is_none() {
                at.after = at.after.max(v);
            }
            change(Change::Apply(object))
        }
        Frame::Delete { v, object } => {
            if st.resync.is_none() {
                at.after = at.after.max(v);
            }
            change(Change::Delete(object))
        }
        Frame::Synced { version, stale } => {
            let mut out = Vec::new();
            match st.resync.take() {
                Some(epoch) => {
                    *at = Position {
                        epoch,
                        after: version,
                    };
                    out.extend(
                        Kind::ALL
                            .into_iter()
                            .map(|k| WatchEvent::Change(Change::Listed(k))),
                    );
                    out.push(WatchEvent::Synced(Source::Index));
                }
                None => {
                    at.after = at.after.max(version);
                    out.push(WatchEvent::Available(Source::Index));
                }
            }
            st.index_stale = stale;
            if stale {
                out.push(WatchEvent::Unavailable(Source::Index, INDEX_STALE.into()));
            }
            out
        }
        Frame::Heartbeat { stale, .. } if stale != st.index_stale => {
            st.index_stale = stale;
            vec![if stale {
                WatchEvent::Unavailable(Source::Index, INDEX_STALE.into())
            } else {
                WatchEvent::Available(Source::Index)
            }]
        }
        Frame::Heartbeat { .. } => Vec::new(),
    }
}

/// The replica addresses and the CA, checked before anything starts. The token shown to
/// the index is a credential: `https://` needs the CA to verify the index with.
pub fn check_urls(urls: &[String], ca: Option<&std::path::Path>) -> Result<(), String> {
    if urls.is_empty() {
        return Err("--identity-index: give at least one index address".into());
    }
    if let Some(u) = urls
        .iter()
        .find(|u| !u.starts_with("http://") && !u.starts_with("https://"))
    {
        return Err(format!(
            "--identity-index {u}: give the index's base URL, e.g. https://tenantflow-index.tenantflow.svc:9993"
        ));
    }
    match (urls.iter().find(|u| u.starts_with("https://")), ca) {
        (Some(u), None) => Err(format!(
            "--identity-index {u}: an https index needs --identity-index-ca (the CA that signed its certificate)"
        )),
        (_, Some(path)) => read_ca(path).map(drop),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(wanted: &[&str]) -> FollowMetrics {
        FollowMetrics {
            connected: prometheus::IntGauge::new("c", "c").unwrap(),
            last_frame: prometheus::IntGauge::new("l", "l").unwrap(),
            resyncs: prometheus::IntCounter::new("r", "r").unwrap(),
            errors: prometheus::IntCounter::new("e", "e").unwrap(),
            wanted_labels: wanted.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn snapshot(labels: Option<&[&str]>) -> Frame {
        Frame::Snapshot {
            epoch: 7,
            version: 40,
            objects: 0,
            labels: labels.map(|l| l.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// A snapshot starts a relist of every kind; only `synced` gives a position to resume
    /// from, so a stream cut inside a snapshot resyncs instead of resuming half a store.
    #[test]
    fn a_snapshot_relists_every_kind_and_synced_completes_it() {
        let m = metrics(&["app"]);
        let (mut at, mut st) = (Position::default(), StreamState::default());
        let evs = events(snapshot(Some(&["app"])), &mut at, &mut st, &m);
        assert_eq!(evs.len(), 5);
        assert!(matches!(
            evs[0],
            WatchEvent::Relisting(Source::Index, Reason::Resync)
        ));
        assert!(evs[1..]
            .iter()
            .all(|e| matches!(e, WatchEvent::Change(Change::Relist(_)))));
        assert_eq!(at, Position::default(), "cut here: resync");
        let synced = Frame::Synced {
            version: 40,
            stale: false,
        };
        let evs = events(synced, &mut at, &mut st, &m);
        assert_eq!(
            evs.len(),
            5,
            "listed per kind, then the index source synced"
        );
        assert!(matches!(evs[4], WatchEvent::Synced(Source::Index)));
        assert_eq!(
            at,
            Position {
                epoch: 7,
                after: 40
            }
        );
        assert_eq!((m.resyncs.get(), m.errors.get()), (1, 0));
        let beat = |stale| Frame::Heartbeat { version: 40, stale };
        assert!(events(beat(false), &mut at, &mut st, &m).is_empty());
        // The index's own staleness reaches the follower as its index source's health.
        let evs = events(beat(true), &mut at, &mut st, &m);
        assert!(matches!(
            evs[..],
            [WatchEvent::Unavailable(Source::Index, _)]
        ));
        assert!(events(beat(true), &mut at, &mut st, &m).is_empty());
        let evs = events(beat(false), &mut at, &mut st, &m);
        assert!(matches!(evs[..], [WatchEvent::Available(Source::Index)]));
        // A resumed stream's `Synced` makes the source current again, no relist.
        let resumed = Frame::Synced {
            version: 55,
            stale: false,
        };
        let evs = events(resumed, &mut at, &mut st, &m);
        assert!(matches!(evs[..], [WatchEvent::Available(Source::Index)]));
        assert_eq!(at.after, 55);
    }

    /// An index that drops labels this agent's gateway selectors read would silently make
    /// every gateway pod an ordinary one: it is counted as an identity error and logged.
    #[test]
    fn an_index_dropping_labels_the_agent_selects_on_is_an_error() {
        let m = metrics(&["app", "role"]);
        let (mut at, mut st) = (Position::default(), StreamState::default());
        events(snapshot(Some(&["app"])), &mut at, &mut st, &m);
        assert_eq!(m.errors.get(), 1);
        events(snapshot(None), &mut at, &mut st, &m);
        assert_eq!(m.errors.get(), 1, "an index keeping every label is fine");
    }
}
