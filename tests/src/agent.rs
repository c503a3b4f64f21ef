//! A running agent inside a node namespace, stopped (SIGTERM, then SIGKILL) on drop.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{agent_bin, eventually, netns_http};

/// Where the agent serves metrics and probes inside its namespace.
pub const LISTEN: &str = "127.0.0.1:9990";
/// Where it serves flow records (its default --flows-listen).
pub const RECORDS: &str = "127.0.0.1:9991";

pub struct Agent {
    pub ns: String,
    child: Option<Child>,
    pub log: std::path::PathBuf,
}

impl Agent {
    /// Start `tenantflow agent` in `ns` with a 200 ms harvest and wait until /readyz is 200.
    pub fn start(ns: &str, extra: &[&str]) -> Self {
        Self::start_harvesting_every(ns, "200ms", extra)
    }

    /// As [`Agent::start`] with another `--harvest-interval`.
    pub fn start_harvesting_every(ns: &str, interval: &str, extra: &[&str]) -> Self {
        Self::start_on(ns, LISTEN, interval, extra)
    }

    /// As [`Agent::start`], serving metrics and probes on `listen` (e.g. `0.0.0.0:9990`
    /// as the chart does); the readiness wait still goes through [`LISTEN`].
    pub fn start_on(ns: &str, listen: &str, interval: &str, extra: &[&str]) -> Self {
        Self::start_env(ns, listen, interval, extra, &[])
    }

    /// As [`Agent::start_on`], with extra environment variables (e.g. KUBECONFIG).
    pub fn start_env(
        ns: &str,
        listen: &str,
        interval: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut agent = Self::spawn_env(ns, listen, interval, extra, env);
        agent.wait_ready();
        agent
    }

    /// Start without waiting for /readyz (a TLS listener needs another client).
    pub fn spawn_env(
        ns: &str,
        listen: &str,
        interval: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{ns}-agent.log"));
        let logf = std::fs::File::create(&log).expect("agent log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(agent_bin())
            .args(["agent", "--listen", listen, "--harvest-interval", interval])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn agent");
        Agent {
            ns: ns.to_owned(),
            child: Some(child),
            log,
        }
    }

    fn wait_ready(&mut self) {
        let agent = self;
        let ready = eventually(Duration::from_secs(20), || {
            if let Some(status) = agent.exited() {
                panic!("agent exited early ({status}):\n{}", agent.log_text());
            }
            matches!(agent.get("/readyz"), Ok((200, _))).then_some(())
        });
        assert!(
            ready.is_some(),
            "agent never became ready:\n{}",
            agent.log_text()
        );
    }

    /// An agent started by other means (e.g. from its container image) listening on
    /// [`LISTEN`] in `ns`; dropping it stops nothing.
    pub fn started_elsewhere(ns: &str, log: std::path::PathBuf) -> Self {
        Agent {
            ns: ns.to_owned(),
            child: None,
            log,
        }
    }

    /// The agent's pid, when this handle started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Exit status, if the agent has already exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// GET from the public listener (/metrics, /healthz, /readyz).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        netns_http::get(&self.ns, LISTEN, path)
    }

    /// GET from the loopback records listener (/flows, /observations).
    pub fn get_records(&self, path: &str) -> std::io::Result<(u16, String)> {
        netns_http::get(&self.ns, RECORDS, path)
    }

    fn get_json(&self, path: &str) -> Vec<Value> {
        let (status, body) = self
            .get_records(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} JSON: {e}"))
    }

    /// Per-hook sightings (`/observations`, optionally with a query string).
    pub fn observations(&self, query: &str) -> Vec<Value> {
        self.get_json(&format!("/observations{query}"))
    }

    /// Connection records (`/flows`, optionally with a query string).
    pub fn connections(&self, query: &str) -> Vec<Value> {
        self.get_json(&format!("/flows{query}"))
    }

    /// Value of one metric sample line from /metrics (exact label match), if present.
    pub fn metric(&self, name_and_labels: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
    }

    /// Harvests the agent has finished (its harvest-duration histogram's count).
    pub fn harvests(&self) -> u64 {
        self.metric("tenantflow_harvest_duration_seconds_count")
            .expect("harvest count exported") as u64
    }

    /// Wait until `n` more harvests have finished: to assert that something stays as it is.
    pub fn wait_harvests(&self, n: u64) {
        let start = self.harvests();
        let done = eventually(Duration::from_secs(10 + 2 * n), || {
            (self.harvests() >= start + n).then_some(())
        });
        assert!(done.is_some(), "{n} more harvests did not finish");
    }

    /// Send `sig` and wait for exit; returns the exit code.
    pub fn stop_with(&mut self, sig: i32) -> Option<i32> {
        match self.terminate(sig)? {
            Some(status) => status.code(),
            None => panic!("agent did not exit after signal {sig}"),
        }
    }

    /// Send `sig` and wait up to 10 s; an agent still running then is killed (`Some(None)`).
    /// None when this handle did not start the agent or it was stopped already.
    fn terminate(&mut self, sig: i32) -> Option<Option<std::process::ExitStatus>> {
        let mut child = self.child.take()?;
        // `ip netns exec` execs the agent, so the child pid is the agent's.
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, sig) };
        let waited = eventually(Duration::from_secs(10), || child.try_wait().ok().flatten());
        if waited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Some(waited)
    }
}

impl Drop for Agent {
    /// Never panics: a panic while a failing test unwinds would abort the process before
    /// the lab guard removes the namespaces. A stuck agent is killed and said so.
    fn drop(&mut self) {
        if let Some(None) = self.terminate(libc::SIGTERM) {
            eprintln!("agent in {} did not exit after SIGTERM: killed", self.ns);
        }
    }
}

/// Find the one flow at (`iface`, `hook`) matching `pred`, waiting for the harvest to
/// reach `want` (packets, bytes); returns what was last seen for the exact assertion.
pub fn wait_flow(
    agent: &Agent,
    iface: &str,
    hook: &str,
    pred: impl Fn(&Value) -> bool,
    want: (u64, u64),
) -> (u64, u64) {
    wait_flow_until(agent, iface, hook, pred, |seen| seen == want)
}

/// As [`wait_flow`], when only the packet count is known in advance.
pub fn wait_packets(
    agent: &Agent,
    iface: &str,
    hook: &str,
    pred: impl Fn(&Value) -> bool,
    packets: u64,
) -> u64 {
    wait_flow_until(agent, iface, hook, pred, |seen| seen.0 == packets).0
}

fn wait_flow_until(
    agent: &Agent,
    iface: &str,
    hook: &str,
    pred: impl Fn(&Value) -> bool,
    done: impl Fn((u64, u64)) -> bool,
) -> (u64, u64) {
    let mut last = (0, 0);
    eventually(Duration::from_secs(5), || {
        let flows = agent.observations(&format!("?iface={iface}"));
        let hits: Vec<&Value> = flows
            .iter()
            .filter(|f| f["hook"] == hook && pred(f))
            .collect();
        assert!(
            hits.len() <= 1,
            "more than one flow matched at {iface}/{hook}: {hits:#?}"
        );
        last = hits
            .first()
            .map(|f| (f["packets"].as_u64().unwrap(), f["bytes"].as_u64().unwrap()))
            .unwrap_or((0, 0));
        done(last).then_some(())
    });
    last
}

/// The one connection matching `pred`, once `done` holds for it (or the last one seen,
/// for the exact assertion that follows). Panics if several connections still match when
/// the wait ends: until the conntrack event of a NATed connection arrives (asynchronous,
/// up to a harvest late) its pre- and post-NAT sightings are two records, so a match
/// count above one is only final once the wait is over.
pub fn wait_connection(
    agent: &Agent,
    pred: impl Fn(&Value) -> bool,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut hits: Vec<Value> = Vec::new();
    eventually(Duration::from_secs(6), || {
        hits = agent
            .connections("")
            .into_iter()
            .filter(|c| pred(c))
            .collect();
        (hits.len() == 1 && done(&hits[0])).then_some(())
    });
    assert!(
        hits.len() <= 1,
        "more than one connection matched: {hits:#?}"
    );
    let last = hits.pop().unwrap_or(Value::Null);
    assert!(
        !last.is_null(),
        "no connection matched; agent has:\n{:#?}",
        agent.connections("")
    );
    last
}

/// (packets, bytes) of a connection's `forward` or `reply` counts.
/// A connection record with exactly this 5-tuple.
pub fn is_tuple(c: &Value, proto: &str, src: &str, sport: u16, dst: &str, dport: u16) -> bool {
    c["proto"] == proto
        && c["src"] == src
        && c["src_port"] == sport
        && c["dst"] == dst
        && c["dst_port"] == dport
}

/// A record's `snat` or `dnat` as `ip:port` (`[ip]:port` for IPv6), as peers print theirs.
pub fn endpoint(v: &Value) -> Option<String> {
    (!v.is_null()).then(|| {
        let ip: std::net::IpAddr = v["ip"].as_str().unwrap().parse().unwrap();
        std::net::SocketAddr::new(ip, v["port"].as_u64().unwrap() as u16).to_string()
    })
}

pub fn counts(c: &Value, dir: &str) -> (u64, u64) {
    (
        c[dir]["packets"].as_u64().unwrap(),
        c[dir]["bytes"].as_u64().unwrap(),
    )
}

/// The flow log's final (`end`) records of connections to `port`, complete lines only: the
/// agent may be writing the last one.
pub fn ended_records(log: &std::path::Path, port: u16) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("flow log line is JSON"))
        .filter(|r| r["type"] == "end" && r["dst_port"] == port)
        .collect()
}
