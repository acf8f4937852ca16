//! The Pods a selector can pick, by label and by namespace, kept from build to build.
//!
//! Services and ServiceEntries select their Pods through this index instead of
//! scanning every Pod. It lives in the snapshot as [`Lists`], so that an endpoint patch
//! ([`super::endpoints`]) moves only the Pods that changed.

use std::sync::Arc;

use super::label_key;
use super::lists::Lists;
use crate::model::istio::Labels;
use crate::model::object::Object;
use crate::model::objects::Pair;
use crate::model::service::labels_match;

/// (namespace, label, value) → Pods with that label, and namespace → Pods; each by a
/// hash of its parts (no strings copied per Pod; a collision only adds candidates,
/// which are checked).
#[derive(Debug, Clone, Default)]
pub(in crate::model) struct PodIndex {
    by_label: Lists<u64>,
    by_namespace: Lists<u64>,
}

/// The keys of the lists a Pod is in.
fn label_keys(pod: &Object, keys: &mut Vec<u64>) {
    keys.extend(
        pod.labels
            .iter()
            .map(|(k, v)| label_key(&pod.key.namespace, k, v)),
    );
}

/// (A label's key is never empty, so this is no label's key.)
fn namespace_key(namespace: &str) -> u64 {
    label_key(namespace, "", "")
}

fn namespace(pod: &Object, keys: &mut Vec<u64>) {
    keys.push(namespace_key(&pod.key.namespace));
}

impl PodIndex {
    /// The index of `pods`, given in key order.
    pub(in crate::model) fn of<'a>(pods: impl Iterator<Item = &'a Arc<Object>>) -> PodIndex {
        let pods: Vec<&Arc<Object>> = pods.collect();
        PodIndex {
            by_label: Lists::of(pods.iter().copied(), label_keys),
            by_namespace: Lists::of(pods.into_iter(), namespace),
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
            None => self.by_namespace.get(&namespace_key(namespace)),
        };
        candidates
            .into_iter()
            .flat_map(|l| l.iter())
            .filter(|p| p.key.namespace == namespace && labels_match(selector, &p.labels))
            .cloned()
            .collect()
    }

    /// This index with `changes` (Pods before and after) applied: what [`PodIndex::of`]
    /// makes of the Pods after them.
    pub(in crate::model) fn patched(&self, changes: &[Pair]) -> PodIndex {
        PodIndex {
            by_label: self.by_label.patched(changes, label_keys),
            by_namespace: self.by_namespace.patched(changes, namespace),
        }
    }
}

#[cfg(test)]
use super::lists::Members;

#[cfg(test)]
impl PodIndex {
    /// Every list's members by key and content (the patch must hold the objects a whole
    /// build would, in the same order).
    pub(in crate::model) fn members(&self) -> (Members<u64>, Members<u64>) {
        (self.by_label.members(), self.by_namespace.members())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::build::lists::List;
    use crate::model::object::Kind;
    use crate::model::object::ObjectKey;
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
