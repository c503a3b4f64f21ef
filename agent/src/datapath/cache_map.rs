//! Read the kernel flow cache in place: the map is mappable (`BPF_F_MMAPABLE`), so a
//! harvest maps a window of it, reads the slots where the kernel writes them and unmaps
//! the window again. The copy through `BPF_MAP_LOOKUP_BATCH` this replaces was a quarter
//! of the agent's CPU at 100k flows (54 MiB copied per harvest, each value checked by the
//! hardened-usercopy code). Windows, not one mapping of the whole map: the pages of a
//! mapping count in the agent's RSS for as long as it exists, and the cache is tens of
//! MiB at node scale.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::{self, NonNull},
    sync::atomic::{fence, Ordering},
};

use agent_common::{FlowSet, FlowSlot, CACHE_WAYS};

/// Sets read per mapped window: 4,096 × 208 bytes, 832 KiB of RSS while mapped (128
/// mappings per harvest of a two-CPU cache sized for 100k flows).
const WINDOW_SETS: usize = 4_096;

/// One window of the map: the page-aligned byte range to map, and where its first set
/// starts inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    offset: usize,
    len: usize,
    first_set_at: usize,
}

/// The window holding sets `first..first + count` of a map whose values are `stride` bytes
/// apart (BPF array values are laid out back to back, each rounded up to 8 bytes).
fn window(first: usize, count: usize, stride: usize, page: usize) -> Window {
    let start = first * stride;
    let offset = start / page * page;
    let end = (first + count) * stride;
    Window {
        offset,
        len: end.next_multiple_of(page) - offset,
        first_set_at: start - offset,
    }
}

/// Reads a mappable array of [`FlowSet`]s laid out as one row of `sets` per CPU.
pub struct CacheMap {
    sets: usize,
    cpus: usize,
    page: usize,
}

impl CacheMap {
    pub fn new(sets: usize, cpus: usize) -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        Self { sets, cpus, page }
    }

    /// Calls `each(cpu, slot index within the CPU's row, slot)` for every slot of every
    /// CPU, in memory order.
    pub fn read_all(
        &self,
        fd: BorrowedFd<'_>,
        mut each: impl FnMut(u32, u32, &FlowSlot),
    ) -> io::Result<()> {
        let stride = size_of::<FlowSet>().next_multiple_of(8);
        let total = self.sets * self.cpus;
        let mut first = 0;
        while first < total {
            let count = WINDOW_SETS.min(total - first);
            let w = window(first, count, stride, self.page);
            let mapped = Mapped::new(fd, w.offset, w.len)?;
            for i in 0..count {
                let at = w.first_set_at + i * stride;
                let set_index = first + i;
                let (cpu, set) = (set_index / self.sets, set_index % self.sets);
                // SAFETY: `at` + one FlowSet lies inside the mapping (the window covers
                // `count` values from `first_set_at`), which stays mapped until `mapped`
                // drops; values are 8-aligned (page-aligned mapping, 8-byte stride).
                let value = unsafe { mapped.base().add(at).cast::<FlowSet>() };
                for way in 0..CACHE_WAYS {
                    // SAFETY: as above; `ways` is inside the value.
                    let slot = unsafe { read_slot(ptr::addr_of!((*value).ways[way])) };
                    let index = (set * CACHE_WAYS + way) as u32;
                    each(cpu as u32, index, &slot);
                }
            }
            first += count;
        }
        Ok(())
    }
}

/// One slot as the kernel's writer protocol expects it to be read (see
/// `agent_common::cache`): `seq_end` first and `seq_begin` last, so a copy whose two
/// numbers agree was not torn by a re-occupation. Volatile because the kernel writes the
/// memory under us; the fences keep the three reads in order on weakly ordered CPUs too.
///
/// # Safety
/// `p` points at a readable, 8-aligned [`FlowSlot`].
unsafe fn read_slot(p: *const FlowSlot) -> FlowSlot {
    // SAFETY: the caller's guarantee; every bit pattern is a valid FlowSlot.
    unsafe {
        let seq_end = ptr::read_volatile(ptr::addr_of!((*p).seq_end));
        fence(Ordering::Acquire);
        let key = ptr::read_volatile(ptr::addr_of!((*p).key));
        let stats = ptr::read_volatile(ptr::addr_of!((*p).stats));
        fence(Ordering::Acquire);
        let seq_begin = ptr::read_volatile(ptr::addr_of!((*p).seq_begin));
        FlowSlot {
            seq_end,
            key,
            stats,
            seq_begin,
        }
    }
}

/// A read-only shared mapping of part of a BPF map, unmapped on drop.
struct Mapped {
    base: NonNull<u8>,
    len: usize,
}

impl Mapped {
    fn new(fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<Self> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "map offset too large"))?;
        // SAFETY: a fresh mapping the kernel places; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { base, len })
    }

    fn base(&self) -> *const u8 {
        self.base.as_ptr()
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not referenced past this point.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_on_a_page_and_cover_every_set() {
        let stride = size_of::<FlowSet>();
        assert_eq!(stride, 208, "the kernel lays values out 8-aligned");
        let w = window(0, 16_384, stride, 4096);
        assert_eq!(
            w,
            Window {
                offset: 0,
                len: 16_384 * 208,
                first_set_at: 0
            }
        );
        // The second window starts inside the page the first ended in.
        let w = window(16_384, 100, stride, 4096);
        let start = 16_384 * 208;
        assert_eq!(w.offset, start / 4096 * 4096);
        assert_eq!(w.first_set_at, start % 4096);
        assert_eq!(w.offset % 4096, 0);
        assert_eq!(w.len % 4096, 0);
        assert!(w.offset + w.first_set_at + 100 * stride <= w.offset + w.len);
    }

    #[test]
    fn a_slot_read_in_place_is_the_slot() {
        let mut slot = FlowSlot {
            seq_end: 7,
            key: crate::test_support::udp_key(53),
            stats: crate::test_support::stats(3, 300, 10, 20, 0x12),
            seq_begin: 7,
        };
        slot.key.ifindex = 4;
        // SAFETY: a live, aligned FlowSlot.
        assert_eq!(unsafe { read_slot(&slot) }, slot);
    }
}
