//! What stands before the records handlers: per-caller bounds (a cap on requests in
//! flight, a deadline per request) on every records listener, and on an exposed one the
//! guard that turns a bearer token into a [`Scope`] or a clear 401/403/503.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Query, Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::sync::Semaphore;

use super::Shared;
use crate::access::{Denied, Guard, Review, Wanted};

/// Requests served at once; more get 503 at once rather than queueing.
const IN_FLIGHT: usize = 16;
/// A request (including a slow client's) gets this long.
const DEADLINE: Duration = Duration::from_secs(30);

pub struct Bounds {
    permits: Semaphore,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            permits: Semaphore::new(IN_FLIGHT),
        }
    }
}

pub async fn bounded(State(b): State<Arc<Bounds>>, req: Request, next: Next) -> Response {
    let Ok(_permit) = b.permits.try_acquire() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("busy: {IN_FLIGHT} records requests in flight; retry\n"),
        )
            .into_response();
    };
    match tokio::time::timeout(DEADLINE, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request took longer than {}s\n", DEADLINE.as_secs()),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize, Default)]
struct Asked {
    namespace: Option<String>,
    tenant: Option<String>,
}

pub async fn authorize<R: Review>(
    State((guard, shared)): State<(Arc<Guard<R>>, Arc<Shared>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = bearer(&req);
    // Only what is needed to decide; the handler validates the whole query.
    let asked = Query::<Asked>::try_from_uri(req.uri())
        .map(|Query(a)| a)
        .unwrap_or_default();
    let mut wanted = Wanted::default();
    wanted.namespaces.extend(asked.namespace);
    if let Some(t) = &asked.tenant {
        wanted.namespaces.extend(shared.namespaces_of(t));
    }
    match guard.decide(token.as_deref(), &wanted).await {
        Ok(scope) => {
            req.extensions_mut().insert(scope);
            next.run(req).await
        }
        Err(d) => refusal(d),
    }
}

/// A path behind the same review: a token granted `get` on the request's path as a
/// non-resource URL (`/metrics`, what Prometheus' usual ClusterRole grants; the identity
/// index's `/v1/identity`, what the agent's ClusterRole grants).
pub async fn path_authorized<R: Review>(
    State(guard): State<Arc<Guard<R>>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    match guard.check_path(bearer(&req).as_deref(), &path).await {
        Ok(()) => next.run(req).await,
        Err(d) => refusal(d),
    }
}

fn bearer(req: &Request) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

/// 401 (with `WWW-Authenticate: Bearer`), 403 or 503, saying why.
fn refusal(d: Denied) -> Response {
    let status = match d {
        Denied::NoToken | Denied::BadToken => StatusCode::UNAUTHORIZED,
        Denied::Forbidden(_) => StatusCode::FORBIDDEN,
        Denied::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut resp = (status, format!("{d}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}
