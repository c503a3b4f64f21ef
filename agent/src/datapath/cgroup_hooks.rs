//! Our programs on a cgroup (process attribution's connect/sendmsg hooks on the cgroup2
//! root, socket-LB's on the pods' cgroup), as the kernel lists them: for `tenantflow
//! hooks`. They are bpf links, so they go with the agent's process, even on kill -9.

use std::{collections::HashMap, os::fd::AsRawFd, path::Path};

use super::sys_bpf::bpf;

const BPF_PROG_QUERY: libc::c_long = 16;

/// The cgroup attach types our programs use, with the names `hooks` shows.
const TYPES: [(u32, &str); 6] = [
    (1, "inet_egress"),
    (3, "sock_ops"),
    (10, "connect4"),
    (11, "connect6"),
    (14, "sendmsg4"),
    (15, "sendmsg6"),
];

/// `union bpf_attr` for BPF_PROG_QUERY, up to `prog_cnt`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// (hook, program name, program id) of ours on the cgroup at `path`.
pub fn list(path: &Path) -> std::io::Result<Vec<(&'static str, String, u32)>> {
    let dir = std::fs::File::open(path)?;
    let names: HashMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_owned())))
        .collect();
    let mut out = Vec::new();
    for (attach_type, hook) in TYPES {
        let mut ids = [0u32; 64];
        let mut attr = QueryAttr {
            target_fd: dir.as_raw_fd() as u32,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        // SAFETY: the attr is BPF_PROG_QUERY's layout; `ids` outlives the call and holds
        // `prog_cnt` entries.
        if unsafe { bpf(BPF_PROG_QUERY, &mut attr) }.is_err() {
            continue;
        }
        for &id in &ids[..(attr.prog_cnt as usize).min(ids.len())] {
            if let Some(name) = names.get(&id).filter(|n| n.starts_with("tf_")) {
                out.push((hook, name.clone(), id));
            }
        }
    }
    Ok(out)
}
