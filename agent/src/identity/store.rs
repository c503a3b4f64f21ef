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

mod index;
mod slots;
