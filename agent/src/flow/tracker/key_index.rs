//! Observation point key → connection, holding a 128-bit fingerprint of each 48-byte key:
//! at node scale (200k points) the index takes 25 bytes a slot instead of 57. The two
//! halves are independent per-process seeded hashes, so two keys sharing a fingerprint is
//! less likely than a memory error and cannot be arranged by a sender; the index trusts it.

use std::hash::BuildHasher;

use agent_common::FlowKey;
use hashbrown::HashTable;

use super::ConnId;

#[derive(Default)]
pub(super) struct KeyIndex {
    /// (fingerprint, connection), placed by the fingerprint's low half: it is already a
    /// seeded hash, so it is not hashed again. The fingerprint is two `u64`s, not a
    /// `u128`: its 16-byte alignment would pad each slot to 32 bytes.
    ids: HashTable<([u64; 2], ConnId)>,
    seeds: (foldhash::fast::RandomState, foldhash::fast::RandomState),
}

/// Where a fingerprint sits in the table.
fn place(print: [u64; 2]) -> u64 {
    print[1]
}

impl KeyIndex {
    fn print(&self, key: &FlowKey) -> [u64; 2] {
        [self.seeds.0.hash_one(key), self.seeds.1.hash_one(key)]
    }

    pub(super) fn get(&self, key: &FlowKey) -> Option<&ConnId> {
        let print = self.print(key);
        self.ids.find(place(print), |e| e.0 == print).map(|e| &e.1)
    }

    pub(super) fn insert(&mut self, key: FlowKey, id: ConnId) {
        let print = self.print(&key);
        match self
            .ids
            .entry(place(print), |e| e.0 == print, |e| place(e.0))
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().1 = id,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert((print, id));
            }
        }
    }

    pub(super) fn remove(&mut self, key: &FlowKey) {
        let print = self.print(key);
        if let Ok(e) = self.ids.find_entry(place(print), |e| e.0 == print) {
            e.remove();
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, generation: u32) -> FlowKey {
        FlowKey {
            generation,
            ..crate::test_support::udp_key(port)
        }
    }

    #[test]
    fn keys_differing_in_any_field_are_apart() {
        let mut ix = KeyIndex::default();
        for port in 0..20_000u16 {
            ix.insert(key(port, 0), u64::from(port));
            ix.insert(key(port, 7), u64::from(port) + 100_000);
        }
        assert_eq!(ix.len(), 40_000);
        assert_eq!(ix.get(&key(1234, 0)), Some(&1234));
        assert_eq!(ix.get(&key(1234, 7)), Some(&101_234));
        ix.remove(&key(1234, 0));
        assert_eq!(ix.get(&key(1234, 0)), None);
        assert_eq!(ix.get(&key(1234, 7)), Some(&101_234));
        assert_eq!(ix.get(&key(30_000, 0)), None);
    }
}
