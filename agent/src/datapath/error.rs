//! Every way the datapath can fail, each with the fix a user needs.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The kernel refused BPF because the process lacks privileges.
    #[error(
        "loading eBPF programs was refused ({source}): run as root, or grant CAP_BPF, \
         CAP_NET_ADMIN and CAP_PERFMON (see deploy/ for the DaemonSet securityContext)"
    )]
    Permission {
        #[source]
        source: aya::EbpfError,
    },
    /// The process lacks capabilities the datapath needs.
    #[error(
        "missing {}: the agent needs CAP_BPF (load programs and maps), CAP_NET_ADMIN (attach to \
         interfaces, read conntrack) and CAP_PERFMON (the verifier rejects the packet parser \
         without it); add them to the container's securityContext.capabilities (the Helm chart \
         does) or run as root",
        .missing.join(", ")
    )]
    MissingCapabilities { missing: Vec<&'static str> },
    /// The cgroup v2 root for process attribution cannot be used.
    #[error("cgroup v2 root {path}: {message}: pass --cgroup-root <cgroup2 mount> or --no-process-attribution")]
    Cgroup { path: String, message: String },
    /// The kernel is older than the oldest one the programs are verified on.
    #[error(
        "kernel {found} is older than {min}, the oldest kernel tenantflow supports: \
         move the node to a newer image (AKS node images ship 5.15 or later)"
    )]
    KernelTooOld { found: String, min: String },
    /// The thread that empties the eviction ring could not be set up (out of threads or
    /// file descriptors).
    #[error(
        "starting the eviction-ring thread: {0}: raise the container's pids/fd limits \
         (the agent needs a few threads and a handful of fds per interface)"
    )]
    Thread(#[source] io::Error),
    /// The running kernel version could not be determined.
    #[error("cannot read the kernel version ({0}): is /proc mounted?")]
    KernelVersion(String),
    /// The object or a program in it failed to load (verifier rejection and the like).
    #[error("loading program {program}: {source}")]
    Load {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The embedded object itself could not be parsed or its maps created.
    #[error("loading the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    /// A program the agent relies on is missing from the object (build mismatch).
    #[error("program {0} missing from the eBPF object: rebuild the agent")]
    MissingProgram(&'static str),
    /// A map the agent relies on is missing from the object (build mismatch).
    #[error("map {0} missing from the eBPF object: rebuild the agent")]
    MissingMap(&'static str),
    /// The possible-CPU list (sizes per-CPU map reads) could not be read.
    #[error("reading /sys/devices/system/cpu/possible: {0}: is /sys mounted?")]
    Cpus(#[source] std::io::Error),
    /// The flow cache's sets times the CPUs do not fit a map's 32-bit entry count.
    #[error(
        "--flow-cache-sets {sets} on {cpus} CPUs is more entries than a BPF map holds: \
         pass a smaller --flow-cache-sets (the default sizing fits any node)"
    )]
    CacheTooLarge { sets: u32, cpus: usize },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// A configured interface does not exist.
    #[error(
        "interface {name:?} does not exist in this network namespace: check --uplink \
         (list interfaces with `ip -br link`), or omit it to use the default-route interface"
    )]
    UnknownInterface { name: String },
    /// No uplink was given and none could be found from the routing table.
    #[error(
        "no default route found to pick the uplink from: pass --uplink <interface> \
         (the node's interface towards the VNet, e.g. eth0)"
    )]
    NoUplink,
    /// Attaching to an interface failed.
    #[error("attaching to {iface} ({direction}): {source}")]
    Attach {
        iface: String,
        direction: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The kernel would not say which id a loaded program has (needed to find it in a chain).
    #[error("reading program {program}'s kernel id: {source}")]
    ProgramId {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    /// rtnetlink failed (listing links or routes, or subscribing to link events).
    #[error("rtnetlink {what}: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl DatapathError {
    /// Errors caused by what the user asked for rather than by the machine.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DatapathError::UnknownInterface { .. }
                | DatapathError::NoUplink
                | DatapathError::MissingCapabilities { .. }
        )
    }
}
