//! Hash maps on the per-harvest path (flow keys, tuples, connection ids): foldhash is
//! several times faster than SipHash on 48-byte keys and still seeded per process, so
//! senders cannot precompute colliding flows.

pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
