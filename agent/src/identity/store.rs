//! The current inventory of pods, namespaces, nodes and services, with an address index
//! kept up to date incrementally so a watch event costs O(1), not a rebuild.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use super::{NamespaceMeta, NodeMeta, Object, PodMeta, ServiceMeta};

/// Which of the four kinds a change is about (a watch relists one kind at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    Namespace,
    Node,
    Service,
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

    fn key(&self) -> Key {
        match self {
            Object::Pod(p) => Key(Kind::Pod, p.namespace.clone(), p.name.clone()),
            Object::Namespace(n) => Key(Kind::Namespace, String::new(), n.name.clone()),
            Object::Node(n) => Key(Kind::Node, String::new(), n.name.clone()),
            Object::Service(s) => Key(Kind::Service, s.namespace.clone(), s.name.clone()),
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
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key(Kind, String, String);

/// One change from an identity source.
#[derive(Clone, Debug)]
pub enum Change {
    Apply(Object),
    Delete(Object),
    /// Everything of `kind` is exactly this (a watch relist or a 410 Gone resync).
    Replace(Kind, Vec<Object>),
}

/// Who an address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner<'a> {
    Pod(&'a PodMeta),
    Node(&'a NodeMeta),
    Service(&'a ServiceMeta),
}

#[derive(Default, Debug)]
pub struct Store {
    objects: BTreeMap<Key, Object>,
    by_ip: HashMap<IpAddr, Key>,
    /// Other objects claiming an address `by_ip` gives to someone else (a pod IP reused
    /// before the old pod's delete arrived; two pods in a bad snapshot). Usually empty; it
    /// makes giving the address back O(1) instead of a scan of every object.
    shadowed: HashMap<IpAddr, Vec<Key>>,
    by_uid: HashMap<String, Key>,
    /// Bumped by every change: classifications made at an older version are stale.
    version: u64,
    /// Pod label keys worth keeping (those egress-gateway selectors use); `None` keeps
    /// all. A pod's labels are most of what it costs in memory (~680 of ~1,500 bytes with
    /// five labels), and nothing else reads them.
    pod_label_keys: Option<std::collections::BTreeSet<String>>,
}

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
    pub fn keep_pod_labels(&mut self, keys: std::collections::BTreeSet<String>) {
        for o in self.objects.values_mut() {
            if let Object::Pod(p) = o {
                p.labels.retain(|k| keys.contains(k));
            }
        }
        self.pod_label_keys = Some(keys);
    }

    fn slim(&self, mut o: Object) -> Object {
        if let (Object::Pod(p), Some(keys)) = (&mut o, &self.pod_label_keys) {
            p.labels.retain(|k| keys.contains(k));
        }
        o
    }

    fn put(&mut self, o: Object) {
        let key = o.key();
        if let Some(old) = self.objects.remove(&key) {
            self.unindex(&key, &old);
        }
        self.index(&key, &o);
        self.objects.insert(key, o);
    }

    pub fn apply(&mut self, change: Change) {
        self.version += 1;
        match change {
            Change::Apply(o) => {
                let o = self.slim(o);
                self.put(o);
            }
            Change::Delete(o) => {
                let key = o.key();
                if let Some(old) = self.objects.remove(&key) {
                    self.unindex(&key, &old);
                }
            }
            // A relist mostly repeats what is held (every 410 Gone relists everything):
            // only what differs is re-indexed, then what the list lacks goes.
            Change::Replace(kind, objects) => {
                let mut listed: std::collections::HashSet<Key> =
                    std::collections::HashSet::with_capacity(objects.len());
                for o in objects.into_iter().filter(|o| o.kind() == kind) {
                    let o = self.slim(o);
                    let key = o.key();
                    if self.objects.get(&key) != Some(&o) {
                        self.put(o);
                    }
                    listed.insert(key);
                }
                let stale: Vec<Key> = self
                    .objects
                    .keys()
                    .filter(|k| k.0 == kind && !listed.contains(*k))
                    .cloned()
                    .collect();
                for key in stale {
                    if let Some(old) = self.objects.remove(&key) {
                        self.unindex(&key, &old);
                    }
                }
            }
        }
    }

    fn index(&mut self, key: &Key, o: &Object) {
        if let Object::Pod(PodMeta { uid: Some(uid), .. }) = o {
            self.by_uid.insert(uid.clone(), key.clone());
        }
        for ip in o.ips() {
            match self.by_ip.get(ip) {
                None => {
                    self.by_ip.insert(*ip, key.clone());
                }
                // Nodes win over pods and services: an address a node holds is the node's.
                Some(k) if k.0 == Kind::Node && key.0 != Kind::Node => {
                    self.shadowed.entry(*ip).or_default().push(key.clone());
                }
                // Otherwise the newest claim wins; the older one waits its turn.
                Some(_) => {
                    let old = self.by_ip.insert(*ip, key.clone()).expect("present");
                    self.shadowed.entry(*ip).or_default().push(old);
                }
            }
        }
    }

    fn unindex(&mut self, key: &Key, o: &Object) {
        if let Object::Pod(PodMeta { uid: Some(uid), .. }) = o {
            if self.by_uid.get(uid) == Some(key) {
                self.by_uid.remove(uid);
            }
        }
        for ip in o.ips() {
            if self.by_ip.get(ip) == Some(key) {
                self.by_ip.remove(ip);
                // Give the address back to the next claimant: a node first, else the newest.
                if let Some(waiting) = self.shadowed.get_mut(ip) {
                    let next = waiting
                        .iter()
                        .rposition(|k| k.0 == Kind::Node)
                        .unwrap_or(waiting.len() - 1);
                    let k = waiting.remove(next);
                    if waiting.is_empty() {
                        self.shadowed.remove(ip);
                    }
                    self.by_ip.insert(*ip, k);
                }
            } else if let Some(waiting) = self.shadowed.get_mut(ip) {
                if let Some(i) = waiting.iter().position(|k| k == key) {
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
        match self.objects.get(self.by_ip.get(&ip)?)? {
            Object::Pod(p) => Some(Owner::Pod(p)),
            Object::Node(n) => Some(Owner::Node(n)),
            Object::Service(s) => Some(Owner::Service(s)),
            Object::Namespace(_) => None,
        }
    }

    pub fn namespace(&self, name: &str) -> Option<&NamespaceMeta> {
        match self
            .objects
            .get(&Key(Kind::Namespace, String::new(), name.into()))
        {
            Some(Object::Namespace(n)) => Some(n),
            _ => None,
        }
    }

    pub fn namespace_names(&self) -> impl Iterator<Item = &str> {
        self.objects.values().filter_map(|o| match o {
            Object::Namespace(n) => Some(n.name.as_str()),
            _ => None,
        })
    }

    /// The pod with this metadata.uid (what its cgroup path carries).
    pub fn pod_by_uid(&self, uid: &str) -> Option<&PodMeta> {
        match self.objects.get(self.by_uid.get(uid)?)? {
            Object::Pod(p) => Some(p),
            _ => None,
        }
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodMeta> {
        self.objects.values().filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
    }

    /// Objects per kind, for metrics and logs.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut m = BTreeMap::new();
        for k in self.objects.keys() {
            *m.entry(k.0).or_default() += 1;
        }
        m
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Continue the version sequence of the store this one replaces, so classifications
    /// made against the old one count as stale.
    pub fn resume_after(&mut self, previous: u64) {
        self.version = previous + 1;
    }

    /// Changes applied so far.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}
