//! Helpers for the privileged end-to-end tests. Tests panic with clear messages; every
//! namespace a test makes carries its own prefix and is removed by a guard on drop.

pub mod agent;
pub mod certs;
pub mod chart;
pub mod dns_server;
pub mod helm_api;
pub mod identity_peak;
pub mod index_follower;
pub mod index_process;
pub mod kube_api;
pub mod kube_auth;
pub mod netns_http;
pub mod otlp_receiver;
pub mod prometheus;
pub mod snmp;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

pub use agent::Agent;
pub use xtask::lab::{topology::Model, LabGuard, Topology};

/// Privileged tests must fail, never skip, when they cannot run (CI runs as root).
pub fn require_root() {
    assert!(
        xtask::exec::is_root(),
        "this test needs root (network namespaces, iptables, BPF): run `cargo xtask test` as root"
    );
}

/// A lab prefix unique to this test and process, short enough for netns names.
pub fn prefix(tag: &str) -> String {
    format!("t{tag}{}", std::process::id() % 100_000)
}

/// Root, then a fresh standard lab for this test.
pub fn lab(tag: &str) -> LabGuard {
    lab_model(tag, Model::Kubenet)
}

/// As [`lab`], in the given AKS network model (the prefix carries the model).
pub fn lab_model(tag: &str, model: Model) -> LabGuard {
    require_root();
    let tag = match model {
        Model::Kubenet => tag.to_owned(),
        Model::AzureCni => format!("{tag}a"),
        Model::Overlay => format!("{tag}o"),
        Model::Cilium => format!("{tag}c"),
    };
    LabGuard::up(Topology::with_model(&prefix(&tag), model)).expect("lab up")
}

/// `#[test]`s running `$body(model)` for every lab network model the test holds for:
/// `per_model!(name, body)` makes `name::kubenet`, `name::azure_cni`, `name::overlay`,
/// `name::cilium`.
#[macro_export]
macro_rules! per_model {
    ($name:ident, $body:path) => {
        mod $name {
            #[test]
            fn kubenet() {
                $body($crate::Model::Kubenet)
            }
            #[test]
            fn azure_cni() {
                $body($crate::Model::AzureCni)
            }
            #[test]
            fn overlay() {
                $body($crate::Model::Overlay)
            }
            #[test]
            fn cilium() {
                $body($crate::Model::Cilium)
            }
        }
    };
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

/// The agent binary under test (`cargo xtask test` builds it first).
pub fn agent_bin() -> PathBuf {
    let p = std::env::var_os("TENANTFLOW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("tenantflow"));
    assert!(
        p.exists(),
        "agent binary {} missing: build it with `cargo build -p tenantflow` (cargo xtask test does)",
        p.display()
    );
    p
}

/// The traffic generator; cargo builds this package's binaries before its integration tests.
/// Public for commands that wrap it (e.g. `taskset`).
pub fn traffic_bin() -> PathBuf {
    let p = target_dir().join("tf-traffic");
    assert!(
        p.exists(),
        "{} missing: run the tests through cargo",
        p.display()
    );
    p
}

/// Run the exact traffic generator inside `ns`; returns its stdout.
pub fn traffic(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(traffic_bin())
        .args(args)
        .output()
        .expect("spawn tf-traffic");
    assert!(
        out.status.success(),
        "tf-traffic {args:?} in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (iface, hook, program) of every tcx program in `ns`, from `tenantflow hooks`.
pub fn tcx_hooks(ns: &str) -> Vec<(String, String, String)> {
    let out = in_ns(ns, &[agent_bin().to_str().unwrap(), "hooks"]);
    let mut v: Vec<_> = out
        .lines()
        .skip(1)
        // Interface hooks only: cgroup hooks are the host's, shared by every lab node.
        .filter(|l| !l.starts_with("cgroup:"))
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (c[0].to_owned(), c[1].to_owned(), c[2].to_owned())
        })
        .collect();
    v.sort();
    v
}

/// Send `n` UDP datagrams of `size` bytes from `bind` in `ns` to `to`, received in `rx_ns`;
/// returns the sender address:port the receiver saw (what a firewall would see).
pub fn udp_seen_as(ns: &str, bind: &str, rx_ns: &str, to: &str, n: u64, size: u64) -> String {
    let rx = traffic_bg(rx_ns, &["udp-recv", to, &n.to_string(), "--peers"]);
    traffic(
        ns,
        &[
            "udp-send",
            to,
            &n.to_string(),
            &size.to_string(),
            "--bind",
            bind,
        ],
    );
    let out = finish(rx);
    out.lines()
        .nth(1)
        .expect("receiver saw a sender")
        .split(' ')
        .next()
        .unwrap()
        .to_owned()
}

/// Start the traffic generator in the background (servers); the child is returned.
pub fn traffic_bg(ns: &str, args: &[&str]) -> std::process::Child {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(traffic_bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tf-traffic");
    // A server must be bound before a client connects: a fixed pause lost that race on a
    // loaded machine (a refused connect), so wait until the socket is there.
    let proto = match args.first().copied() {
        Some("tcp-serve" | "tcp-sink" | "tcp-reuse-serve" | "relay") => Some("-ltn"),
        Some("udp-recv") => Some("-lun"),
        _ => None,
    };
    // A client needs no wait: a test that depends on its progress waits for that.
    if let (Some(flags), Some(bind)) = (proto, args.get(1)) {
        wait_bound(ns, flags, bind);
    }
    child
}

/// `ss` lines in `ns` for `args` (a state and filter), header left out.
fn ss(ns: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-H"])
        .args(args)
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Wait until a socket in `ns` is bound to `bind` (`ss` flags: `-ltn` TCP listening,
/// `-lun` UDP): a client started before its server would be refused.
pub fn wait_bound(ns: &str, flags: &str, bind: &str) {
    let bound = eventually(Duration::from_secs(10), || {
        (!ss(ns, &[flags, "src", bind]).is_empty()).then_some(())
    });
    assert!(bound.is_some(), "nothing in {ns} ever bound {bind}");
}

/// Wait until a TCP connection on local `port` in `ns` is established (e.g. opened before
/// the agent starts).
pub fn wait_established(ns: &str, port: u16) {
    let filter = format!("( sport = :{port} )");
    let up = eventually(Duration::from_secs(10), || {
        (!ss(ns, &["-tn", "state", "established", &filter]).is_empty()).then_some(())
    });
    assert!(
        up.is_some(),
        "no established TCP connection on port {port} in {ns}"
    );
}

/// Wait until every TCP connection on local `port` in `ns` has exchanged its last segment:
/// each is gone (its final ACK arrived) or in TIME-WAIT (it sent the final ACK). Segment
/// counters read after this on both ends are final.
pub fn wait_tcp_closed(ns: &str, port: u16) {
    let filter = format!("( sport = :{port} )");
    let mut open = Vec::new();
    let done = eventually(Duration::from_secs(10), || {
        open = ss(
            ns,
            &[
                "-tan",
                "state",
                "connected",
                "exclude",
                "time-wait",
                &filter,
            ],
        );
        open.is_empty().then_some(())
    });
    assert!(
        done.is_some(),
        "TCP on port {port} in {ns} never closed: {open:?}"
    );
}

/// Count the lines `child` prints, from a background reader (the child's stdout is taken):
/// a test waits for a server's n-th line instead of sleeping.
pub fn count_lines(
    child: &mut std::process::Child,
) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use std::io::BufRead as _;
    let out = child.stdout.take().expect("child stdout is piped");
    let lines = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = lines.clone();
    std::thread::spawn(move || {
        for _ in std::io::BufReader::new(out).lines() {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    lines
}

/// Wait for a background generator and return its stdout.
pub fn finish(child: std::process::Child) -> String {
    let out = child.wait_with_output().expect("wait tf-traffic");
    assert!(out.status.success(), "background tf-traffic failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command inside `ns`, panicking with its stderr on failure.
pub fn in_ns(ns: &str, args: &[&str]) -> String {
    xtask::exec::in_ns(ns, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// An iptables `CT --notrack` rule in `ns` for `proto` packets whose `--dport` or `--sport`
/// (`dir`) is `port`: conntrack never sees them (as NodeLocal DNSCache's rules do).
pub fn notrack(ns: &str, proto: &str, dir: &str, port: u16) {
    let port = port.to_string();
    in_ns(
        ns,
        &[
            "iptables",
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-p",
            proto,
            dir,
            &port,
            "-j",
            "CT",
            "--notrack",
        ],
    );
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`: the peak a memory limit kills
/// on); panics when the process or field is not there.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    proc_status(pid, field).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// As [`proc_status_kib`], None once the process is gone (a zombie has no memory fields).
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Unix time in whole seconds, as the agent's timestamp metrics carry it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Poll `f` until it returns Some or `timeout` passes. Used only to wait for the agent's
/// next harvest; the assertion that follows is always exact.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tenantflow agent` on lab node `node` with the lab's config (kubectl-style snapshot,
/// tenancy, egress gateway and exempt range) plus `extra` flags.
pub fn lab_agent(lab: &LabGuard, node: u8, extra: &[&str]) -> Agent {
    let cfg = xtask::lab::manifest::config_path(&lab.topo.prefix);
    let mut args = vec!["--config", cfg.to_str().expect("UTF-8 path")];
    args.extend_from_slice(extra);
    Agent::start(&lab.topo.node_ns(node), &args)
}

/// Send `n` UDP datagrams of `size` payload bytes from pod `from` (bound to `sport`) to
/// `to`, with a receiver in `rx_ns`; asserts every one arrived. Returns (packets, IP bytes).
pub fn udp_from_pod(
    lab: &LabGuard,
    from: &str,
    sport: u16,
    rx_ns: &str,
    to: &str,
    n: u64,
    size: u64,
) -> (u64, u64) {
    let t = &lab.topo;
    let p = t.pod(from);
    let rx = traffic_bg(rx_ns, &["udp-recv", to, &n.to_string()]);
    traffic(
        &t.pod_ns(p),
        &[
            "udp-send",
            to,
            &n.to_string(),
            &size.to_string(),
            "--bind",
            &format!("{}:{sport}", p.ip()),
        ],
    );
    assert_eq!(
        finish(rx).lines().next(),
        Some(n.to_string().as_str()),
        "receiver got all {n}"
    );
    (n, n * (size + 28))
}
