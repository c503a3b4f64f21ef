//! The index's `/v1/flows`: the caller's query and token, relayed to every node.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use tokio::sync::Semaphore;

use super::{targets, RelayMetrics, SharedRelay};
use crate::{export::guarded::bearer, identity::SharedStore};

/// Where the index serves the relayed query.
pub const PATH: &str = "/v1/flows";

/// Relayed queries in flight at once: each may hold `concurrency` node requests.
const IN_FLIGHT: usize = 4;

#[derive(Clone)]
struct RelayState {
    relay: SharedRelay,
    store: SharedStore,
    slots: Arc<Semaphore>,
    metrics: RelayMetrics,
}

/// The route, for the index's router. Needs no token review of its own: each agent
/// reviews the caller's token and scopes its answer.
pub fn router(relay: SharedRelay, store: SharedStore, metrics: RelayMetrics) -> Router {
    Router::new()
        .route(PATH, get(flows))
        .with_state(RelayState {
            relay,
            store,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            metrics,
        })
}

fn refuse(status: StatusCode, why: &str) -> Response {
    let mut r = (status, format!("{why}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn flows(State(s): State<RelayState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(token) = bearer(&headers).filter(|t| !t.is_empty()) else {
        s.metrics.query("no_token");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no bearer token: each node's agent decides what the caller may read, so the caller's token is required",
        );
    };
    let Ok(_slot) = s.slots.clone().try_acquire_owned() else {
        s.metrics.query("busy");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the index is relaying as many queries as it allows; try again shortly",
        );
    };
    let targets = targets(&s.store.read());
    if targets.is_empty() {
        s.metrics.query("no_nodes");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the index knows no nodes yet (its inventory is still listing)",
        );
    }
    let path = match uri.query() {
        Some(q) if !q.is_empty() => format!("/flows?{q}"),
        _ => "/flows".to_owned(),
    };
    let timer = s.metrics.duration.start_timer();
    let merged = s.relay.query(targets, &path, Some(&token)).await;
    timer.observe_duration();
    s.metrics.query("answered");
    for n in &merged.nodes {
        s.metrics.node(n.status);
    }
    Json(merged).into_response()
}
