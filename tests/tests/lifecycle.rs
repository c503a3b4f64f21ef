//! Start, stop, crash and restart leave exactly the expected hooks: one program per hook
//! while running, none after exit; bad input fails with a clear error and attaches nothing.

use std::process::Command;

use tenantflow_tests::{agent_bin, in_ns, lab, tcx_hooks, Agent};

/// What a running agent on a lab node must have: both observers on eth0 and every pod veth.
fn expected(ifaces: &[&str]) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for i in ifaces {
        v.push((i.to_string(), "egress".into(), "tf_egress".into()));
        v.push((i.to_string(), "ingress".into(), "tf_ingress".into()));
    }
    v.sort();
    v
}

/// Legacy cls_bpf filters and clsact qdiscs on `iface`, as `tc` prints them.
fn tc_state(ns: &str, iface: &str) -> (usize, usize, bool) {
    let count = |hook| {
        in_ns(ns, &["tc", "filter", "show", "dev", iface, hook])
            .lines()
            .filter(|l| l.contains(" handle ") && l.contains("tf_"))
            .count()
    };
    let qdisc = in_ns(ns, &["tc", "qdisc", "show", "dev", iface]).contains("clsact");
    (count("ingress"), count("egress"), qdisc)
}

const NODE1_IFACES: [&str; 6] = ["eth0", "veth10", "veth11", "veth12", "veth13", "veth14"];

#[test]
fn tcx_clean_stop_and_kill_leave_nothing_and_restart_has_one_program_per_hook() {
    let lab = lab("lt");
    let node = lab.topo.node_ns(1);
    let mut agent = Agent::start(&node, &["--attach-mode", "tcx"]);
    assert_eq!(tcx_hooks(&node), expected(&NODE1_IFACES));
    assert_eq!(
        agent.stop_with(libc::SIGTERM),
        Some(0),
        "{}",
        agent.log_text()
    );
    assert_eq!(tcx_hooks(&node), vec![], "hooks left after SIGTERM");

    let mut agent = Agent::start(&node, &["--attach-mode", "tcx"]);
    agent.stop_with(libc::SIGKILL);
    assert_eq!(
        tcx_hooks(&node),
        vec![],
        "tcx links outlived a SIGKILLed agent"
    );
    let mut agent = Agent::start(&node, &["--attach-mode", "tcx"]);
    assert_eq!(
        tcx_hooks(&node),
        expected(&NODE1_IFACES),
        "restart after kill -9"
    );
    assert_eq!(agent.stop_with(libc::SIGINT), Some(0));
    assert_eq!(tcx_hooks(&node), vec![]);
}

#[test]
fn netlink_mode_cleans_up_after_kill_and_restart() {
    let lab = lab("ln");
    let node = lab.topo.node_ns(1);
    let mut agent = Agent::start(&node, &["--attach-mode", "netlink"]);
    for i in NODE1_IFACES {
        assert_eq!(tc_state(&node, i), (1, 1, true), "{i} while running");
    }
    agent.stop_with(libc::SIGKILL);
    // cls_bpf filters survive their process: this is what the restart must clean up.
    assert_eq!(tc_state(&node, "veth10"), (1, 1, true), "after kill -9");
    let mut agent = Agent::start(&node, &["--attach-mode", "netlink"]);
    for i in NODE1_IFACES {
        assert_eq!(
            tc_state(&node, i),
            (1, 1, true),
            "{i} after restart: exactly one per hook"
        );
    }
    assert_eq!(
        agent.stop_with(libc::SIGTERM),
        Some(0),
        "{}",
        agent.log_text()
    );
    for i in NODE1_IFACES {
        assert_eq!(tc_state(&node, i), (0, 0, false), "{i} after clean stop");
    }
}

/// An agent killed in netlink (clsact) mode leaves its filters; `tenantflow hooks` shows
/// them, and the next agent removes them whatever mode it runs in (here tcx, where nothing
/// else would), and at its clean stop the emptied qdiscs too: nothing of either is left.
#[test]
fn a_restart_in_tcx_mode_removes_what_a_killed_netlink_agent_left() {
    let lab = lab("lx");
    let node = lab.topo.node_ns(1);
    let mut agent = Agent::start(&node, &["--attach-mode", "netlink"]);
    agent.stop_with(libc::SIGKILL);
    let mut left_behind: Vec<(String, String, String)> = NODE1_IFACES
        .iter()
        .flat_map(|i| {
            [
                (i.to_string(), "clsact/egress".into(), "tf_egress".into()),
                (i.to_string(), "clsact/ingress".into(), "tf_ingress".into()),
            ]
        })
        .collect();
    left_behind.sort();
    assert_eq!(
        tcx_hooks(&node),
        left_behind,
        "hooks lists the dead agent's filters"
    );
    let mut agent = Agent::start(&node, &["--attach-mode", "tcx"]);
    assert_eq!(
        tcx_hooks(&node),
        expected(&NODE1_IFACES),
        "only this agent's tcx links"
    );
    for i in NODE1_IFACES {
        let (ingress, egress, _) = tc_state(&node, i);
        assert_eq!(
            (ingress, egress),
            (0, 0),
            "{i}: the dead agent's filters removed"
        );
    }
    assert_eq!(
        agent.stop_with(libc::SIGTERM),
        Some(0),
        "{}",
        agent.log_text()
    );
    for i in NODE1_IFACES {
        assert_eq!(tc_state(&node, i), (0, 0, false), "{i}: nothing left");
    }
    assert_eq!(tcx_hooks(&node), vec![]);
}

#[test]
fn netlink_mode_keeps_a_clsact_qdisc_that_another_tool_uses() {
    let lab = lab("lq");
    let node = lab.topo.node_ns(1);
    in_ns(&node, &["tc", "qdisc", "add", "dev", "veth11", "clsact"]);
    in_ns(
        &node,
        &[
            "tc", "filter", "add", "dev", "veth11", "ingress", "u32", "match", "u32", "0", "0",
        ],
    );
    let mut agent = Agent::start(&node, &["--attach-mode", "netlink"]);
    assert_eq!(agent.stop_with(libc::SIGTERM), Some(0));
    let filters = in_ns(&node, &["tc", "filter", "show", "dev", "veth11", "ingress"]);
    assert!(
        filters.contains("u32"),
        "another tool's filter was removed: {filters}"
    );
    assert!(
        filters.contains("match 00000000/00000000"),
        "another tool's filter was removed: {filters}"
    );
    assert_eq!(tc_state(&node, "veth11"), (0, 0, true));
}

fn run_agent(ns: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(agent_bin())
        .arg("agent")
        .args(args)
        .output()
        .expect("spawn agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_refused_with_the_fix_and_attaches_nothing() {
    let lab = lab("lb");
    let node = lab.topo.node_ns(1);

    let (code, err) = run_agent(&node, &["--uplink", "eth9", "--listen", "127.0.0.1:9990"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(
            "error: interface \"eth9\" does not exist in this network namespace: check --uplink"
        ),
        "{err}"
    );
    assert_eq!(tcx_hooks(&node), vec![]);

    let (code, err) = run_agent(
        &node,
        &["--pod-iface", "veth[", "--listen", "127.0.0.1:9990"],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--pod-iface: invalid glob"), "{err}");
    assert_eq!(tcx_hooks(&node), vec![]);

    let (code, err) = run_agent(&node, &["--harvest-interval", "soon"]);
    assert_eq!(code, Some(64), "unparsable values are bad input: {err}");
    assert!(
        err.contains("invalid value 'soon' for '--harvest-interval"),
        "{err}"
    );

    // A namespace without a default route leaves nothing to pick the uplink from.
    let bare = format!("{}-bare", lab.topo.prefix);
    xtask::exec::run("ip", &["netns", "add", &bare]).unwrap();
    let (code, err) = run_agent(&bare, &["--listen", "127.0.0.1:9990"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("no default route found to pick the uplink from: pass --uplink"),
        "{err}"
    );
}

/// SIGTERM while the agent is still loading and attaching (before its main loop) must not
/// kill it with the default action, which would leave legacy clsact filters behind: the
/// handlers are installed first and the agent exits cleanly once started.
#[test]
fn sigterm_during_start_up_exits_cleanly_and_leaves_nothing() {
    let lab = lab("ls");
    let node = lab.topo.node_ns(1);
    let log = std::env::temp_dir().join(format!("{node}-early-agent.log"));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(agent_bin())
        .args(["agent", "--attach-mode", "netlink"])
        .args(["--listen", tenantflow_tests::agent::LISTEN])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // "kernel probed" is logged after the handlers are installed and before any attach.
    let probed = tenantflow_tests::eventually(std::time::Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("kernel probed").then_some(())
    });
    assert!(probed.is_some(), "agent never probed the kernel");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(
        text.contains("shutting down") && text.contains("SIGTERM"),
        "{text}"
    );
    for i in NODE1_IFACES {
        assert_eq!(tc_state(&node, i), (0, 0, false), "{i} after early SIGTERM");
    }
}

/// Signals whose default action would kill the agent with its filters attached and no final
/// records are handled like SIGTERM: clean exit 0, nothing left, in netlink mode too.
#[test]
fn hup_usr1_usr2_and_alrm_stop_the_agent_cleanly_in_netlink_mode() {
    let lab = lab("ls");
    let node = lab.topo.node_ns(1);
    for (sig, name) in [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
    ] {
        let mut agent = Agent::start(&node, &["--attach-mode", "netlink"]);
        assert_eq!(tc_state(&node, "veth10"), (1, 1, true), "{name}: attached");
        assert_eq!(
            agent.stop_with(sig),
            Some(0),
            "{name}: {}",
            agent.log_text()
        );
        let log = agent.log_text();
        assert!(
            log.contains("shutting down") && log.contains(name),
            "{name} named in the log: {}",
            agent.log_text()
        );
        for i in NODE1_IFACES {
            assert_eq!(tc_state(&node, i), (0, 0, false), "{i} after {name}");
        }
    }
}

/// A second agent on the node refuses (exit 64) before touching anything: the first keeps
/// its filters and keeps counting.
#[test]
fn a_second_agent_refuses_and_leaves_the_first_one_attached() {
    let lab = lab("l2");
    let node = lab.topo.node_ns(1);
    let mut first = Agent::start(&node, &["--attach-mode", "netlink"]);
    let (code, err) = run_agent(
        &node,
        &["--attach-mode", "netlink", "--listen", "127.0.0.1:9991"],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("another tenantflow agent is running"), "{err}");
    for i in NODE1_IFACES {
        assert_eq!(
            tc_state(&node, i),
            (1, 1, true),
            "{i}: the first agent's filters stay"
        );
    }
    assert_eq!(first.stop_with(libc::SIGTERM), Some(0));
    // Its lock went with it: the next one starts.
    let mut next = Agent::start(&node, &["--attach-mode", "netlink"]);
    assert_eq!(next.stop_with(libc::SIGTERM), Some(0));
}

/// An unprivileged process in the node's network namespace (uid 65534, no capabilities,
/// as any hostNetwork pod could run) binds the lock name first: the agent is not kept from
/// starting. It names the squatter, takes a root-only file lock instead, and that lock
/// still refuses a second agent.
#[test]
fn an_unprivileged_squatter_on_the_lock_name_does_not_stop_the_agent() {
    use std::io::BufRead;
    let lab = lab("lz");
    let node = lab.topo.node_ns(1);
    let mut squatter = Command::new("ip")
        .args(["netns", "exec", &node])
        .args([
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
        ])
        .args([
            "--inh-caps=-all",
            "--bounding-set=-all",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(
            "import socket,time\n\
             s=socket.socket(socket.AF_UNIX)\n\
             s.bind('\\0tenantflow-agent')\n\
             s.listen(1)\n\
             print('bound',flush=True)\n\
             time.sleep(120)",
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the squatter");
    let mut line = String::new();
    std::io::BufReader::new(squatter.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "bound", "the squatter holds the name");
    let mut first = Agent::start(&node, &["--attach-mode", "netlink"]);
    let log = first.log_text();
    assert!(
        log.contains("held by a process that is not root")
            && log.contains(&format!("pid {} (python3), uid 65534", squatter.id())),
        "{log}"
    );
    let (code, err) = run_agent(
        &node,
        &["--attach-mode", "netlink", "--listen", "127.0.0.1:9991"],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("another tenantflow agent is running (pid ")
            && err.contains(&format!("pid {} (tenantflow)", first.pid().unwrap())),
        "{err}"
    );
    for i in NODE1_IFACES {
        assert_eq!(
            tc_state(&node, i),
            (1, 1, true),
            "{i}: the first agent's filters stay"
        );
    }
    assert_eq!(first.stop_with(libc::SIGTERM), Some(0));
    let _ = squatter.kill();
    let _ = squatter.wait();
}

/// `--edge-file` naming a FIFO (which would block an open until someone writes), a symlink
/// to `/dev/zero` (endless) or a 4 GiB sparse file: the agent starts and becomes ready,
/// says which file it refused and why, keeps its RSS, and stops on SIGTERM.
#[test]
fn an_edge_file_that_is_no_regular_file_is_refused_without_blocking_or_reading() {
    let lab = lab("le");
    let node = lab.topo.node_ns(1);
    let dir = std::env::temp_dir().join(format!("tf-edges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let zero = dir.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let sparse = dir.join("sparse");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    for (file, why) in [
        (&fifo, "it is a FIFO, not a regular file"),
        (&zero, "it is a device, not a regular file"),
        (
            &sparse,
            "it is 4294967296 bytes, over the limit of 67108864",
        ),
    ] {
        let mut agent = Agent::start(&node, &["--edge-file", file.to_str().unwrap()]);
        let log = agent.log_text();
        assert!(
            log.contains(&format!("edge file {}: {why}", file.display())),
            "{log}"
        );
        let rss_kib = tenantflow_tests::proc_status_kib(agent.pid().unwrap(), "VmHWM");
        assert!(rss_kib < 256 * 1024, "{why}: peak {rss_kib} KiB");
        assert_eq!(
            agent.stop_with(libc::SIGTERM),
            Some(0),
            "{}",
            agent.log_text()
        );
    }
    assert!(std::fs::symlink_metadata(&zero)
        .unwrap()
        .file_type()
        .is_symlink());
    let _ = std::fs::remove_dir_all(dir);
}

/// A cgroup root that is not a cgroup v2 directory is named as such (not as a failed
/// kernel attach), and nothing stays attached.
#[test]
fn a_cgroup_root_that_is_no_cgroup_is_bad_input() {
    let lab = lab("lc");
    let node = lab.topo.node_ns(1);
    for root in ["/etc/passwd", "/tmp"] {
        let (code, err) = run_agent(&node, &["--cgroup-root", root]);
        assert_eq!(code, Some(64), "{err}");
        assert!(
            err.contains(&format!("--cgroup-root: cgroup {root}")) || err.contains(root),
            "{err}"
        );
        assert!(err.contains("not a cgroup v2 directory"), "{err}");
        assert_eq!(tcx_hooks(&node), vec![], "{root}");
    }
}

/// `tenantflow hooks --remove` in `ns`: (success, stdout, stderr).
fn hooks_remove(ns: &str) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(agent_bin())
        .args(["hooks", "--remove"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A node whose agent was killed and will not start again (an OOM kill, then `helm
/// uninstall`) is cleaned by `tenantflow hooks --remove`: it refuses while an agent runs,
/// and after a SIGKILL in clsact mode it removes every filter the dead agent left and the
/// qdiscs they emptied, listing nothing afterwards.
#[test]
fn hooks_remove_cleans_up_after_a_killed_netlink_agent_and_refuses_while_one_runs() {
    let lab = lab("lr");
    let node = lab.topo.node_ns(1);
    let mut agent = Agent::start(&node, &["--attach-mode", "netlink"]);
    let (ok, _, err) = hooks_remove(&node);
    assert!(!ok, "refused while an agent runs");
    assert!(err.contains("stop that agent first"), "{err}");
    for i in NODE1_IFACES {
        assert_eq!(
            tc_state(&node, i),
            (1, 1, true),
            "{i}: the running agent's hooks stay"
        );
    }
    agent.stop_with(libc::SIGKILL);
    assert_eq!(
        tcx_hooks(&node).len(),
        2 * NODE1_IFACES.len(),
        "left behind"
    );
    let (ok, out, err) = hooks_remove(&node);
    assert!(ok, "{err}");
    assert!(
        err.contains("removed the filters of a dead agent from 6 interfaces"),
        "{err}"
    );
    assert_eq!(
        out.trim(),
        "IFACE\tHOOK\tPROGRAM\tID",
        "nothing listed after removal"
    );
    for i in NODE1_IFACES {
        assert_eq!(tc_state(&node, i), (0, 0, false), "{i}: nothing left");
    }
    assert_eq!(tcx_hooks(&node), vec![]);
    // Nothing left to remove: a second run says so and succeeds.
    let (ok, _, err) = hooks_remove(&node);
    assert!(ok);
    assert!(err.contains("from 0 interfaces"), "{err}");
}
