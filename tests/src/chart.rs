//! The Helm chart as the tests read it: rendered by the real helm (`helm template`, the
//! release `tenantflow` in namespace `tenantflow`), parsed into objects.

use std::{path::PathBuf, process::Command};

use serde::Deserialize;
use serde_json::Value;

/// The repository root (the chart, the rules file and the manifest are under it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The alert rules file every path ships (chart, PrometheusRule, Azure rule groups).
pub fn rules_file() -> PathBuf {
    root().join(xtask::rule_group::RULES)
}

/// `helm template` with `extra` flags: the rendered YAML. Panics with helm's output if it
/// fails.
pub fn template(extra: &[&str]) -> String {
    let helm = xtask::tools::helm();
    assert!(
        helm.exists(),
        "{} missing: run `cargo xtask setup`",
        helm.display()
    );
    let out = Command::new(helm)
        .current_dir(root())
        .args(["template", "tenantflow", "deploy/helm/tenantflow"])
        .args(["--namespace", "tenantflow"])
        .args(extra)
        .output()
        .expect("run helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm template: {text}");
    text
}

/// The objects of a rendered chart (empty documents left out).
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The first object of `kind`.
pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The agent container's arguments in the DaemonSet.
pub fn agent_args(docs: &[Value]) -> Vec<String> {
    find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the agent has args")
        .iter()
        .map(|a| a.as_str().expect("an arg is a string").to_owned())
        .collect()
}
