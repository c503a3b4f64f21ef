//! The slot table: every object in a slot under a dense id, found by (kind, namespace,
//! name) or uid through hashed indexes that keep only ids; names interned so 200k pods
//! share one copy of each namespace, node and owner string.

use super::*;

impl Store {
    pub(super) fn intern(&mut self, s: &Name) -> Name {
        if let Some(held) = self.names.get(s) {
            return held.clone();
        }
        self.names_added += 1;
        self.names.insert(s.clone());
        s.clone()
    }

    /// Drop interned names no object uses any more (owners change name with every
    /// rollout), once enough were added that it is worth a pass.
    pub(super) fn forget_unused_names(&mut self) {
        if self.names_added > self.names.len() / 2 + 1024 {
            self.names.retain(|n| Arc::strong_count(n) > 1);
            self.names_added = 0;
        }
    }

    /// Reduce an incoming object to what is kept, sharing names with those held.
    pub(super) fn ingest(&mut self, mut o: Object) -> Object {
        match &mut o {
            Object::Pod(p) => {
                if let Some(keys) = &self.pod_label_keys {
                    p.labels.retain(|k| keys.contains(k));
                }
                if let Some(node) = &self.uid_node {
                    if p.node.as_deref() != Some(node.as_str()) {
                        p.uid = None;
                    }
                }
                p.namespace = self.intern(&p.namespace);
                if let Some(n) = &p.node {
                    p.node = Some(self.intern(n));
                }
                if let Some(w) = &p.owner {
                    p.owner = Some(self.intern(w));
                }
            }
            Object::Namespace(n) => n.name = self.intern(&n.name),
            Object::Node(n) => n.name = self.intern(&n.name),
            Object::Service(s) => s.namespace = self.intern(&s.namespace),
        }
        o
    }

    pub(super) fn hash_key(&self, (kind, ns, name): (Kind, &str, &str)) -> u64 {
        self.hasher.hash_one((kind, ns, name))
    }

    pub(super) fn hash_uid(&self, uid: &str) -> u64 {
        self.hasher.hash_one(uid)
    }

    pub(super) fn object(&self, id: Id) -> Option<&Object> {
        self.slots.get(id as usize)?.object.as_ref()
    }

    pub(super) fn find(&self, key: (Kind, &str, &str)) -> Option<Id> {
        let slots = &self.slots;
        self.by_name
            .find(self.hash_key(key), |&id| {
                slots[id as usize].object.as_ref().map(Object::key) == Some(key)
            })
            .copied()
    }

    /// Add or update one object; false when it was already held exactly like this.
    pub(super) fn put(&mut self, o: Object) -> bool {
        let kind = o.kind();
        let mark = self.generation[kind.index()];
        if let Some(id) = self.find(o.key()) {
            let slot = &mut self.slots[id as usize];
            slot.mark = mark;
            if slot.object.as_ref() == Some(&o) {
                return false;
            }
            let old = slot.object.take().expect("indexed slots hold an object");
            self.unindex(id, &old);
            self.index(id, &o);
            self.touch(&old);
            self.touch(&o);
            if let Some(j) = &mut self.journal {
                j.push(Change::Apply(o.clone()));
            }
            self.slots[id as usize].object = Some(o);
            return true;
        }
        let h = self.hash_key(o.key());
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(Slot { object: None, mark });
                Id::try_from(self.slots.len() - 1).expect("fewer than 2^32 objects")
            }
        };
        self.index(id, &o);
        self.touch(&o);
        if let Some(j) = &mut self.journal {
            j.push(Change::Apply(o.clone()));
        }
        self.slots[id as usize] = Slot {
            object: Some(o),
            mark,
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_name.insert_unique(h, id, |&i| {
            let key = slots[i as usize].object.as_ref().map(Object::key);
            hasher.hash_one(key.expect("indexed slots hold an object"))
        });
        self.counts[kind.index()] += 1;
        true
    }

    pub(super) fn remove(&mut self, id: Id) {
        let Some(old) = self.slots[id as usize].object.take() else {
            return;
        };
        let h = self.hash_key(old.key());
        if let Ok(e) = self.by_name.find_entry(h, |&i| i == id) {
            e.remove();
        }
        self.unindex(id, &old);
        self.touch(&old);
        self.counts[old.kind().index()] -= 1;
        self.free.push(id);
        if let Some(j) = &mut self.journal {
            j.push(Change::Delete(old));
        }
    }

    /// End a relist: what it did not list goes. True if anything went.
    pub(super) fn sweep(&mut self, kind: Kind) -> bool {
        if !std::mem::take(&mut self.listing[kind.index()]) {
            return false;
        }
        let mark = self.generation[kind.index()];
        let stale: Vec<Id> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.mark != mark && s.object.as_ref().map(Object::kind) == Some(kind))
            .map(|(i, _)| i as Id)
            .collect();
        for &id in &stale {
            self.remove(id);
        }
        !stale.is_empty()
    }
}
