//! Userspace-only impls: aya `Pod` so the types can be map keys and values.

use crate::{FlowKey, FlowStats};

// SAFETY: both are #[repr(C)] with only integer fields and explicit padding, so every bit
// pattern is valid and there are no uninitialised bytes.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: see above.
unsafe impl aya::Pod for FlowStats {}
// SAFETY: see above.
unsafe impl aya::Pod for crate::SockOwner {}
// SAFETY: see above.
unsafe impl aya::Pod for crate::FlowSet {}
// SAFETY: see above.
unsafe impl aya::Pod for crate::Evicted {}
// SAFETY: #[repr(C)] u32s only, no padding.
unsafe impl aya::Pod for crate::SvcAddr {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::SvcTuple {}
// SAFETY: #[repr(C)] integers and a byte array with explicit padding.
unsafe impl aya::Pod for crate::DnsCapture {}
