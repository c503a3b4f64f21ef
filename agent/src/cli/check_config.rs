//! `tenantflow check-config <file>`: validate a config (and the snapshot it names) and
//! explain what the agent will conclude from it, before anything is deployed.

use std::{fmt::Write as _, path::PathBuf};

use clap::Args;

use super::UsageError;
use crate::{
    config::Config,
    identity::{resolve_tenant, snapshot, Store},
};

#[derive(Debug, Clone, Args)]
pub struct CheckConfigArgs {
    /// The YAML config file to check.
    pub file: PathBuf,
}

pub fn run(args: CheckConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.file).map_err(|e| UsageError(e.to_string()))?;
    let store = match &config.snapshot {
        Some(p) => Some(Store::from_objects(
            snapshot::load(std::path::Path::new(p))
                .map_err(|e| UsageError(format!("identity.snapshot: {e}")))?,
        )),
        None => None,
    };
    print!(
        "{}",
        explain(&config, store.as_ref(), &args.file.display().to_string())
    );
    Ok(())
}

/// The human explanation `check-config` prints.
pub fn explain(c: &Config, store: Option<&Store>, file: &str) -> String {
    let mut o = String::new();
    let list = |v: &[ipnet::IpNet]| {
        if v.is_empty() {
            "(none)".to_owned()
        } else {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let t = &c.tenancy;
    let _ = writeln!(o, "{file}: valid");
    let _ = writeln!(o, "tenant of a namespace, first match wins:");
    let _ = writeln!(o, "  1. namespace_map: {} entries", t.namespace_map.len());
    let globs: Vec<&str> = t.platform_namespaces.iter().map(|p| p.as_str()).collect();
    let _ = writeln!(
        o,
        "  2. platform namespaces -> platform: {}",
        globs.join(", ")
    );
    let _ = writeln!(
        o,
        "  3. namespace label: {}",
        t.namespace_label.as_deref().unwrap_or("(off)")
    );
    let _ = writeln!(
        o,
        "  4. namespace annotation: {}",
        t.namespace_annotation.as_deref().unwrap_or("(off)")
    );
    let _ = writeln!(
        o,
        "  5. namespace regex: {}",
        t.namespace_regex
            .as_ref()
            .map(|r| r.as_str())
            .unwrap_or("(off)")
    );
    let _ = writeln!(o, "  otherwise: unknown");
    let _ = writeln!(
        o,
        "platform <-> tenant traffic counts as cross-tenant: {}",
        t.platform_is_cross_tenant
    );
    let _ = writeln!(o, "pod CIDRs: {}", list(&c.pod_cidrs));
    let _ = writeln!(o, "service CIDRs: {}", list(&c.service_cidrs));
    let _ = writeln!(o, "private ranges: {}", list(&c.private_cidrs));
    for g in &c.gateways {
        let sel: Vec<String> = g.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            o,
            "egress gateway: pods in {} with {{{}}}",
            g.namespace,
            sel.join(",")
        );
    }
    for p in &c.proxies {
        let port = p
            .port
            .map(|p| format!(" port {p}"))
            .unwrap_or_else(|| " any port".into());
        let _ = writeln!(o, "egress proxy/firewall: {}{port}", p.net);
    }
    for n in &c.proxy_names {
        let _ = writeln!(
            o,
            "egress proxy/firewall by name: {n} (an address its pod resolved from such a name)"
        );
    }
    let _ = writeln!(o, "egress exempt: {}", list(&c.exempt));
    for n in &c.exempt_names {
        let _ = writeln!(
            o,
            "egress exempt by name: {n} (an address its pod resolved from such a name; one \
             dialled without resolving stays judged by address)"
        );
    }
    if c.outbound.mediates_all() {
        let _ = writeln!(
            o,
            "outbound: user-defined routing: every egress flow passes the firewall (mediated)"
        );
    }
    for (port, name) in &c.sensitive_ports {
        let _ = writeln!(o, "sensitive: {name} = port {port} on node addresses");
    }
    for (name, net) in &c.sensitive_addresses {
        let _ = writeln!(o, "sensitive: {name} = {net}");
    }
    match store {
        None => {
            let _ = writeln!(
                o,
                "identity: no snapshot; the agent watches the Kubernetes API"
            );
        }
        Some(s) => {
            let counts: Vec<String> = s
                .counts()
                .iter()
                .map(|(k, n)| format!("{n} {k:?}"))
                .collect();
            let _ = writeln!(o, "identity snapshot: {}", counts.join(", "));
            let mut namespaces: Vec<&str> = s.pods().map(|p| &*p.namespace).collect();
            namespaces.sort_unstable();
            namespaces.dedup();
            for ns in namespaces {
                let tenant = resolve_tenant(t, ns, s.namespace(ns));
                let pods = s.pods().filter(|p| &*p.namespace == ns).count();
                let _ = writeln!(o, "  namespace {ns}: tenant {tenant}, {pods} pods");
            }
            for g in &c.gateways {
                let n = s
                    .pods()
                    .filter(|p| {
                        *p.namespace == *g.namespace
                            && g.labels
                                .iter()
                                .all(|(k, v)| p.labels.get(k) == Some(v.as_str()))
                    })
                    .count();
                let warn = if n == 0 {
                    " (none: check the selector)"
                } else {
                    ""
                };
                let _ = writeln!(o, "  gateway pods in {}: {n}{warn}", g.namespace);
            }
        }
    }
    o
}
