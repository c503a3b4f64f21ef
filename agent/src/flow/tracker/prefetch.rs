//! Cache warming for passes over many connections ([`crate::prefetch`]): each connection a
//! harvest touches costs a miss on its hash bucket and another on its boxed state.

use super::{ConnId, ConnTable, Tracked};
use crate::prefetch::prefetch;

/// How far ahead a pass over connection ids warms the connections it will visit.
pub const AHEAD: usize = 8;

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
