//! Who may read flow records, and what of them, when the records listener is exposed on
//! the node address (`--flows-auth kubernetes`): a bearer token is reviewed by the
//! Kubernetes API, then the caller is either a cluster-wide reader or a reader of the
//! namespaces it asked for that RBAC grants it ([`Scope`]). docs/security.md has the model.

mod cache;
pub mod review;
mod scope;
pub mod tls;

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

pub use review::{KubeReview, Review, ReviewError, User};
pub use scope::Scope;

use cache::Cache;

/// Most namespaces checked for one request (a tenant's namespaces): bounds the reviews one
/// request can cause.
pub const MAX_NAMESPACES: usize = 64;

/// Why a request gets no records.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error(
        "no bearer token: send `Authorization: Bearer <token>` (tenantflow flows --token-file)"
    )]
    NoToken,
    #[error("the token was not accepted by the Kubernetes API (expired, revoked or unknown)")]
    BadToken,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
}

/// What the caller asked to see: `?namespace=` and the namespaces of `?tenant=`.
#[derive(Debug, Default)]
pub struct Wanted {
    pub namespaces: Vec<String>,
}

pub struct Guard<R> {
    review: R,
    users: Mutex<Cache<Option<User>>>,
    grants: Mutex<Cache<bool>>,
}

impl<R: Review> Guard<R> {
    pub fn new(review: R, ttl: Duration) -> Self {
        Self {
            review,
            users: Mutex::new(Cache::new(ttl)),
            grants: Mutex::new(Cache::new(ttl)),
        }
    }

    /// The scope of a request carrying `token` (None: no Authorization header).
    pub async fn decide(&self, token: Option<&str>, wanted: &Wanted) -> Result<Scope, Denied> {
        let (token, user) = self.caller(token).await?;
        if self.granted(token, &user, Question::Flows(None)).await? {
            return Ok(Scope::All);
        }
        if wanted.namespaces.is_empty() {
            return Err(Denied::Forbidden(format!(
                "{} may not read flows cluster-wide: ask for ?namespace=<one you may read> or \
                 ?tenant=<yours> (RBAC: get on {}.{} in that namespace)",
                user.name,
                review::RESOURCE,
                review::GROUP
            )));
        }
        let mut allowed = std::collections::BTreeSet::new();
        for ns in wanted.namespaces.iter().take(MAX_NAMESPACES) {
            if self
                .granted(token, &user, Question::Flows(Some(ns)))
                .await?
            {
                allowed.insert(ns.clone());
            }
        }
        if allowed.is_empty() {
            return Err(Denied::Forbidden(format!(
                "{} may not read flows in {}",
                user.name,
                wanted.namespaces.join(", ")
            )));
        }
        Ok(Scope::Namespaces(allowed))
    }

    /// A request for the non-resource URL `path` (/metrics): allowed or why not.
    pub async fn check_path(&self, token: Option<&str>, path: &str) -> Result<(), Denied> {
        let (token, user) = self.caller(token).await?;
        if self.granted(token, &user, Question::Path(path)).await? {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!(
                "{} may not get {path} (RBAC: nonResourceURLs [\"{path}\"], verb get)",
                user.name
            )))
        }
    }

    /// The token and who it belongs to, or why the request gets nothing.
    async fn caller<'t>(&self, token: Option<&'t str>) -> Result<(&'t str, User), Denied> {
        let token = token.filter(|t| !t.is_empty()).ok_or(Denied::NoToken)?;
        let user = self.user(token).await?.ok_or(Denied::BadToken)?;
        Ok((token, user))
    }

    async fn user(&self, token: &str) -> Result<Option<User>, Denied> {
        let now = Instant::now();
        if let Some(u) = lock(&self.users).get(token, "", now) {
            return Ok(u);
        }
        let u = self
            .review
            .authenticate(token)
            .await
            .map_err(|e| Denied::Unavailable(e.to_string()))?;
        lock(&self.users).put(token, "", u.clone(), now);
        Ok(u)
    }

    /// The answer to `q` for this token's user, from the cache or the API.
    async fn granted(&self, token: &str, user: &User, q: Question<'_>) -> Result<bool, Denied> {
        let now = Instant::now();
        let key = q.key();
        if let Some(g) = lock(&self.grants).get(token, key, now) {
            return Ok(g);
        }
        let answer = match q {
            Question::Flows(ns) => self.review.authorize(user, ns).await,
            Question::Path(path) => self.review.authorize_path(user, path).await,
        };
        let g = answer.map_err(|e| Denied::Unavailable(e.to_string()))?;
        lock(&self.grants).put(token, key, g, now);
        Ok(g)
    }
}

/// What a SubjectAccessReview asks.
#[derive(Clone, Copy)]
enum Question<'a> {
    /// `get` on flows.tenantflow.io in a namespace (None: in all).
    Flows(Option<&'a str>),
    /// `get` on a non-resource URL.
    Path(&'a str),
}

impl<'a> Question<'a> {
    /// The cache key: a namespace, `*` for all, or the URL path (which alone starts with `/`).
    fn key(self) -> &'a str {
        match self {
            Question::Flows(ns) => ns.unwrap_or("*"),
            Question::Path(path) => path,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
