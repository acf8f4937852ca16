//! The Pods a selector can pick, by label and by namespace, kept from build to build.
//!
//! Services and ServiceEntries select their Pods through this index instead of
//! scanning every Pod. It lives in the snapshot as persistent maps of shared sorted
//! lists, so that an endpoint patch ([`super::endpoints`]) moves only the Pods that
//! changed: a list is copied when one of its Pods changed, and the maps share every
//! other entry with the previous build's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::label_key;
use crate::model::istio::Labels;
use crate::model::object::{Object, ObjectKey};
use crate::model::objects::Pair;
use crate::model::service::labels_match;

/// Pods in key order.
type List = Arc<[Arc<Object>]>;

/// (namespace, label, value) → Pods with that label (by a hash of the three: no strings
/// copied per label; a collision only adds candidates, which are checked), and
/// namespace → Pods.
#[derive(Debug, Clone, Default)]
pub(in crate::model) struct PodIndex {
    by_label: imbl::OrdMap<u64, List>,
    by_namespace: imbl::OrdMap<String, List>,
}

/// The keys of the lists a Pod is in.
fn label_keys(pod: &Object) -> impl Iterator<Item = u64> + '_ {
    pod.labels
        .iter()
        .map(|(k, v)| label_key(&pod.key.namespace, k, v))
}

impl PodIndex {
    /// The index of `pods`, given in key order.
    pub(in crate::model) fn of<'a>(pods: impl Iterator<Item = &'a Arc<Object>>) -> PodIndex {
        let mut by_label: HashMap<u64, Vec<Arc<Object>>> = HashMap::new();
        let mut by_ns: HashMap<&str, Vec<Arc<Object>>> = HashMap::new();
        for pod in pods {
            by_ns
                .entry(pod.key.namespace.as_str())
                .or_default()
                .push(pod.clone());
            for key in label_keys(pod) {
                by_label.entry(key).or_default().push(pod.clone());
            }
        }
        PodIndex {
            by_label: by_label
                .into_iter()
                .map(|(k, v)| (k, List::from(v)))
                .collect(),
            by_namespace: by_ns
                .into_iter()
                .map(|(ns, v)| (ns.to_string(), List::from(v)))
                .collect(),
        }
    }

    /// Pods in `namespace` whose labels contain `selector`, in key order.
    pub(in crate::model) fn selected(
        &self,
        namespace: &str,
        selector: &Labels,
    ) -> Vec<Arc<Object>> {
        let candidates = match selector.iter().next() {
            Some((k, v)) => self.by_label.get(&label_key(namespace, k, v)),
            None => self.by_namespace.get(namespace),
        };
        candidates
            .into_iter()
            .flat_map(|l| l.iter())
            .filter(|p| p.key.namespace == namespace && labels_match(selector, &p.labels))
            .cloned()
            .collect()
    }

    /// This index with `changes` (Pods before and after) applied: what [`PodIndex::of`]
    /// makes of the Pods after them. Each list a changed Pod was or is in is made again
    /// once, from the kept Pods and the new versions, in key order.
    pub(in crate::model) fn patched(&self, changes: &[Pair]) -> PodIndex {
        let mut out = self.clone();
        // The changed Pods' keys (their old versions leave every list), and each list's
        // new members.
        let mut gone: HashSet<&ObjectKey> = HashSet::new();
        let mut labels: HashMap<u64, Vec<&Arc<Object>>> = HashMap::new();
        let mut namespaces: HashMap<&str, Vec<&Arc<Object>>> = HashMap::new();
        for (old, new) in changes {
            for o in old.iter() {
                gone.insert(&o.key);
                for k in label_keys(o) {
                    labels.entry(k).or_default();
                }
                namespaces.entry(o.key.namespace.as_str()).or_default();
            }
            for n in new.iter() {
                gone.insert(&n.key);
                for k in label_keys(n) {
                    labels.entry(k).or_default().push(n);
                }
                namespaces
                    .entry(n.key.namespace.as_str())
                    .or_default()
                    .push(n);
            }
        }
        for (key, added) in labels {
            let kept = self.by_label.get(&key).map_or(&[][..], |l| &l[..]);
            match merged(kept, &gone, added) {
                Some(list) => out.by_label.insert(key, list),
                None => out.by_label.remove(&key),
            };
        }
        for (ns, added) in namespaces {
            let kept = self.by_namespace.get(ns).map_or(&[][..], |l| &l[..]);
            match merged(kept, &gone, added) {
                Some(list) => out.by_namespace.insert(ns.to_string(), list),
                None => out.by_namespace.remove(ns),
            };
        }
        out
    }
}

#[cfg(test)]
impl PodIndex {
    /// Every list's members by key and content (the patch must hold the objects a whole
    /// build would, in the same order).
    #[allow(clippy::type_complexity)]
    pub(in crate::model) fn members(
        &self,
    ) -> (
        Vec<(u64, Vec<(ObjectKey, u64)>)>,
        Vec<(String, Vec<(ObjectKey, u64)>)>,
    ) {
        let list = |l: &List| -> Vec<(ObjectKey, u64)> {
            l.iter().map(|p| (p.key.clone(), p.hash)).collect()
        };
        (
            self.by_label.iter().map(|(k, l)| (*k, list(l))).collect(),
            self.by_namespace
                .iter()
                .map(|(k, l)| (k.clone(), list(l)))
                .collect(),
        )
    }
}

/// `kept` without the Pods of `gone`, with `added` merged in, in key order; None when
/// empty.
fn merged(
    kept: &[Arc<Object>],
    gone: &HashSet<&ObjectKey>,
    mut added: Vec<&Arc<Object>>,
) -> Option<List> {
    added.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out: Vec<Arc<Object>> = Vec::with_capacity(kept.len() + added.len());
    let mut added = added.into_iter().peekable();
    for p in kept.iter().filter(|p| !gone.contains(&p.key)) {
        while let Some(a) = added.next_if(|a| a.key <= p.key) {
            out.push(a.clone());
        }
        out.push(p.clone());
    }
    out.extend(added.cloned());
    (!out.is_empty()).then(|| out.into())
}
