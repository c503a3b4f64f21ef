//! Builds the kernel programs (`agent-ebpf`) with the nightly toolchain and bpf-linker, and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`. Set AYA_BUILD_SKIP=1 only for
//! metadata-only checks; the resulting agent cannot load its programs.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
