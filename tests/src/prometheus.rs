//! A real Prometheus server (Debian's package) scraping the agent inside a lab node's
//! namespace, queried through its HTTP API. Stopped and its data removed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{eventually, netns_http};

pub const LISTEN: &str = "127.0.0.1:9091";

pub struct Prometheus {
    ns: String,
    child: Child,
    dir: PathBuf,
}

/// Percent-encode a PromQL expression for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Start Prometheus in `ns` scraping `target` every second, with `rules` files loaded.
    pub fn start(ns: &str, target: &str, rules: &[PathBuf]) -> Self {
        Self::start_with(ns, target, rules, "")
    }

    /// As [`Prometheus::start`], with more settings for the scrape job (`job` is YAML at the
    /// job's indentation, e.g. `    scheme: https\n`).
    pub fn start_with(ns: &str, target: &str, rules: &[PathBuf], job: &str) -> Self {
        let jobs = format!(
            "  - job_name: tenantflow\n{job}    static_configs:\n      - targets: ['{target}']\n        labels: {{node: lab-node1, cluster: lab, app_kubernetes_io_name: tenantflow}}\n"
        );
        Self::start_jobs(ns, rules, &jobs)
    }

    /// Start Prometheus in `ns` with `jobs` (YAML list items under `scrape_configs:`),
    /// scraping and evaluating `rules` every second.
    pub fn start_jobs(ns: &str, rules: &[PathBuf], jobs: &str) -> Self {
        let bin = which("prometheus");
        let dir = std::env::temp_dir().join(format!("{ns}-prometheus"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rule_files: Vec<String> = rules
            .iter()
            .map(|r| format!("  - {}", r.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n{jobs}",
            if rule_files.is_empty() { "  []".to_owned() } else { rule_files.join("\n") }
        );
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus {
            ns: ns.to_owned(),
            child,
            dir,
        };
        let ready = eventually(Duration::from_secs(30), || {
            matches!(netns_http::get(&p.ns, LISTEN, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus never became ready:\n{}",
            p.log()
        );
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Instant query: (labels, value) of every result.
    pub fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let (status, body) = netns_http::get(
            &self.ns,
            LISTEN,
            &format!("/api/v1/query?query={}", encode(expr)),
        )
        .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        assert_eq!(status, 200, "query {expr}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    /// Wait until `expr` yields exactly one series equal to `want` (scrapes lag the
    /// agent's harvest by up to two seconds), then return its labels; panics with what
    /// Prometheus had otherwise.
    pub fn expect_one(&self, expr: &str, want: f64) -> Value {
        let mut last = Vec::new();
        let hit = eventually(Duration::from_secs(10), || {
            last = self.query(expr);
            (last.len() == 1 && last[0].1 == want).then(|| last[0].0.clone())
        });
        hit.unwrap_or_else(|| panic!("{expr}: want one series = {want}, Prometheus has {last:#?}"))
    }

    /// Every alert Prometheus currently has: (alertname, state, labels).
    pub fn alerts(&self) -> Vec<(String, String, Value)> {
        let (_, body) = netns_http::get(&self.ns, LISTEN, "/api/v1/alerts").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_owned(),
                    a["state"].as_str().unwrap().to_owned(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tool `cargo xtask setup` installs; its absence is a failure, never a skip.
pub fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} not found on PATH: run `cargo xtask setup`"))
}
