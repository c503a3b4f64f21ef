//! Process attribution for node-originated flows: the cgroup socket hooks record who opened
//! each socket (by socket cookie); the TC egress program records which flow a local socket
//! sent (flow key → cookie) on the flow's first packet per CPU.

/// Capacity of both process maps (LRU).
pub const MAX_SOCKETS: u32 = 16_384;

/// Who called connect()/sendmsg() on a socket.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOwner {
    /// Thread-group id (the process id as the host's init namespace sees it).
    pub pid: u32,
    pub _pad0: u32,
    /// cgroup v2 id (the inode number of the cgroup's directory).
    pub cgroup_id: u64,
    /// `comm`, NUL-padded.
    pub comm: [u8; 16],
}
