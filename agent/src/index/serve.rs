//! The index's stream endpoint: where a follower stands decides what it is sent first
//! (deltas to resume, or a full resync), then every change as it happens, with a
//! heartbeat when nothing does.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Query, State},
    http::header,
    response::IntoResponse,
    routing::get,
    Router,
};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{
    broadcast::{error::RecvError, Receiver},
    watch,
};

use super::{
    journal::{Delta, Journal, Start},
    protocol::{Frame, Position, HEARTBEAT, PATH},
};

pub fn router(journal: Arc<Journal>) -> Router {
    Router::new().route(PATH, get(stream)).with_state(journal)
}

/// Counts a follower for as long as its stream lives.
struct Following(Arc<Journal>);

impl Following {
    fn new(j: Arc<Journal>) -> Self {
        j.metrics.followers.inc();
        Self(j)
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.metrics.followers.dec();
    }
}

async fn stream(State(j): State<Arc<Journal>>, Query(at): Query<Position>) -> impl IntoResponse {
    let (start, rx) = j.start(at);
    let mut stale = j.staleness();
    let count = |part, frames, bytes| j.metrics.sent(part, frames, bytes);
    let (mut first, deltas, mut last) = match start {
        Start::Resume(d) => (Vec::new(), d, at.after),
        Start::Resync(s, d) => {
            // Snapshot frame and objects.
            count("snapshot", 1, s.body.len());
            (vec![s.body.clone()], d, s.version)
        }
    };
    for d in deltas {
        count("delta", 1, d.line.len());
        last = d.v;
        first.push(d.line);
    }
    // Caught up with everything the index had when the stream began.
    let synced = Frame::Synced {
        version: last,
        stale: *stale.borrow_and_update(),
    }
    .encode();
    count("synced", 1, synced.len());
    first.push(Bytes::from(synced));
    let live = futures::stream::unfold(
        (rx, stale, last, Following::new(j.clone())),
        |(mut rx, mut stale, last, f)| async move {
            let (line, v) = next(&mut rx, &mut stale, last).await?;
            let part = if v == last { "heartbeat" } else { "delta" };
            f.0.metrics.sent(part, 1, line.len());
            Some((Ok::<_, std::io::Error>(line), (rx, stale, v, f)))
        },
    );
    let body = futures::stream::iter(first.into_iter().map(Ok)).chain(live);
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
}

/// The next line for a follower at `last`: a delta, or a heartbeat after a quiet spell or
/// when the index's staleness changes. `None` ends the stream: the follower fell too far
/// behind (it resumes from the ring on reconnect) or the index is stopping.
async fn next(
    rx: &mut Receiver<Delta>,
    stale: &mut watch::Receiver<bool>,
    last: u64,
) -> Option<(Bytes, u64)> {
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(d) if d.v <= last => continue,
                Ok(d) => return Some((d.line, d.v)),
                Err(RecvError::Lagged(_) | RecvError::Closed) => return None,
            },
            changed = stale.changed() => {
                changed.ok()?;
            }
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        let stale = *stale.borrow_and_update();
        let beat = Frame::Heartbeat {
            version: last,
            stale,
        };
        return Some((Bytes::from(beat.encode()), last));
    }
}
