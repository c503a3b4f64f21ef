//! Node-originated flows carry their process: a host process in the node's namespace, and
//! a process in a pod's cgroup sending from the node's namespace (an escaped container or a
//! hostNetwork pod) attributed to that pod. The cgroup hooks go with the agent, even after
//! kill -9.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};
use tenantflow_tests::{agent::wait_connection, eventually, finish, lab, traffic_bg, Agent};
use xtask::lab::{manifest, topology::INTERNET_HOST};

fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("a cgroup v2 mount (process attribution needs it)")
}

/// tenantflow cgroup programs attached at `root`, per bpftool.
fn hooks_at(root: &Path) -> usize {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(root)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("tf_")))
        .count()
}

/// Run `tf-traffic udp-send` from the node's namespace, optionally inside `cgroup`;
/// returns its pid.
fn send_from_node(ns: &str, bind: &str, to: &str, cgroup: Option<&Path>) -> u32 {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tf-traffic");
    let send = format!(
        "exec ip netns exec {ns} {} udp-send {to} 2 40 --bind {bind}",
        bin.display()
    );
    let script = match cgroup {
        Some(dir) => format!("echo $$ > {}/cgroup.procs && {send}", dir.display()),
        None => send,
    };
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "sender failed");
    pid
}

#[test]
fn node_processes_and_escaped_containers_are_attributed() {
    let lab = lab("pr");
    let t = &lab.topo;
    let root = cgroup2_root();
    let before = hooks_at(&root);
    let cfg = manifest::config_path(&t.prefix);
    let mut agent = Agent::start(&t.node_ns(1), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(
        hooks_at(&root),
        before + 4,
        "connect4/6 and sendmsg4/6 on the cgroup root"
    );
    assert_eq!(agent.metric("tenantflow_process_attribution"), Some(1.0));
    // `tenantflow hooks` lists them beside the interface hooks.
    let out = Command::new(tenantflow_tests::agent_bin())
        .args(["hooks", "--cgroup"])
        .arg(&root)
        .output()
        .unwrap();
    let listed: std::collections::BTreeSet<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("cgroup:{}\t", root.display())))
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (c[1].to_owned(), c[2].to_owned())
        })
        .collect();
    for (hook, prog) in [
        ("cgroup/connect4", "tf_connect4"),
        ("cgroup/connect6", "tf_connect6"),
        ("cgroup/sendmsg4", "tf_sendmsg4"),
        ("cgroup/sendmsg6", "tf_sendmsg6"),
    ] {
        assert!(
            listed.contains(&(hook.to_owned(), prog.to_owned())),
            "{hook} {prog} not in {listed:?}"
        );
    }
    let node_ip = t.node(1).ip();
    let to = format!("{INTERNET_HOST}:5600");

    // A host process.
    let rx = traffic_bg(&t.internet_ns(), &["udp-recv", &to, "4"]);
    let host_pid = send_from_node(&t.node_ns(1), &format!("{node_ip}:7601"), &to, None);
    // A process in jobs-1's cgroup, sending from the node's network namespace.
    let jobs = t.pod("jobs-1");
    let base = root.join(format!("{}-test", t.prefix));
    let pod_cg = base.join(format!("kubepods/besteffort/pod{}/escaped", jobs.uid()));
    std::fs::create_dir_all(&pod_cg).unwrap();
    let escaped_pid = send_from_node(
        &t.node_ns(1),
        &format!("{node_ip}:7602"),
        &to,
        Some(&pod_cg),
    );
    assert_eq!(finish(rx).trim(), "4");

    let host = wait_connection(
        &agent,
        |c| c["src_port"] == 7601,
        |c| !c["process"].is_null(),
    );
    assert_eq!(
        host["src_identity"],
        json!({"kind": "node", "node": t.node(1).name})
    );
    assert_eq!(host["flow_class"], "node_to_egress");
    let p = &host["process"];
    assert_eq!(
        (&p["pid"], &p["command"]),
        (&json!(host_pid), &json!("tf-traffic"))
    );
    assert_eq!(p["pod"], Value::Null, "a host process belongs to no pod");
    assert!(p["cgroup_id"].as_u64().unwrap() > 0);

    let esc = wait_connection(
        &agent,
        |c| c["src_port"] == 7602,
        |c| !c["process"].is_null(),
    );
    let p = &esc["process"];
    assert_eq!(
        (&p["pid"], &p["command"]),
        (&json!(escaped_pid), &json!("tf-traffic"))
    );
    assert_eq!(p["pod"], "alpha-jobs/jobs-1");
    let rel = format!(
        "/{}-test/kubepods/besteffort/pod{}/escaped",
        t.prefix,
        jobs.uid()
    );
    assert_eq!(p["cgroup"], rel);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(p["cgroup_id"], std::fs::metadata(&pod_cg).unwrap().ino());

    // Forwarded pod traffic has no local socket: no process.
    let rx = traffic_bg(&t.internet_ns(), &["udp-recv", &to, "1"]);
    tenantflow_tests::traffic(
        &t.pod_ns(jobs),
        &[
            "udp-send",
            &to,
            "1",
            "10",
            "--bind",
            &format!("{}:7603", jobs.ip()),
        ],
    );
    finish(rx);
    let fwd = wait_connection(
        &agent,
        |c| c["src_port"] == 7603,
        |c| c["forward"]["packets"] == 1,
    );
    assert_eq!(fwd["process"], Value::Null);

    // The hooks leave with the agent, even when it is killed.
    assert_eq!(agent.stop_with(libc::SIGKILL), None);
    let gone = eventually(Duration::from_secs(5), || {
        (hooks_at(&root) == before).then_some(())
    });
    assert!(
        gone.is_some(),
        "cgroup hooks left after kill -9: {}",
        hooks_at(&root)
    );
    for dir in [
        pod_cg.clone(),
        pod_cg.parent().unwrap().to_owned(),
        base.join("kubepods/besteffort"),
        base.join("kubepods"),
        base,
    ] {
        std::fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
    }
}
