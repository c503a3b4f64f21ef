//! `cargo xtask image`: the agent's container image, built offline with Debian's own
//! container tools (no Docker daemon, no registry).
//!
//! 1. `cargo build --profile image` (release, LTO, stripped).
//! 2. A distroless-like runtime base from Debian packages (glibc 2.36 as distroless
//!    cc-debian12), imported into local storage once.
//! 3. `buildah bud --pull=never --target prebuilt` of the repository's one Dockerfile with
//!    `RUNTIME_BASE` pointing at that base.
//! 4. An OCI archive under target/ that `skopeo copy`, `oras` or `az acr import` can push.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::exec::{run, run_visible};

/// The local runtime base.
pub const BASE: &str = "localhost/tenantflow-runtime-base:bookworm";
/// Debian packages that make up the base: what distroless cc-debian12 ships.
const BASE_PACKAGES: &[&str] = &["libc6", "libgcc-s1", "base-files", "netbase", "tzdata"];
/// Parts of those packages a static agent binary never reads.
const PRUNE: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/locale",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/share/zoneinfo/right",
    "usr/share/zoneinfo/posix",
];

/// The image name for this version.
pub fn name() -> String {
    format!("localhost/tenantflow:{}", env!("CARGO_PKG_VERSION"))
}

/// Where the OCI archive is written.
pub fn archive(root: &Path) -> PathBuf {
    root.join(format!(
        "target/tenantflow-{}.oci.tar",
        env!("CARGO_PKG_VERSION")
    ))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Build everything; returns (image size in bytes, OCI archive path).
pub fn build() -> Result<(u64, PathBuf)> {
    crate::exec::require_root("building the image (containers storage)")?;
    let root = repo_root();
    eprintln!("image: building the agent (cargo build --profile image)");
    run_visible(
        Command::new("cargo")
            .args([
                "build",
                "--profile",
                "image",
                "--locked",
                "-p",
                "tenantflow",
            ])
            .current_dir(&root),
    )?;
    base()?;
    eprintln!("image: buildah bud --target prebuilt");
    run_visible(
        Command::new("buildah")
            .args([
                "bud",
                "--pull=never",
                "--layers=false",
                "--target",
                "prebuilt",
            ])
            .args(["--build-arg", &format!("RUNTIME_BASE={BASE}")])
            .args(["-t", &name(), "-f", "Dockerfile", "."])
            .current_dir(&root),
    )?;
    let size: u64 = run(
        "podman",
        &["image", "inspect", "--format", "{{.Size}}", &name()],
    )?
    .trim()
    .parse()
    .context("image size from podman")?;
    let out = archive(&root);
    let _ = std::fs::remove_file(&out);
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("containers-storage:{}", name()),
            &format!("oci-archive:{}:{}", out.display(), name()),
        ],
    )?;
    Ok((size, out))
}

/// Import the runtime base once (it only changes with Debian's packages).
fn base() -> Result<()> {
    if Command::new("podman")
        .args(["image", "exists", BASE])
        .status()
        .context("cannot start podman: run `cargo xtask setup`")?
        .success()
    {
        eprintln!("image: runtime base {BASE} present");
        return Ok(());
    }
    eprintln!("image: assembling the runtime base from {BASE_PACKAGES:?}");
    let work = std::env::temp_dir().join(format!("tf-base-{}", std::process::id()));
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let result = (|| {
        let mut download = vec!["download"];
        download.extend_from_slice(BASE_PACKAGES);
        run_visible(Command::new("apt-get").args(&download).current_dir(&work))?;
        for deb in std::fs::read_dir(&work)? {
            let deb = deb?.path();
            if deb.extension().is_some_and(|e| e == "deb") {
                run(
                    "dpkg-deb",
                    &["-x", &deb.to_string_lossy(), &rootfs.to_string_lossy()],
                )?;
            }
        }
        for p in PRUNE {
            let _ = std::fs::remove_dir_all(rootfs.join(p));
        }
        std::fs::create_dir_all(rootfs.join("etc"))?;
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        )?;
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n")?;
        for d in ["tmp", "root", "home/nonroot"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar --numeric-owner -C {} -c . | podman import - {BASE}",
                rootfs.display()
            ))
            .status()?;
        if !status.success() {
            bail!("importing the runtime base failed ({status})");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}
