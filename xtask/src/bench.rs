//! `cargo xtask bench`: per-packet cost from kernel BPF run-time stats and TCP throughput,
//! for three configurations alternated on the same lab path (web-1 → web-2, crossing
//! node 1's pod veth and uplink): no program, a no-op program (the floor), the agent.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::Value;
use xtask::{
    exec,
    lab::{LabGuard, Topology},
    setup,
};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds; each runs every configuration once, in alternation.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per iperf3 run (with --scale: seconds measured).
    #[arg(long, default_value_t = 4)]
    pub seconds: u64,
    /// Node scale instead: many pod interfaces and concurrently active connections; prints
    /// connections=, harvest_ms_p99=, rss_mib= (peak), steady_rss_mib=, attach_N_ms= last.
    #[arg(long)]
    pub scale: bool,
    /// With --scale: concurrently active connections.
    #[arg(long, default_value_t = 100_000)]
    pub connections: u32,
    /// With --scale: pod interfaces on the node.
    #[arg(long, default_value_t = 250)]
    pub pods: u32,
    /// With --scale: the agent's `--flow-cache-sets` (default: sized for the connections).
    #[arg(long)]
    pub flow_cache_sets: Option<u32>,
    /// With --scale: the agent's `--harvest-interval`.
    #[arg(long, default_value = "1s")]
    pub harvest_interval: String,
    /// The parser fuzz targets instead, each for --cases mutated inputs (release build).
    #[arg(long)]
    pub fuzz: bool,
    /// With --fuzz: inputs per target.
    #[arg(long, default_value_t = 10_000_000)]
    pub cases: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Config {
    Baseline,
    Floor,
    Agent,
}

#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    ns_per_run: Option<f64>,
    /// The socket-LB egress hook (cgroup_skb) per UDP datagram of the client, which runs
    /// in the pods' cgroup.
    svc_ns_per_run: Option<f64>,
    /// The TC programs per TCP skb (a GSO super-packet is one run): the path that also
    /// looks up the connection generation.
    tcp_ns_per_run: Option<f64>,
    /// The TC programs per UDP datagram to port 53: every one is copied to the DNS ring
    /// (or, when a flood fills it, counted lost).
    dns_ns_per_run: Option<f64>,
    udp_pps: f64,
    tcp_bps: f64,
}

struct Bench {
    lab: LabGuard,
    agent_bin: String,
    seconds: u64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.fuzz {
        return crate::fuzz::run(args.cases);
    }
    exec::require_root("the benchmark")?;
    setup::setup()?;
    exec::run_visible(Command::new("cargo").args([
        "build",
        "-q",
        "--release",
        "-p",
        "tenantflow",
    ]))?;
    let agent_bin = std::env::current_dir()?.join("target/release/tenantflow");
    if args.scale {
        let scale = crate::scale::ScaleArgs {
            connections: args.connections,
            pods: args.pods,
            seconds: args.seconds.max(5),
            flow_cache_sets: args.flow_cache_sets,
            harvest_interval: args.harvest_interval,
        };
        return crate::scale::run(&agent_bin.to_string_lossy(), &scale);
    }
    let prev_stats = exec::run("sysctl", &["-n", "kernel.bpf_stats_enabled"])?;
    exec::run("sysctl", &["-qw", "kernel.bpf_stats_enabled=1"])?;
    let bench = Bench {
        lab: LabGuard::up(Topology::standard("bench"))?,
        agent_bin: agent_bin.to_string_lossy().into_owned(),
        seconds: args.seconds,
    };
    let result = bench.rounds(args.rounds);
    let _ = exec::run(
        "sysctl",
        &[
            "-qw",
            &format!("kernel.bpf_stats_enabled={}", prev_stats.trim()),
        ],
    );
    let samples = result?;
    report(&samples);
    Ok(())
}

impl Bench {
    fn rounds(&self, rounds: usize) -> Result<Vec<(Config, Sample)>> {
        let mut out = Vec::new();
        for r in 1..=rounds {
            for cfg in [Config::Baseline, Config::Floor, Config::Agent] {
                let s = self.one(cfg)?;
                eprintln!(
                    "bench: round {r} {cfg:?}: ns/run={} svc_ns/run={} tcp_ns/run={} dns_ns/run={} udp_pps={:.0} tcp_gbps={:.3}",
                    s.ns_per_run.map_or("-".into(), |v| format!("{v:.1}")),
                    s.svc_ns_per_run.map_or("-".into(), |v| format!("{v:.1}")),
                    s.tcp_ns_per_run.map_or("-".into(), |v| format!("{v:.1}")),
                    s.dns_ns_per_run.map_or("-".into(), |v| format!("{v:.1}")),
                    s.udp_pps,
                    s.tcp_bps / 1e9
                );
                out.push((cfg, s));
            }
        }
        Ok(out)
    }

    fn one(&self, cfg: Config) -> Result<Sample> {
        let t = &self.lab.topo;
        let node = t.node_ns(1);
        let pods = self.pods_cgroup()?;
        let pods_arg = pods.to_string_lossy().into_owned();
        let mut agent = match cfg {
            Config::Baseline => None,
            Config::Floor => {
                Some(self.start_agent(&["--bench-noop", "--pods-cgroup", &pods_arg])?)
            }
            Config::Agent => Some(self.start_agent(&["--pods-cgroup", &pods_arg])?),
        };
        let ids = if agent.is_some() {
            self.prog_ids(&node)?
        } else {
            vec![]
        };
        let svc = match cfg {
            Config::Agent => wait_prog_named("tf_svc_egress")?,
            Config::Floor => wait_prog_named("tf_svc_noop")?,
            Config::Baseline => vec![],
        };
        let before = run_stats(&ids)?;
        let svc_before = run_stats(&svc)?;
        let udp_pps = self.iperf(&["-u", "-b", "0", "-l", "64"])?;
        let after = run_stats(&ids)?;
        let svc_after = run_stats(&svc)?;
        let tcp_before = run_stats(&ids)?;
        let tcp_bps = self.iperf(&[])?;
        let tcp_after = run_stats(&ids)?;
        let dns_before = run_stats(&ids)?;
        self.iperf(&["-u", "-b", "0", "-l", "64", "-p", "53"])?;
        let dns_after = run_stats(&ids)?;
        if let Some(a) = agent.as_mut() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
            a.wait()?;
        }
        let ns_per_run = per_run(&ids, before, after);
        let svc_ns_per_run = per_run(&svc, svc_before, svc_after);
        let tcp_ns_per_run = per_run(&ids, tcp_before, tcp_after);
        let dns_ns_per_run = per_run(&ids, dns_before, dns_after);
        Ok(Sample {
            ns_per_run,
            svc_ns_per_run,
            tcp_ns_per_run,
            dns_ns_per_run,
            udp_pps,
            tcp_bps,
        })
    }

    fn start_agent(&self, extra: &[&str]) -> Result<Child> {
        let node = self.lab.topo.node_ns(1);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node,
                &self.agent_bin,
                "agent",
                "--listen",
                "127.0.0.1:9990",
            ])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()?;
        for _ in 0..100 {
            if exec::in_ns(&node, &[&self.agent_bin, "hooks", "--iface", "eth0"])?
                .lines()
                .count()
                == 3
            {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("agent did not attach within 5 s")
    }

    /// The lab's pods cgroup (what `--pods-cgroup` names): the iperf3 client runs in it,
    /// so the socket-LB hooks see its traffic as a pod's.
    fn pods_cgroup(&self) -> Result<std::path::PathBuf> {
        let t = &self.lab.topo;
        let root = xtask::lab::manifest::cgroup_dir(&t.prefix);
        let pods = xtask::lab::socket_lb::pods(&root, &t.prefix);
        std::fs::create_dir_all(&pods)?;
        Ok(pods)
    }

    /// Programs on the measured path: veth10 (web-1's host side) and the uplink.
    fn prog_ids(&self, node: &str) -> Result<Vec<String>> {
        let out = exec::in_ns(node, &[&self.agent_bin, "hooks"])?;
        let mut ids: Vec<String> = out
            .lines()
            .skip(1)
            .filter(|l| l.starts_with("veth10\t") || l.starts_with("eth0\t"))
            .filter_map(|l| l.split('\t').nth(3).map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// iperf3 web-1 → web-2; returns packets/s (UDP) or bits/s received (TCP).
    fn iperf(&self, extra: &[&str]) -> Result<f64> {
        let t = &self.lab.topo;
        let (web1, web2) = (t.pod("web-1"), t.pod("web-2"));
        // The server listens where the client sends (`-p`, e.g. 53 for the DNS path).
        let port: Vec<&str> = extra
            .iter()
            .position(|a| *a == "-p")
            .map(|i| extra[i..=i + 1].to_vec())
            .unwrap_or_default();
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.pod_ns(web2),
                "iperf3",
                "-s",
                "-1",
                "-B",
                &web2.ip(),
                "-A",
                "1",
            ])
            .args(&port)
            .stdout(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(200));
        let secs = self.seconds.to_string();
        let dst = web2.ip();
        // Client and server pinned to different CPUs: far less run-to-run noise on 2 cores.
        let mut args = vec!["iperf3", "-c", &dst, "-t", &secs, "--json", "-A", "0"];
        args.extend_from_slice(extra);
        // The client as a pod's process: in the pods cgroup, in web-1's namespace.
        let procs = self.pods_cgroup()?.join("cgroup.procs");
        let script = format!(
            "echo $$ > {} && exec ip netns exec {} {}",
            procs.display(),
            t.pod_ns(web1),
            args.join(" ")
        );
        let out = exec::run("sh", &["-c", &script])?;
        server.wait_with_output()?;
        let v: Value = serde_json::from_str(&out).context("iperf3 JSON")?;
        let end = &v["end"];
        if extra.contains(&"-u") {
            let packets = end["sum"]["packets"]
                .as_f64()
                .context("iperf3 UDP packets")?;
            let seconds = end["sum"]["seconds"].as_f64().context("iperf3 seconds")?;
            Ok(packets / seconds)
        } else {
            end["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 TCP bits_per_second")
        }
    }
}

/// Ids of the loaded programs called `name`.
fn prog_id_named(name: &str) -> Result<Vec<String>> {
    let v: Value = serde_json::from_str(&exec::run("bpftool", &["prog", "show", "--json"])?)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == name)
        .filter_map(|p| p["id"].as_u64().map(|i| i.to_string()))
        .collect())
}

/// Ids of the programs called `name`, once the agent has loaded them (the cgroup hooks
/// come after the interfaces).
fn wait_prog_named(name: &str) -> Result<Vec<String>> {
    for _ in 0..100 {
        let ids = prog_id_named(name)?;
        if !ids.is_empty() {
            return Ok(ids);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the agent did not load {name} within 5 s")
}

/// Nanoseconds per run of the programs `ids` between two readings of their stats (none
/// when there are no programs).
fn per_run(ids: &[String], (ns0, runs0): (u64, u64), (ns1, runs1): (u64, u64)) -> Option<f64> {
    (!ids.is_empty()).then(|| (ns1 - ns0) as f64 / (runs1 - runs0).max(1) as f64)
}

/// Summed (run_time_ns, run_cnt) of the programs, from the kernel's BPF stats.
fn run_stats(ids: &[String]) -> Result<(u64, u64)> {
    let mut total = (0, 0);
    for id in ids {
        let v: Value = serde_json::from_str(&exec::run(
            "bpftool",
            &["prog", "show", "id", id, "--json"],
        )?)?;
        total.0 += v["run_time_ns"].as_u64().unwrap_or(0);
        total.1 += v["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(samples: &[(Config, Sample)]) {
    let pick = |cfg: Config, f: fn(&Sample) -> Option<f64>| {
        median(
            samples
                .iter()
                .filter(|(c, _)| *c == cfg)
                .filter_map(|(_, s)| f(s))
                .collect(),
        )
    };
    let floor = pick(Config::Floor, |s| s.ns_per_run);
    let agent = pick(Config::Agent, |s| s.ns_per_run);
    let svc = pick(Config::Agent, |s| s.svc_ns_per_run);
    let svc_floor = pick(Config::Floor, |s| s.svc_ns_per_run);
    let base_tcp = pick(Config::Baseline, |s| Some(s.tcp_bps));
    let agent_tcp = pick(Config::Agent, |s| Some(s.tcp_bps));
    let base_udp = pick(Config::Baseline, |s| Some(s.udp_pps));
    let agent_udp = pick(Config::Agent, |s| Some(s.udp_pps));
    println!("udp64_pps_baseline={base_udp:.0}");
    println!("udp64_pps_agent={agent_udp:.0}");
    println!("udp64_pps_ratio={:.3}", agent_udp / base_udp);
    println!("tcp_gbps_baseline={:.3}", base_tcp / 1e9);
    println!("tcp_gbps_agent={:.3}", agent_tcp / 1e9);
    println!("floor_ns_per_packet={floor:.1}");
    println!("ns_per_packet={agent:.1}");
    println!("overhead_ns_per_packet={:.1}", agent - floor);
    let tcp_floor = pick(Config::Floor, |s| s.tcp_ns_per_run);
    let tcp_agent = pick(Config::Agent, |s| s.tcp_ns_per_run);
    println!("tcp_floor_ns_per_skb={tcp_floor:.1}");
    println!("tcp_ns_per_skb={tcp_agent:.1}");
    println!("tcp_overhead_ns_per_skb={:.1}", tcp_agent - tcp_floor);
    println!("socket_lb_egress_floor_ns_per_packet={svc_floor:.1}");
    println!("socket_lb_egress_ns_per_packet={svc:.1}");
    println!(
        "socket_lb_egress_overhead_ns_per_packet={:.1}",
        svc - svc_floor
    );
    let dns_floor = pick(Config::Floor, |s| s.dns_ns_per_run);
    let dns_agent = pick(Config::Agent, |s| s.dns_ns_per_run);
    println!("dns_floor_ns_per_packet={dns_floor:.1}");
    println!("dns_ns_per_packet={dns_agent:.1}");
    println!("dns_overhead_ns_per_packet={:.1}", dns_agent - dns_floor);
    println!("throughput_ratio={:.3}", agent_tcp / base_tcp);
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
