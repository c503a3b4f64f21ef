//! Series of the agent's own metrics labelled by a pod's namespace and tenant (DNS
//! NXDOMAIN and unapproved-resolver counts), dropped like the flow families' series once
//! their namespace has been gone longer than the grace period. Namespaces come and go (CI
//! runs, preview environments), and every series left behind is scraped and stored forever.

use std::time::{Duration, Instant};

use prometheus::IntCounterVec;

use crate::{identity::Store, net::FastMap};

/// How often deleted namespaces are looked for: one lookup per series each time.
const GC_EVERY: Duration = Duration::from_secs(1);

/// Whether a series whose referent is `gone` (or not) has been gone for the whole grace
/// period, keeping `gone_since` current: set at the first miss (which never drops, so a
/// referent is seen missing twice), cleared when it is back. Shared with the flow
/// families' series ([`super::FlowMetrics`]).
pub(super) fn past_grace(
    gone: bool,
    gone_since: &mut Option<Instant>,
    now: Instant,
    grace: Duration,
) -> bool {
    if !gone {
        *gone_since = None;
        return false;
    }
    match gone_since {
        None => {
            *gone_since = Some(now);
            false
        }
        Some(t) => now.duration_since(*t) >= grace,
    }
}

pub struct NamespaceSeries {
    /// (namespace, tenant) of every series counted into, and since when its namespace
    /// has been missing from the inventory.
    labels: FastMap<(String, String), Option<Instant>>,
    grace: Duration,
    last_gc: Option<Instant>,
}

impl NamespaceSeries {
    pub fn new(grace: Duration) -> Self {
        Self {
            labels: FastMap::default(),
            grace,
            last_gc: None,
        }
    }

    /// Count one into `vec`'s series for this namespace and tenant.
    pub fn inc(&mut self, vec: &IntCounterVec, namespace: &str, tenant: &str) {
        vec.with_label_values(&[namespace, tenant]).inc();
        let key = (namespace.to_owned(), tenant.to_owned());
        self.labels.entry(key).or_insert(None);
    }

    /// Whether [`Self::gc`] has work this time (at most once a second).
    pub fn due(&self, now: Instant) -> bool {
        self.last_gc
            .is_none_or(|t| now.duration_since(t) >= GC_EVERY)
    }

    /// Drop, from every one of `vecs`, the series of namespaces gone from `store` for
    /// longer than the grace period. Series with no namespace (host endpoints) stay, and
    /// nothing is dropped while the inventory is empty: then nothing is known deleted.
    pub fn gc(&mut self, store: &Store, now: Instant, vecs: &[&IntCounterVec]) {
        self.last_gc = Some(now);
        if store.is_empty() {
            return;
        }
        let grace = self.grace;
        self.labels.retain(|(namespace, tenant), gone_since| {
            let gone = !namespace.is_empty() && store.namespace(namespace).is_none();
            if !past_grace(gone, gone_since, now, grace) {
                return true;
            }
            for vec in vecs {
                // A family that never counted this namespace has no such series.
                let _ = vec.remove_label_values(&[namespace, tenant]);
            }
            false
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.labels.len()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Opts, Registry};

    use super::*;
    use crate::identity::{Change, Labels, NamespaceMeta, Object, Store};

    fn family(r: &Registry, name: &str) -> IntCounterVec {
        let v = IntCounterVec::new(Opts::new(name, "test"), &["src_namespace", "src_tenant"])
            .expect("valid family");
        r.register(Box::new(v.clone())).expect("registered once");
        v
    }

    fn store_with(namespaces: &[&str]) -> Store {
        let mut s = Store::default();
        for n in namespaces {
            s.apply(Change::Apply(Object::Namespace(NamespaceMeta {
                name: (*n).into(),
                labels: Labels::new(),
                annotations: Labels::new(),
            })));
        }
        s
    }

    fn series(r: &Registry) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for f in r.gather() {
            for m in f.get_metric() {
                let labels: Vec<&str> = m.get_label().iter().map(|l| l.value()).collect();
                out.push((
                    f.name().to_owned(),
                    labels.join("/"),
                    m.get_counter().get_value() as u64,
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_deleted_namespaces_series_go_after_the_grace_period_and_others_stay() {
        let r = Registry::new();
        let (nx, unapproved) = (family(&r, "nx"), family(&r, "unapproved"));
        let mut ns = NamespaceSeries::new(Duration::from_secs(300));
        ns.inc(&nx, "alpha-web", "alpha");
        ns.inc(&nx, "alpha-web", "alpha");
        ns.inc(&unapproved, "alpha-web", "alpha");
        ns.inc(&nx, "beta-api", "beta");
        ns.inc(&unapproved, "", "");
        let t0 = Instant::now();
        let vecs = [&nx, &unapproved];

        // alpha-web deleted: kept through the grace period.
        let store = store_with(&["beta-api"]);
        ns.gc(&store, t0, &vecs);
        ns.gc(&store, t0 + Duration::from_secs(299), &vecs);
        assert_eq!(series(&r).len(), 4);
        assert_eq!(ns.len(), 3);

        ns.gc(&store, t0 + Duration::from_secs(300), &vecs);
        assert_eq!(
            series(&r),
            vec![
                ("nx".to_owned(), "beta-api/beta".to_owned(), 1),
                ("unapproved".to_owned(), "/".to_owned(), 1),
            ]
        );
        assert_eq!(ns.len(), 2);
    }

    #[test]
    fn a_namespace_back_within_the_grace_period_keeps_its_series() {
        let r = Registry::new();
        let nx = family(&r, "nx");
        let mut ns = NamespaceSeries::new(Duration::from_secs(60));
        ns.inc(&nx, "alpha-web", "alpha");
        let t0 = Instant::now();
        ns.gc(&store_with(&["beta-api"]), t0, &[&nx]);
        ns.gc(
            &store_with(&["alpha-web"]),
            t0 + Duration::from_secs(30),
            &[&nx],
        );
        // Its clock restarted when it came back: 61 s after the first miss is not enough.
        ns.gc(
            &store_with(&["beta-api"]),
            t0 + Duration::from_secs(61),
            &[&nx],
        );
        assert_eq!(
            series(&r),
            vec![("nx".to_owned(), "alpha-web/alpha".to_owned(), 1)]
        );
        ns.gc(
            &store_with(&["beta-api"]),
            t0 + Duration::from_secs(121),
            &[&nx],
        );
        assert_eq!(series(&r), vec![]);
    }

    #[test]
    fn nothing_is_dropped_while_the_inventory_is_empty() {
        let r = Registry::new();
        let nx = family(&r, "nx");
        let mut ns = NamespaceSeries::new(Duration::ZERO);
        ns.inc(&nx, "alpha-web", "alpha");
        ns.gc(&Store::default(), Instant::now(), &[&nx]);
        assert_eq!(series(&r).len(), 1);
    }
}
