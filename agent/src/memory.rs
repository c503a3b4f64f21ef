//! Handing freed heap back to the system. glibc keeps memory a process freed inside its
//! heap for reuse; after a burst (the harvest that places 100k new connections, a
//! conntrack dump, a large `/flows` answer) that is tens of MiB resident for nothing. At
//! 100k connections, trimming every 10 s took the agent's resident memory from 180–187 to
//! 160–172 MiB (docs/BENCHMARKS.md).

/// Return free heap pages to the system (a no-op off glibc).
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
