//! `cargo xtask test`: the whole suite, as CI runs it. Lint first (cheap, catches most),
//! then every unit and privileged end-to-end test. Privileged tests fail, never skip,
//! when they cannot run.

use std::process::Command;

use anyhow::Result;
use clap::Args;
use xtask::{exec, setup};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Only run tests whose name contains this (passed to cargo test).
    pub filter: Option<String>,
    /// Skip fmt and clippy.
    #[arg(long)]
    pub no_lint: bool,
}

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("test: cargo {}", args.join(" "));
    exec::run_visible(Command::new("cargo").args(args))
}

pub fn run(args: TestArgs) -> Result<()> {
    exec::require_root("the test suite")?;
    setup::setup()?;
    let netns_before = exec::run("ip", &["netns", "list"])?;
    if !args.no_lint {
        cargo(&["fmt", "--all", "--check"])?;
        cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
        // The kernel crate only builds for the BPF target with the pinned nightly.
        eprintln!("test: clippy on agent-ebpf (bpfel-unknown-none)");
        exec::run_visible(
            Command::new("cargo")
                .args([
                    setup::nightly_arg()?.as_str(),
                    "clippy",
                    "-p",
                    "agent-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                ])
                .args(["-Z", "build-std=core", "--release", "--", "-D", "warnings"])
                .env("RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\""),
        )?;
    }
    cargo(&["build", "--all-targets"])?;
    // tests/tests/image.rs runs the agent from its image.
    let (size, _) = xtask::image::build()?;
    eprintln!(
        "test: image {} is {:.1} MB",
        xtask::image::name(),
        size as f64 / 1e6
    );
    let mut test = vec!["test"];
    if let Some(f) = &args.filter {
        test.push(f);
    }
    cargo(&test)?;
    let after = exec::run("ip", &["netns", "list"])?;
    let left: Vec<&str> = after
        .lines()
        .filter(|l| !netns_before.lines().any(|b| b == *l))
        .collect();
    anyhow::ensure!(
        left.is_empty(),
        "tests left network namespaces behind: {left:?}"
    );
    eprintln!("test: all passed");
    Ok(())
}
