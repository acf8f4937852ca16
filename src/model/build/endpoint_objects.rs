//! EndpointSlices and Endpoints by the Service they belong to and by the Pods and
//! addresses they name, kept from build to build.
//!
//! In Kubernetes every Service has at least one EndpointSlice, and a Pod's change is
//! followed by its Service's slice changing. The endpoint patch needs a touched
//! Service's endpoint objects, and the Services whose objects name a changed Pod or
//! address; finding either by walking the namespace's endpoint objects cost time in
//! proportion to the namespace (10,000 slices in a namespace of 10,000 Services), on
//! every build under churn. This index finds them by lookup, and is patched with the
//! endpoint objects that changed ([`Lists`]).

use std::sync::Arc;

use super::label_key;
use super::lists::Lists;
use crate::model::object::{Kind, Object, Spec};
use crate::model::objects::Pair;

/// (namespace, Service) → its endpoint objects, and (namespace, Pod name or address) →
/// the endpoint objects naming it; each by a hash of its parts (a collision only adds
/// candidates, which are checked).
#[derive(Debug, Clone, Default)]
pub(in crate::model) struct EndpointIndex {
    by_service: Lists<u64>,
    by_name: Lists<u64>,
}

fn service_key(namespace: &str, service: &str) -> u64 {
    label_key(namespace, "", service)
}

fn pod_key(namespace: &str, pod: &str) -> u64 {
    label_key(namespace, "pod", pod)
}

fn address_key(namespace: &str, address: &str) -> u64 {
    label_key(namespace, "address", address)
}

fn service(o: &Object, keys: &mut Vec<u64>) {
    if let Spec::Endpoints(e) = &o.spec {
        keys.push(service_key(&o.key.namespace, &e.service));
    }
}

fn names(o: &Object, keys: &mut Vec<u64>) {
    let Spec::Endpoints(e) = &o.spec else {
        return;
    };
    let ns = &o.key.namespace;
    for a in e.subsets.iter().flat_map(|(addrs, _)| addrs) {
        keys.push(address_key(ns, &a.ip));
        if let Some(pod) = &a.pod {
            keys.push(pod_key(ns, pod));
        }
    }
}

impl EndpointIndex {
    /// The index of `objects` (Endpoints, then EndpointSlices, each in key order: the
    /// order of their keys, whose kind comes first).
    pub(in crate::model) fn of<'a>(objects: impl Iterator<Item = &'a Arc<Object>>) -> Self {
        let objects: Vec<&Arc<Object>> = objects.collect();
        EndpointIndex {
            by_service: Lists::of(objects.iter().copied(), service),
            by_name: Lists::of(objects.into_iter(), names),
        }
    }

    /// This index with `changes` (endpoint objects before and after) applied: what
    /// [`EndpointIndex::of`] makes of the objects after them.
    pub(in crate::model) fn patched(&self, changes: &[Pair]) -> Self {
        EndpointIndex {
            by_service: self.by_service.patched(changes, service),
            by_name: self.by_name.patched(changes, names),
        }
    }

    /// The endpoint objects of Service `name` in `namespace`: its EndpointSlices, then
    /// its Endpoints, each in name order (the order a Service's instances follow).
    pub(in crate::model) fn of_service(&self, namespace: &str, name: &str) -> Vec<&Arc<Object>> {
        let list = self.by_service.get(&service_key(namespace, name));
        let of_kind = |kind: Kind| {
            list.into_iter().flat_map(|l| l.iter()).filter(move |o| {
                o.key.kind == kind
                    && o.key.namespace == namespace
                    && matches!(&o.spec, Spec::Endpoints(e) if e.service == name)
            })
        };
        // (Key order puts Endpoints before EndpointSlices.)
        of_kind(Kind::EndpointSlice)
            .chain(of_kind(Kind::Endpoints))
            .collect()
    }

    /// The Services in `namespace` with an endpoint object that may name one of `pods`
    /// or `addresses` (a candidate: the caller checks).
    pub(in crate::model) fn naming<'a, 'p>(
        &'a self,
        namespace: &str,
        pods: impl Iterator<Item = &'p str>,
        addresses: impl Iterator<Item = &'p str>,
        out: &mut std::collections::BTreeSet<&'a str>,
    ) {
        let keys = pods
            .map(|p| pod_key(namespace, p))
            .chain(addresses.map(|a| address_key(namespace, a)));
        for key in keys {
            for o in self.by_name.get(&key).into_iter().flat_map(|l| l.iter()) {
                if let Spec::Endpoints(e) = &o.spec
                    && o.key.namespace == namespace
                {
                    out.insert(e.service.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
use super::lists::Members;

#[cfg(test)]
impl EndpointIndex {
    /// Every list's members (see [`Lists::members`]).
    pub(in crate::model) fn members(&self) -> (Members<u64>, Members<u64>) {
        (self.by_service.members(), self.by_name.members())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::object::ObjectKey;
    use crate::model::objects::ObjectMap;
    use crate::model::testing::{config_set, endpoint_slice as slice};

    fn endpoints(service: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {service}, namespace: default}}\nsubsets: [{{addresses: [{{ip: {ip}}}], ports: [{{name: http, port: 8080}}]}}]\n---\n"
        )
    }

    fn index(objects: &ObjectMap) -> EndpointIndex {
        EndpointIndex::of(
            objects
                .of_kind(Kind::Endpoints)
                .chain(objects.of_kind(Kind::EndpointSlice)),
        )
    }

    fn names(objs: Vec<&Arc<Object>>) -> Vec<String> {
        objs.iter()
            .map(|o| format!("{:?}/{}", o.key.kind, o.key.name))
            .collect()
    }

    fn naming(i: &EndpointIndex, pods: &[&str], addresses: &[&str]) -> Vec<String> {
        let mut out = BTreeSet::new();
        i.naming(
            "default",
            pods.iter().copied(),
            addresses.iter().copied(),
            &mut out,
        );
        out.into_iter().map(String::from).collect()
    }

    /// A Service's objects come slices first (the order its instances follow, the
    /// first object naming an address winning), each kind in name order; the
    /// patched index is the one a whole build makes.
    #[test]
    fn objects_by_service_and_by_what_they_name() {
        let pod = |name: &str, ip: &str| {
            format!("{{addresses: [{ip}], targetRef: {{kind: Pod, name: {name}}}}}")
        };
        let mut text = endpoints("b", "10.0.0.9");
        text += &slice("b-z", "b", &pod("b-1", "10.0.0.1"));
        text += &slice("b-a", "b", &pod("b-2", "10.0.0.2"));
        text += &slice("c-a", "c", &pod("c-1", "10.0.0.3"));
        for i in 0..70 {
            // Seventy slices naming one address: a long list under one key.
            text += &slice(&format!("d-{i:02}"), "d", "{addresses: [10.0.0.4]}");
        }
        let base = config_set(&text);
        let before = index(&base.objects);
        assert_eq!(
            names(before.of_service("default", "b")),
            ["EndpointSlice/b-a", "EndpointSlice/b-z", "Endpoints/b"]
        );
        assert!(before.of_service("other", "b").is_empty());
        assert_eq!(naming(&before, &["b-1", "c-1"], &[]), ["b", "c"]);
        assert_eq!(naming(&before, &[], &["10.0.0.9", "10.0.0.4"]), ["b", "d"]);
        assert!(naming(&before, &["10.0.0.1"], &["b-1"]).is_empty());

        // c's slice moves to name b-1; b loses a slice; d loses most of its slices.
        let mut next = base.objects.clone();
        for (k, o) in config_set(&slice("c-a", "c", &pod("b-1", "10.0.0.5")))
            .objects
            .iter()
        {
            next.insert(k.clone(), o.clone());
        }
        let gone = |kind: Kind, name: String| ObjectKey {
            kind,
            namespace: "default".into(),
            name,
        };
        assert!(
            next.remove(&gone(Kind::EndpointSlice, "b-z".into()))
                .is_some()
        );
        for i in 3..70 {
            assert!(
                next.remove(&gone(Kind::EndpointSlice, format!("d-{i:02}")))
                    .is_some()
            );
        }
        let mut changes = next.changed(&base.objects, Kind::EndpointSlice);
        changes.extend(next.changed(&base.objects, Kind::Endpoints));
        let patched = before.patched(&changes);
        assert_eq!(patched.members(), index(&next).members());
        assert_eq!(
            names(patched.of_service("default", "b")),
            ["EndpointSlice/b-a", "Endpoints/b"]
        );
        assert_eq!(naming(&patched, &["b-1"], &[]), ["c"]);
        assert_eq!(naming(&patched, &[], &["10.0.0.4", "10.0.0.3"]), ["d"]);
        assert_eq!(patched.of_service("default", "d").len(), 3);
    }
}
