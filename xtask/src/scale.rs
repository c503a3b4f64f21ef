//! `cargo xtask bench --scale`: the agent on a busy node. Node 1 of the lab gets as many pod
//! interfaces as a large AKS node (250 by default) and one pod keeps 100,000 UDP flows to the
//! internet host active (one datagram per flow per second, masqueraded, so conntrack tracks
//! each). Reports the release agent's own cost while it keeps up: CPU per second of
//! harvesting, harvest time, peak RSS, and how long attaching takes.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use xtask::{
    exec,
    lab::{topology::INTERNET_HOST, LabGuard, Topology},
};

const LISTEN: &str = "127.0.0.1:9990";
/// First destination port of the flows.
const FIRST_PORT: u16 = 20000;
/// Seconds of traffic before measuring: conntrack and the flow cache fill, ids are handed out.
const WARMUP_S: u64 = 6;

pub struct ScaleArgs {
    pub connections: u32,
    pub pods: u32,
    pub seconds: u64,
    pub flow_cache_sets: Option<u32>,
    pub harvest_interval: String,
}

pub fn run(agent_bin: &str, args: &ScaleArgs) -> Result<()> {
    let lab = LabGuard::up(Topology::standard("scale"))?;
    let t = &lab.topo;
    let node = t.node_ns(1);
    let existing = exec::in_ns(&node, &["ip", "-o", "link", "show", "type", "veth"])?
        .lines()
        .count() as u32;
    let extra = args.pods.saturating_sub(existing);
    add_veths(&node, "vsc", extra)?;
    // The internet host drops the datagrams silently (no ICMP port-unreachable storm).
    exec::in_ns(
        &t.internet_ns(),
        &[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            "1024:65535",
            "-j",
            "DROP",
        ],
    )?;
    let log = std::env::temp_dir().join("tenantflow-scale-agent.log");
    // By default sized by the rule for flows that stay on their CPU: every active flow's
    // two observation points fit in the caches of all CPUs together (two ways per set).
    // The generator moves between CPUs, so each CPU sees them all and this cache evicts
    // (docs/BENCHMARKS.md); --flow-cache-sets measures other sizes.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let sets = args.flow_cache_sets.unwrap_or_else(|| {
        (args.connections * 2)
            .div_ceil(2 * cpus)
            .next_power_of_two()
    });
    eprintln!("scale: --flow-cache-sets {sets}");
    let mut agent = start_agent(agent_bin, &node, &log, sets, &args.harvest_interval)?;
    let result = measure(&lab, &node, &mut agent, &log, args);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    result
}

fn measure(
    lab: &LabGuard,
    node: &str,
    agent: &mut Child,
    log: &std::path::Path,
    args: &ScaleArgs,
) -> Result<()> {
    let t = &lab.topo;
    wait_ready(node, agent, log)?;
    let attach_ms = attach_span_ms(log)?;
    let pods = metric(node, "tenantflow_attached_interfaces{role=\"pod\"}")? as u32;
    // One more pod interface while the agent runs: how soon is it observed?
    let created = SystemTime::now();
    add_veths(node, "vnew", 1)?;
    let attach_new_ms = wait_attached(log, "vethvnew0", created)?;

    let web1 = t.pod("web-1");
    let mut traffic = Command::new("ip")
        .args(["netns", "exec", &t.pod_ns(web1)])
        .arg(std::env::current_exe()?)
        .args([
            "traffic",
            "udp-flows",
            &format!("{INTERNET_HOST}:{FIRST_PORT}"),
            &args.connections.to_string(),
            &(WARMUP_S + args.seconds + 2).to_string(),
            "--sources",
            &args.connections.div_ceil(40_000).max(1).to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the flow generator")?;
    std::thread::sleep(Duration::from_secs(WARMUP_S));
    let pid = agent.id();
    const EVICTIONS: &str = "tenantflow_datapath_evictions_total";
    const PACKETS: &str = "tenantflow_datapath_packets_total";
    let (cpu0, h0) = (cpu_ticks(pid)?, histogram(node)?);
    let (ev0, pk0) = (metric(node, EVICTIONS)?, metric(node, PACKETS)?);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.seconds));
    let (cpu1, h1) = (cpu_ticks(pid)?, histogram(node)?);
    let (ev1, pk1) = (metric(node, EVICTIONS)?, metric(node, PACKETS)?);
    let wall = t0.elapsed().as_secs_f64();
    let connections = metric(node, "tenantflow_connections")?;
    let lost = metric(node, "tenantflow_datapath_evictions_lost_total")?;
    let rss_mib = status_kib(pid, "VmHWM:")? as f64 / 1024.0;
    // After the burst that placed every connection: what a node shows most of the time.
    let steady_rss_mib = status_kib(pid, "VmRSS:")? as f64 / 1024.0;
    let _ = traffic.wait();

    let ticks = exec::run("getconf", &["CLK_TCK"])?.trim().parse::<f64>()?;
    let cpu_ms_per_s = (cpu1 - cpu0) as f64 / ticks * 1000.0 / wall;
    let harvests = h1.count - h0.count;
    let mean_ms = (h1.sum - h0.sum) / harvests.max(1) as f64 * 1000.0;
    let p99_ms = h1.quantile_since(&h0, 0.99) * 1000.0;
    eprintln!("scale: {harvests} harvests in {wall:.1} s, evictions lost {lost}");
    println!("pods={pods}");
    println!("attach_new_ms={attach_new_ms:.1}");
    println!("cpu_ms_per_s={cpu_ms_per_s:.1}");
    println!("harvest_ms_mean={mean_ms:.1}");
    // Packets that took a slot from another flow: each one costs the agent an eviction
    // record instead of a slot read.
    println!("evictions_per_s={:.0}", (ev1 - ev0) / wall);
    println!("packets_per_s={:.0}", (pk1 - pk0) / wall);
    println!("connections={connections}");
    println!("harvest_ms_p99={p99_ms}");
    println!("rss_mib={rss_mib:.1}");
    println!("steady_rss_mib={steady_rss_mib:.1}");
    println!("attach_{pods}_ms={attach_ms:.1}");
    Ok(())
}

/// `n` veth pairs whose host side matches the default pod glob (`veth*` is taken by the lab,
/// so `vethPREFIXi`), created in one `ip -batch`.
fn add_veths(ns: &str, prefix: &str, n: u32) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let mut batch = String::new();
    for i in 0..n {
        batch += &format!(
            "link add veth{prefix}{i} type veth peer name p{prefix}{i}\nlink set veth{prefix}{i} up\nlink set p{prefix}{i} up\n"
        );
    }
    let file = std::env::temp_dir().join(format!("tenantflow-{prefix}.batch"));
    std::fs::write(&file, batch)?;
    exec::run(
        "ip",
        &[
            "-n",
            ns,
            "-batch",
            file.to_str().context("UTF-8 temp path")?,
        ],
    )?;
    Ok(())
}

fn start_agent(
    bin: &str,
    node: &str,
    log: &std::path::Path,
    sets: u32,
    harvest_interval: &str,
) -> Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", node, bin, "agent", "--listen", LISTEN])
        .args([
            "--harvest-interval",
            harvest_interval,
            "--log-format",
            "json",
        ])
        .args(["--flow-cache-sets", &sets.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting the agent")
}

/// Waits for the agent's readiness; if it exits first (a flag it rejects, say), the error
/// carries the agent's own last words instead of a bare timeout.
fn wait_ready(node: &str, agent: &mut Child, log: &std::path::Path) -> Result<()> {
    for _ in 0..600 {
        if http(node, "/readyz").is_ok_and(|b| b.starts_with("ready")) {
            return Ok(());
        }
        if let Some(status) = agent.try_wait()? {
            bail!(
                "the agent exited ({status}) before it was ready; its log {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "agent not ready within 30 s; its log {}:\n{}",
        log.display(),
        log_tail(log)
    )
}

/// The last lines of the agent's log, for an error message.
fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn http(node: &str, path: &str) -> Result<String> {
    exec::in_ns(node, &["curl", "-sf", &format!("http://{LISTEN}{path}")])
}

fn metric(node: &str, series: &str) -> Result<f64> {
    let body = http(node, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .with_context(|| format!("{series} not exported"))
}

/// JSON log lines of the agent with their timestamps.
fn log_events(log: &std::path::Path) -> Result<Vec<(SystemTime, Value)>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let ts = humantime::parse_rfc3339(v["timestamp"].as_str()?).ok()?;
            Some((ts, v))
        })
        .collect())
}

/// From the first interface attached to the last one attached at start-up.
fn attach_span_ms(log: &std::path::Path) -> Result<f64> {
    let attached: Vec<SystemTime> = log_events(log)?
        .into_iter()
        .filter(|(_, v)| v["fields"]["message"] == "attached")
        .map(|(t, _)| t)
        .collect();
    let (Some(first), Some(last)) = (attached.first(), attached.last()) else {
        bail!("no attach in the agent log");
    };
    Ok(last.duration_since(*first)?.as_secs_f64() * 1000.0)
}

/// Milliseconds from `since` to the agent's log line saying `iface` is attached.
fn wait_attached(log: &std::path::Path, iface: &str, since: SystemTime) -> Result<f64> {
    for _ in 0..200 {
        let hit = log_events(log)?
            .into_iter()
            .find(|(_, v)| v["fields"]["message"] == "attached" && v["fields"]["iface"] == iface);
        if let Some((t, _)) = hit {
            return Ok(t.duration_since(since).unwrap_or_default().as_secs_f64() * 1000.0);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{iface} was not attached within 5 s")
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start past the last ')'.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM:` peak, `VmRSS:` now).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// `tenantflow_harvest_duration_seconds` as scraped.
struct Histogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// The upper bound of the bucket holding quantile `q` of the observations since `before`.
    fn quantile_since(&self, before: &Histogram, q: f64) -> f64 {
        let total = self.count - before.count;
        let want = (total as f64 * q).ceil() as u64;
        self.buckets
            .iter()
            .zip(&before.buckets)
            .find(|((_, now), (_, then))| now - then >= want)
            .map_or(f64::INFINITY, |((le, _), _)| *le)
    }
}

fn histogram(node: &str) -> Result<Histogram> {
    let body = http(node, "/metrics")?;
    let name = "tenantflow_harvest_duration_seconds";
    let mut h = Histogram {
        buckets: Vec::new(),
        sum: 0.0,
        count: 0,
    };
    for l in body.lines() {
        let Some((series, v)) = l.rsplit_once(' ') else {
            continue;
        };
        if let Some(le) = series
            .strip_prefix(&format!("{name}_bucket{{le=\""))
            .and_then(|r| r.strip_suffix("\"}"))
        {
            h.buckets
                .push((le.parse().unwrap_or(f64::INFINITY), v.parse()?));
        } else if series == format!("{name}_sum") {
            h.sum = v.parse()?;
        } else if series == format!("{name}_count") {
            h.count = v.parse()?;
        }
    }
    Ok(h)
}
