//! Series bookkeeping: which label values each family holds, the handles an open
//! connection counts through, the cap past which traffic goes to `_overflow`, and dropping
//! series of deleted namespaces and workloads after the grace period.

use super::*;

/// What a series refers to, so it can be dropped when that is deleted.
#[derive(Clone, Debug, Default)]
pub(super) struct Refs {
    pub(super) namespaces: Vec<String>,
    pub(super) workloads: Vec<(String, String)>,
    pub(super) gone_since: Option<Instant>,
}

/// A connection's counters per direction (tx, rx), looked up when first needed.
pub(super) struct Handles {
    pub(super) gen: u64,
    pub(super) dirs: [Dir; 2],
}

pub(super) enum Dir {
    Unresolved,
    /// Past the family's cap: counted through the overflow series.
    Capped,
    /// (packets, bytes)
    Series(IntCounter, IntCounter),
}

/// Add `delta` to the series `h` holds; returns the directions with traffic whose family
/// is capped (counted through [`FlowMetrics::inc`] by the caller).
pub(super) fn count(h: &Handles, delta: [Counts; 2]) -> [bool; 2] {
    let mut capped = [false; 2];
    for (i, (dir, d)) in h.dirs.iter().zip(delta).enumerate() {
        match dir {
            _ if d.is_zero() => {}
            Dir::Series(packets, bytes) => {
                packets.inc_by(d.packets);
                bytes.inc_by(d.bytes);
            }
            _ => capped[i] = true,
        }
    }
    capped
}

pub(super) fn label(v: Option<&str>) -> String {
    v.unwrap_or_default().to_owned()
}

impl FlowMetrics {
    /// The packets and bytes series of one direction of a connection with this
    /// classification, registered now; `Capped` where a family is past its cap (those go
    /// through [`Self::inc`], which counts the overflow).
    pub(super) fn resolve(&mut self, k: &Classification, dir: &str) -> Dir {
        let mut l = self.base(k);
        l.0.push(dir.to_owned());
        let capped = |f: Family, me: &Self| {
            !me.series.contains_key(&(f, l.0.clone()))
                && me.lens.get(&f).copied().unwrap_or(0) >= me.cfg.max_series
        };
        if capped(Family::Packets, self) || capped(Family::Bytes, self) {
            return Dir::Capped;
        }
        match (
            self.series_counter(Family::Packets, l.clone()),
            self.series_counter(Family::Bytes, l),
        ) {
            (Some(p), Some(b)) => Dir::Series(p, b),
            _ => Dir::Capped,
        }
    }

    /// The counter of this series, registered if new; `None` past the family's cap.
    pub(super) fn series_counter(
        &mut self,
        f: Family,
        (values, refs): (Vec<String>, Refs),
    ) -> Option<IntCounter> {
        let key = (f, values);
        if !self.series.contains_key(&key) {
            if self.lens.get(&f).copied().unwrap_or(0) >= self.cfg.max_series {
                return None;
            }
            self.series.insert(key.clone(), refs);
            *self.lens.entry(f).or_default() += 1;
        }
        let v: Vec<&str> = key.1.iter().map(String::as_str).collect();
        Some(self.vecs[&f].with_label_values(&v))
    }

    /// Labels of the flows/bytes/packets families (without direction) and what they refer to.
    pub(super) fn base(&self, k: &Classification) -> (Vec<String>, Refs) {
        let src = &k.src_identity;
        let far = far_end(k);
        let mut l = vec![
            label(src.namespace.as_deref()),
            label(src.tenant.as_deref()),
            label(far.namespace.as_deref()),
            label(far.tenant.as_deref()),
            k.flow_class.as_str().to_owned(),
            k.scope.as_str().to_owned(),
            k.cross_tenant.to_string(),
            k.egress.as_str().to_owned(),
        ];
        if self.cfg.workload_labels {
            l.push(label(src.workload.as_deref()));
            l.push(label(far.workload.as_deref()));
        }
        (l, refs(&[src, far]))
    }

    pub(super) fn inc(&mut self, f: Family, (values, refs): (Vec<String>, Refs), by: u64) {
        if by == 0 {
            return;
        }
        let key = (f, values);
        let values = if self.series.contains_key(&key) {
            key.1
        } else if self.lens.get(&f).copied().unwrap_or(0) < self.cfg.max_series {
            self.series.insert(key.clone(), refs);
            *self.lens.entry(f).or_default() += 1;
            key.1
        } else {
            self.overflow.with_label_values(&[f.name()]).inc_by(by);
            // Same arity; direction (last label of bytes/packets) is kept.
            let mut v = vec![OVERFLOW.to_owned(); key.1.len()];
            if matches!(f, Family::Bytes | Family::Packets) {
                *v.last_mut().expect("direction label") = key.1.last().cloned().unwrap_or_default();
            }
            self.series.entry((f, v.clone())).or_default();
            v
        };
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        self.vecs[&f].with_label_values(&refs).inc_by(by);
    }

    /// Drop series whose namespace or workload has been gone longer than the grace period.
    /// One lookup per series (bounded by --metrics-max-series), never a walk over the
    /// inventory: at 200k pods that walk cost more than the harvest.
    pub(super) fn gc(&mut self, store: &Store, now: Instant) {
        if store.is_empty() {
            // No identity source (or not loaded yet): nothing can be known to be deleted.
            return;
        }
        let grace = self.cfg.grace;
        let mut drop = Vec::new();
        for (key, r) in self.series.iter_mut() {
            let gone = r.namespaces.iter().any(|n| store.namespace(n).is_none())
                || (self.cfg.workload_labels
                    && r.workloads.iter().any(|(n, w)| !store.has_workload(n, w)));
            if crate::export::namespace_series::past_grace(gone, &mut r.gone_since, now, grace) {
                drop.push(key.clone());
            }
        }
        if !drop.is_empty() {
            self.gen += 1;
        }
        for key in drop {
            let refs: Vec<&str> = key.1.iter().map(String::as_str).collect();
            let _ = self.vecs[&key.0].remove_label_values(&refs);
            self.series.remove(&key);
            if let Some(n) = self.lens.get_mut(&key.0) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// The end that decides the destination's namespace and tenant: a Service's backend pod
/// when DNAT told us which, else the destination as addressed.
pub(super) fn far_end(k: &Classification) -> &EndpointIdentity {
    match (&k.dst_identity.kind, &k.backend_identity) {
        (EndpointKind::Service, Some(b)) if b.kind == EndpointKind::Pod => b,
        _ => &k.dst_identity,
    }
}

pub(super) fn refs(ids: &[&EndpointIdentity]) -> Refs {
    let mut r = Refs::default();
    for id in ids {
        if let Some(ns) = &id.namespace {
            r.namespaces.push(ns.to_string());
            if let Some(w) = &id.workload {
                r.workloads.push((ns.to_string(), w.to_string()));
            }
        }
    }
    r
}
