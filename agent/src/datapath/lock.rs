//! One agent per node: two would each take the other's hooks for a dead predecessor's (in
//! netlink mode the second removed the first's filters, and the first counted nothing while
//! still saying ready). The lock is an abstract Unix socket: it belongs to the network
//! namespace the agent observes (so agents in different containers on one node see it) and
//! vanishes with the process, even after `kill -9`.
//!
//! An abstract socket name can be bound by anyone in the namespace, so a process that holds
//! it is asked who it is (SO_PEERCRED): an agent runs as root; a holder that does not is a
//! squatter, named in a warning and not obeyed. The guard then falls back to a file lock in
//! a directory only root can write (the state directory `/var/lib/tenantflow`, a host path
//! in the chart and so shared by every agent pod on the node, else `/run/tenantflow`). If
//! neither can be written the agent starts unguarded and says so: a squatter must not be
//! able to keep the observer from starting.

use std::{
    fs::File,
    io::Write as _,
    os::{
        fd::AsRawFd,
        linux::net::SocketAddrExt,
        unix::{
            fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
            net::{SocketAddr, UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
};

use tracing::warn;

const NAME: &[u8] = b"tenantflow-agent";
/// Where the fallback lock goes, first writable one wins.
const FALLBACK_DIRS: [&str; 2] = ["/var/lib/tenantflow", "/run/tenantflow"];

/// Held for the agent's life; dropping it releases the lock.
pub enum AgentLock {
    Socket(#[allow(dead_code)] UnixListener),
    /// The socket name was squatted: a file lock (flock) instead.
    File(#[allow(dead_code)] File),
    /// Squatted, and no fallback directory was writable (logged).
    Unguarded,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another tenantflow agent is running in this network namespace ({holder} holds the \
         abstract socket @tenantflow-agent): stop it first; two agents would remove each \
         other's hooks"
    )]
    Held { holder: String },
    #[error(
        "another tenantflow agent is running ({holder} holds {path}): stop it first; two \
         agents would remove each other's hooks"
    )]
    FileHeld { holder: String, path: PathBuf },
    #[error("cannot take the agent lock (abstract socket @tenantflow-agent): {0}")]
    Other(#[source] std::io::Error),
    #[error("cannot take the agent lock {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a directory only root can write (owner uid {uid}, mode {mode:o}): \
         someone prepared it to hold the agent's lock; remove it"
    )]
    UnsafeDir { path: PathBuf, uid: u32, mode: u32 },
}

pub fn acquire() -> Result<AgentLock, LockError> {
    let addr = SocketAddr::from_abstract_name(NAME).map_err(LockError::Other)?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(AgentLock::Socket(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let holder = holder(&addr);
            match holder {
                Some(h) if h.uid != 0 => {
                    warn!(
                        holder = %h,
                        "the agent lock @tenantflow-agent is held by a process that is not root, so not an agent: ignoring it and taking a file lock instead (find and stop that process)"
                    );
                    fallback()
                }
                Some(h) => Err(LockError::Held {
                    holder: h.to_string(),
                }),
                None => Err(LockError::Held {
                    holder: "a process that does not accept connections".into(),
                }),
            }
        }
        Err(e) => Err(LockError::Other(e)),
    }
}

/// A file lock in the first fallback directory that can hold one.
fn fallback() -> Result<AgentLock, LockError> {
    let key = netns_key();
    for dir in FALLBACK_DIRS {
        match file_lock(Path::new(dir), &key) {
            Err(LockError::File { path, source }) => {
                warn!(path = %path.display(), error = %source, "cannot take the fallback agent lock here");
            }
            other => return other,
        }
    }
    warn!("no fallback agent lock could be taken: starting unguarded (a second agent on this node would not be refused)");
    Ok(AgentLock::Unguarded)
}

/// Who holds a socket: its credentials when it was bound.
struct Holder {
    pid: i32,
    uid: u32,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|c| c.trim().to_owned())
            .unwrap_or_else(|_| "?".into());
        if self.pid == 0 {
            // Not in our pid namespace.
            write!(f, "a process in another pid namespace, uid {}", self.uid)
        } else {
            write!(f, "pid {} ({comm}), uid {}", self.pid, self.uid)
        }
    }
}

fn holder(addr: &SocketAddr) -> Option<Holder> {
    let s = UnixStream::connect_addr(addr).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred of `len` bytes into `cred`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(Holder {
        pid: cred.pid,
        uid: cred.uid,
    })
}

/// This network namespace, as a file name: the lock is per namespace like the socket.
fn netns_key() -> String {
    match std::fs::metadata("/proc/self/ns/net") {
        Ok(m) => format!("agent-netns-{}.lock", m.ino()),
        Err(_) => "agent.lock".into(),
    }
}

/// An exclusive flock on `dir/name`, with our pid written in it for the next one's message.
fn file_lock(dir: &Path, name: &str) -> Result<AgentLock, LockError> {
    let file_err = |path: &Path| {
        let path = path.to_owned();
        move |source| LockError::File { path, source }
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(file_err(dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(file_err(dir))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(LockError::UnsafeDir {
            path: dir.to_owned(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(file_err(&path))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .map(|pid| Holder { pid, uid: 0 }.to_string())
            .unwrap_or_else(|| "another process".into());
        return Err(LockError::FileHeld { holder, path });
    }
    f.set_len(0).map_err(file_err(&path))?;
    writeln!(f, "{}", std::process::id()).map_err(file_err(&path))?;
    Ok(AgentLock::File(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("locks");
        let first = file_lock(&sub, "x.lock").unwrap();
        let err = file_lock(&sub, "x.lock").err().expect("held").to_string();
        let me = format!("pid {} (", std::process::id());
        assert!(err.contains(&me), "{err}");
        drop(first);
        file_lock(&sub, "x.lock").expect("free again");
    }

    #[test]
    fn a_lock_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let err = file_lock(&open, "x.lock")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("not a directory only root can write"), "{err}");
    }
}
