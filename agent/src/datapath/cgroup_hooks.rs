//! Our programs on a cgroup (process attribution's connect/sendmsg hooks on the cgroup2
//! root, socket-LB's on the pods' cgroup): the checked open of a cgroup2 directory both
//! attach through, and the listing `tenantflow hooks` shows. They are bpf links, so they go
//! with the agent's process, even on kill -9.

use std::{collections::HashMap, os::fd::AsRawFd, path::Path};

use super::{sys_bpf::prog_query, DatapathError};

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

/// A cgroup v2 directory, opened for attaching programs to it.
pub fn open(path: &Path) -> Result<std::fs::File, DatapathError> {
    let dir = std::fs::File::open(path).map_err(|e| DatapathError::Cgroup {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if !is_cgroup2(&dir) {
        return Err(DatapathError::Cgroup {
            path: path.display().to_string(),
            message: "not a cgroup v2 directory (give the cgroup2 mount, e.g. /sys/fs/cgroup)"
                .into(),
        });
    }
    Ok(dir)
}

/// A directory on a cgroup2 filesystem: anything else would only fail later, inside the
/// kernel's attach, with an error that names neither the path nor the cause.
fn is_cgroup2(dir: &std::fs::File) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // SAFETY: fstatfs on a descriptor we own into a zeroed struct it fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(dir), &mut st) } == 0;
    ok && st.f_type as i64 == CGROUP2_SUPER_MAGIC && dir.metadata().is_ok_and(|m| m.is_dir())
}
