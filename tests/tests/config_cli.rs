//! `tenantflow check-config` and `agent --config`: the lab's real config and snapshot are
//! explained exactly; bad input exits 64 naming the field and the fix.

use std::process::Command;

use tenantflow_tests::{agent_bin, prefix, require_root, Topology};
use xtask::lab::manifest;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .expect("run tenantflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lab's files, written for a lab that is not up (no namespaces needed).
struct Files(String);

impl Files {
    fn write(tag: &str) -> Self {
        require_root(); // the files live under /run like a real lab's
        let t = Topology::standard(&prefix(tag));
        manifest::write(&t).expect("write lab files");
        Files(t.prefix)
    }
    fn config(&self) -> String {
        manifest::config_path(&self.0).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        manifest::remove(&self.0);
    }
}

#[test]
fn the_lab_config_and_snapshot_are_explained() {
    let f = Files::write("cc");
    let (code, out, err) = run(&["check-config", &f.config()]);
    assert_eq!(code, 0, "{err}");
    let tail: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("identity snapshot"))
        .collect();
    assert_eq!(
        tail,
        [
            "identity snapshot: 8 Pod, 5 Namespace, 2 Node, 1 Service",
            "  namespace alpha-jobs: tenant alpha, 1 pods",
            "  namespace alpha-web: tenant alpha, 2 pods",
            "  namespace beta-api: tenant beta, 2 pods",
            "  namespace egress-system: tenant platform, 1 pods",
            "  namespace kube-system: tenant platform, 2 pods",
            "  gateway pods in egress-system: 1",
        ]
    );
    assert!(
        out.starts_with(&format!("{}: valid\n", f.config())),
        "{out}"
    );
    assert!(out.contains("egress exempt: 10.225.0.0/24\n"), "{out}");
}

#[test]
fn bad_config_and_bad_snapshot_exit_64_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("tfcfg{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let snap = write(
        "snap.yaml",
        "kind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: web, namespace: a}, spec: {containers: []}, status: {podIP: 10.1.2.300}}\n",
    );
    let cases = [
        (
            write("a.yaml", "egress:\n  proxies: [\"10.0.0.0/33:80\"]\n"),
            "field `egress.proxies[0]`",
        ),
        (
            write("b.yaml", "tenancy:\n  namespace_regex: '^[a-z]+-'\n"),
            "has no named group `tenant`",
        ),
        (
            write("c.yaml", "network:\n  pod_cidr: [10.244.0.0/16]\n"),
            "field `network.pod_cidr`: unknown field `pod_cidr`, expected one of",
        ),
        (
            write("d.yaml", &format!("identity:\n  snapshot: {snap}\n")),
            "items[0] (Pod web): field `status.podIP`: \"10.1.2.300\" is not an IP address",
        ),
        (
            dir.join("missing.yaml").display().to_string(),
            "cannot read it",
        ),
    ];
    for (file, want) in &cases {
        let (code, out, err) = run(&["check-config", file]);
        assert_eq!((code, out.as_str()), (64, ""), "{file}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{file}\n got: {err}\nwant: {want}"
        );
        // The agent refuses the same file before touching the kernel.
        let (code, _, err) = run(&["agent", "--listen", "127.0.0.1:0", "--config", file]);
        assert_eq!(code, 64, "agent --config {file}: {err}");
        assert!(err.contains(want), "agent --config {file}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
