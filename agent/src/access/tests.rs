//! The decision rules against a stand-in for the API that counts what it is asked.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// Tokens: "admin" reads everything, "alpha" reads alpha-web only, "gone" is revoked.
#[derive(Default)]
struct Fake {
    asked: AtomicUsize,
}

impl Review for Fake {
    async fn authenticate(&self, token: &str) -> Result<Option<User>, ReviewError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(matches!(token, "admin" | "alpha").then(|| User {
            name: token.into(),
            ..Default::default()
        }))
    }
    async fn authorize(&self, user: &User, ns: Option<&str>) -> Result<bool, ReviewError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(user.name == "admin" || (user.name == "alpha" && ns == Some("alpha-web")))
    }
    async fn authorize_path(&self, user: &User, path: &str) -> Result<bool, ReviewError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(user.name == "admin" && path == "/metrics")
    }
}

#[test]
fn metrics_need_a_token_granted_the_path() {
    let g = Guard::new(Fake::default(), Duration::from_secs(30));
    run(async {
        assert_eq!(g.check_path(None, "/metrics").await, Err(Denied::NoToken));
        assert_eq!(
            g.check_path(Some("gone"), "/metrics").await,
            Err(Denied::BadToken)
        );
        assert_eq!(g.check_path(Some("admin"), "/metrics").await, Ok(()));
        assert!(matches!(
            g.check_path(Some("alpha"), "/metrics").await,
            Err(Denied::Forbidden(m)) if m.contains("nonResourceURLs")
        ));
    });
}

fn wanted(ns: &[&str]) -> Wanted {
    Wanted {
        namespaces: ns.iter().map(|s| s.to_string()).collect(),
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn tokens_decide_the_scope() {
    let g = Guard::new(Fake::default(), Duration::from_secs(30));
    run(async {
        assert_eq!(g.decide(None, &wanted(&[])).await, Err(Denied::NoToken));
        assert_eq!(
            g.decide(Some("gone"), &wanted(&[])).await,
            Err(Denied::BadToken)
        );
        assert_eq!(g.decide(Some("admin"), &wanted(&[])).await, Ok(Scope::All));
        assert!(matches!(
            g.decide(Some("alpha"), &wanted(&[])).await,
            Err(Denied::Forbidden(m)) if m.contains("ask for ?namespace=")
        ));
        assert_eq!(
            g.decide(Some("alpha"), &wanted(&["alpha-web", "alpha-jobs"]))
                .await,
            Ok(Scope::Namespaces(["alpha-web".to_owned()].into()))
        );
        assert!(matches!(
            g.decide(Some("alpha"), &wanted(&["beta-api"])).await,
            Err(Denied::Forbidden(_))
        ));
    });
}

#[test]
fn decisions_are_cached_per_token_and_question() {
    let g = Guard::new(Fake::default(), Duration::from_secs(30));
    run(async {
        g.decide(Some("alpha"), &wanted(&["alpha-web"]))
            .await
            .unwrap();
        // authenticate, cluster-wide, alpha-web
        assert_eq!(g.review.asked.load(Ordering::SeqCst), 3);
        for _ in 0..10 {
            g.decide(Some("alpha"), &wanted(&["alpha-web"]))
                .await
                .unwrap();
        }
        assert_eq!(g.review.asked.load(Ordering::SeqCst), 3);
        let _ = g.decide(Some("gone"), &wanted(&[])).await;
        let _ = g.decide(Some("gone"), &wanted(&[])).await;
        assert_eq!(
            g.review.asked.load(Ordering::SeqCst),
            4,
            "refusals are cached too"
        );
    });
}
