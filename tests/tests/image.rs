//! The agent runs from its container image (built by `cargo xtask image`, which `cargo
//! xtask test` runs first) inside a lab node's network namespace, under exactly the security
//! context of the rendered chart: the podman flags are derived from
//! deploy/manifests/tenantflow.yaml, so chart and test cannot drift.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::{json, Value};
use tenantflow_tests::{
    agent::wait_flow, eventually, lab, tcx_hooks, udp_from_pod, Agent, LabGuard,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The DaemonSet of the rendered chart.
fn daemonset() -> Value {
    let text = std::fs::read_to_string(root().join("deploy/manifests/tenantflow.yaml")).unwrap();
    let ds = serde_norway::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the chart renders a DaemonSet");
    ds
}

/// containerd's RuntimeDefault, in podman's profile format: podman's own default denies
/// bpf(2) and perf_event_open(2) without CAP_SYS_ADMIN, containerd allows them to holders
/// of CAP_BPF and CAP_PERFMON. Everything else is podman's profile unchanged.
fn containerd_seccomp(dir: &std::path::Path) -> PathBuf {
    let mut p: Value = serde_json::from_str(
        &std::fs::read_to_string("/usr/share/containers/seccomp.json")
            .expect("podman's seccomp profile (cargo xtask setup installs podman)"),
    )
    .unwrap();
    let special = ["bpf", "perf_event_open"];
    for rule in p["syscalls"].as_array_mut().unwrap() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| !special.contains(&n.as_str().unwrap()));
        }
    }
    let rules = p["syscalls"].as_array_mut().unwrap();
    rules.retain(|r| !r["names"].as_array().unwrap().is_empty());
    for (name, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        for sysadmin_or_cap in ["CAP_SYS_ADMIN", cap] {
            rules.push(json!({
                "names": [name], "action": "SCMP_ACT_ALLOW", "args": [],
                "includes": {"caps": [sysadmin_or_cap]}, "excludes": {}
            }));
        }
    }
    let path = dir.join("seccomp-containerd.json");
    std::fs::write(&path, serde_json::to_string(&p).unwrap()).unwrap();
    path
}

/// A ConfigMap-style directory: the lab's config, its snapshot beside it.
fn config_dir(lab: &LabGuard, dir: &std::path::Path) -> PathBuf {
    let prefix = &lab.topo.prefix;
    let cfg = std::fs::read_to_string(xtask::lab::manifest::config_path(prefix)).unwrap();
    let snap = xtask::lab::manifest::snapshot_path(prefix);
    let out = dir.join("config");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(&snap, out.join("snapshot.yaml")).unwrap();
    let cfg = cfg.replace(&snap.display().to_string(), "/etc/tenantflow/snapshot.yaml");
    assert!(cfg.contains("/etc/tenantflow/snapshot.yaml"));
    std::fs::write(out.join("config.yaml"), cfg).unwrap();
    out
}

/// `podman run` flags for the chart's agent container, on lab node 1. `drop_cap` removes
/// one added capability (the negative case).
fn podman_args(
    lab: &LabGuard,
    dir: &std::path::Path,
    name: &str,
    drop_cap: Option<&str>,
) -> Vec<String> {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let mut a: Vec<String> = vec![
        "run".into(),
        "--name".into(),
        name.into(),
        "--runtime".into(),
        "runc".into(),
        "--pull=never".into(),
        // podman's default rlimits exceed what this host lets us raise (no
        // CAP_SYS_RESOURCE in the bounding set): keep ours.
        "--ulimit".into(),
        format!("nofile={0}:{0}", nofile_hard()),
        "--ulimit".into(),
        "nproc=4096:4096".into(),
    ];
    assert_eq!(pod["hostNetwork"], true);
    a.push(format!(
        "--network=ns:/var/run/netns/{}",
        lab.topo.node_ns(1)
    ));
    a.push(format!("--user={}", sc["runAsUser"].as_u64().unwrap()));
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    a.push("--cap-drop=all".into());
    let caps: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .filter(|c| Some(*c) != drop_cap)
        .collect();
    a.push(format!("--cap-add={}", caps.join(",")));
    if sc["readOnlyRootFilesystem"] == true {
        // Kubernetes adds no tmpfs to a read-only root; podman would unless told not to.
        a.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if sc["allowPrivilegeEscalation"] == false {
        a.push("--security-opt=no-new-privileges".into());
    }
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    a.push(format!(
        "--security-opt=seccomp={}",
        containerd_seccomp(dir).display()
    ));
    let config = config_dir(lab, dir);
    for m in c["volumeMounts"].as_array().unwrap() {
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .expect("every mount has a volume");
        let src = if vol["configMap"].is_object() {
            config.display().to_string()
        } else {
            match vol["hostPath"]["path"].as_str().unwrap() {
                // The host's cgroup2 root: the lab's own cgroup2 view stands in for it.
                "/sys/fs/cgroup" => xtask::lab::manifest::cgroup_dir(&lab.topo.prefix)
                    .display()
                    .to_string(),
                // The node's state directory: one of this test's own.
                "/var/lib/tenantflow" => {
                    let state = dir.join("state");
                    std::fs::create_dir_all(&state).unwrap();
                    state.display().to_string()
                }
                other => other.to_owned(),
            }
        };
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        a.push(format!(
            "--volume={src}:{}{ro}",
            m["mountPath"].as_str().unwrap()
        ));
    }
    for e in c["env"].as_array().unwrap() {
        if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            a.push(format!(
                "--env={}={}",
                e["name"].as_str().unwrap(),
                lab.topo.node(1).name
            ));
        }
    }
    a.push(xtask::image::name());
    a.extend(
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned()),
    );
    a
}

fn nofile_hard() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r.rlim_max
}

fn podman(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("podman").args(args).output().expect("podman");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Removes the container whatever happens.
struct Container(String);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}

fn cap_eff(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn the_agent_runs_from_its_image_under_the_charts_security_context() {
    tenantflow_tests::require_root();
    let (code, _, _) = podman(&["image", "exists", &xtask::image::name()]);
    assert_eq!(
        code,
        0,
        "image {} missing: build it with `cargo xtask image` (cargo xtask test does)",
        xtask::image::name()
    );
    let lab = lab("img");
    let dir = std::env::temp_dir().join(format!("tf-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = lab.topo.node_ns(1);

    // Without CAP_PERFMON: exit 64 naming it, nothing attached.
    let name = format!("tf-img-noperf-{}", std::process::id());
    let _c = Container(name.clone());
    let args = podman_args(&lab, &dir, &name, Some("PERFMON"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = podman(&args);
    assert_eq!(code, 64, "exit 64 without CAP_PERFMON:\n{err}");
    assert!(err.contains("CAP_PERFMON"), "names the capability:\n{err}");
    assert_eq!(tcx_hooks(&node), vec![]);

    let name = format!("tf-img-{}", std::process::id());
    let _c = Container(name.clone());
    let mut args = podman_args(&lab, &dir, &name, None);
    args.insert(1, "--detach".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = podman(&args);
    assert_eq!(code, 0, "podman run:\n{err}");
    let log = dir.join("agent.log");
    let agent = Agent::started_elsewhere(&node, log.clone());
    let logs = || podman(&["logs", &name]).2;
    let ready = eventually(Duration::from_secs(30), || {
        matches!(agent.get("/readyz"), Ok((200, _))).then_some(())
    });
    assert!(ready.is_some(), "never ready:\n{}", logs());

    // Exactly CAP_BPF (39), CAP_PERFMON (38) and CAP_NET_ADMIN (12), nothing else.
    let (_, pid, _) = podman(&["inspect", "--format", "{{.State.Pid}}", &name]);
    assert_eq!(cap_eff(pid.trim()), (1 << 39) | (1 << 38) | (1 << 12));

    let t = &lab.topo;
    let (web1, web2) = (t.pod("web-1"), t.pod("web-2"));
    let to = format!("{}:5000", web2.ip());
    let sent = udp_from_pod(&lab, "web-1", 4000, &t.pod_ns(web2), &to, 5, 100);
    let flow = |f: &Value| {
        f["proto"] == "udp"
            && f["src"] == web1.ip().as_str()
            && f["src_port"] == 4000
            && f["dst"] == web2.ip().as_str()
            && f["dst_port"] == 5000
    };
    assert_eq!(
        wait_flow(&agent, &web1.host_iface(), "ingress", flow, sent),
        sent,
        "{}",
        logs()
    );
    assert_eq!(wait_flow(&agent, "eth0", "egress", flow, sent), sent);
    assert_eq!(
        tcx_hooks(&node).len(),
        12,
        "both observers on six interfaces"
    );

    let (code, _, err) = podman(&["stop", "-t", "20", &name]);
    assert_eq!(code, 0, "podman stop:\n{err}");
    let (_, exit, _) = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(exit.trim(), "0", "clean exit on SIGTERM:\n{}", logs());
    assert_eq!(tcx_hooks(&node), vec![], "nothing left attached");
    // The edge set was written through the one writable mount at shutdown: a header of 20
    // bytes and 12 per edge.
    let edges = std::fs::read(dir.join("state/edges")).expect("edge file saved");
    assert_eq!(&edges[..8], b"TFEDGE01");
    assert_eq!((edges.len() - 20) % 12, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
