//! bpf-linker must be on PATH to link the object; fail early with the fix rather than with a
//! cryptic linker error deep in the nested cargo build.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if which::which("bpf-linker").is_err() {
        panic!("bpf-linker not found on PATH: run `cargo xtask setup` (installs bpf-linker 0.13 for LLVM 22)");
    }
}
