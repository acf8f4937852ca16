//! The objects of a configuration set, kept so that a change costs what it touches.
//!
//! A source holds one [`ObjectMap`] for as long as it runs and applies each event to it;
//! what it hands the model is a clone. Each kind's objects are a persistent B-tree
//! ([`imbl::OrdMap`]): a clone shares every node, a write copies only the path down to
//! its entry, and two maps are compared by walking only the nodes they do not share
//! ([`ObjectMap::changed`]). Each kind also keeps a print of its objects, updated on
//! every insert and remove, so the model learns whether a kind changed without reading
//! its objects (see [`super::stages`]).

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::sync::Arc;

use super::object::{Kind, Object, ObjectKey};

/// An object as the map holds it: equal to another only when it is the same `Arc`, so
/// that comparing two maps tells a replaced object from a kept one without reading
/// either.
#[derive(Debug, Clone)]
#[repr(transparent)]
struct Held(Arc<Object>);

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

type Map = imbl::OrdMap<ObjectKey, Held>;

/// An object before and after a change ([`ObjectMap::changed`]).
pub type Pair<'a> = (Option<&'a Arc<Object>>, Option<&'a Arc<Object>>);

/// One kind's objects and their print.
#[derive(Debug, Clone, Default)]
struct Shard {
    objects: Map,
    /// The wrapping sum of the objects' prints ([`super::stages::print_of`]): a sum, so
    /// that an insert or a remove updates it without reading the other objects. Keys
    /// are part of each print, so two different sets of objects give the same sum only
    /// by a 64-bit accident.
    print: u64,
}

/// Objects by key, in key order (kind, namespace, name), shared by kind.
#[derive(Debug, Clone, Default)]
pub struct ObjectMap {
    shards: BTreeMap<Kind, Shard>,
    len: usize,
}

/// The objects of an [`ObjectMap`] in key order.
pub struct Iter<'a> {
    shards: btree_map::Values<'a, Kind, Shard>,
    current: Option<imbl::ordmap::Iter<'a, ObjectKey, Held, imbl::shared_ptr::DefaultSharedPtr>>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a ObjectKey, &'a Arc<Object>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, o)) = self.current.as_mut().and_then(Iterator::next) {
                return Some((k, &o.0));
            }
            self.current = Some(self.shards.next()?.objects.iter());
        }
    }
}

impl ObjectMap {
    pub fn new() -> ObjectMap {
        ObjectMap::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<Object>> {
        self.shards.get(&key.kind)?.objects.get(key).map(|o| &o.0)
    }

    pub fn contains_key(&self, key: &ObjectKey) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `object` under `key`, returning what was there. Copies the nodes on the
    /// way to the entry that a clone of this map shares.
    pub fn insert(&mut self, key: ObjectKey, object: Arc<Object>) -> Option<Arc<Object>> {
        let shard = self.shards.entry(key.kind).or_default();
        shard.print = shard.print.wrapping_add(super::stages::print_of(&object));
        let old = shard.objects.insert(key, Held(object)).map(|o| o.0);
        match &old {
            Some(o) => shard.print = shard.print.wrapping_sub(super::stages::print_of(o)),
            None => self.len += 1,
        }
        old
    }

    /// Removes the object under `key`, returning it.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Arc<Object>> {
        let shard = self.shards.get_mut(&key.kind)?;
        if !shard.objects.contains_key(key) {
            return None;
        }
        let old = shard.objects.remove(key)?.0;
        shard.print = shard.print.wrapping_sub(super::stages::print_of(&old));
        self.len -= 1;
        if shard.objects.is_empty() {
            self.shards.remove(&key.kind);
        }
        Some(old)
    }

    /// Every object in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            shards: self.shards.values(),
            current: None,
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Object>> {
        self.iter().map(|(_, o)| o)
    }

    /// The objects of one kind, in key order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<Object>> {
        self.shards
            .get(&kind)
            .into_iter()
            .flat_map(|s| s.objects.values().map(|o| &o.0))
    }

    /// The objects of `kind` in `namespace`, in name order (one range of the kind).
    pub fn of_kind_in<'a>(
        &'a self,
        kind: Kind,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Object>> {
        let start = ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: String::new(),
        };
        self.shards.get(&kind).into_iter().flat_map(move |s| {
            s.objects
                .range(start.clone()..)
                .take_while(move |(k, _)| k.namespace == namespace)
                .map(|(_, o)| &o.0)
        })
    }

    /// Whether any object of these kinds is present.
    pub fn has_any(&self, kinds: impl Fn(Kind) -> bool) -> bool {
        self.shards.keys().any(|k| kinds(*k))
    }

    /// The print of one kind's objects and their number (0 and 0 when there are none).
    pub fn kind_print(&self, kind: Kind) -> (u64, usize) {
        self.shards
            .get(&kind)
            .map_or((0, 0), |s| (s.print, s.objects.len()))
    }

    /// The objects of `kind` that differ between `old` and `self`, as (old, new) pairs
    /// in key order: added (None, Some), removed (Some, None), or replaced by another
    /// `Arc`. Only the nodes the two maps do not share are read: after a few writes to
    /// a clone, a handful of paths, not every object of the kind.
    pub fn changed<'a>(&'a self, old: &'a ObjectMap, kind: Kind) -> Vec<Pair<'a>> {
        use imbl::ordmap::DiffItem;
        // A kind one side does not have compares with the empty map.
        static EMPTY: std::sync::LazyLock<Map> = std::sync::LazyLock::new(Map::new);
        let before = old.shards.get(&kind).map_or(&*EMPTY, |s| &s.objects);
        let after = self.shards.get(&kind).map_or(&*EMPTY, |s| &s.objects);
        before
            .diff(after)
            .map(|d| match d {
                DiffItem::Add(_, n) => (None, Some(&n.0)),
                DiffItem::Remove(_, o) => (Some(&o.0), None),
                DiffItem::Update { old, new } => (Some(&old.1.0), Some(&new.1.0)),
            })
            .collect()
    }

    /// The kinds whose objects may differ between `self` and `other`: those whose maps
    /// are not shared. A kind a source did not write to since the clone is skipped
    /// without reading it.
    pub fn unshared_kinds<'a>(&'a self, other: &'a ObjectMap) -> impl Iterator<Item = Kind> + 'a {
        let mut kinds: Vec<Kind> = self
            .shards
            .keys()
            .chain(other.shards.keys())
            .copied()
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
            .into_iter()
            .filter(move |k| match (self.shards.get(k), other.shards.get(k)) {
                (Some(a), Some(b)) => !a.objects.ptr_eq(&b.objects),
                _ => true,
            })
    }
}

/// As a `BTreeMap`'s: panics if the key is absent (for tests and callers that know).
impl std::ops::Index<&ObjectKey> for ObjectMap {
    type Output = Arc<Object>;

    fn index(&self, key: &ObjectKey) -> &Arc<Object> {
        self.get(key).expect("no object under this key")
    }
}

impl<'a> IntoIterator for &'a ObjectMap {
    type Item = (&'a ObjectKey, &'a Arc<Object>);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl FromIterator<(ObjectKey, Arc<Object>)> for ObjectMap {
    fn from_iter<I: IntoIterator<Item = (ObjectKey, Arc<Object>)>>(iter: I) -> ObjectMap {
        let mut map = ObjectMap::new();
        map.extend(iter);
        map
    }
}

impl Extend<(ObjectKey, Arc<Object>)> for ObjectMap {
    fn extend<I: IntoIterator<Item = (ObjectKey, Arc<Object>)>>(&mut self, iter: I) {
        for (k, o) in iter {
            self.insert(k, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::config_set;

    const TEXT: &str = "
apiVersion: v1
kind: Service
metadata: {name: a, namespace: x}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: y}
spec: {ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: x}
spec: {hosts: [a]}
";

    #[test]
    fn order_prints_and_sharing() {
        let set = config_set(TEXT);
        let keys: Vec<&ObjectKey> = set.objects.keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert_eq!(set.objects.len(), 3);
        assert_eq!(set.objects.of_kind(Kind::Service).count(), 2);
        assert_eq!(set.objects.of_kind_in(Kind::Service, "y").count(), 1);

        // A clone shares every kind; a write unshares only its own kind.
        let mut next = set.objects.clone();
        assert_eq!(next.unshared_kinds(&set.objects).count(), 0);
        let vs = set
            .objects
            .of_kind(Kind::VirtualService)
            .next()
            .cloned()
            .expect("a VirtualService");
        let (before, _) = next.kind_print(Kind::VirtualService);
        next.remove(&vs.key);
        assert_eq!(next.kind_print(Kind::VirtualService), (0, 0));
        assert_eq!(
            next.unshared_kinds(&set.objects).collect::<Vec<_>>(),
            [Kind::VirtualService]
        );
        assert_eq!(set.objects.len(), 3, "the clone's write left the original");
        // Putting it back gives the same print: the print is of the set, not its history.
        next.insert(vs.key.clone(), vs.clone());
        assert_eq!(next.kind_print(Kind::VirtualService), (before, 1));
        assert_eq!(
            next.kind_print(Kind::Service),
            set.objects.kind_print(Kind::Service)
        );
        // A different object under the same key changes the print.
        let other = config_set(&TEXT.replace("hosts: [a]", "hosts: [b]"));
        let changed = other
            .objects
            .get(&vs.key)
            .cloned()
            .expect("the changed VirtualService");
        let replaced = next.insert(vs.key.clone(), changed.clone());
        assert!(replaced.is_some());
        assert_eq!(next.len(), 3);
        assert_ne!(next.kind_print(Kind::VirtualService).0, before);
        // The same as a map made from scratch with the same objects, kind by kind.
        let scratch: ObjectMap = next.iter().map(|(k, o)| (k.clone(), o.clone())).collect();
        for kind in [Kind::Service, Kind::VirtualService] {
            assert_eq!(next.kind_print(kind), scratch.kind_print(kind));
        }
        // And replacing it back restores the first print.
        next.insert(vs.key.clone(), vs.clone());
        assert_eq!(next.kind_print(Kind::VirtualService), (before, 1));
    }

    #[test]
    fn changed_pairs_in_key_order() {
        let set = config_set(TEXT);
        let mut next = set.objects.clone();
        assert!(next.changed(&set.objects, Kind::Service).is_empty());
        let other = config_set(&TEXT.replace("{name: b, namespace: y}", "{name: c, namespace: y}"));
        let a = set
            .objects
            .of_kind(Kind::Service)
            .next()
            .cloned()
            .expect("a");
        let b = set
            .objects
            .of_kind(Kind::Service)
            .nth(1)
            .cloned()
            .expect("b");
        let c = other
            .objects
            .of_kind(Kind::Service)
            .nth(1)
            .cloned()
            .expect("c");
        // b goes, c comes, a is written again as the same object in another Arc.
        next.remove(&b.key);
        next.insert(c.key.clone(), c.clone());
        next.insert(a.key.clone(), Arc::new((*a).clone()));
        let names = |p: &Pair| {
            (
                p.0.map(|o| o.key.name.clone()),
                p.1.map(|o| o.key.name.clone()),
            )
        };
        let pairs: Vec<_> = next
            .changed(&set.objects, Kind::Service)
            .iter()
            .map(names)
            .collect();
        let s = |n: &str| Some(n.to_string());
        assert_eq!(
            pairs,
            [(s("a"), s("a")), (s("b"), None), (None, s("c"))],
            "a replaced (the caller compares contents), b removed, c added"
        );
        assert!(next.changed(&set.objects, Kind::VirtualService).is_empty());
        // A kind only one side has.
        let empty = ObjectMap::new();
        assert_eq!(next.changed(&empty, Kind::Service).len(), 2);
        assert_eq!(empty.changed(&next, Kind::Service).len(), 2);
    }
}
