//! What one caller may see of the flow records: everything, or the connections with an end
//! in its namespaces, the far end reduced to what the caller's own pods already know (its
//! address, kind, tenant and node), never another tenant's pod, workload, Service or process.

use std::collections::BTreeSet;

use crate::{
    classify::{Classification, EndpointIdentity},
    process::ProcessInfo,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A cluster-wide reader.
    All,
    /// A reader of these namespaces only.
    Namespaces(BTreeSet<String>),
}

impl Scope {
    fn owns(&self, e: &EndpointIdentity) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(ns) => e.namespace.as_deref().is_some_and(|n| ns.contains(n)),
        }
    }

    /// At least one end (or the Service backend) of a record so classified is the caller's.
    pub fn admits(&self, k: &Classification) -> bool {
        self.owns(&k.src_identity)
            || self.owns(&k.dst_identity)
            || k.backend_identity.as_ref().is_some_and(|b| self.owns(b))
    }

    /// Reduce a record's identities and process to what this caller may see (call only
    /// for admitted records). Takes the parts, not the record: the export layer asks.
    pub fn redact(&self, k: &mut Classification, process: &mut Option<ProcessInfo>) {
        if *self == Scope::All {
            return;
        }
        for e in [&mut k.src_identity, &mut k.dst_identity]
            .into_iter()
            .chain(k.backend_identity.as_mut())
        {
            if !self.owns(e) {
                reduce(e);
            }
        }
        // A process is the caller's only when its cgroup is one of the caller's pods.
        let own_process = process.as_ref().is_some_and(|p| {
            p.pod.as_ref().is_some_and(|pod| {
                let ns = pod.split('/').next().unwrap_or("");
                matches!(self, Scope::Namespaces(set) if set.contains(ns))
            })
        });
        if !own_process {
            *process = None;
        }
    }
}

fn reduce(e: &mut EndpointIdentity) {
    e.pod = None;
    e.namespace = None;
    e.workload = None;
    e.service = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{export::ConnectionView, test_support::egress_view};

    fn alpha() -> Scope {
        Scope::Namespaces(["alpha-web".to_owned()].into())
    }

    fn redacted(s: &Scope, c: &ConnectionView) -> ConnectionView {
        let mut out = c.clone();
        s.redact(&mut out.class, &mut out.process);
        out
    }

    #[test]
    fn a_namespace_reader_sees_its_own_end_and_only_the_kind_and_tenant_of_the_other() {
        let mut c = egress_view();
        c.class.dst_identity.pod = Some("api-1".into());
        c.class.dst_identity.namespace = Some("beta-api".into());
        c.class.dst_identity.tenant = Some("beta".into());
        c.class.dst_identity.workload = Some("ReplicaSet/api-rs".into());
        assert!(alpha().admits(&c.class));
        let r = redacted(&alpha(), &c);
        assert_eq!(
            r.class.src_identity, c.class.src_identity,
            "own end untouched"
        );
        let d = &r.class.dst_identity;
        assert_eq!(
            (
                d.pod.as_deref(),
                d.namespace.as_deref(),
                d.workload.as_deref()
            ),
            (None, None, None)
        );
        assert_eq!(d.tenant.as_deref(), Some("beta"));
        assert_eq!(d.kind, c.class.dst_identity.kind);
        assert_eq!(
            (r.dst, r.dst_port),
            (c.dst, c.dst_port),
            "the address its pod used"
        );
        assert_eq!(redacted(&Scope::All, &c), c);
    }

    #[test]
    fn other_tenants_connections_are_not_admitted() {
        let c = egress_view();
        let beta = Scope::Namespaces(["beta-api".to_owned()].into());
        assert!(!beta.admits(&c.class));
        assert!(Scope::All.admits(&c.class));
    }

    #[test]
    fn a_process_is_shown_only_when_it_runs_in_the_callers_pod() {
        let mut c = egress_view();
        let p = |pod: Option<&str>| ProcessInfo {
            pid: 7,
            command: "curl".into(),
            cgroup_id: 1,
            cgroup: None,
            pod: pod.map(str::to_owned),
        };
        c.process = Some(p(None));
        assert_eq!(redacted(&alpha(), &c).process, None, "a host process");
        c.process = Some(p(Some("beta-api/api-1")));
        assert_eq!(redacted(&alpha(), &c).process, None);
        c.process = Some(p(Some("alpha-web/web-1")));
        assert_eq!(redacted(&alpha(), &c).process, c.process);
    }
}
