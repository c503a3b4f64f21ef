//! The current inventory of pods, namespaces, nodes and services, sized for the largest
//! clusters (200k pods): objects live once in a slab, and every index (name, address,
//! uid) holds a 4-byte slot number instead of a copy of the key, so a watch event costs
//! O(1) and a pod costs a few hundred bytes. Names many objects share are interned.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{BuildHasher, Hash},
    net::IpAddr,
    sync::Arc,
};

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::{Name, NamespaceMeta, NodeMeta, Object, PodMeta, ServiceMeta};

/// Which of the four kinds a change is about (a watch relists one kind at a time).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Kind {
    Pod,
    Namespace,
    Node,
    Service,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Pod, Kind::Namespace, Kind::Node, Kind::Service];

    fn index(self) -> usize {
        self as usize
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
        }
    }

    /// (kind, namespace, name): what identifies an object across updates.
    fn key(&self) -> (Kind, &str, &str) {
        match self {
            Object::Pod(p) => (Kind::Pod, &p.namespace, &p.name),
            Object::Namespace(n) => (Kind::Namespace, "", &n.name),
            Object::Node(n) => (Kind::Node, "", &n.name),
            Object::Service(s) => (Kind::Service, &s.namespace, &s.name),
        }
    }

    /// Addresses this object answers for. hostNetwork pods share their node's address,
    /// which belongs to the node.
    fn ips(&self) -> &[IpAddr] {
        match self {
            Object::Pod(p) if p.host_network => &[],
            Object::Pod(p) => &p.ips,
            Object::Namespace(_) => &[],
            Object::Node(n) => &n.ips,
            Object::Service(s) => &s.ips,
        }
    }

    fn uid(&self) -> Option<&str> {
        match self {
            Object::Pod(p) => p.uid.as_deref(),
            _ => None,
        }
    }
}

/// One change from an identity source.
#[derive(Clone, Debug)]
pub enum Change {
    Apply(Object),
    Delete(Object),
    /// A relist of this kind begins: every object of the kind that is not applied again
    /// before [`Change::Listed`] goes then (mark and sweep, so a relist of 200k pods is
    /// streamed through, never buffered).
    Relist(Kind),
    /// The relist of this kind is complete.
    Listed(Kind),
    /// Everything of `kind` is exactly this (a snapshot file; `Relist`, applies, `Listed`).
    Replace(Kind, Vec<Object>),
}

/// Who an address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner<'a> {
    Pod(&'a PodMeta),
    Node(&'a NodeMeta),
    Service(&'a ServiceMeta),
}

type Id = u32;

#[derive(Debug)]
struct Slot {
    object: Option<Object>,
    /// The relist generation of its kind in which it was last applied.
    mark: u32,
}

#[derive(Default, Debug)]
pub struct Store {
    slots: Vec<Slot>,
    free: Vec<Id>,
    hasher: RandomState,
    by_name: HashTable<Id>,
    by_ip: HashMap<IpAddr, Id, RandomState>,
    /// Other objects claiming an address `by_ip` gives to someone else (a pod IP reused
    /// before the old pod's delete arrived; two pods in a bad snapshot). Usually empty; it
    /// makes giving the address back O(1) instead of a scan of every object.
    shadowed: HashMap<IpAddr, Vec<Id>, RandomState>,
    by_uid: HashTable<Id>,
    names: HashSet<Name, RandomState>,
    /// Interned names added since unused ones were last dropped.
    names_added: usize,
    generation: [u32; 4],
    listing: [bool; 4],
    counts: [usize; 4],
    /// Bumped by every change that altered the inventory: classifications made at an older
    /// version are stale. A relist repeating what is held leaves it alone.
    version: u64,
    /// Pod label keys worth keeping (those egress-gateway selectors use); `None` keeps
    /// all. A pod's labels were most of what it cost in memory, and nothing else reads them.
    pod_label_keys: Option<BTreeSet<String>>,
    /// Keep pod uids only for pods of this node (`None`: all). A uid is read only to
    /// attribute a local process's cgroup to its pod, and is 36 bytes of every pod.
    uid_node: Option<String>,
    /// Changes that altered the inventory, for an index to pass on (`None`: not kept).
    journal: Option<Vec<Change>>,
    /// Which addresses each version changed the owner of (`None`: possibly every one, as
    /// when a namespace's tenant changes), oldest first, bounded: lets classification
    /// revisit only the connections a change touches.
    touched: std::collections::VecDeque<(u64, Option<IpAddr>)>,
    /// The newest version some of whose entries were trimmed from `touched`.
    touched_floor: u64,
    /// Pods per workload (`namespace\0owner`), so "is this workload still there" is one
    /// lookup instead of a walk over every pod.
    workloads: HashMap<Box<str>, u32, RandomState>,
}

/// Most address changes remembered (512 KiB): far more than one harvest's worth of churn;
/// a classifier further behind (a relist after a 410) re-checks everything.
const TOUCHED: usize = 16_384;

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding exactly `objects` (a snapshot file).
    pub fn from_objects(objects: Vec<Object>) -> Self {
        let mut s = Self::new();
        for o in objects {
            s.apply(Change::Apply(o));
        }
        s
    }

    /// Keep only these pod label keys, from now on and in the pods already held.
    pub fn keep_pod_labels(&mut self, keys: BTreeSet<String>) {
        for slot in &mut self.slots {
            if let Some(Object::Pod(p)) = &mut slot.object {
                p.labels.retain(|k| keys.contains(k));
            }
        }
        self.pod_label_keys = Some(keys);
    }

    /// Keep pod uids only for pods on `node` (those whose cgroups this node holds).
    pub fn keep_uids_of(&mut self, node: &str) {
        self.uid_node = Some(node.to_owned());
    }

    /// Record every change that alters the inventory (applied objects as held, deleted
    /// ones, those a relist swept), for [`Store::take_journal`].
    pub fn keep_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The changes recorded since the last call (only `Apply` and `Delete`).
    pub fn take_journal(&mut self) -> Vec<Change> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The pod label keys kept (`None`: all).
    pub fn kept_pod_labels(&self) -> Option<&BTreeSet<String>> {
        self.pod_label_keys.as_ref()
    }

    fn intern(&mut self, s: &Name) -> Name {
        if let Some(held) = self.names.get(s) {
            return held.clone();
        }
        self.names_added += 1;
        self.names.insert(s.clone());
        s.clone()
    }

    /// Drop interned names no object uses any more (owners change name with every
    /// rollout), once enough were added that it is worth a pass.
    fn forget_unused_names(&mut self) {
        if self.names_added > self.names.len() / 2 + 1024 {
            self.names.retain(|n| Arc::strong_count(n) > 1);
            self.names_added = 0;
        }
    }

    /// Reduce an incoming object to what is kept, sharing names with those held.
    fn ingest(&mut self, mut o: Object) -> Object {
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

    /// Remember what the change being applied (the next version) touches.
    fn touch(&mut self, o: &Object) {
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

    fn hash_key(&self, (kind, ns, name): (Kind, &str, &str)) -> u64 {
        self.hasher.hash_one((kind, ns, name))
    }

    fn hash_uid(&self, uid: &str) -> u64 {
        self.hasher.hash_one(uid)
    }

    fn object(&self, id: Id) -> Option<&Object> {
        self.slots.get(id as usize)?.object.as_ref()
    }

    fn find(&self, key: (Kind, &str, &str)) -> Option<Id> {
        let slots = &self.slots;
        self.by_name
            .find(self.hash_key(key), |&id| {
                slots[id as usize].object.as_ref().map(Object::key) == Some(key)
            })
            .copied()
    }

    /// Add or update one object; false when it was already held exactly like this.
    fn put(&mut self, o: Object) -> bool {
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

    fn remove(&mut self, id: Id) {
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

    pub fn apply(&mut self, change: Change) {
        let changed = match change {
            Change::Apply(o) => {
                let o = self.ingest(o);
                self.put(o)
            }
            Change::Delete(o) => match self.find(o.key()) {
                Some(id) => {
                    self.remove(id);
                    true
                }
                None => false,
            },
            Change::Relist(kind) => {
                let g = &mut self.generation[kind.index()];
                *g = g.wrapping_add(1);
                self.listing[kind.index()] = true;
                false
            }
            Change::Listed(kind) => self.sweep(kind),
            Change::Replace(kind, objects) => {
                self.apply(Change::Relist(kind));
                for o in objects.into_iter().filter(|o| o.kind() == kind) {
                    self.apply(Change::Apply(o));
                }
                self.apply(Change::Listed(kind));
                false
            }
        };
        if changed {
            self.version += 1;
        }
        self.forget_unused_names();
    }

    /// End a relist: what it did not list goes. True if anything went.
    fn sweep(&mut self, kind: Kind) -> bool {
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

    fn is_node(&self, id: Id) -> bool {
        matches!(self.object(id), Some(Object::Node(_)))
    }

    fn workload_key(ns: &str, owner: &str) -> Box<str> {
        format!("{ns}\0{owner}").into()
    }

    /// Does any pod of `owner` (`Kind/name`) exist in namespace `ns`?
    pub fn has_workload(&self, ns: &str, owner: &str) -> bool {
        self.workloads.contains_key(&Self::workload_key(ns, owner))
    }

    /// Index `o`, about to be stored at `id` (not yet in its slot).
    fn index(&mut self, id: Id, o: &Object) {
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
    fn unindex(&mut self, id: Id, o: &Object) {
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

    pub fn namespace(&self, name: &str) -> Option<&NamespaceMeta> {
        match self.object(self.find((Kind::Namespace, "", name))?)? {
            Object::Namespace(n) => Some(n),
            _ => None,
        }
    }

    /// Every object held, in no particular order.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.slots.iter().filter_map(|s| s.object.as_ref())
    }

    pub fn namespace_names(&self) -> impl Iterator<Item = &str> {
        self.objects().filter_map(|o| match o {
            Object::Namespace(n) => Some(&*n.name),
            _ => None,
        })
    }

    /// The pod with this metadata.uid (what its cgroup path carries).
    pub fn pod_by_uid(&self, uid: &str) -> Option<&PodMeta> {
        let slots = &self.slots;
        let id = self.by_uid.find(self.hash_uid(uid), |&i| {
            slots[i as usize].object.as_ref().and_then(Object::uid) == Some(uid)
        })?;
        match self.object(*id)? {
            Object::Pod(p) => Some(p),
            _ => None,
        }
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodMeta> {
        self.objects().filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
    }

    /// Objects per kind (kinds with none left out), for metrics and logs.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        Kind::ALL
            .into_iter()
            .map(|k| (k, self.counts[k.index()]))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Continue the version sequence of the store this one replaces, so classifications
    /// made against the old one count as stale.
    pub fn resume_after(&mut self, previous: u64) {
        self.version = previous + 1;
        // Everything may have changed: a classifier at `previous` re-checks all.
        self.touched.clear();
        self.touched_floor = self.version;
    }

    /// Changes applied so far that altered the inventory.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
