//! The Pods a selector can pick, by label and by namespace, kept from build to build.
//!
//! Services and ServiceEntries select their Pods through this index instead of
//! scanning every Pod. It lives in the snapshot as persistent maps of shared lists, so
//! that an endpoint patch ([`super::endpoints`]) moves only the Pods that changed: a
//! short list (most labels: a Deployment's few Pods) is copied when one of its Pods
//! changed; a long one (a namespace, a label every Pod has) is itself a persistent map
//! and copies only the path to the Pod; the maps share every other entry with the
//! previous build's.

use std::collections::HashMap;
use std::sync::Arc;

use super::label_key;
use crate::model::istio::Labels;
use crate::model::object::{Object, ObjectKey};
use crate::model::objects::Pair;
use crate::model::service::labels_match;

/// Lists longer than this are persistent maps: copying one per change would cost its
/// length, and a map per short list would cost a node's fixed size.
const FEW: usize = 64;

/// Pods in key order.
#[derive(Debug, Clone)]
enum List {
    Few(Arc<[Arc<Object>]>),
    Many(imbl::OrdMap<ObjectKey, Arc<Object>>),
}

impl List {
    /// The list of `pods`, given in key order; None when empty.
    fn of(pods: Vec<Arc<Object>>) -> Option<List> {
        match pods.len() {
            0 => None,
            n if n > FEW => Some(List::Many(
                pods.into_iter().map(|p| (p.key.clone(), p)).collect(),
            )),
            _ => Some(List::Few(pods.into())),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &Arc<Object>> + '_> {
        match self {
            List::Few(l) => Box::new(l.iter()),
            List::Many(m) => Box::new(m.values()),
        }
    }

    /// This list less the Pods under `removed`, with `added`; None when empty.
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
                    m.insert(a.key.clone(), a.clone());
                }
                if m.len() > FEW {
                    Some(List::Many(m))
                } else {
                    List::of(m.values().cloned().collect())
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
                .filter_map(|(k, v)| Some((k, List::of(v)?)))
                .collect(),
            by_namespace: by_ns
                .into_iter()
                .filter_map(|(ns, v)| Some((ns.to_string(), List::of(v)?)))
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
    /// makes of the Pods after them. Each list a changed Pod was or is in loses the
    /// Pod's old version and gains its new one, once per patch.
    pub(in crate::model) fn patched(&self, changes: &[Pair]) -> PodIndex {
        type Moves<'a> = (Vec<&'a ObjectKey>, Vec<&'a Arc<Object>>);
        let mut out = self.clone();
        let mut labels: HashMap<u64, Moves> = HashMap::new();
        let mut namespaces: HashMap<&str, Moves> = HashMap::new();
        for (old, new) in changes {
            for o in old.iter() {
                for k in label_keys(o) {
                    labels.entry(k).or_default().0.push(&o.key);
                }
                namespaces
                    .entry(o.key.namespace.as_str())
                    .or_default()
                    .0
                    .push(&o.key);
            }
            for n in new.iter() {
                for k in label_keys(n) {
                    labels.entry(k).or_default().1.push(n);
                }
                namespaces
                    .entry(n.key.namespace.as_str())
                    .or_default()
                    .1
                    .push(n);
            }
        }
        for (key, (removed, added)) in labels {
            match List::patched(self.by_label.get(&key), &removed, added) {
                Some(list) => out.by_label.insert(key, list),
                None => out.by_label.remove(&key),
            };
        }
        for (ns, (removed, added)) in namespaces {
            match List::patched(self.by_namespace.get(ns), &removed, added) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::object::Kind;
    use crate::model::objects::ObjectMap;
    use crate::model::testing::config_set;

    fn pod(ns: &str, name: &str, app: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}, all: 'yes'}}}}\nspec: {{containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: 10.0.0.1}}\n---\n"
        )
    }

    fn index(objects: &ObjectMap) -> PodIndex {
        PodIndex::of(objects.of_kind(Kind::Pod))
    }

    /// Lists long and short, growing past the bound and shrinking under it, appearing
    /// and going: the patched index is the one a whole build makes.
    #[test]
    fn a_patched_index_is_a_fresh_one() {
        let mut text = String::new();
        for i in 0..150 {
            let app = if i % 2 == 0 { "even" } else { "odd" };
            text += &pod("big", &format!("p{i:03}"), app);
        }
        for i in 0..5 {
            text += &pod("small", &format!("q{i}"), "few");
        }
        text += &pod("small", "lone", "lone");
        let base = config_set(&text);
        let mut next = base.objects.clone();
        let mut edits = String::new();
        // "odd" (75) shrinks to 5: 70 of its pods turn "even" (75 → 145).
        for i in (1..141).step_by(2) {
            edits += &pod("big", &format!("p{i:03}"), "even");
        }
        // "few" (5) grows to 75, past the bound.
        for i in 5..75 {
            edits += &pod("small", &format!("q{i}"), "few");
        }
        // A new label's list appears.
        edits += &pod("small", "new", "fresh");
        for (k, o) in config_set(&edits).objects.iter() {
            next.insert(k.clone(), o.clone());
        }
        // A list goes with its only pod; the big namespace loses one.
        for gone in [("small", "lone"), ("big", "p148")] {
            let key = ObjectKey {
                kind: Kind::Pod,
                namespace: gone.0.into(),
                name: gone.1.into(),
            };
            assert!(next.remove(&key).is_some(), "{gone:?}");
        }
        let changes = next.changed(&base.objects, Kind::Pod);
        assert_eq!(changes.len(), 70 + 70 + 1 + 2);
        let before = index(&base.objects);
        let patched = before.patched(&changes);
        assert_eq!(patched.members(), index(&next).members());
        // Both kinds of list were patched: the long ones stay maps, the short ones
        // slices, and a list crossing the bound changes its kind.
        let kind =
            |i: &PodIndex, ns: &str, app: &str| match i.by_label.get(&label_key(ns, "app", app)) {
                Some(List::Few(_)) => "few",
                Some(List::Many(_)) => "many",
                None => "none",
            };
        assert_eq!(kind(&before, "big", "odd"), "many");
        assert_eq!(kind(&patched, "big", "odd"), "few");
        assert_eq!(kind(&before, "small", "few"), "few");
        assert_eq!(kind(&patched, "small", "few"), "many");
        assert_eq!(kind(&patched, "big", "even"), "many");
        assert_eq!(kind(&patched, "small", "lone"), "none");
        assert_eq!(kind(&patched, "small", "fresh"), "few");
        // Selecting through it: the pods of a label, in key order.
        let sel: Labels = [("app".to_string(), "odd".to_string())]
            .into_iter()
            .collect();
        let odd: Vec<String> = patched
            .selected("big", &sel)
            .iter()
            .map(|p| p.key.name.clone())
            .collect();
        assert_eq!(odd, ["p141", "p143", "p145", "p147", "p149"]);
    }
}
