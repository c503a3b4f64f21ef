//! `cargo xtask …`: set up the machine, run the lab and demo, the tests, the benchmark.

mod bench;
mod demo;
mod fuzz;
mod scale;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::{lab, setup};

#[derive(Parser)]
#[command(about = "tenantflow developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine needs (apt packages, nightly rust-src, bpf-linker).
    Setup,
    /// Bring the netns lab up or down, or show it.
    Lab {
        #[command(subcommand)]
        action: LabAction,
        /// Name prefix of every namespace the lab creates.
        #[arg(long, default_value = "tf", global = true)]
        prefix: String,
        /// The AKS network model to reproduce (docs/lab.md).
        #[arg(long, value_enum, default_value = "kubenet", global = true)]
        model: lab::topology::Model,
    },
    /// Lab, agent on node 1, traffic, and a live flow table. Ctrl-C tears it all down.
    Demo(demo::DemoArgs),
    /// The whole test suite: unit, privileged end-to-end, lint.
    Test(test::TestArgs),
    /// The agent's container image, built offline (buildah, podman), plus an OCI archive.
    Image,
    /// Per-packet cost and throughput against a baseline, in one run.
    Bench(bench::BenchArgs),
    /// The identity store at cluster scale: memory per pod, update and relist cost
    /// (agent/benches/identity.rs); then peak RSS and time to ready of the real decode
    /// path at real object sizes: the index, a direct-mode agent and an agent following
    /// the index (tests/src/identity_peak.rs; needs root).
    BenchIdentity {
        /// Pods in the synthetic cluster (5k nodes, 2k namespaces, 10k services).
        #[arg(long, default_value_t = 200_000)]
        pods: usize,
        /// Only the in-process store bench (no processes, no root).
        #[arg(long)]
        store_only: bool,
    },
    /// A harvest's userspace work at node scale, without a kernel: time per harvest and
    /// heap per connection (agent/benches/harvest.rs).
    BenchHarvest {
        /// Active masqueraded connections, each seen at the pod veth and the uplink.
        #[arg(long, default_value_t = 100_000)]
        connections: u32,
        /// Harvests measured (after three to place and join every connection).
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// The alert rules as Azure Monitor Prometheus rule groups (an ARM template), for Azure
    /// Managed Prometheus, which does not read PrometheusRules: writes
    /// deploy/azure/tenantflow-rule-groups.json from the chart's rules file.
    RuleGroup,
    /// Exact lab traffic (run inside a namespace with `ip netns exec`).
    #[command(subcommand, hide = true)]
    Traffic(xtask::traffic::TrafficCmd),
}

#[derive(Subcommand)]
enum LabAction {
    Up,
    Down,
    Status,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Image => {
            setup::setup()?;
            let (size, archive) = xtask::image::build()?;
            let packed = std::fs::metadata(&archive)?.len();
            println!(
                "image {}: {:.1} MB ({:.1} MB packed in {})",
                xtask::image::name(),
                size as f64 / 1e6,
                packed as f64 / 1e6,
                archive.display()
            );
            Ok(())
        }
        Cmd::Lab {
            action,
            prefix,
            model,
        } => {
            let topo = lab::Topology::with_model(&prefix, model);
            match action {
                LabAction::Up => {
                    xtask::exec::require_root("the lab")?;
                    setup::setup()?;
                    lab::up(&topo)?;
                    print!("{}", lab::status(&topo)?);
                }
                LabAction::Down => {
                    let n = lab::down(&prefix)?;
                    println!("lab {prefix:?}: removed {n} namespaces");
                }
                LabAction::Status => print!("{}", lab::status(&topo)?),
            }
            Ok(())
        }
        Cmd::Demo(args) => demo::run(args),
        Cmd::Test(args) => test::run(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::BenchIdentity { pods, store_only } => {
            cargo_bench("identity", &["--pods", &pods.to_string()])?;
            if store_only {
                return Ok(());
            }
            identity_peak(pods)
        }
        Cmd::BenchHarvest {
            connections,
            rounds,
        } => cargo_bench(
            "harvest",
            &[
                "--connections",
                &connections.to_string(),
                "--rounds",
                &rounds.to_string(),
            ],
        ),
        Cmd::RuleGroup => {
            let out = xtask::rule_group::write()?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Traffic(cmd) => xtask::traffic::run(cmd),
    }
}

/// The real processes at real object sizes, from a release build.
fn identity_peak(pods: usize) -> Result<()> {
    xtask::exec::require_root("the identity peak-memory bench")?;
    xtask::exec::run_visible(std::process::Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "tenantflow",
        "-p",
        "tenantflow-tests",
        "--bin",
        "tenantflow",
        "--bin",
        "tf-identity-peak",
    ]))?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    xtask::exec::run_visible(
        std::process::Command::new(root.join("target/release/tf-identity-peak"))
            .args(["--pods", &pods.to_string()])
            .env("TENANTFLOW_BIN", root.join("target/release/tenantflow")),
    )
}

/// One of the agent's in-process benches (`agent/benches/`), after setting the machine up.
fn cargo_bench(name: &str, args: &[&str]) -> Result<()> {
    setup::setup()?;
    xtask::exec::run_visible(
        std::process::Command::new("cargo")
            .args(["bench", "-p", "tenantflow", "--bench", name, "--"])
            .args(args),
    )
}
