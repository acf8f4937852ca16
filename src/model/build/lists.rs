//! Objects filed under keys (a label, a namespace, a Service, an address), kept from
//! build to build and patched with the objects that changed.
//!
//! The indexes the endpoint patch reads ([`super::pods`], [`super::endpoint_objects`])
//! are made of these: persistent maps of shared lists, so that a patch moves only the
//! objects that changed. A short list (most keys: a Deployment's few Pods, a Service's
//! one slice) is copied when one of its objects changed; a long one (a namespace, a
//! label every Pod has) is itself a persistent map and copies only the path to the
//! object; the maps share every other entry with the previous build's.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use crate::model::object::{Object, ObjectKey};
use crate::model::objects::Pair;

/// Lists longer than this are persistent maps: copying one per change would cost its
/// length, and a map per short list would cost a node's fixed size.
const FEW: usize = 64;

/// Objects in key order.
#[derive(Debug, Clone)]
pub(super) enum List {
    Few(Arc<[Arc<Object>]>),
    Many(imbl::OrdSet<ByKey>),
}

/// An object ordered by its key. A persistent set of these copies a node (on a patch's
/// first write to it) by counting references; a map keyed by [`ObjectKey`] copied its
/// two strings for each of the node's entries. (The set's inner nodes keep copies of
/// some elements as separators, so an object replaced may stay alive while it is one:
/// at most one per node, the price of the cheaper copies.)
#[derive(Debug, Clone)]
pub(super) struct ByKey(Arc<Object>);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key.cmp(&other.0.key)
    }
}

/// Removal by key, as [`ObjectKey`]'s order is the set's.
impl std::borrow::Borrow<ObjectKey> for ByKey {
    fn borrow(&self) -> &ObjectKey {
        &self.0.key
    }
}

impl List {
    /// The list of `objects`, given in key order; None when empty.
    fn of(objects: Vec<Arc<Object>>) -> Option<List> {
        match objects.len() {
            0 => None,
            n if n > FEW => Some(List::Many(objects.into_iter().map(ByKey).collect())),
            _ => Some(List::Few(objects.into())),
        }
    }

    pub(super) fn iter(&self) -> Box<dyn Iterator<Item = &Arc<Object>> + '_> {
        match self {
            List::Few(l) => Box::new(l.iter()),
            List::Many(m) => Box::new(m.iter().map(|b| &b.0)),
        }
    }

    /// This list less the objects under `removed`, with `added`; None when empty.
    fn patched(
        this: Option<&List>,
        removed: &[&ObjectKey],
        mut added: Vec<&Arc<Object>>,
    ) -> Option<List> {
        match this {
            Some(List::Many(m)) => {
                let mut m = m.clone();
                for k in removed {
                    m.remove(*k);
                }
                for a in added {
                    m.insert(ByKey(a.clone()));
                }
                if m.len() > FEW {
                    Some(List::Many(m))
                } else {
                    List::of(m.iter().map(|b| b.0.clone()).collect())
                }
            }
            few => {
                let kept: &[Arc<Object>] = match few {
                    Some(List::Few(l)) => l,
                    _ => &[],
                };
                added.sort_by(|a, b| a.key.cmp(&b.key));
                let mut out: Vec<Arc<Object>> = Vec::with_capacity(kept.len() + added.len());
                let mut added = added.into_iter().peekable();
                for p in kept.iter().filter(|p| !removed.contains(&&p.key)) {
                    while let Some(a) = added.next_if(|a| a.key <= p.key) {
                        out.push(a.clone());
                    }
                    out.push(p.clone());
                }
                out.extend(added.cloned());
                List::of(out)
            }
        }
    }
}

/// Key → the objects filed under it, in key order. What an object is filed under is
/// the caller's `keys` function, which fills a buffer (it may repeat a key).
#[derive(Debug, Clone)]
pub(super) struct Lists<K: Ord + Clone>(imbl::OrdMap<K, List>);

impl<K: Ord + Clone> Default for Lists<K> {
    fn default() -> Self {
        Lists(imbl::OrdMap::new())
    }
}

/// The keys `keys` files `o` under, each once.
fn keys_of<K: Ord>(o: &Object, keys: &impl Fn(&Object, &mut Vec<K>), buf: &mut Vec<K>) {
    buf.clear();
    keys(o, buf);
    buf.sort();
    buf.dedup();
}

impl<K: Ord + Clone + Hash> Lists<K> {
    /// `objects` (given in key order) filed by `keys`.
    pub(super) fn of<'a>(
        objects: impl Iterator<Item = &'a Arc<Object>>,
        keys: impl Fn(&Object, &mut Vec<K>),
    ) -> Self {
        let mut filed: HashMap<K, Vec<Arc<Object>>> = HashMap::new();
        let mut buf = Vec::new();
        for o in objects {
            keys_of(o, &keys, &mut buf);
            for k in buf.drain(..) {
                filed.entry(k).or_default().push(o.clone());
            }
        }
        Lists(
            filed
                .into_iter()
                .filter_map(|(k, v)| Some((k, List::of(v)?)))
                .collect(),
        )
    }

    /// The list under `key`, if any.
    pub(super) fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&List>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.0.get(key)
    }

    /// These lists with `changes` (objects before and after) applied: what
    /// [`Lists::of`] makes of the objects after them. Each list a changed object was or
    /// is in loses its old version and gains its new one, once per patch.
    pub(super) fn patched(&self, changes: &[Pair], keys: impl Fn(&Object, &mut Vec<K>)) -> Self {
        type Moves<'a> = (Vec<&'a ObjectKey>, Vec<&'a Arc<Object>>);
        let mut moves: HashMap<K, Moves> = HashMap::new();
        let mut buf = Vec::new();
        for (old, new) in changes {
            for o in old.iter() {
                keys_of(o, &keys, &mut buf);
                for k in buf.drain(..) {
                    moves.entry(k).or_default().0.push(&o.key);
                }
            }
            for n in new.iter() {
                keys_of(n, &keys, &mut buf);
                for k in buf.drain(..) {
                    moves.entry(k).or_default().1.push(n);
                }
            }
        }
        let mut out = self.0.clone();
        for (key, (removed, added)) in moves {
            match List::patched(self.0.get(&key), &removed, added) {
                Some(list) => out.insert(key, list),
                None => out.remove(&key),
            };
        }
        Lists(out)
    }
}

/// Each key with its objects' keys and content hashes, in order (for tests).
#[cfg(test)]
pub(super) type Members<K> = Vec<(K, Vec<(ObjectKey, u64)>)>;

#[cfg(test)]
impl<K: Ord + Clone> Lists<K> {
    /// Every list's members by key and content (a patch must hold the objects a whole
    /// build would, in the same order).
    pub(super) fn members(&self) -> Members<K> {
        self.0
            .iter()
            .map(|(k, l)| {
                (
                    k.clone(),
                    l.iter().map(|o| (o.key.clone(), o.hash)).collect(),
                )
            })
            .collect()
    }
}
