//! From the watched objects to the [`ConfigSet`] the model builds from: the objects in
//! scope (mesh config `discoverySelectors`, `--revision`) and every parse diagnostic.
//!
//! The set is kept between bursts and patched with the entries a burst touched, so a
//! pod event costs the objects it changed and one copy of the Pods' map (its keys and
//! pointers; the model still holds the last set), not a pass over every object of
//! every kind. A relist touches what it lists and what it no longer lists. A change
//! that moves the scope itself (new discoverySelectors, or a Namespace while there are
//! selectors) assembles the set whole again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tracing::warn;

use super::{Entry, KubeOptions, WatchedKind};
use crate::kube::writer::NamespaceFilter;
use crate::model::diagnostic::Diagnostic;
use crate::model::object::{Object, Spec};
use crate::model::selector::LabelSelector;
use crate::model::snapshot::ConfigSet;

/// An entry's place: the watched kind's index and (namespace, name).
pub(super) type Place = (usize, (String, String));

/// The set handed on last, and what changed since.
#[derive(Default)]
pub(super) struct Assembler {
    last: Option<(ConfigSet, NamespaceFilter)>,
    /// Each entry's diagnostics (entries with some), in the order a whole assembly
    /// lists them.
    diagnostics: BTreeMap<Place, Vec<Diagnostic>>,
    /// Entries written or deleted since the last set.
    touched: BTreeSet<Place>,
    /// Objects of the entries those writes replaced: they leave the set.
    replaced: Vec<Arc<Object>>,
}

impl Assembler {
    /// Records a write or delete of the entry at `place`; `old` is the entry it replaced.
    pub fn touched(&mut self, place: Place, old: Option<&Entry>) {
        if let Some(old) = old {
            self.replaced.extend(old.objects.iter().cloned());
        }
        self.touched.insert(place);
    }

    /// The set in scope now, and the namespace filter it was made under.
    pub fn assemble(
        &mut self,
        kinds: &[WatchedKind],
        state: &[BTreeMap<(String, String), Entry>],
        opts: &KubeOptions,
    ) -> (ConfigSet, NamespaceFilter) {
        let nf = namespace_filter(kinds, state, opts);
        let scope = Scope::new(kinds, state, &nf, opts);
        // Namespace labels decide the scope only under selectors.
        let namespaces_touched = !nf.selects_all()
            && self
                .touched
                .iter()
                .any(|(i, _)| kinds[*i].kind == "Namespace");
        let set = match self.last.take() {
            Some((mut set, last_nf)) if last_nf == nf && !namespaces_touched => {
                for old in self.replaced.drain(..) {
                    // Only the replaced object itself: another entry may hold the key.
                    if set
                        .objects
                        .get(&old.key)
                        .is_some_and(|o| Arc::ptr_eq(o, &old))
                    {
                        set.objects.remove(&old.key);
                    }
                }
                for place in std::mem::take(&mut self.touched) {
                    let entry = state[place.0].get(&place.1);
                    for o in entry.iter().flat_map(|e| &e.objects) {
                        if scope.admits(o) {
                            set.objects.insert(o.key.clone(), o.clone());
                        }
                    }
                    match entry.filter(|e| !e.diagnostics.is_empty()) {
                        Some(e) => self.diagnostics.insert(place, e.diagnostics.clone()),
                        None => self.diagnostics.remove(&place),
                    };
                }
                set.diagnostics = self.diagnostics.values().flatten().cloned().collect();
                set
            }
            _ => self.whole_set(state, &scope),
        };
        self.touched.clear();
        self.replaced.clear();
        self.last = Some((set.clone(), nf.clone()));
        (set, nf)
    }

    fn whole_set(
        &mut self,
        state: &[BTreeMap<(String, String), Entry>],
        scope: &Scope,
    ) -> ConfigSet {
        self.diagnostics.clear();
        let mut set = ConfigSet::default();
        for (i, kind) in state.iter().enumerate() {
            for (key, entry) in kind {
                if !entry.diagnostics.is_empty() {
                    self.diagnostics
                        .insert((i, key.clone()), entry.diagnostics.clone());
                }
                for o in &entry.objects {
                    if scope.admits(o) {
                        set.objects.insert(o.key.clone(), o.clone());
                    }
                }
            }
        }
        set.diagnostics = self.diagnostics.values().flatten().cloned().collect();
        set
    }
}

/// What decides whether an object is in scope.
struct Scope<'a> {
    nf: &'a NamespaceFilter,
    revision: &'a str,
    namespace_labels: BTreeMap<&'a str, &'a BTreeMap<String, String>>,
}

impl<'a> Scope<'a> {
    fn new(
        kinds: &'a [WatchedKind],
        state: &'a [BTreeMap<(String, String), Entry>],
        nf: &'a NamespaceFilter,
        opts: &'a KubeOptions,
    ) -> Scope<'a> {
        // Read only under discoverySelectors: without them every namespace is in
        // scope, and a burst of pod events need not walk every Namespace.
        let namespace_labels = if nf.selects_all() {
            BTreeMap::new()
        } else {
            of_kind(kinds, state, "Namespace")
                .flat_map(|e| e.values())
                .flat_map(|e| e.objects.iter())
                .map(|o| (o.key.name.as_str(), &o.labels))
                .collect()
        };
        Scope {
            nf,
            revision: &opts.revision,
            namespace_labels,
        }
    }

    fn admits(&self, o: &Object) -> bool {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        if o.key.kind.namespaced() && !self.nf.selects_all() {
            let labels = self
                .namespace_labels
                .get(o.key.namespace.as_str())
                .copied()
                .unwrap_or(&EMPTY);
            if !self.nf.selects(&o.key.namespace, labels) {
                return false;
            }
        }
        !(o.key.kind.is_istio()
            && !self.revision.is_empty()
            && o.labels
                .get("istio.io/rev")
                .is_some_and(|r| r != self.revision))
    }
}

/// The state of the watched kinds named `kind` (one, or none).
fn of_kind<'a>(
    kinds: &'a [WatchedKind],
    state: &'a [BTreeMap<(String, String), Entry>],
    kind: &'a str,
) -> impl Iterator<Item = &'a BTreeMap<(String, String), Entry>> {
    kinds
        .iter()
        .zip(state)
        .filter(move |(k, _)| k.kind == kind)
        .map(|(_, s)| s)
}

/// Mesh config `discoverySelectors` from the `istio` ConfigMap (looked up by name, not
/// searched for among every object).
fn namespace_filter(
    kinds: &[WatchedKind],
    state: &[BTreeMap<(String, String), Entry>],
    opts: &KubeOptions,
) -> NamespaceFilter {
    let mut nf = NamespaceFilter {
        istio_namespace: opts.istio_namespace.clone(),
        selectors: Vec::new(),
    };
    let mesh_name = if opts.revision.is_empty() || opts.revision == "default" {
        "istio".to_string()
    } else {
        format!("istio-{}", opts.revision)
    };
    let key = (opts.istio_namespace.clone(), mesh_name);
    let mesh = of_kind(kinds, state, "ConfigMap")
        .filter_map(|s| s.get(&key))
        .flat_map(|e| e.objects.iter())
        .next();
    if let Some(Spec::ConfigMap(data)) = mesh.map(|o| &o.spec)
        && let Some(text) = data.get("mesh")
        && let Some(Ok(doc)) = crate::sources::yaml::parse_documents(text)
            .into_iter()
            .next()
        && let Some(sel) = doc.value.get("discoverySelectors")
    {
        match serde_json::from_value::<Vec<LabelSelector>>(sel.clone()) {
            Ok(s) => nf.selectors = s,
            Err(e) => warn!(error = %e, "mesh config discoverySelectors ignored"),
        }
    }
    nf
}

#[cfg(test)]
mod tests {
    use super::super::{Msg, apply, watched_kinds};
    use super::*;
    use crate::model::object::Kind;
    use kube::api::DynamicObject;
    use serde_json::json;

    fn object(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).expect("a Kubernetes object")
    }

    fn namespace(name: &str, mesh: bool) -> DynamicObject {
        let labels = if mesh {
            json!({"mesh": "on"})
        } else {
            json!({})
        };
        object(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels, "resourceVersion": "1"}}))
    }

    fn pod(ns: &str, name: &str, ip: &str) -> DynamicObject {
        object(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name},
                         "resourceVersion": ip},
            "spec": {"containers": [{"name": "app", "image": "x"}]},
            "status": {"podIP": ip}}))
    }

    fn virtual_service(ns: &str, name: &str, weight: serde_json::Value) -> DynamicObject {
        object(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
            "spec": {"hosts": [name], "http": [{"route": [
                {"destination": {"host": name}, "weight": weight}]}]}}),
        )
    }

    /// What a set holds, comparable: each key with its object's address, and the
    /// diagnostics as text.
    fn contents(set: &ConfigSet) -> (Vec<(String, usize)>, Vec<String>) {
        (
            set.objects
                .iter()
                .map(|(k, o)| (k.to_string(), Arc::as_ptr(o) as usize))
                .collect(),
            set.diagnostics.iter().map(ToString::to_string).collect(),
        )
    }

    struct Cluster {
        kinds: Vec<WatchedKind>,
        state: Vec<BTreeMap<(String, String), Entry>>,
        synced: Vec<bool>,
        assembler: Assembler,
        opts: KubeOptions,
    }

    impl Cluster {
        fn index(&self, kind: &str) -> usize {
            self.kinds
                .iter()
                .position(|k| k.kind == kind)
                .expect("a watched kind")
        }

        fn send(&mut self, m: Msg) {
            apply(
                &self.kinds,
                &mut self.state,
                &mut self.synced,
                &mut self.assembler,
                m,
            );
        }

        fn apply(&mut self, kind: &str, o: DynamicObject) {
            let i = self.index(kind);
            self.send(Msg::Apply(i, o));
        }

        /// The patched set, checked against a whole assembly of the same state.
        fn assemble(&mut self) -> ConfigSet {
            let (set, _) = self
                .assembler
                .assemble(&self.kinds, &self.state, &self.opts);
            let (whole, _) = Assembler::default().assemble(&self.kinds, &self.state, &self.opts);
            assert_eq!(contents(&set), contents(&whole));
            set
        }
    }

    fn cluster(revision: &str) -> Cluster {
        let kinds = watched_kinds("istio-system");
        let n = kinds.len();
        Cluster {
            kinds,
            state: vec![BTreeMap::new(); n],
            synced: vec![false; n],
            assembler: Assembler::default(),
            opts: KubeOptions {
                istio_namespace: "istio-system".into(),
                revision: revision.into(),
                quiet: super::super::QUIET,
            },
        }
    }

    /// The mesh config selecting namespaces labelled `mesh: <value>`.
    fn mesh_config(value: &str) -> DynamicObject {
        object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system", "resourceVersion": value},
            "data": {"mesh": format!("discoverySelectors:\n- matchLabels: {{mesh: \"{value}\"}}\n")}}))
    }

    #[test]
    fn patched_sets_equal_whole_assemblies() {
        let mut c = cluster("");
        let mesh = mesh_config("on");
        let (ns, pods, vs, cm) = (
            c.index("Namespace"),
            c.index("Pod"),
            c.index("VirtualService"),
            c.index("ConfigMap"),
        );
        c.send(Msg::Replace(
            ns,
            vec![namespace("a", true), namespace("b", false)],
        ));
        c.send(Msg::Replace(
            pods,
            vec![pod("a", "p1", "10.0.0.1"), pod("b", "p2", "10.0.0.2")],
        ));
        c.send(Msg::Replace(
            vs,
            vec![virtual_service("a", "r", json!(100))],
        ));
        c.send(Msg::Replace(cm, vec![mesh]));
        let first = c.assemble();
        assert_eq!(
            first.objects.of_kind(Kind::Pod).count(),
            1,
            "b is out of scope"
        );

        // Pod events patch the set: only the Pods' map is new.
        c.apply("Pod", pod("a", "p1", "10.0.0.9"));
        c.apply("Pod", pod("a", "p3", "10.0.0.3"));
        c.apply("Pod", pod("b", "p4", "10.0.0.4"));
        let second = c.assemble();
        assert_eq!(
            second
                .objects
                .unshared_kinds(&first.objects)
                .collect::<Vec<_>>(),
            [Kind::Pod]
        );
        assert_eq!(second.objects.of_kind(Kind::Pod).count(), 2);

        // A refused edit keeps the last good version and says so; a delete drops it.
        c.apply("VirtualService", virtual_service("a", "r", json!("heavy")));
        let third = c.assemble();
        assert!(!third.diagnostics.is_empty());
        assert_eq!(third.objects.of_kind(Kind::VirtualService).count(), 1);
        let i = c.index("Pod");
        c.send(Msg::Delete(i, pod("a", "p1", "10.0.0.9")));
        let i = c.index("VirtualService");
        c.send(Msg::Delete(i, virtual_service("a", "r", json!("heavy"))));
        let fourth = c.assemble();
        assert!(fourth.diagnostics.is_empty());
        assert_eq!(fourth.objects.of_kind(Kind::VirtualService).count(), 0);
        assert_eq!(fourth.objects.of_kind(Kind::Pod).count(), 1);

        // A Namespace joining the mesh brings its objects in (a whole assembly).
        c.apply("Namespace", namespace("b", true));
        let fifth = c.assemble();
        assert_eq!(fifth.objects.of_kind(Kind::Pod).count(), 3);

        // A relist of Pods: one changed, one gone, one new, one as it was.
        c.send(Msg::Replace(
            pods,
            vec![
                pod("a", "p3", "10.0.0.33"),
                pod("b", "p4", "10.0.0.4"),
                pod("a", "p5", "10.0.0.5"),
            ],
        ));
        let sixth = c.assemble();
        let names: Vec<&str> = sixth
            .objects
            .of_kind(Kind::Pod)
            .map(|o| o.key.name.as_str())
            .collect();
        assert_eq!(names, ["p3", "p5", "p4"]);

        // New selectors that match no namespace: no Pod is in scope.
        c.apply("ConfigMap", mesh_config("off"));
        let seventh = c.assemble();
        assert_eq!(seventh.objects.of_kind(Kind::Pod).count(), 0);
        // A Namespace's labels under selectors (a whole assembly).
        c.apply("Namespace", namespace("b", false));
        let eighth = c.assemble();
        assert_eq!(eighth.objects.of_kind(Kind::Pod).count(), 0);

        // A kind found absent (its CRD deleted) empties.
        c.apply(
            "VirtualService",
            virtual_service("istio-system", "r", json!(100)),
        );
        assert_eq!(
            c.assemble().objects.of_kind(Kind::VirtualService).count(),
            1
        );
        c.send(Msg::Absent(vs));
        assert_eq!(
            c.assemble().objects.of_kind(Kind::VirtualService).count(),
            0
        );
    }

    #[test]
    fn patches_keep_to_the_revision() {
        let mut c = cluster("canary");
        let i = c.index("ConfigMap");
        c.send(Msg::Replace(i, vec![]));
        let rev = |name: &str, rev: &str| {
            let mut vs = virtual_service("a", name, json!(100));
            vs.metadata.labels = Some([("istio.io/rev".to_string(), rev.to_string())].into());
            vs
        };
        let i = c.index("VirtualService");
        c.send(Msg::Replace(i, vec![rev("mine", "canary")]));
        assert_eq!(
            c.assemble().objects.of_kind(Kind::VirtualService).count(),
            1
        );
        c.apply("VirtualService", rev("theirs", "stable"));
        c.apply("VirtualService", rev("mine", "stable"));
        assert_eq!(
            c.assemble().objects.of_kind(Kind::VirtualService).count(),
            0
        );
        c.apply("VirtualService", rev("theirs", "canary"));
        assert_eq!(
            c.assemble().objects.of_kind(Kind::VirtualService).count(),
            1
        );
    }
}
