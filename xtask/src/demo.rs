//! `cargo xtask demo`: the lab, the agent on node 1, traffic of every kind, and a live flow
//! table. Ctrl-C (or --duration) stops the traffic, the agent and the lab.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Args;
use xtask::{
    exec,
    lab::{compromise, dns, manifest, topology, LabGuard, Topology},
    setup,
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Name prefix of the lab's namespaces.
    #[arg(long, default_value = "tf")]
    pub prefix: String,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
}

/// Background processes, killed on drop (before the lab goes away).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn spawn(ns: &str, program: &str, args: &[&str]) -> Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program} in {ns}"))
}

/// The agent's learning period in the demo, and when web-1 turns bad (after it).
const LEARNING: &str = "60s";
const COMPROMISED_AFTER: Duration = Duration::from_secs(70);
const PROBE_EVERY: Duration = Duration::from_secs(30);

pub fn run(args: DemoArgs) -> Result<()> {
    exec::require_root("the demo")?;
    setup::setup()?;
    exec::run_visible(Command::new("cargo").args(["build", "-q", "-p", "tenantflow"]))?;
    let agent_bin = std::env::current_dir()?.join("target/debug/tenantflow");
    let me = std::env::current_exe()?;
    let me = me.to_str().context("xtask path is not UTF-8")?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))?;

    let lab = LabGuard::up(Topology::standard(&args.prefix))?;
    let t = &lab.topo;
    // A real DNS server: the table shows the names pods resolved before connecting.
    let _dns = dns::DnsServer::start(t, 30)?;
    let node1 = t.node_ns(1);
    let log = std::fs::File::create("target/demo-agent.log")?;
    let agent = Command::new("ip")
        .args(["netns", "exec", &node1])
        .arg(&agent_bin)
        .args(["agent", "--listen", "127.0.0.1:9990", "--config"])
        .arg(manifest::config_path(&lab.topo.prefix))
        // A fresh lab has no history to learn: the first minute is the learning period.
        .args(["--edge-learning", LEARNING])
        // The NAT lookup dashboard's SNAT mappings name pods; this /metrics is on the
        // node's loopback, out of every pod's reach.
        .arg("--metrics-public-names")
        .stderr(log)
        .spawn()?;
    let mut procs = Procs(vec![agent]);
    servers(t, me, &mut procs)?;
    let _compromise = compromise::prepare(t, &[me, "traffic"], false)?;

    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs(d));
    let mut round = 0u64;
    let started = Instant::now();
    let mut last_probe = None;
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        clients(t, me)?;
        round += 1;
        // After the learning minute, web-1 is compromised and probes its way around
        // every 30 s: its failed attempts and new edges lead the table.
        let compromised = started.elapsed() >= COMPROMISED_AFTER;
        if compromised && last_probe.is_none_or(|p: Instant| p.elapsed() >= PROBE_EVERY) {
            compromise::probe(t, &[me, "traffic"])?;
            last_probe = Some(Instant::now());
        }
        let table = exec::in_ns(
            &node1,
            &[
                agent_bin.to_str().unwrap_or("tenantflow"),
                "flows",
                "--summary",
                "--limit",
                "30",
            ],
        )
        .unwrap_or_else(|e| format!("(agent not answering yet: {e:#})\n"));
        print!("\x1b[2J\x1b[H");
        println!(
            "tenantflow demo — lab {:?}, agent on {node1}, round {round}. Ctrl-C to stop.\n\
             Agent log: target/demo-agent.log. Metrics: ip netns exec {node1} curl -s 127.0.0.1:9990/metrics\n\
             Connections folded by workload and port, flagged first{}. Per connection: ip netns exec {node1} {} flows\n",
            t.prefix,
            if compromised {
                " (web-1 is compromised: it scans api-2, tries dropped ports on api-1 and knocks on node 2's kubelet)"
            } else {
                ""
            },
            agent_bin.display()
        );
        print!("{table}");
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(procs);
    println!("\ndemo: stopped; tearing down lab {:?}", t.prefix);
    Ok(())
}

/// Long-running listeners: service backends, the internet host,
/// a kubelet on node 2, IMDS, a private endpoint, and the egress gateway relaying to the
/// internet.
fn servers(t: &Topology, me: &str, procs: &mut Procs) -> Result<()> {
    let forever = u32::MAX.to_string();
    let pod_ns = |name: &str| t.pod_ns(t.pod(name));
    let mut add = |ns: String, args: &[&str]| -> Result<()> {
        let mut full = vec!["traffic"];
        full.extend_from_slice(args);
        procs.0.push(spawn(&ns, me, &full)?);
        Ok(())
    };
    for web in ["web-1", "web-2"] {
        let bind = format!("{}:8080", t.pod(web).ip());
        add(
            pod_ns(web),
            &["tcp-serve", &bind, "2000", "--conns", &forever],
        )?;
    }
    add(
        pod_ns("web-2"),
        &[
            "tcp-serve",
            &format!("{}:9000", t.pod("web-2").ip()),
            "800",
            "--conns",
            &forever,
        ],
    )?;
    let inet = format!("{}:443", topology::INTERNET_HOST);
    add(
        t.internet_ns(),
        &["tcp-serve", &inet, "5000", "--conns", &forever],
    )?;
    add(
        t.node_ns(2),
        &[
            "tcp-serve",
            &format!("{}:10250", t.node(2).ip()),
            "300",
            "--conns",
            &forever,
        ],
    )?;
    add(
        t.vnet_ns(),
        &[
            "tcp-serve",
            &format!("{}:80", topology::IMDS),
            "600",
            "--conns",
            &forever,
        ],
    )?;
    add(
        t.vnet_ns(),
        &[
            "tcp-serve",
            &format!("{}:443", topology::PRIVATE_ENDPOINT),
            "300",
            "--conns",
            &forever,
        ],
    )?;
    let gw = format!("{}:3128", t.pod("egress-gw-1").ip());
    add(
        pod_ns("egress-gw-1"),
        &["relay", &gw, &inet, "--conns", &forever],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// One round of client traffic, one flow of each class the product reports.
fn clients(t: &Topology, me: &str) -> Result<()> {
    let pod_ns = |name: &str| t.pod_ns(t.pod(name));
    let run = |ns: String, args: &[&str]| {
        let mut full = vec!["traffic"];
        full.extend_from_slice(args);
        // A refused connection in one round is not worth stopping the demo for.
        let _ = exec::run("ip", &[&["netns", "exec", &ns, me][..], &full].concat());
    };
    let svc = &t.services[0];
    // Pods resolve before they connect (the lab's dnsmasq behind the kube-dns-like VIP):
    // jobs-1's internet connection then carries the name it asked for.
    let _ = dns::resolve(t, "jobs-1", "api.example.test");
    let _ = dns::resolve(t, "web-1", "web.alpha-web.example.test");
    run(
        pod_ns("web-1"),
        &["tcp-send", &format!("{}:9000", t.pod("web-2").ip()), "1500"],
    );
    run(
        pod_ns("api-1"),
        &["tcp-send", &format!("{}:{}", svc.vip, svc.port), "300"],
    );
    run(
        pod_ns("jobs-1"),
        &[
            "tcp-send",
            &format!("{}:443", topology::INTERNET_HOST),
            "400",
        ],
    );
    run(
        pod_ns("web-1"),
        &[
            "tcp-send",
            &format!("{}:3128", t.pod("egress-gw-1").ip()),
            "400",
        ],
    );
    run(
        pod_ns("api-1"),
        &["tcp-send", &format!("{}:10250", t.node(2).ip()), "100"],
    );
    run(
        pod_ns("jobs-1"),
        &["tcp-send", &format!("{}:80", topology::IMDS), "100"],
    );
    run(
        pod_ns("api-2"),
        &["tcp-send", &format!("{}:8080", t.pod("web-1").ip()), "200"],
    );
    // A private endpoint the config exempts, and a host process on node 1.
    run(
        pod_ns("jobs-1"),
        &[
            "tcp-send",
            &format!("{}:443", topology::PRIVATE_ENDPOINT),
            "100",
        ],
    );
    run(
        t.node_ns(1),
        &[
            "tcp-send",
            &format!("{}:443", topology::INTERNET_HOST),
            "200",
        ],
    );
    Ok(())
}
