//! Review decisions kept for a bounded time, so a busy caller costs the API server one
//! TokenReview and a few SubjectAccessReviews per TTL, and a revoked token or binding stops
//! working within one TTL.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Most decisions kept; past it, expired ones go, then all (the next requests re-ask).
const CAPACITY: usize = 4096;

pub struct Cache<V> {
    ttl: Duration,
    entries: HashMap<(String, String), (V, Instant)>,
}

impl<V: Clone> Cache<V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: HashMap::new(),
        }
    }

    /// The decision for (`token`, `what`) if made less than a TTL ago.
    pub fn get(&self, token: &str, what: &str, now: Instant) -> Option<V> {
        let (v, at) = self.entries.get(&(token.to_owned(), what.to_owned()))?;
        (now.duration_since(*at) < self.ttl).then(|| v.clone())
    }

    pub fn put(&mut self, token: &str, what: &str, v: V, now: Instant) {
        if self.entries.len() >= CAPACITY {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if self.entries.len() >= CAPACITY {
                self.entries.clear();
            }
        }
        self.entries
            .insert((token.to_owned(), what.to_owned()), (v, now));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(30));
        c.put("tok", "*", true, t0);
        assert_eq!(c.get("tok", "*", t0 + Duration::from_secs(29)), Some(true));
        assert_eq!(c.get("tok", "*", t0 + Duration::from_secs(30)), None);
        assert_eq!(c.get("other", "*", t0), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(30));
        for i in 0..CAPACITY * 3 {
            c.put(&format!("t{i}"), "*", true, t0);
            assert!(c.len() <= CAPACITY);
        }
    }
}
