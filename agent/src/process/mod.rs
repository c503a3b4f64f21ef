//! Which process on the node owns a flow: socket cookie → (pid, command, cgroup) from the
//! cgroup socket hooks, flow key → cookie from TC egress, cgroup → pod through the cgroup
//! path's pod UID. Covers host processes, node logins, hostNetwork pods and escaped
//! containers; forwarded pod traffic has no local socket and no process.

pub mod cgroup;

use std::{collections::HashMap, path::PathBuf};

use agent_common::{FlowKey, SockOwner};
use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{links::CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{self, DatapathError},
    identity::Store,
    net::FlowTuple,
};

const PROGRAMS: [&str; 4] = ["tf_connect4", "tf_connect6", "tf_sendmsg4", "tf_sendmsg6"];

/// The local process behind a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Host pid (init namespace).
    pub pid: u32,
    pub command: String,
    pub cgroup_id: u64,
    /// Path under the cgroup2 root, when found.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cgroup: Option<String>,
    /// `namespace/name` of the pod the cgroup belongs to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<String>,
}

/// Load the cgroup hooks and attach them to the cgroup2 root (bpf links: they go with the
/// agent's process, even on kill -9).
pub fn attach(ebpf: &mut Ebpf, root: &std::path::Path) -> Result<(), DatapathError> {
    let dir = datapath::cgroup_hooks::open(root)?;
    for name in PROGRAMS {
        let prog: &mut CgroupSockAddr = datapath::program(ebpf, name)?;
        prog.load().map_err(datapath::load_err(name))?;
        // bpf links (5.7+, every AKS kernel) always coexist with other programs; the kernel
        // rejects any flag on a cgroup link, so `Single` (no flag) is the right mode here.
        prog.attach(&dir, CgroupAttachMode::Single)
            .map_err(datapath::load_err(name))?;
    }
    Ok(())
}

/// The cgroup2 root of this machine: from our own mounts, else from init's mounts reached
/// through /proc/1/root (`ip netns exec` gives its command a private /sys without cgroups).
pub fn default_root() -> Option<PathBuf> {
    let own = |f: &str| cgroup::cgroup2_mount(&std::fs::read_to_string(f).ok()?);
    own("/proc/self/mountinfo").or_else(|| {
        let init = own("/proc/1/mountinfo")?;
        let via = PathBuf::from("/proc/1/root").join(init.strip_prefix("/").ok()?);
        via.is_dir().then_some(via)
    })
}

pub struct Attribution {
    socks: BpfHashMap<MapData, u64, SockOwner>,
    flows: BpfHashMap<MapData, FlowKey, u64>,
    cgroups: cgroup::CgroupIndex,
}

impl Attribution {
    pub fn new(ebpf: &mut Ebpf, root: PathBuf) -> Result<Self, DatapathError> {
        Ok(Self {
            socks: datapath::take_map(ebpf, "TF_SOCKS")?,
            flows: datapath::take_map(ebpf, "TF_SOCK_FLOWS")?,
            cgroups: cgroup::CgroupIndex::new(root),
        })
    }

    /// Drop the socket join of flows the flow table expired (idle), so the join map holds
    /// only live flows and each read walks only those. A flow that comes back is joined
    /// again: the kernel records its socket when it starts a new record.
    pub fn forget(&mut self, removed: &[FlowKey]) {
        for key in removed {
            let _ = self.flows.remove(key);
        }
    }

    /// Every flow tuple a local socket sent, with its process. Walks only the flows local
    /// sockets sent; owners are looked up by cookie.
    pub fn read(&mut self, store: &Store) -> HashMap<FlowTuple, ProcessInfo> {
        let mut out = HashMap::new();
        let sent: Vec<(FlowKey, u64)> = self.flows.iter().filter_map(Result::ok).collect();
        for (key, cookie) in sent {
            let Ok(owner) = self.socks.get(&cookie, 0) else {
                continue;
            };
            let owner: &SockOwner = &owner;
            let tuple = FlowTuple::from(&key);
            if out.contains_key(&tuple) {
                continue;
            }
            let path = self.cgroups.path(owner.cgroup_id);
            let pod = path
                .as_deref()
                .and_then(cgroup::pod_uid)
                .and_then(|uid| store.pod_by_uid(&uid))
                .map(|p| format!("{}/{}", p.namespace, p.name));
            let end = owner
                .comm
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(owner.comm.len());
            out.insert(
                tuple,
                ProcessInfo {
                    pid: owner.pid,
                    command: String::from_utf8_lossy(&owner.comm[..end]).into_owned(),
                    cgroup_id: owner.cgroup_id,
                    cgroup: path,
                    pod,
                },
            );
        }
        out
    }
}
