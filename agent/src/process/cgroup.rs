//! cgroup v2: where the hierarchy is mounted, which directory a cgroup id names, and which
//! pod (by UID) a cgroup path belongs to, for both the systemd and cgroupfs drivers:
//! `…/kubepods-burstable-pod<uid_with_underscores>.slice/…` and `…/kubepods/burstable/pod<uid>/…`.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The cgroup2 mount point from a mountinfo text (`/proc/self/mountinfo`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// The pod UID in a cgroup path, dashed.
pub fn pod_uid(path: &str) -> Option<String> {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(
            r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})",
        )
        .expect("static regex")
    });
    re.captures_iter(path)
        .last()
        .map(|c| c[1].replace('_', "-"))
}

/// cgroup id → path under the root, rescanned (at most every few seconds) on a miss.
pub struct CgroupIndex {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    scanned: Option<Instant>,
}

const RESCAN_AFTER: Duration = Duration::from_secs(2);
const MAX_DEPTH: usize = 10;

impl CgroupIndex {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
            scanned: None,
        }
    }

    /// The cgroup's path relative to the root (`/` for the root itself).
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if self.scanned.is_some_and(|t| t.elapsed() < RESCAN_AFTER) {
            return None;
        }
        self.scanned = Some(Instant::now());
        self.by_id.clear();
        let root = self.root.clone();
        self.walk(&root, 0);
        self.by_id.get(&id).cloned()
    }

    fn walk(&mut self, dir: &Path, depth: usize) {
        let Ok(meta) = std::fs::metadata(dir) else {
            return;
        };
        let rel = dir.strip_prefix(&self.root).unwrap_or(dir);
        self.by_id.insert(meta.ino(), format!("/{}", rel.display()));
        if depth >= MAX_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.walk(&e.path(), depth + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_and_unified_layouts() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory\n\
                      36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:15 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount("35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n"),
            None
        );
    }

    #[test]
    fn pod_uids_from_both_cgroup_drivers() {
        assert_eq!(
            pod_uid("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b0c2d3e_4f5a_6b7c_8d9e_0f1a2b3c4d5e.slice/cri-containerd-abc.scope").as_deref(),
            Some("1b0c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e")
        );
        assert_eq!(
            pod_uid("/kubepods/besteffort/pod1b0c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e/0123abcd")
                .as_deref(),
            Some("1b0c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e")
        );
        assert_eq!(pod_uid("/system.slice/sshd.service"), None);
        assert_eq!(pod_uid("/user.slice/user-0.slice/session-3.scope"), None);
    }
}
