//! The address index: which object owns an IP (pods over nodes over Services), the
//! workloads present, and which addresses changed since a version (so only the
//! connections they touch are classified again).

use super::*;

impl Store {
    /// Remember what the change being applied (the next version) touches.
    pub(super) fn touch(&mut self, o: &Object) {
        let v = self.version + 1;
        match o {
            Object::Namespace(_) => self.touched.push_back((v, None)),
            // What it owns: a hostNetwork pod's addresses are its node's.
            _ => {
                for ip in o.ips() {
                    self.touched.push_back((v, Some(*ip)));
                }
            }
        }
        // Trimmed as it grows past the bound, so it never reallocates beyond it. A version
        // that lost entries (possibly one still being applied) is no longer reported.
        if self.touched.len() >= TOUCHED {
            let excess = self.touched.len() - TOUCHED / 2;
            self.touched_floor = self.touched_floor.max(self.touched[excess - 1].0);
            self.touched.drain(..excess);
        }
    }

    /// The addresses whose owner (or its details) changed after `version`; `None` when
    /// that is not known (too long ago, or a change that may touch any address).
    pub fn touched_since(&self, version: u64) -> Option<HashSet<IpAddr>> {
        if version >= self.version {
            return Some(HashSet::new());
        }
        // Every version after `version` must be whole in the log.
        if version < self.touched_floor {
            return None;
        }
        let mut out = HashSet::new();
        for &(v, ip) in self.touched.iter().rev() {
            if v <= version {
                break;
            }
            out.insert(ip?);
        }
        Some(out)
    }

    pub(super) fn is_node(&self, id: Id) -> bool {
        matches!(self.object(id), Some(Object::Node(_)))
    }

    pub(super) fn workload_key(ns: &str, owner: &str) -> Box<str> {
        format!("{ns}\0{owner}").into()
    }

    /// Does any pod of `owner` (`Kind/name`) exist in namespace `ns`?
    pub fn has_workload(&self, ns: &str, owner: &str) -> bool {
        self.workloads.contains_key(&Self::workload_key(ns, owner))
    }

    /// Index `o`, about to be stored at `id` (not yet in its slot).
    pub(super) fn index(&mut self, id: Id, o: &Object) {
        if let Object::Pod(PodMeta {
            namespace,
            owner: Some(w),
            ..
        }) = o
        {
            *self
                .workloads
                .entry(Self::workload_key(namespace, w))
                .or_default() += 1;
        }
        if let Some(uid) = o.uid() {
            let h = self.hash_uid(uid);
            let slots = &self.slots;
            // A uid held by another pod (a bad snapshot): the newest wins.
            if let Ok(e) = self.by_uid.find_entry(h, |&i| {
                slots[i as usize].object.as_ref().and_then(Object::uid) == Some(uid)
            }) {
                e.remove();
            }
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.by_uid.insert_unique(h, id, |&i| {
                let uid = slots[i as usize].object.as_ref().and_then(Object::uid);
                // The slot being inserted holds nothing yet; it is never rehashed here.
                hasher.hash_one(uid.unwrap_or_default())
            });
        }
        let is_node = o.kind() == Kind::Node;
        for ip in o.ips() {
            match self.by_ip.get(ip).copied() {
                None => {
                    self.by_ip.insert(*ip, id);
                }
                // Nodes win over pods and services: an address a node holds is the node's.
                Some(holder) if self.is_node(holder) && !is_node => {
                    self.shadowed.entry(*ip).or_default().push(id);
                }
                // Otherwise the newest claim wins; the older one waits its turn.
                Some(holder) => {
                    self.by_ip.insert(*ip, id);
                    self.shadowed.entry(*ip).or_default().push(holder);
                }
            }
        }
    }

    /// Remove `o`, held at `id` (already taken out of its slot), from the indexes.
    pub(super) fn unindex(&mut self, id: Id, o: &Object) {
        if let Object::Pod(PodMeta {
            namespace,
            owner: Some(w),
            ..
        }) = o
        {
            let key = Self::workload_key(namespace, w);
            if let Some(n) = self.workloads.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.workloads.remove(&key);
                }
            }
        }
        if let Some(uid) = o.uid() {
            if let Ok(e) = self.by_uid.find_entry(self.hash_uid(uid), |&i| i == id) {
                e.remove();
            }
        }
        for ip in o.ips() {
            if self.by_ip.get(ip) == Some(&id) {
                self.by_ip.remove(ip);
                // Give the address back to the next claimant: a node first, else the newest.
                if let Some(mut waiting) = self.shadowed.remove(ip) {
                    let next = waiting
                        .iter()
                        .rposition(|&k| self.is_node(k))
                        .unwrap_or(waiting.len() - 1);
                    let k = waiting.remove(next);
                    if !waiting.is_empty() {
                        self.shadowed.insert(*ip, waiting);
                    }
                    self.by_ip.insert(*ip, k);
                }
            } else if let Some(waiting) = self.shadowed.get_mut(ip) {
                if let Some(i) = waiting.iter().position(|&k| k == id) {
                    waiting.remove(i);
                }
                if waiting.is_empty() {
                    self.shadowed.remove(ip);
                }
            }
        }
    }

    /// Addresses more than one object claims right now (each is given to one of them).
    pub fn ip_conflicts(&self) -> usize {
        self.shadowed.len()
    }

    pub fn owner(&self, ip: IpAddr) -> Option<Owner<'_>> {
        match self.object(*self.by_ip.get(&ip)?)? {
            Object::Pod(p) => Some(Owner::Pod(p)),
            Object::Node(n) => Some(Owner::Node(n)),
            Object::Service(s) => Some(Owner::Service(s)),
            Object::Namespace(_) => None,
        }
    }
}
