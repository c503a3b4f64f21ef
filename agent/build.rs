//! Builds the kernel programs (`agent-ebpf`) with the pinned nightly toolchain
//! (toolchains.env) and bpf-linker, and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. Set AYA_BUILD_SKIP=1 only for metadata-only checks; the
//! resulting agent cannot load its programs.

/// A `KEY=value` of toolchains.env: the one place the eBPF toolchain is pinned.
fn pinned(key: &str) -> anyhow::Result<String> {
    include_str!("../toolchains.env")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("toolchains.env has no {key}"))
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../toolchains.env");
    // The kernel programs include agent-common's types and sizes: a change there must
    // rebuild them, or the agent would load an object built against the old layout.
    // (aya-build watches agent-ebpf's own sources only.)
    println!("cargo:rerun-if-changed=../agent-common");
    let nightly = pinned("BPF_NIGHTLY")?;
    let ebpf = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(&nightly))
}
