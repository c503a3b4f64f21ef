//! `BPF_MAP_LOOKUP_BATCH`'s attribute (aya 0.14 has no batch API): one syscall per chunk
//! of entries instead of one per entry, for reading maps we do not own (Cilium's NAT maps).

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
