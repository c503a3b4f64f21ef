//! `BPF_MAP_LOOKUP_BATCH` for the per-CPU flow cache: one syscall per chunk of sets instead
//! of one per set (aya 0.14 has no batch API). Reading the 4,096 sets one at a time cost
//! ~7 ms of syscalls per harvest; chunks of 256 cost 16 calls.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h); the kernel zero-fills the
/// rest of the union when given a shorter attribute.
#[repr(C)]
#[derive(Default)]
pub(crate) struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

pub(crate) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Reads a per-CPU array in chunks into reusable buffers.
pub struct BatchReader {
    chunk: u32,
    /// Bytes one CPU's copy of a value occupies in the output (value size rounded up to 8).
    stride: usize,
    cpus: usize,
    keys: Vec<u32>,
    values: Vec<u8>,
}

impl BatchReader {
    pub fn new(chunk: u32, value_size: usize, cpus: usize) -> Self {
        let stride = value_size.next_multiple_of(8);
        Self {
            chunk,
            stride,
            cpus,
            keys: vec![0; chunk as usize],
            values: vec![0; chunk as usize * stride * cpus],
        }
    }

    /// Calls `each(index, cpu, bytes)` for every CPU's copy of every element.
    pub fn read_all(
        &mut self,
        fd: BorrowedFd<'_>,
        len: u32,
        mut each: impl FnMut(u32, usize, &[u8]),
    ) -> io::Result<()> {
        let mut next: u32 = 0;
        let mut started = false;
        let mut done = 0u32;
        while done < len {
            let mut cursor = next;
            let mut attr = BatchAttr {
                in_batch: if started {
                    &next as *const u32 as u64
                } else {
                    0
                },
                out_batch: &mut cursor as *mut u32 as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.chunk,
                map_fd: fd.as_raw_fd() as u32,
                ..Default::default()
            };
            // SAFETY: attr points at live buffers sized for `count` keys and values; the
            // kernel writes at most that many and the cursor.
            let end = match unsafe { super::sys_bpf::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
                Ok(_) => false,
                // ENOENT: the batch reached the end of the map (with `count` still filled).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Err(e) => return Err(e),
            };
            for i in 0..attr.count as usize {
                let base = i * self.stride * self.cpus;
                for cpu in 0..self.cpus {
                    let at = base + cpu * self.stride;
                    each(self.keys[i], cpu, &self.values[at..at + self.stride]);
                }
            }
            done += attr.count;
            if end || attr.count == 0 {
                break;
            }
            next = cursor;
            started = true;
        }
        Ok(())
    }
}
