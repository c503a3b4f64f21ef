//! A program that ends the TC chain the way Cilium's do: it returns TC_ACT_OK and changes
//! nothing, so the packet goes on but no program after it on the hook runs. The lab puts it
//! on a node's interfaces, before or after the agent, with tcx or as a legacy clsact filter
//! at priority 1 handle 1 (Cilium's), to prove the agent stays first.
//!
//! The program is two instructions loaded with raw `bpf(2)` calls: the lab needs no compiler.
//! Programs and tcx links are pinned under `/sys/fs/bpf/tenantflow-lab/<prefix>/`, so they
//! outlive the call; [`remove`] (and `lab down`) unpins them, which detaches the tcx links.
//! Legacy filters go with the node namespace.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::exec::run;

/// Where and how the chain-ender goes on a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// tcx, before every other link (what `link.Head()` does for Cilium).
    TcxFirst,
    /// tcx, after every other link.
    TcxLast,
    /// Legacy clsact filter at priority 1, handle 1, protocol all, direct action (Cilium
    /// 1.14 and every kernel without tcx).
    Legacy,
}

const BPFFS: &str = "/sys/fs/bpf";
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_BEFORE: u32 = 1 << 3;
const BPF_F_AFTER: u32 = 1 << 4;

/// `r0 = 0 (TC_ACT_OK); exit`.
const PROGRAM: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];

/// The lab's pin directory for `prefix`.
pub fn pin_dir(prefix: &str) -> PathBuf {
    Path::new(BPFFS).join("tenantflow-lab").join(prefix)
}

/// Put a chain-ender on `iface` (in network namespace `ns`), one direction.
pub fn attach(prefix: &str, ns: &str, iface: &str, ingress: bool, at: Placement) -> Result<()> {
    ensure_bpffs()?;
    let dir = pin_dir(prefix);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dirname = if ingress { "ingress" } else { "egress" };
    match at {
        Placement::Legacy => {
            let prog = dir.join("chain-end");
            if !prog.exists() {
                let fd = load()?;
                pin(&fd, &prog)?;
            }
            tc(ns, &["qdisc", "replace", "dev", iface, "clsact"])?;
            tc(
                ns,
                &[
                    "filter",
                    "add",
                    "dev",
                    iface,
                    dirname,
                    "prio",
                    "1",
                    "handle",
                    "1",
                    "protocol",
                    "all",
                    "bpf",
                    "object-pinned",
                    &prog.to_string_lossy(),
                    "direct-action",
                ],
            )?;
        }
        Placement::TcxFirst | Placement::TcxLast => {
            let fd = load()?;
            let flags = if at == Placement::TcxFirst {
                BPF_F_BEFORE
            } else {
                BPF_F_AFTER
            };
            let link = in_netns(ns, || link_tcx(&fd, iface, ingress, flags))?;
            let path = dir.join(format!("{ns}-{iface}-{dirname}"));
            let _ = std::fs::remove_file(&path);
            pin(&link, &path)?;
        }
    }
    Ok(())
}

/// Link a loaded program on `iface`'s tcx hook in `ns`, first or last in the chain, and pin
/// the link as `pin_name` under the lab's directory (it stays attached until unpinned).
pub(crate) fn link_pinned(
    prefix: &str,
    ns: &str,
    (iface, ingress): (&str, bool),
    prog: &OwnedFd,
    pin_name: &str,
    first: bool,
) -> Result<()> {
    let flags = if first { BPF_F_BEFORE } else { BPF_F_AFTER };
    ensure_bpffs()?;
    let dir = pin_dir(prefix);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = in_netns(ns, || link_tcx(prog, iface, ingress, flags))?;
    let path = dir.join(pin_name);
    let _ = std::fs::remove_file(&path);
    pin(&link, &path)
}

/// Take a tcx chain-ender off again (unpinning its link detaches it); legacy filters are
/// removed with `tc filter del`.
pub fn detach(prefix: &str, ns: &str, iface: &str, ingress: bool, at: Placement) -> Result<()> {
    let dirname = if ingress { "ingress" } else { "egress" };
    match at {
        Placement::Legacy => tc(
            ns,
            &[
                "filter", "del", "dev", iface, dirname, "prio", "1", "handle", "1", "protocol",
                "all", "bpf",
            ],
        ),
        _ => {
            let path = pin_dir(prefix).join(format!("{ns}-{iface}-{dirname}"));
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))
        }
    }
}

/// Unpin everything the lab pinned for `prefix` (called by `lab down`).
pub fn remove(prefix: &str) {
    let dir = pin_dir(prefix);
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `tc` in network namespace `ns`. Not `ip netns exec`: it mounts a fresh /sys, which
/// hides the bpffs holding the pinned program.
pub(crate) fn tc(ns: &str, args: &[&str]) -> Result<()> {
    let net = format!("--net=/var/run/netns/{ns}");
    let mut all = vec![net.as_str(), "tc"];
    all.extend_from_slice(args);
    run("nsenter", &all).map(drop)
}

pub(crate) fn ensure_bpffs() -> Result<()> {
    mount_bpffs(Path::new(BPFFS))
}

/// Held while checking for and mounting a bpffs: tests run in parallel threads, and two
/// that both found none mounted stacked a second bpffs over the first, hiding the pin
/// directory the first had just made (a fresh CI machine has none at /sys/fs/bpf).
static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A bpffs mounted at `dir` (mounted now unless one already is).
pub(crate) fn mount_bpffs(dir: &Path) -> Result<()> {
    let _one_at_a_time = MOUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if is_bpffs(dir) {
        return Ok(());
    }
    run("mount", &["-t", "bpf", "bpf", &dir.to_string_lossy()]).map(drop)
}

/// Whether a bpffs is mounted exactly at `dir`.
pub(crate) fn is_bpffs(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 2 && Path::new(f[1]) == dir && f[2] == "bpf"
        })
    })
}

pub(crate) fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a properly laid out bpf_attr prefix for `cmd`; pointers inside it
    // refer to buffers the caller keeps alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

fn load() -> Result<OwnedFd> {
    load_insns(&PROGRAM, "lab_chain_end")
}

/// Load a TC program of raw instructions; the verifier's log is in the error if refused.
pub(crate) fn load_insns(insns: &[u64], prog_name: &str) -> Result<OwnedFd> {
    load_typed(insns, prog_name, BPF_PROG_TYPE_SCHED_CLS, 0)
}

/// Load a program of raw instructions of any type (with its expected attach type).
pub(crate) fn load_typed(
    insns: &[u64],
    prog_name: &str,
    prog_type: u32,
    expected_attach_type: u32,
) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("static");
    let mut name = [0u8; 16];
    let n = prog_name.len().min(15);
    name[..n].copy_from_slice(&prog_name.as_bytes()[..n]);
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoad {
        prog_type,
        expected_attach_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr).with_context(|| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        format!(
            "loading the lab program {prog_name}: {}",
            String::from_utf8_lossy(&log[..end])
        )
    })?;
    // SAFETY: the kernel returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_id: u32,
    _pad: u32,
    expected_revision: u64,
}

/// A bpf link of `prog` to the cgroup directory `cgroup` with `attach_type`, pinned at
/// `pin_at` (it stays attached until unpinned).
pub(crate) fn link_cgroup(
    prog: &OwnedFd,
    cgroup: &Path,
    attach_type: u32,
    pin_at: &Path,
) -> Result<()> {
    let dir =
        std::fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
    let mut attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: dir.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr)
        .with_context(|| format!("cgroup link on {}", cgroup.display()))?;
    // SAFETY: the kernel returned a new fd we now own.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    ensure_bpffs()?;
    if let Some(parent) = pin_at.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(pin_at);
    pin(&link, pin_at)
}

fn link_tcx(prog: &OwnedFd, iface: &str, ingress: bool, flags: u32) -> Result<OwnedFd> {
    let cname = CString::new(iface).context("interface name")?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface}");
    }
    let mut attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: if ingress {
            BPF_TCX_INGRESS
        } else {
            BPF_TCX_EGRESS
        },
        flags,
        ..Default::default()
    };
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr).with_context(|| format!("tcx link on {iface}"))?;
    // SAFETY: the kernel returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

pub(crate) fn pin(fd: &OwnedFd, path: &Path) -> Result<()> {
    let cpath = CString::new(path.to_string_lossy().as_bytes()).context("pin path")?;
    let mut attr = ObjPin {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    sys_bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning {}", path.display()))?;
    Ok(())
}

/// Run `f` on a thread that has joined network namespace `ns` (ifindexes are per namespace;
/// a thread's namespace is its own, so the caller's stays untouched).
pub(crate) fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {ns}: {}", io::Error::last_os_error());
            }
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}
