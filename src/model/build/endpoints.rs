//! Endpoint changes applied to the previous build's services stage, host by host.
//!
//! Under pod churn the services themselves (Services, ServiceEntries, the mesh config)
//! stay as they were and only some hosts' endpoints move. Rebuilding the stage read
//! every Pod and re-selected every service's endpoints (25 ms a build at 1,000
//! services); this patch finds the hosts the changed Pods, WorkloadEntries and endpoint
//! objects can reach — by selector, by the endpoint objects naming them, by pod name or
//! address — and recomputes those alone with the same code a whole build runs. What
//! it produces equals a whole build of the same input (the unit tests hold it to that).
//! The maps it patches (workloads, endpoints, their hashes, the address indexes, the
//! Pod index) are persistent ([`imbl::OrdMap`]): the previous build's are shared and a
//! patch copies only the paths to the entries it changes, so the next snapshot's
//! `changes_since` reads only those paths too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::{Builder, ServiceIndexes, entry_workload, identity_hash, label_key};
use crate::model::istio::Labels;
use crate::model::object::{Kind, Object, ObjectKey, Spec};
use crate::model::objects::Pair;
use crate::model::service::{ServiceEndpoints, labels_match};
use crate::model::snapshot::{Snapshot, Workload, hash_of};

/// Seeded per process (names come from users' objects), and several times faster than
/// the default hasher on the short names looked up here for every endpoint object and
/// endpoint address of a touched namespace.
type Fast = foldhash::quality::RandomState;

#[cfg(test)]
thread_local! {
    /// The hosts the patches on this thread recomputed (the tests hold the reach to
    /// what each change can affect, not to every host).
    static RECOMPUTED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What changed workloads of one namespace look like, old and new versions both.
#[derive(Default)]
struct Touched<'a> {
    /// Pod labels by each of their (namespace, label, value) keys: a selector can match
    /// only labels holding its first pair.
    pods: HashMap<u64, Vec<&'a Labels>, Fast>,
    any_pod: bool,
    /// The same for WorkloadEntries (their workloads' labels).
    entries: HashMap<u64, Vec<&'a Labels>, Fast>,
    any_entry: bool,
    /// Names of changed Pods (endpoint objects reference pods by name) and the
    /// addresses of changed workloads (and by address when the name is not known).
    pod_names: HashSet<&'a str, Fast>,
    addresses: HashSet<&'a str, Fast>,
}

impl Touched<'_> {
    fn selects(
        by_key: &HashMap<u64, Vec<&Labels>, Fast>,
        any: bool,
        ns: &str,
        selector: &Labels,
    ) -> bool {
        match selector.iter().next() {
            None => any,
            // Nothing of the kind changed here: no key to hash (a namespace's every
            // service asks).
            Some(_) if by_key.is_empty() => false,
            Some((k, v)) => by_key
                .get(&label_key(ns, k, v))
                .is_some_and(|all| all.iter().any(|l| labels_match(selector, l))),
        }
    }
}

/// Services by the first pair of their selector (a selector can match only labels
/// holding it): the Services a changed workload's labels can reach, found without
/// walking the namespace's Services. Made with the services stage; an endpoint patch
/// runs only while the Services are as they were, so it reads the index of the build
/// that made the stage. A Service's selector is never empty here: `{}` is read as no
/// selector, as Kubernetes reads it (object.rs), so every selector has a first pair.
#[derive(Debug, Default)]
pub(in crate::model) struct ServiceSelectors {
    by_key: HashMap<u64, Vec<ObjectKey>, Fast>,
}

impl ServiceSelectors {
    pub(in crate::model) fn of<'a>(services: impl Iterator<Item = &'a Arc<Object>>) -> Self {
        let mut out = ServiceSelectors::default();
        for obj in services {
            let Spec::Service(spec) = &obj.spec else {
                continue;
            };
            let Some((k, v)) = spec.selector.as_ref().and_then(|s| s.iter().next()) else {
                continue;
            };
            out.by_key
                .entry(label_key(&obj.key.namespace, k, v))
                .or_default()
                .push(obj.key.clone());
        }
        out
    }

    /// Names of the Services in `ns` whose selector's first pair is among `keys` (a
    /// superset of those the labels holding the keys match).
    fn reachable<'a>(
        &'a self,
        ns: &str,
        keys: impl Iterator<Item = &'a u64>,
        out: &mut BTreeSet<&'a str>,
    ) {
        out.extend(
            keys.filter_map(|k| self.by_key.get(k))
                .flatten()
                .filter(|k| k.namespace == ns)
                .map(|k| k.name.as_str()),
        );
    }
}

impl Builder {
    /// Patches `prev`'s workloads, endpoints and their hashes and indexes with what
    /// changed since it, when only endpoints did: the caller has checked that the
    /// service definitions are the same, so the services are `prev`'s. Returns the
    /// stage's hashes and indexes; None, having changed nothing, when a Node's locality
    /// changed (every Pod on it moves; the stage is built whole).
    pub(in crate::model) fn patch_endpoints(&mut self, prev: &Snapshot) -> Option<ServiceIndexes> {
        let objects = self.objects.clone();
        let content = |p: &Pair| !matches!(p, (Some(o), Some(n)) if o.hash == n.hash);
        if objects
            .changed(&prev.objects, Kind::Node)
            .iter()
            .any(content)
        {
            return None;
        }
        let of = |kind: Kind| -> Vec<Pair> {
            let mut v = objects.changed(&prev.objects, kind);
            v.retain(content);
            v
        };
        // Every Pod replaced (not only changed in content): the index holds the `Arc`s a
        // whole build would.
        let replaced = objects.changed(&prev.objects, Kind::Pod);
        let pods: Vec<Pair> = replaced.iter().copied().filter(content).collect();
        let entries = of(Kind::WorkloadEntry);
        // Every endpoint object replaced, for the index (as the Pods above); those that
        // changed in content, for the Services they name.
        let mut replaced_groups = objects.changed(&prev.objects, Kind::Endpoints);
        replaced_groups.extend(objects.changed(&prev.objects, Kind::EndpointSlice));
        let endpoint_objects: Vec<Pair> = replaced_groups.iter().copied().filter(content).collect();

        // Workloads: each changed one made again, the address index moved with it.
        let mut workloads = prev.workloads.clone();
        let mut by_ip = prev.workloads_by_ip.clone();
        // Each changed workload's old and new versions.
        let mut changed: Vec<Arc<Workload>> = Vec::new();
        for (o, n) in pods.iter().chain(&entries) {
            let Some(key) = o.or(*n).map(|x| &x.key) else {
                continue;
            };
            let old = prev.workloads.get(key).cloned();
            let new = n.and_then(|n| match key.kind {
                Kind::Pod => self.pod_workload(n, Some(prev)),
                _ => entry_workload(n),
            });
            match &new {
                Some(w) => workloads.insert(key.clone(), w.clone()),
                None => workloads.remove(key),
            };
            for a in old.iter().flat_map(|w| &w.addresses) {
                edit(&mut by_ip, a, |keys| keys.retain(|k| k != key));
            }
            for a in new.iter().flat_map(|w| &w.addresses) {
                edit(&mut by_ip, a, |keys| {
                    let at = keys.partition_point(|k| k <= key);
                    keys.insert(at, key.clone());
                });
            }
            changed.extend(old.into_iter().chain(new));
        }
        self.workloads = workloads;
        self.workloads_by_ip = by_ip;

        // Namespace → what changed there.
        let mut touched: BTreeMap<&str, Touched> = BTreeMap::new();
        for w in &changed {
            let t = touched.entry(w.key.namespace.as_str()).or_default();
            let (by_key, any) = match w.key.kind {
                Kind::Pod => {
                    t.pod_names.insert(&w.key.name);
                    (&mut t.pods, &mut t.any_pod)
                }
                _ => (&mut t.entries, &mut t.any_entry),
            };
            *any = true;
            for (k, v) in w.labels.iter() {
                by_key
                    .entry(label_key(&w.key.namespace, k, v))
                    .or_default()
                    .push(&w.labels);
            }
            t.addresses.extend(w.addresses.iter().map(String::as_str));
        }
        // Namespace → Services whose endpoint objects changed.
        let mut named: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
        for o in endpoint_objects.iter().flat_map(|(o, n)| o.iter().chain(n)) {
            if let Spec::Endpoints(e) = &o.spec {
                named
                    .entry(o.key.namespace.as_str())
                    .or_default()
                    .insert(e.service.as_str());
            }
        }
        let namespaces: BTreeSet<String> = touched
            .keys()
            .chain(named.keys())
            .map(|ns| ns.to_string())
            .collect();
        self.pods = prev.pods.patched(&replaced);
        let groups_index = prev.endpoint_objects.patched(&replaced_groups);

        let mut endpoints = prev.endpoints.clone();
        let mut endpoint_hashes = prev.endpoint_hashes.clone();
        let mut identity_hashes = prev.identity_hashes.clone();
        let mut hosts_by_ip = prev.hosts_by_ip.clone();
        let no_touch = Touched::default();
        for ns in &namespaces {
            let t = touched.get(ns.as_str()).unwrap_or(&no_touch);
            let names = named.get(ns.as_str());
            let mut redo: Vec<(String, ServiceEndpoints)> = Vec::new();
            // The Services a change can reach, in name order: those its endpoint objects
            // name, those with an endpoint object naming a changed Pod or address, and
            // those whose selector can match a changed workload's labels. Each is then
            // held to the exact test below.
            let mut candidates: BTreeSet<&str> = BTreeSet::new();
            candidates.extend(names.into_iter().flatten().copied());
            groups_index.naming(
                ns,
                t.pod_names.iter().copied(),
                t.addresses.iter().copied(),
                &mut candidates,
            );
            let selectors = &prev.service_selectors;
            selectors.reachable(ns, t.pods.keys(), &mut candidates);
            selectors.reachable(ns, t.entries.keys(), &mut candidates);
            for name in candidates {
                let key = ObjectKey {
                    kind: Kind::Service,
                    namespace: ns.clone(),
                    name: name.to_string(),
                };
                let Some(obj) = objects.get(&key) else {
                    continue;
                };
                let Spec::Service(spec) = &obj.spec else {
                    continue;
                };
                if spec.service_type == "ExternalName" {
                    continue;
                }
                let groups = groups_index.of_service(ns, &obj.key.name);
                // A Service with endpoint objects is reached through them; one without,
                // through its selector.
                let reached = names.is_some_and(|n| n.contains(obj.key.name.as_str()))
                    || if groups.is_empty() {
                        spec.selector
                            .as_ref()
                            .is_some_and(|sel| Touched::selects(&t.pods, t.any_pod, ns, sel))
                    } else {
                        groups.iter().any(|g| refers_to(g, t))
                    }
                    || spec.selector.as_ref().is_some_and(|sel| {
                        !spec.headless && Touched::selects(&t.entries, t.any_entry, ns, sel)
                    });
                // The host is named (a string made, a lookup) only for a reached service:
                // most of a namespace's services are not.
                if !reached {
                    continue;
                }
                let host = format!("{}.{}.svc.{}", obj.key.name, obj.key.namespace, self.domain);
                let Some(svc) = prev.services.get(&host).filter(|s| s.source == obj.key) else {
                    continue;
                };
                let instances = self.kube_service_instances(obj, spec, &svc.ports, &groups);
                redo.push((host, ServiceEndpoints { instances }));
            }
            for obj in objects.of_kind_in(Kind::ServiceEntry, ns) {
                let Spec::ServiceEntry(se) = &obj.spec else {
                    continue;
                };
                let Some(sel) = &se.workload_selector else {
                    continue;
                };
                if !Touched::selects(&t.pods, t.any_pod, ns, &sel.labels)
                    && !Touched::selects(&t.entries, t.any_entry, ns, &sel.labels)
                {
                    continue;
                }
                for h in &se.hosts {
                    let Some(svc) = prev.services.get(h).filter(|s| s.source == obj.key) else {
                        continue;
                    };
                    let instances = self.entry_instances(obj, se, h, &svc.ports, svc.resolution);
                    redo.push((h.clone(), ServiceEndpoints { instances }));
                }
            }
            #[cfg(test)]
            RECOMPUTED.with(|r| r.borrow_mut().extend(redo.iter().map(|(h, _)| h.clone())));
            for (host, now) in redo {
                let before = prev.endpoints.get(&host);
                if before.is_some_and(|b| **b == now) {
                    continue;
                }
                for inst in before.iter().flat_map(|b| &b.instances) {
                    edit(&mut hosts_by_ip, &inst.address, |hosts| {
                        hosts.retain(|h| *h != host)
                    });
                }
                for inst in &now.instances {
                    edit(&mut hosts_by_ip, &inst.address, |hosts| {
                        if let Err(at) = hosts.binary_search(&host) {
                            hosts.insert(at, host.clone());
                        }
                    });
                }
                match identity_hash(&now) {
                    Some(h) => identity_hashes.insert(host.clone(), h),
                    None => identity_hashes.remove(&host),
                };
                endpoint_hashes.insert(host.clone(), hash_of(&now));
                endpoints.insert(host, Arc::new(now));
            }
        }
        self.services = prev.services.clone();
        self.service_selectors = prev.service_selectors.clone();
        self.endpoint_objects = groups_index;
        self.endpoints = endpoints;
        Some(ServiceIndexes {
            config_hashes: prev.config_hashes.clone(),
            identity_hashes,
            endpoint_hashes,
            workloads_by_ip: self.workloads_by_ip.clone(),
            hosts_by_ip,
        })
    }
}

/// Applies `f` to the list at `address` (none: empty), which goes when left empty. The
/// lists are shared slices: the map's nodes are copied on a patch's first write to them,
/// and a slice is copied by counting a reference where a vector copied its strings.
fn edit<T: Clone>(
    map: &mut imbl::OrdMap<String, Arc<[T]>>,
    address: &str,
    f: impl FnOnce(&mut Vec<T>),
) {
    let mut list: Vec<T> = map.get(address).map(|l| l.to_vec()).unwrap_or_default();
    f(&mut list);
    if list.is_empty() {
        map.remove(address);
    } else {
        map.insert(address.to_string(), list.into());
    }
}

/// Whether an endpoint object names a changed Pod, or an address a changed workload
/// had or has (an address without a known pod takes the workload found there).
fn refers_to(group: &Object, t: &Touched) -> bool {
    let Spec::Endpoints(e) = &group.spec else {
        return false;
    };
    e.subsets.iter().flat_map(|(addrs, _)| addrs).any(|a| {
        t.addresses.contains(a.ip.as_str())
            || a.pod.as_deref().is_some_and(|p| t.pod_names.contains(p))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::model::snapshot::{Snapshot, hash_of};
    use crate::model::stages::StagePrints;
    use crate::model::testing::config_set;

    /// Services, ServiceEntries: unchanged through every step, first in the text so
    /// that their lines stay put.
    const DEFINITIONS: &str = "
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {selector: {app: a}, ports: [{name: http, port: 80, targetPort: web}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec: {selector: {app: b}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: c, namespace: default}
spec: {clusterIP: None, selector: {app: c}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: vms, namespace: default}
spec: {selector: {app: vm}, ports: [{name: http, port: 80, targetPort: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: none, namespace: default}
spec: {selector: {}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: other}
spec: {selector: {app: a}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: api.example.com, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: default}
spec:
  hosts: [vm.example.com, vm2.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9090}]
  resolution: STATIC
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fixed, namespace: default}
spec:
  hosts: [fixed.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
";

    fn pod(ns: &str, name: &str, labels: &str, ip: &str, sa: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{serviceAccountName: {sa}, nodeName: n1, containers: [{{name: app, image: x, ports: [{{name: web, containerPort: 8080}}]}}]}}\nstatus: {{podIP: {ip}}}\n"
        )
    }

    fn node(zone: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: n1, labels: {{topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: {zone}}}}}\n"
        )
    }

    fn entry(address: &str, app: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: vm-1, namespace: default}}\nspec: {{address: {address}, labels: {{app: {app}}}, serviceAccount: vm, ports: {{http: 9090}}}}\n"
        )
    }

    /// Service b's slice.
    fn slice(endpoints: &str) -> String {
        crate::model::testing::endpoint_slice("b-x", "b", endpoints)
    }

    fn build(docs: &BTreeMap<&str, String>, prev: Option<&Snapshot>) -> Snapshot {
        let mut text = DEFINITIONS.to_string();
        for d in docs.values() {
            text.push_str("---\n");
            text.push_str(d);
        }
        Snapshot::build(&config_set(&text), prev, "cluster.local", "istio-system")
    }

    #[test]
    fn patched_endpoints_equal_whole_builds() {
        let b_slice = "{addresses: [127.0.0.21], targetRef: {kind: Pod, name: b-1}}, {addresses: [127.0.0.22]}";
        let mut docs: BTreeMap<&str, String> = BTreeMap::new();
        docs.insert("0 node", node("z1"));
        docs.insert("a-1", pod("default", "a-1", "app: a", "127.0.0.11", "sa"));
        docs.insert("a-2", pod("default", "a-2", "app: a", "127.0.0.12", "sa"));
        docs.insert("b-1", pod("default", "b-1", "app: b", "127.0.0.21", "sa"));
        docs.insert("c-1", pod("default", "c-1", "app: c", "127.0.0.25", "sa"));
        docs.insert("o-1", pod("other", "o-1", "app: a", "127.0.0.31", "sa"));
        docs.insert("slice", slice(b_slice));
        docs.insert("vm-1", entry("127.0.0.41", "vm"));
        let mut prev = build(&docs, None);
        let host = |h: &str| -> String {
            if h.contains('.') {
                h.to_string()
            } else {
                let (name, ns) = h.split_once('/').unwrap_or((h, "default"));
                format!("{name}.{ns}.svc.cluster.local")
            }
        };
        // Each step: what changes, whether the stage is patched (not when a Node's
        // locality moves), and the hosts whose endpoints a whole build says changed.
        type Step<'a> = (
            &'a str,
            Box<dyn Fn(&mut BTreeMap<&str, String>)>,
            bool,
            &'a [&'a str],
        );
        let steps: Vec<Step> = vec![
            (
                "a pod leaves a by its labels",
                Box::new(|d| {
                    d.insert("a-2", pod("default", "a-2", "app: x", "127.0.0.12", "sa"));
                }),
                true,
                &["a"],
            ),
            (
                "a pod comes back at a new address",
                Box::new(|d| {
                    d.insert("a-2", pod("default", "a-2", "app: a", "127.0.0.13", "sa"));
                }),
                true,
                &["a"],
            ),
            (
                "a new pod with another identity",
                Box::new(|d| {
                    d.insert(
                        "a-3",
                        pod("default", "a-3", "app: a", "127.0.0.14", "other-sa"),
                    );
                }),
                true,
                &["a"],
            ),
            (
                "a pod a slice names is relabelled (b keeps its slice's endpoints)",
                Box::new(|d| {
                    d.insert(
                        "b-1",
                        pod("default", "b-1", "app: b, version: v2", "127.0.0.21", "sa"),
                    );
                }),
                true,
                &["b"],
            ),
            (
                "a pod appears at an address a slice lists without naming it",
                Box::new(|d| {
                    d.insert("b-2", pod("default", "b-2", "app: z", "127.0.0.22", "sa"));
                }),
                true,
                &["b"],
            ),
            (
                "the slice gains an address",
                Box::new(move |d| {
                    d.insert(
                        "slice",
                        slice(&format!("{b_slice}, {{addresses: [127.0.0.23]}}")),
                    );
                }),
                true,
                &["b"],
            ),
            (
                "the slice goes: b selects by its selector",
                Box::new(|d| {
                    d.remove("slice");
                }),
                true,
                &["b"],
            ),
            (
                "the WorkloadEntry moves and leaves vm and vms (a names a port it lacks)",
                Box::new(|d| {
                    d.insert("vm-1", entry("127.0.0.42", "a"));
                }),
                true,
                &["vms", "vm.example.com", "vm2.example.com"],
            ),
            (
                "a pod of the headless service is deleted",
                Box::new(|d| {
                    d.remove("c-1");
                }),
                true,
                &["c"],
            ),
            (
                "another namespace's pod",
                Box::new(|d| {
                    d.insert(
                        "o-1",
                        pod("other", "o-1", "app: a, version: v2", "127.0.0.31", "sa"),
                    );
                }),
                true,
                &["a/other"],
            ),
            ("nothing changed", Box::new(|_| {}), false, &[]),
            (
                "the Node's zone moves: built whole",
                Box::new(|d| {
                    d.insert("0 node", node("z2"));
                }),
                false,
                &["a", "b", "a/other"],
            ),
            (
                "pods come and go at once",
                Box::new(|d| {
                    d.remove("a-1");
                    d.insert("c-2", pod("default", "c-2", "app: c", "127.0.0.26", "sa"));
                    d.insert("vm-1", entry("127.0.0.42", "vm"));
                }),
                true,
                &["a", "c", "vms", "vm.example.com", "vm2.example.com"],
            ),
            (
                "a pod the ServiceEntry's workloadSelector selects",
                Box::new(|d| {
                    d.insert(
                        "vm-pod",
                        pod("default", "vm-pod", "app: vm", "127.0.0.43", "vm"),
                    );
                }),
                true,
                &["vms", "vm.example.com", "vm2.example.com"],
            ),
            (
                "a slice lists the WorkloadEntry's address without naming a pod",
                Box::new(|d| {
                    d.insert("slice", slice("{addresses: [127.0.0.42]}"));
                }),
                true,
                &["b"],
            ),
            (
                "the WorkloadEntry leaves that address",
                Box::new(|d| {
                    d.insert("vm-1", entry("127.0.0.44", "vm"));
                }),
                true,
                &["b", "vms", "vm.example.com", "vm2.example.com"],
            ),
            (
                "another namespace's pod takes the address the slice lists",
                Box::new(|d| {
                    d.insert("o-2", pod("other", "o-2", "app: q", "127.0.0.42", "sa"));
                }),
                true,
                &[],
            ),
            (
                "b gains Endpoints beside its slice, one address the slice's",
                Box::new(|d| {
                    d.insert(
                        "b-endpoints",
                        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: b, namespace: default}\nsubsets: [{addresses: [{ip: 127.0.0.42}, {ip: 127.0.0.29}], ports: [{name: http, port: 9999}]}]\n".to_string(),
                    );
                }),
                true,
                &["b"],
            ),
        ];
        for (name, change, patched, hosts) in steps {
            change(&mut docs);
            let now = build(&docs, Some(&prev));
            let prints = prev.stage_prints;
            prev.stage_prints = StagePrints::default();
            let whole = build(&docs, Some(&prev));
            prev.stage_prints = prints;
            let stages: Vec<&str> = now.build_stages.iter().map(|(n, _)| *n).collect();
            assert_eq!(
                stages.contains(&"endpoints (patched)"),
                patched,
                "{name}: {stages:?}"
            );
            let recomputed: BTreeSet<String> =
                super::RECOMPUTED.with(|r| r.borrow_mut().drain(..).collect());
            let changes = whole.changes_since(&prev);
            let expected: BTreeSet<String> = hosts.iter().map(|h| host(h)).collect();
            // The patch recomputes the hosts a change can reach, not every host: here,
            // the ones whose endpoints changed, and `a` once more when the entry takes
            // its selector's labels without the port it names (reached, unchanged).
            // (A step built whole patches nothing.)
            let mut reach = if patched {
                expected.clone()
            } else {
                BTreeSet::new()
            };
            if name.starts_with("the WorkloadEntry moves") {
                reach.insert(host("a"));
            }
            assert_eq!(recomputed, reach, "{name}: hosts recomputed");
            assert_eq!(changes.endpoints, expected, "{name}");
            assert_eq!(now.changes_since(&prev), changes, "{name}");
            assert_eq!(hash_of(&now.endpoints), hash_of(&whole.endpoints), "{name}");
            assert_eq!(hash_of(&now.workloads), hash_of(&whole.workloads), "{name}");
            assert_eq!(now.endpoint_hashes, whole.endpoint_hashes, "{name}");
            assert_eq!(now.identity_hashes, whole.identity_hashes, "{name}");
            assert_eq!(now.config_hashes, whole.config_hashes, "{name}");
            assert_eq!(now.hosts_by_ip, whole.hosts_by_ip, "{name}");
            assert_eq!(now.workloads_by_ip, whole.workloads_by_ip, "{name}");
            assert_eq!(now.diagnostics, whole.diagnostics, "{name}");
            assert_eq!(
                now.pods.members(),
                whole.pods.members(),
                "{name}: pod index"
            );
            assert_eq!(
                now.endpoint_objects.members(),
                whole.endpoint_objects.members(),
                "{name}: endpoint object index"
            );
            prev = now;
        }
        // The slice came first: the address both name keeps the slice's port.
        let b = prev.endpoints.get(&host("b")).expect("b's endpoints");
        let port = |ip: &str| {
            b.instances
                .iter()
                .find(|i| i.address == ip)
                .map(|i| i.ports.clone())
        };
        assert_eq!(port("127.0.0.42"), Some([(80, 8080)].into()));
        assert_eq!(port("127.0.0.29"), Some([(80, 9999)].into()));
    }
}
