//! Our programs on a cgroup (process attribution's connect/sendmsg hooks on the cgroup2
//! root, socket-LB's on the pods' cgroup), as the kernel lists them: for `tenantflow
//! hooks`. They are bpf links, so they go with the agent's process, even on kill -9.

use std::{collections::HashMap, os::fd::AsRawFd, path::Path};

use super::sys_bpf::prog_query;

/// The cgroup attach types our programs use, with the names `hooks` shows.
const TYPES: [(u32, &str); 6] = [
    (1, "inet_egress"),
    (3, "sock_ops"),
    (10, "connect4"),
    (11, "connect6"),
    (14, "sendmsg4"),
    (15, "sendmsg6"),
];

/// (hook, program name, program id) of ours on the cgroup at `path`.
pub fn list(path: &Path) -> std::io::Result<Vec<(&'static str, String, u32)>> {
    let dir = std::fs::File::open(path)?;
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_owned())))
        .collect();
    let mut out = Vec::new();
    for (attach_type, hook) in TYPES {
        let Ok(ids) = prog_query(dir.as_raw_fd() as u32, attach_type, 64) else {
            continue;
        };
        for id in ids {
            if let Some(name) = names.get(&id).filter(|n| n.starts_with("tf_")) {
                out.push((hook, name.clone(), id));
            }
        }
    }
    Ok(out)
}
