//! The raw `bpf(2)` call, for the commands aya 0.14 does not wrap (batch lookups, program
//! queries of a tcx hook or a cgroup): one place that passes an attribute struct and turns
//! -1 into errno.

use std::io;

/// `bpf(cmd, attr, sizeof attr)`: the syscall's result (a new fd for the commands that make
/// one, else 0).
///
/// # Safety
/// `attr` must be the layout of `union bpf_attr`'s member for `cmd`, and every pointer in
/// it must point at memory that stays valid (and large enough) for the call.
pub(crate) unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: upheld by the caller, see above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `union bpf_attr`'s `query` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    /// An ifindex (tcx) or a cgroup fd.
    target: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

const BPF_PROG_QUERY: libc::c_long = 16;

/// Ids of the programs attached to `target` (an ifindex for tcx, a cgroup fd) at
/// `attach_type`, in run order, at most `max` (a longer list is cut, not an error).
pub(crate) fn prog_query(target: u32, attach_type: u32, max: usize) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; max];
    let mut attr = QueryAttr {
        target,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: max as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is the query member of bpf_attr and `prog_ids` points to `max` u32s
    // that outlive the call.
    match unsafe { bpf(BPF_PROG_QUERY, &mut attr) } {
        // ENOSPC: more than `max` attached; the first `max` ids are still filled.
        Err(e) if e.raw_os_error() != Some(libc::ENOSPC) => return Err(e),
        _ => {}
    }
    ids.truncate((attr.prog_cnt as usize).min(max));
    Ok(ids)
}
