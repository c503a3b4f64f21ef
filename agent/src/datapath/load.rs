//! Load the embedded eBPF object after probing that this kernel can run it.

use std::{hash::BuildHasher, time::Duration};

use aya::{programs::SchedClassifier, util::KernelVersion, Ebpf, EbpfLoader};
use tracing::{debug, info, warn};

use super::{load_err, program, DatapathError};

/// Oldest kernel the programs are verified on: the oldest AKS node image (Ubuntu 22.04).
pub const MIN_KERNEL: (u8, u8) = (5, 15);

/// Names of the classifier programs in the object.
pub(crate) const PROG_INGRESS: &str = "tf_ingress";
pub(crate) const PROG_EGRESS: &str = "tf_egress";
pub(crate) const PROG_NOOP: &str = "tf_noop";

/// A loaded object plus what the start-up probes found.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub kernel: KernelVersion,
    /// tcx links (>= 6.6) are owned by the agent's file descriptors, so they vanish with the
    /// process; legacy clsact filters persist and must be cleaned up explicitly.
    pub tcx_available: bool,
    pub btf_present: bool,
}

/// Which programs to load: the agent needs the two observers, the benchmark only the no-op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programs {
    Observers,
    Noop,
}

impl Programs {
    /// (ingress, egress) program names.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            Programs::Observers => (PROG_INGRESS, PROG_EGRESS),
            Programs::Noop => (PROG_NOOP, PROG_NOOP),
        }
    }
}

/// Probe the kernel, raise the memlock limit where that still matters, and load programs.
/// `idle` is the agent's idle timeout: a flow silent longer starts a new kernel record.
/// `sets` is the flow cache's sets per CPU (a power of two).
pub fn load(programs: Programs, idle: Duration, sets: u32) -> Result<Loaded, DatapathError> {
    let kernel =
        KernelVersion::current().map_err(|e| DatapathError::KernelVersion(e.to_string()))?;
    check_kernel(kernel)?;
    if let Some(eff) = super::caps::effective() {
        let missing = super::caps::missing(eff);
        if !missing.is_empty() {
            return Err(DatapathError::MissingCapabilities { missing });
        }
    }
    raise_memlock();
    let btf_present = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    let tcx_available = kernel >= KernelVersion::new(6, 6, 0);
    info!(
        kernel = %fmt_kernel(kernel),
        tcx_available,
        btf_present,
        "kernel probed"
    );

    let seed = hash_seed();
    let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
    let set_mask: u32 = sets.max(1) - 1;
    // One row of sets per possible CPU (the programs index rows by CPU id).
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
    let rows = u32::try_from(cpus)
        .ok()
        .and_then(|c| c.checked_mul(sets.max(1)))
        .ok_or(DatapathError::CacheTooLarge { sets, cpus })?;
    let mut ebpf = EbpfLoader::new()
        .override_global("TF_HASH_SEED", &seed, true)
        .override_global("TF_IDLE_NS", &idle_ns, true)
        .override_global("TF_SET_MASK", &set_mask, true)
        .map_max_entries("TF_FLOW_CACHE", rows)
        .load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/tenantflow"
        )))
        .map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                DatapathError::Permission { source: e }
            }
            _ => DatapathError::Object(e),
        })?;
    let (ingress, egress) = programs.names();
    let names: &[&'static str] = if ingress == egress {
        &[ingress]
    } else {
        &[ingress, egress]
    };
    for &name in names {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
        prog.load().map_err(load_err(name))?;
        debug!(program = name, "loaded");
    }
    Ok(Loaded {
        ebpf,
        kernel,
        tcx_available,
        btf_present,
    })
}

/// A fresh random seed per start (std's randomly keyed SipHash), so nobody can precompute
/// flows that collide in the kernel flow cache.
fn hash_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0u64)
}

/// Pure so the refusal can be tested without an old kernel.
pub fn check_kernel(kernel: KernelVersion) -> Result<(), DatapathError> {
    let min = KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0);
    if kernel < min {
        return Err(DatapathError::KernelTooOld {
            found: fmt_kernel(kernel),
            min: fmt_kernel(min),
        });
    }
    Ok(())
}

fn fmt_kernel(k: KernelVersion) -> String {
    let code = k.code();
    format!("{}.{}.{}", code >> 16, (code >> 8) & 0xff, code & 0xff)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones use memcg and may
/// refuse the raise in a container. Either way failure is not fatal: the load will say.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer to a stack value.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11, which account BPF memory to the cgroup)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_kernels_older_than_5_15_and_names_both_versions() {
        let err = check_kernel(KernelVersion::new(5, 10, 209)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel 5.10.209 is older than 5.15.0, the oldest kernel tenantflow supports: \
             move the node to a newer image (AKS node images ship 5.15 or later)"
        );
        assert!(check_kernel(KernelVersion::new(5, 15, 0)).is_ok());
        assert!(check_kernel(KernelVersion::new(6, 8, 0)).is_ok());
    }
}
