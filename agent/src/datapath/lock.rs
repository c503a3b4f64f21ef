//! One agent per node: two would each take the other's hooks for a dead predecessor's (in
//! netlink mode the second removed the first's filters, and the first counted nothing while
//! still saying ready). The lock is an abstract Unix socket: it belongs to the network
//! namespace the agent observes and vanishes with the process, even after `kill -9`.

use std::os::{linux::net::SocketAddrExt, unix::net::SocketAddr, unix::net::UnixListener};

const NAME: &[u8] = b"tenantflow-agent";

/// Held for the agent's life; dropping it releases the lock.
pub struct AgentLock(#[allow(dead_code)] UnixListener);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another tenantflow agent is running in this network namespace (it holds the abstract \
         socket @tenantflow-agent): stop it first; two agents would remove each other's hooks"
    )]
    Held,
    #[error("cannot take the agent lock (abstract socket @tenantflow-agent): {0}")]
    Other(#[source] std::io::Error),
}

pub fn acquire() -> Result<AgentLock, LockError> {
    let addr = SocketAddr::from_abstract_name(NAME).map_err(LockError::Other)?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(AgentLock(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(LockError::Held),
        Err(e) => Err(LockError::Other(e)),
    }
}
