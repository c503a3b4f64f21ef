//! The netns lab: a kubenet-style two-node cluster built from network namespaces.
//!
//! Every name starts with the lab's prefix, so labs never collide and `down` removes exactly
//! what `up` made. [`LabGuard`] tears a lab down on drop, even when a test panics.

pub mod asm;
mod build;
pub mod chain_end;
pub mod cilium_routing;
pub mod cilium_snat;
pub mod compromise;
pub mod dns;
pub mod manifest;
pub mod socket_lb;
pub mod topology;

use anyhow::{bail, Result};

pub use topology::{Node, Pod, Service, Topology};

use crate::exec;

/// Network namespaces belonging to the lab `prefix`.
pub fn existing_netns(prefix: &str) -> Result<Vec<String>> {
    let listing = exec::run("ip", &["netns", "list"])?;
    let want = format!("{prefix}-");
    Ok(listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&want))
        .map(str::to_owned)
        .collect())
}

/// Build the lab. Fails (after cleaning up) if any part of it cannot be made.
pub fn up(topo: &Topology) -> Result<()> {
    if !existing_netns(&topo.prefix)?.is_empty() {
        bail!(
            "a lab with prefix {:?} is already up: run `cargo xtask lab down --prefix {}` first",
            topo.prefix,
            topo.prefix
        );
    }
    if let Err(e) = build::build(topo).and_then(|()| manifest::write(topo)) {
        let _ = down(&topo.prefix);
        return Err(e.context(format!("building lab {:?}", topo.prefix)));
    }
    Ok(())
}

/// Remove every namespace of the lab (their interfaces and iptables rules go with them).
pub fn down(prefix: &str) -> Result<usize> {
    let all = existing_netns(prefix)?;
    for ns in &all {
        // Processes left in a namespace (a demo's agent) would keep it alive; end them first.
        if let Ok(pids) = exec::run("ip", &["netns", "pids", ns]) {
            for pid in pids.split_whitespace() {
                let _ = exec::run("kill", &["-TERM", pid]);
            }
        }
    }
    for ns in &all {
        exec::run("ip", &["netns", "del", ns])?;
    }
    socket_lb::remove(&manifest::cgroup_dir(prefix), prefix);
    manifest::remove(prefix);
    chain_end::remove(prefix);
    cilium_snat::remove(prefix);
    Ok(all.len())
}

/// Human-readable summary of a running lab.
pub fn status(topo: &Topology) -> Result<String> {
    let present = existing_netns(&topo.prefix)?;
    if present.is_empty() {
        return Ok(format!("lab {:?}: down\n", topo.prefix));
    }
    let mut out = format!("lab {:?}: {} namespaces up\n", topo.prefix, present.len());
    for node in &topo.nodes {
        out.push_str(&format!(
            "  {} uplink eth0 {} / {}  pods {}\n",
            node.name,
            node.ip(),
            node.ip6(),
            node.pod_cidr()
        ));
    }
    for p in &topo.pods {
        let state = if present.contains(&topo.pod_ns(p)) {
            "up"
        } else {
            "MISSING"
        };
        out.push_str(&format!(
            "  {:<13} {:<14} node{} {:<12} {:<16} {}\n",
            p.name,
            p.namespace,
            p.node,
            p.ip(),
            p.ip6(),
            state
        ));
    }
    for s in &topo.services {
        out.push_str(&format!(
            "  service {}/{} {}:{} -> {:?}:{}\n",
            s.namespace, s.name, s.vip, s.port, s.backends, s.target_port
        ));
    }
    out.push_str(&format!(
        "  internet host {} ({}), IMDS {} and wireserver {} in {}\n",
        topology::INTERNET_HOST,
        topo.internet_ns(),
        topology::IMDS,
        topology::WIRESERVER,
        topo.vnet_ns()
    ));
    Ok(out)
}

/// A lab that is torn down when dropped.
pub struct LabGuard {
    pub topo: Topology,
}

impl LabGuard {
    pub fn up(topo: Topology) -> Result<Self> {
        // A previous run killed mid-test may have left this prefix behind.
        down(&topo.prefix)?;
        up(&topo)?;
        Ok(Self { topo })
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = down(&self.topo.prefix) {
            eprintln!("lab {:?}: teardown failed: {e:#}", self.topo.prefix);
        }
    }
}
