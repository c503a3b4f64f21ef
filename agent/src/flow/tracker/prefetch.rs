//! Cache warming for passes over many connections. At node scale the table is far larger
//! than the CPU's caches, so each connection a harvest touches costs a miss on its hash
//! bucket and another on its boxed state; taken one after another they were most of a
//! harvest. Looking a few connections ahead and asking the CPU to load them overlaps those
//! misses. Only hints: nothing here changes what any pass computes.

use super::{ConnId, ConnTable, Tracked};

/// How far ahead a pass over connection ids warms the connections it will visit.
pub const AHEAD: usize = 8;

/// Ask the CPU to load the cache line at `at`. Never faults, whatever the address.
#[inline(always)]
pub(super) fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache: it reads nothing the program sees and does
    // not fault on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Start loading the parts of `t` the harvest's passes read: its identity and connection
/// (first lines), its observation points, and the flags after them.
#[inline(always)]
pub(super) fn warm_tracked<A>(t: &Tracked<A>) {
    let base = std::ptr::from_ref(t).cast::<u8>();
    prefetch(base);
    prefetch(base.wrapping_add(64));
    let points = std::ptr::from_ref(&t.points).cast::<u8>();
    prefetch(points);
    prefetch(points.wrapping_add(64));
    prefetch(points.wrapping_add(128));
    prefetch(std::ptr::from_ref(&t.dirty).cast());
}

impl<A> ConnTable<A> {
    /// Start loading connection `id` (if it exists) for a pass that will visit it soon.
    #[inline]
    pub fn warm(&self, id: ConnId) {
        if let Some(t) = self.conns.get(&id) {
            warm_tracked(t);
        }
    }

    /// Warm the connection [`AHEAD`] places after `i` in `ids`.
    #[inline]
    pub fn warm_ahead(&self, ids: &[ConnId], i: usize) {
        if let Some(&id) = ids.get(i + AHEAD) {
            self.warm(id);
        }
    }
}
