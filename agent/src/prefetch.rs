//! Cache warming. At node scale the agent's tables are far larger than the CPU's caches,
//! and a harvest visits their entries in no memory order: each visit is a miss, and taken
//! one after another they were most of a harvest. A pass that knows what it will visit a
//! few steps ahead asks the CPU to start loading it, so the misses overlap. Hints only:
//! nothing that uses this computes anything differently.

/// Ask the CPU to load the cache line at `at` (a no-op off x86-64).
#[inline(always)]
pub fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache: it reads nothing the program sees and does
    // not fault on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
