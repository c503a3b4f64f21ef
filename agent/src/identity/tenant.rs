//! Which tenant a namespace belongs to. The most explicit source wins: the config's
//! namespace map, then the platform namespaces, then the namespace label, the namespace
//! annotation, the name regex; anything else is `unknown`.

use super::NamespaceMeta;
use crate::config::Tenancy;

/// A tenant name; `platform` and `unknown` are reserved.
pub type Tenant = String;

pub const PLATFORM: &str = "platform";
pub const UNKNOWN: &str = "unknown";

/// `ns` is `None` when the namespace object is not (yet) known: only name-based rules apply.
pub fn resolve(t: &Tenancy, name: &str, ns: Option<&NamespaceMeta>) -> Tenant {
    if let Some(tenant) = t.namespace_map.get(name) {
        return tenant.clone();
    }
    if t.platform_namespaces.iter().any(|p| p.matches(name)) {
        return PLATFORM.into();
    }
    let nonempty = |v: Option<&String>| v.filter(|s| !s.is_empty()).cloned();
    if let (Some(key), Some(ns)) = (&t.namespace_label, ns) {
        if let Some(v) = nonempty(ns.labels.get(key)) {
            return v;
        }
    }
    if let (Some(key), Some(ns)) = (&t.namespace_annotation, ns) {
        if let Some(v) = nonempty(ns.annotations.get(key)) {
            return v;
        }
    }
    if let Some(re) = &t.namespace_regex {
        if let Some(m) = re.captures(name).and_then(|c| c.name("tenant")) {
            if !m.as_str().is_empty() {
                return m.as_str().into();
            }
        }
    }
    UNKNOWN.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ns(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> NamespaceMeta {
        let m = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        NamespaceMeta {
            name: name.into(),
            labels: m(labels),
            annotations: m(annotations),
        }
    }

    fn tenancy(yaml: &str) -> Tenancy {
        Config::parse(yaml, "test").unwrap().tenancy
    }

    #[test]
    fn every_source_in_precedence_order() {
        let t = tenancy(
            "tenancy:\n  namespace_annotation: example.com/tenant\n  namespace_regex: '^(?P<tenant>[a-z]+)-'\n  namespace_map: {legacy-app: gamma, kube-system: ops}\n",
        );
        let cases: &[(&str, NamespaceMeta, &str)] = &[
            // The explicit map beats everything, even platform defaults.
            (
                "map over platform",
                ns("kube-system", &[("tenant", "x")], &[]),
                "ops",
            ),
            (
                "map over label",
                ns("legacy-app", &[("tenant", "x")], &[]),
                "gamma",
            ),
            (
                "platform default",
                ns("kube-public", &[("tenant", "x")], &[]),
                PLATFORM,
            ),
            ("platform glob", ns("aks-istio-ingress", &[], &[]), PLATFORM),
            (
                "label",
                ns(
                    "alpha-web",
                    &[("tenant", "alpha")],
                    &[("example.com/tenant", "z")],
                ),
                "alpha",
            ),
            (
                "empty label falls through",
                ns(
                    "beta-api",
                    &[("tenant", "")],
                    &[("example.com/tenant", "beta")],
                ),
                "beta",
            ),
            (
                "annotation",
                ns("team-x", &[], &[("example.com/tenant", "xray")]),
                "xray",
            ),
            ("regex", ns("delta-jobs", &[], &[]), "delta"),
            ("nothing matches", ns("standalone", &[], &[]), UNKNOWN),
        ];
        for (why, n, want) in cases {
            assert_eq!(resolve(&t, &n.name, Some(n)), *want, "{why}");
        }
    }

    #[test]
    fn defaults_use_the_tenant_label_only() {
        let t = Config::default().tenancy;
        assert_eq!(
            resolve(&t, "a", Some(&ns("a", &[("tenant", "alpha")], &[]))),
            "alpha"
        );
        assert_eq!(
            resolve(&t, "a-b", Some(&ns("a-b", &[], &[("tenant", "x")]))),
            UNKNOWN
        );
        assert_eq!(resolve(&t, "gatekeeper-system", None), PLATFORM);
        assert_eq!(
            resolve(&t, "alpha-web", None),
            UNKNOWN,
            "labels unknown until the namespace is"
        );
    }
}
