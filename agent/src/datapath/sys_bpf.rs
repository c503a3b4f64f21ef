//! The raw `bpf(2)` call, for the commands aya 0.14 does not wrap (batch lookups, tcx
//! chain queries): one place that passes an attribute struct and turns -1 into errno.

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
