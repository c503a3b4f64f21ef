//! `tenantflow index` as a test process: started against the synthetic API server, on a
//! loopback address of the test's choosing (optionally inside a lab namespace), killed
//! on drop.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{agent_bin, kube_api::KubeApi, netns_http};

pub struct Index {
    child: Child,
    pub addr: String,
    netns: Option<String>,
    log: std::path::PathBuf,
    /// The CA its TLS listener is verified with, when it serves TLS.
    ca: Option<String>,
}

/// The index's certificate files and the CA that signed them.
pub struct IndexTls<'a> {
    pub cert: &'a str,
    pub key: &'a str,
    pub ca: &'a str,
}

/// The lab's agent config without its snapshot, for the index and the agents following
/// it: identity then comes from the (synthetic) API.
pub fn config_without_snapshot(t: &xtask::lab::Topology) -> std::path::PathBuf {
    let cfg = std::fs::read_to_string(xtask::lab::manifest::config_path(&t.prefix)).unwrap();
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.contains("snapshot:") && *l != "identity:")
        .map(|l| format!("{l}\n"))
        .collect();
    let p = std::env::temp_dir().join(format!("tf-index-agent-{}.yaml", t.prefix));
    std::fs::write(&p, cfg).unwrap();
    p
}

/// A free port on the host's loopback (inside a fresh lab namespace every port is free).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Index {
    /// Start it (in `netns`, if given) following `api` as client `index`, with the agents'
    /// `config` if given; waits for ready.
    pub fn start(
        api: &KubeApi,
        addr: &str,
        netns: Option<&str>,
        config: Option<&std::path::Path>,
        tag: &str,
    ) -> Self {
        Self::start_tls(api, addr, netns, config, tag, None)
    }

    /// As [`Index::start`], serving TLS with `tls` when given.
    pub fn start_tls(
        api: &KubeApi,
        addr: &str,
        netns: Option<&str>,
        config: Option<&std::path::Path>,
        tag: &str,
        tls: Option<IndexTls>,
    ) -> Self {
        Self::start_with(api, addr, netns, config, tag, tls, &[])
    }

    /// As [`Index::start_tls`], with `extra` flags (e.g. the relay's).
    pub fn start_with(
        api: &KubeApi,
        addr: &str,
        netns: Option<&str>,
        config: Option<&std::path::Path>,
        tag: &str,
        tls: Option<IndexTls>,
        extra: &[&str],
    ) -> Self {
        let log = std::env::temp_dir().join(format!("tf-index-{tag}-{}.log", std::process::id()));
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        cmd.args(["index", "--listen", addr]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        if let Some(t) = &tls {
            cmd.args(["--tls-cert", t.cert, "--tls-key", t.key]);
        }
        cmd.args(extra);
        let child = cmd
            .env("KUBECONFIG", api.kubeconfig("index"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn the index");
        let mut ix = Self {
            child,
            addr: addr.to_owned(),
            netns: netns.map(str::to_owned),
            log,
            ca: tls.map(|t| t.ca.to_owned()),
        };
        ix.wait_ready(Duration::from_secs(180));
        ix
    }

    /// The index's pid (`ip netns exec` execs it, so the same process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        if let Some(ca) = &self.ca {
            return self.get_tls(ca, path);
        }
        if let Some(ns) = &self.netns {
            return netns_http::get(ns, &self.addr, path).ok();
        }
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        Some((
            head.split_whitespace().nth(1)?.parse().ok()?,
            body.to_owned(),
        ))
    }

    /// GET over TLS with curl (in the index's namespace), trusting `ca`.
    fn get_tls(&self, ca: &str, path: &str) -> Option<(u16, String)> {
        let url = format!("https://{}{path}", self.addr);
        let curl = [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            ca,
            "-w",
            "\n%{http_code}",
        ];
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(curl);
                c
            }
            None => {
                let mut c = Command::new(curl[0]);
                c.args(&curl[1..]);
                c
            }
        };
        let out = cmd.arg(url).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_owned()))
    }

    /// One sample of its /metrics, by exact name and labels.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    fn wait_ready(&mut self, within: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("index exited ({st}):\n{}", self.log_text());
            }
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            assert!(
                started.elapsed() < within,
                "index not ready in {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL: no goodbye to its followers.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        self.kill();
    }
}
