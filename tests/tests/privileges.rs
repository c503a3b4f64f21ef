//! The DaemonSet grants exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON. With only those the
//! agent attaches and counts exactly; without any one of them it exits 64 naming the
//! missing capability and leaves nothing attached.

use std::process::{Command, Stdio};

use tenantflow_tests::{
    agent_bin, eventually, finish, in_ns, lab, netns_http, traffic, traffic_bg,
};

const GRANTED: [&str; 3] = ["cap_bpf", "cap_net_admin", "cap_perfmon"];
const LISTEN: &str = "127.0.0.1:9993";

/// Every capability this kernel knows, except `keep`.
fn drop_all_but(keep: &[&str]) -> String {
    let out = Command::new("capsh")
        .arg("--print")
        .output()
        .expect("capsh (libcap2-bin)");
    let text = String::from_utf8_lossy(&out.stdout);
    let bounding = text
        .lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .expect("capsh --print shows the bounding set");
    bounding
        .trim()
        .split(',')
        .filter(|c| !keep.contains(c))
        .collect::<Vec<_>>()
        .join(",")
}

/// `tenantflow agent` in `ns` with the bounding set reduced to `keep`.
fn agent_with(ns: &str, keep: &[&str]) -> std::process::Child {
    let cmd = format!(
        "exec {} agent --listen {LISTEN} --harvest-interval 200ms",
        agent_bin().display()
    );
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "capsh",
            &format!("--drop={}", drop_all_but(keep)),
            "--",
            "-c",
            &cmd,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn capsh")
}

fn hooks(ns: &str) -> usize {
    in_ns(ns, &[agent_bin().to_str().unwrap(), "hooks"])
        .lines()
        .skip(1)
        .count()
}

#[test]
fn the_three_granted_capabilities_are_enough() {
    let lab = lab("cp");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let mut agent = agent_with(&node, &GRANTED);
    let ready = eventually(std::time::Duration::from_secs(20), || {
        matches!(netns_http::get(&node, LISTEN, "/readyz"), Ok((200, _))).then_some(())
    });
    assert!(ready.is_some(), "agent with {GRANTED:?} never became ready");
    // Process attribution (cgroup hooks) needs nothing more either.
    let (_, metrics) = netns_http::get(&node, LISTEN, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "tenantflow_process_attribution 1"),
        "{metrics}"
    );
    let web2 = t.pod("web-2");
    let rx = traffic_bg(
        &t.pod_ns(web2),
        &["udp-recv", &format!("{}:7000", web2.ip()), "3"],
    );
    traffic(
        &t.pod_ns(t.pod("web-1")),
        &[
            "udp-send",
            &format!("{}:7000", web2.ip()),
            "3",
            "50",
            "--bind",
            &format!("{}:7400", t.pod("web-1").ip()),
        ],
    );
    assert_eq!(finish(rx).trim(), "3");
    let counted = eventually(std::time::Duration::from_secs(5), || {
        let (_, body) =
            netns_http::get(&node, tenantflow_tests::agent::RECORDS, "/flows?port=7400").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let c = v.as_array()?.first()?.clone();
        (c["forward"]["packets"] == 3).then_some(c)
    })
    .expect("connection counted");
    assert_eq!(counted["forward"]["bytes"], 3 * 78);
    // SAFETY: signalling our own child (capsh exec'd bash exec'd the agent).
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    assert!(agent.wait().unwrap().success());
    assert_eq!(hooks(&node), 0);
}

#[test]
fn each_missing_capability_is_named_and_nothing_is_attached() {
    let lab = lab("cm");
    let node = lab.topo.node_ns(1);
    for missing in GRANTED {
        let keep: Vec<&str> = GRANTED.iter().copied().filter(|c| *c != missing).collect();
        let out = agent_with(&node, &keep).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "without {missing}: {err}");
        assert!(
            err.contains(&format!("error: missing {}:", missing.to_uppercase())),
            "without {missing}: {err}"
        );
        assert_eq!(hooks(&node), 0, "without {missing}: nothing attached");
    }
}
