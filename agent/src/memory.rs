//! Keeping freed heap from staying resident. glibc keeps memory a process freed inside its
//! heap for reuse; after a burst (the harvest that places 100k new connections, a
//! conntrack dump, a large `/flows` answer) that is tens of MiB resident for nothing.
//! Measured at 100k connections (docs/BENCHMARKS.md): one arena, 219 → 193 MiB of peak
//! RSS; trimming every 10 s, steady RSS 180–187 → 160–172 MiB; a fixed mmap threshold
//! (with 24-byte slot bookkeeping and flow-metric handles per classification), peak
//! 171–182 → 145 MiB and steady 160–172 → 130 MiB.

/// Vectors and tables at least this large get their own mapping, given back whole when
/// freed. glibc's default starts at 128 KiB but rises to the largest block freed (up to
/// 32 MiB), so after the first big harvest its per-harvest vectors (events, new flows: a
/// few MiB each at node scale) landed in the heap and kept it grown.
const MMAP_THRESHOLD: i32 = 256 << 10;

/// Tune glibc's allocator for a long-lived daemon with bursty, large allocations. Call
/// first thing in `main`, before any other thread exists (a no-op off glibc).
pub fn configure_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt before any other thread exists, with values glibc accepts:
    // - one arena: glibc gives each thread that allocates its own, and memory freed into a
    //   worker's arena (a conntrack dump, an HTTP answer) stays resident there; the
    //   agent's allocating threads are few and mostly idle;
    // - a fixed mmap threshold (setting it also turns off glibc's raising it).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Return free heap pages to the system (a no-op off glibc).
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
