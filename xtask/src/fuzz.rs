//! `cargo xtask bench --fuzz`: every parser fuzz target (agent/src/fuzz_support.rs) for
//! millions of mutated inputs in a release build, one target at a time, with its rate.
//! CI runs the same targets for a bounded number of cases as part of the unit tests.

use std::{process::Command, time::Instant};

use anyhow::{bail, Result};

/// The targets: test names in the agent crate.
const TARGETS: &[&str] = &[
    "config::tests::fuzz_config_parser",
    "identity::tests::fuzz_snapshot_parser",
    "nat::conntrack::tests::fuzz_conntrack_messages",
    "export::http::tests::fuzz_flows_query",
    "lateral::edges::tests::fuzz_edge_file_parser",
    "dns::message::tests::fuzz_dns_messages",
];

pub fn run(cases: u64) -> Result<()> {
    // Build once and run that binary: the timings are the runs alone, and editing the
    // sources during a long run changes nothing.
    let build = Command::new("cargo")
        .args(["test", "--release", "-p", "tenantflow", "--lib", "--no-run"])
        .output()?;
    let log = String::from_utf8_lossy(&build.stderr);
    if !build.status.success() {
        bail!("building the fuzz targets failed:\n{log}");
    }
    let Some(bin) = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("Executable unittests src/lib.rs ("))
        .and_then(|l| l.strip_suffix(')'))
    else {
        bail!("cargo did not name the test executable:\n{log}");
    };
    for t in TARGETS {
        let start = Instant::now();
        let status = Command::new(bin)
            .args([t, "--exact", "--test-threads=1", "-q"])
            .env("TENANTFLOW_FUZZ_CASES", cases.to_string())
            .status()?;
        if !status.success() {
            bail!("fuzz target {t} failed: the case is printed above");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "fuzz target={t} cases={cases} panics=0 seconds={secs:.1} per_second={:.0}",
            cases as f64 / secs
        );
    }
    Ok(())
}
