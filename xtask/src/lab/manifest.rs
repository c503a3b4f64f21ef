//! What the lab's "API server" would say: a `kubectl get pods,namespaces,nodes,services -A
//! -o yaml` List for the lab's objects, and the agent config that points at it. Written
//! next to the lab so the demo and tests feed the agent exactly what a cluster would.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{topology, Topology};

/// Where a lab's files live (removed by `lab down`).
pub fn dir(prefix: &str) -> PathBuf {
    PathBuf::from("/run/tenantflow-lab").join(prefix)
}

pub fn snapshot_path(prefix: &str) -> PathBuf {
    dir(prefix).join("snapshot.yaml")
}

/// Rewrite the lab's snapshot as the cluster is once `namespace` and everything in it are
/// deleted (an agent following the file picks the change up).
pub fn write_without_namespace(t: &Topology, namespace: &str) -> Result<()> {
    let mut snap = snapshot(t);
    if let Some(items) = snap["items"].as_array_mut() {
        items.retain(|o| {
            o["metadata"]["namespace"] != namespace && o["metadata"]["name"] != namespace
        });
    }
    let path = snapshot_path(&t.prefix);
    std::fs::write(&path, serde_json::to_string(&snap)?)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn config_path(prefix: &str) -> PathBuf {
    dir(prefix).join("config.yaml")
}

/// The List, shaped exactly like kubectl's output (including fields we do not read).
pub fn snapshot(t: &Topology) -> Value {
    let mut items = Vec::new();
    for (ns, tenant) in &t.namespaces {
        let mut labels = json!({"kubernetes.io/metadata.name": ns});
        if let Some(tn) = tenant {
            labels["tenant"] = json!(tn);
        }
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels, "resourceVersion": "1"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        }));
    }
    for n in &t.nodes {
        items.push(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": {"kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": n.pod_cidr(), "podCIDRs": [n.pod_cidr(), n.pod_cidr6()]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": n.ip()},
                {"type": "InternalIP", "address": n.ip6()},
                {"type": "Hostname", "address": n.name},
            ]},
        }));
    }
    for p in &t.pods {
        let labels: serde_json::Map<String, Value> = p
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        items.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": p.name, "namespace": p.namespace, "uid": p.uid(), "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("{}-rs", p.labels.first().map(|l| l.1.as_str()).unwrap_or("pod")),
                    "uid": format!("uid-{}", p.name), "controller": true}],
            },
            "spec": {"nodeName": t.node(p.node).name,
                "containers": [{"name": "main", "image": "tenantflow-lab/tf-traffic"}]},
            "status": {"phase": "Running", "podIP": p.ip(),
                "podIPs": [{"ip": p.ip()}, {"ip": p.ip6()}]},
        }));
    }
    for s in &t.services {
        let ips = if t.model == topology::Model::Kubenet {
            json!([s.vip, s.vip6])
        } else {
            json!([s.vip])
        };
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {"type": "ClusterIP", "clusterIP": s.vip, "clusterIPs": ips,
                "ports": [{"port": s.port, "targetPort": s.target_port, "protocol": "TCP"}]},
        }));
    }
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

/// The agent config for this lab (see docs/configuration.md).
pub fn config(t: &Topology) -> String {
    format!(
        "# tenantflow config for lab {prefix} (written by `cargo xtask lab up`)
identity:
  snapshot: {snapshot}
tenancy:
  namespace_label: tenant
  namespace_map:
    egress-system: platform
network:
  pod_cidrs: [{pods}]
  service_cidrs: [{svc}]
egress:
  gateways:
    - namespace: egress-system
      labels: {{app: egress-gateway}}
  exempt: [{exempt}]
",
        prefix = t.prefix,
        snapshot = snapshot_path(&t.prefix).display(),
        pods = {
            let mut v = t.pod_cidrs();
            if t.model == topology::Model::Kubenet {
                v.push(format!("\"{}\"", topology::POD_CIDR6));
            }
            v.join(", ")
        },
        svc = {
            let mut v = vec![topology::SERVICE_CIDR.to_owned()];
            if t.model == topology::Model::Kubenet {
                v.push(format!("\"{}\"", topology::SERVICE_CIDR6));
            }
            v.join(", ")
        },
        exempt = topology::PRIVATE_ENDPOINT_CIDR,
    )
}

/// A cgroup2 mount of the lab's own: `ip netns exec` hides /sys/fs/cgroup behind a fresh
/// /sys, and the agent in a lab node finds this one in its mounts instead (a DaemonSet is
/// given the host's with --cgroup-root).
pub fn cgroup_dir(prefix: &str) -> PathBuf {
    dir(prefix).join("cgroup2")
}

/// Write both files for a lab that is up, and mount the cgroup2 view.
pub fn write(t: &Topology) -> Result<()> {
    let d = dir(&t.prefix);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let cg = cgroup_dir(&t.prefix);
    std::fs::create_dir_all(&cg)?;
    crate::exec::run(
        "mount",
        &["-t", "cgroup2", "none", &cg.display().to_string()],
    )
    .context("mounting cgroup2 for the lab (process attribution)")?;
    let yaml = serde_norway::to_string(&snapshot(t)).context("rendering the snapshot")?;
    std::fs::write(snapshot_path(&t.prefix), yaml).context("writing the snapshot")?;
    std::fs::write(config_path(&t.prefix), config(t)).context("writing the config")?;
    Ok(())
}

/// Never recursive: under the cgroup2 mount, removing directories would remove cgroups.
pub fn remove(prefix: &str) {
    let cg = cgroup_dir(prefix);
    let _ = crate::exec::run("umount", &[&cg.display().to_string()]);
    let _ = std::fs::remove_dir(&cg);
    for f in [snapshot_path(prefix), config_path(prefix)] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir(dir(prefix));
}
