//! Peak memory of the real identity paths at real object sizes: `tenantflow index`, an
//! agent in direct mode and an agent following the index, each against the synthetic API
//! server serving pods as a real one does (about 6.8 KB each), in a network namespace of
//! their own. Used by the memory test (small sizes) and `cargo xtask bench-identity`
//! (200k pods).

use std::time::{Duration, Instant};

use crate::{
    eventually,
    index_process::{free_port, Index},
    kube_api::{KubeApi, Size},
    prefix, Agent,
};

/// The agents' token, which the synthetic API's RBAC grants `get` on /v1/identity.
const AGENT: &str = "agent-token";

/// What one size costs.
#[derive(Debug)]
pub struct Peaks {
    pub pods: u64,
    /// Bytes of every list the index read (all four kinds).
    pub list_bytes: u64,
    /// Peak RSS once ready, and the time to ready.
    pub index: (u64, Duration),
    pub direct: (u64, Duration),
    /// An agent following the index (when asked for).
    pub follower: Option<(u64, Duration)>,
}

/// Peak RSS (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    crate::proc_status_kib(pid, "VmHWM") * 1024
}

/// A network namespace with an uplink (one end of a veth pair), removed on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Self {
        let run = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["netns", "add", &name]);
        let ns = Self(name);
        run(&["-n", &ns.0, "link", "set", "lo", "up"]);
        run(&[
            "-n", &ns.0, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
        ]);
        run(&["-n", &ns.0, "link", "set", "up0", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// A cluster of `pods` pods with nodes, namespaces and services in the proportions of
/// the 200k-pod bench (5k nodes, 2k namespaces, 10k services).
pub fn size(pods: u64) -> Size {
    Size {
        pods,
        nodes: (pods / 40).max(100),
        namespaces: (pods / 100).max(50),
        services: (pods / 20).max(200),
    }
}

/// Start an agent in `ns` and wait (as long as a debug build needs) until it is ready;
/// returns it with the time that took.
pub fn ready_agent(ns: &str, extra: &[&str], kubeconfig: &str) -> (Agent, Duration) {
    let started = Instant::now();
    let mut args = vec!["--uplink", "up0", "--node-name", "node-0"];
    args.extend_from_slice(extra);
    let mut agent = Agent::spawn_env(
        ns,
        "127.0.0.1:9990",
        "1s",
        &args,
        &[("KUBECONFIG", kubeconfig)],
    );
    let ready = eventually(Duration::from_secs(600), || {
        assert!(
            agent.exited().is_none(),
            "agent exited:\n{}",
            agent.log_text()
        );
        matches!(agent.get("/readyz"), Ok((200, _))).then_some(())
    });
    assert!(ready.is_some(), "agent not ready:\n{}", agent.log_text());
    (agent, started.elapsed())
}

/// Start an agent in `ns` following the index at `addr` (with the token the synthetic API
/// grants `/v1/identity`) and wait until it is ready.
pub fn ready_follower(ns: &str, addr: &str, kubeconfig: &str) -> (Agent, Duration) {
    let token = std::env::temp_dir().join(format!("tf-follower-token-{ns}"));
    std::fs::write(&token, format!("{AGENT}\n")).unwrap();
    let url = format!("http://{addr}");
    let extra = [
        "--identity-index",
        url.as_str(),
        "--identity-index-token-file",
        token.to_str().unwrap(),
    ];
    ready_agent(ns, &extra, kubeconfig)
}

/// Measure the index and a direct-mode agent (and a follower, if `follower`) at `pods`.
pub fn measure(pods: u64, tag: &str, follower: bool) -> Peaks {
    let ns = Netns::new(prefix(&format!("pk{tag}")));
    let api = KubeApi::start(size(pods), vec![], Some(&ns.0));
    api.set_realistic(true);
    api.grant(
        AGENT,
        "system:serviceaccount:tenantflow:tenantflow",
        &["/v1/identity"],
    );
    let kubeconfig = api.kubeconfig("agent");
    let kubeconfig = kubeconfig.to_str().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let ix = Index::start(&api, &addr, Some(&ns.0), None, &format!("peak{tag}"));
    let index = (peak_rss(ix.pid()), started.elapsed());
    let list_bytes = api.stats("index").bytes;
    let follower = follower.then(|| {
        let (agent, took) = ready_follower(&ns.0, &addr, kubeconfig);
        let pods_seen = agent.metric("tenantflow_metadata_objects{kind=\"pod\",source=\"index\"}");
        assert_eq!(pods_seen, Some(pods as f64), "{}", agent.log_text());
        (peak_rss(agent.pid().unwrap()), took)
    });
    drop(ix);
    let (agent, took) = ready_agent(&ns.0, &[], kubeconfig);
    let pods_seen = agent.metric("tenantflow_metadata_objects{kind=\"pod\",source=\"kubernetes\"}");
    assert_eq!(pods_seen, Some(pods as f64), "{}", agent.log_text());
    let direct = (peak_rss(agent.pid().unwrap()), took);
    Peaks {
        pods,
        list_bytes,
        index,
        direct,
        follower,
    }
}
