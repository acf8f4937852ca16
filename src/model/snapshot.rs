//! The `Snapshot`: one immutable, validated view of all configuration with the indexes
//! translation needs. A new snapshot is built aside from the current one and swapped in
//! atomically; [`Changes`] says which keys differ so that only affected proxies are pushed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::diagnostic::{Diagnostic, Origin};
use super::host;
use super::istio::{self, Labels};
use super::mesh::MeshConfig;
use super::object::{Kind, Object, ObjectKey, Spec};
use super::scope::Scope;
use super::service::{Resolution, Service, ServiceEndpoints, Visibility, labels_match};
use super::stages::{StageDiagnostics, StagePrints};

/// What the sources hand to the model: every object they could parse, and what they could not.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    pub objects: crate::model::objects::ObjectMap,
    pub diagnostics: Vec<Diagnostic>,
}

/// A VirtualService with its hosts and gateways resolved.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualServiceConfig {
    pub key: ObjectKey,
    pub spec: istio::VirtualService,
    /// FQDNs (short names resolved in the VirtualService's namespace).
    pub hosts: Vec<String>,
    /// `namespace/name` of each gateway, or `mesh` for sidecars.
    pub gateways: Vec<String>,
    pub visibility: Visibility,
    /// Session persistence of each `http` route (Gateway API rules; empty for others).
    /// Part of the route hash, so a change to it alone re-sends routes.
    pub sessions: Vec<Option<super::gateway_api::session::Session>>,
    #[serde(skip)]
    pub object: Arc<Object>,
    /// The hash of the fields above (serialised) and of the object's annotations (they
    /// shape routes too: `gateway_semantics`, `is_generated`; not the whole object,
    /// whose status a writer changes), made once: a VirtualService kept from the
    /// previous build keeps it.
    #[serde(skip)]
    pub(super) hash: std::sync::OnceLock<u64>,
}

impl VirtualServiceConfig {
    /// [`VirtualServiceConfig::hash`], made on first use.
    pub(super) fn hash(&self) -> u64 {
        *self.hash.get_or_init(|| {
            xxhash_rust::xxh3::xxh3_64(
                &[
                    hash_of(self).to_le_bytes(),
                    hash_of(&self.object.annotations).to_le_bytes(),
                ]
                .concat(),
            )
        })
    }

    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.iter().any(|g| g == "mesh")
    }

    /// Whether it was made from a Gateway API route (istiod's "gateway semantics":
    /// path-separated prefixes, 500 for backends that do not resolve, GAMMA scoping).
    pub fn gateway_semantics(&self) -> bool {
        self.object
            .annotations
            .get(super::gateway_api::convert::ROUTE_SEMANTICS)
            .is_some_and(|v| v == "gateway")
    }
}

/// A DestinationRule with its host resolved.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationRuleConfig {
    pub key: ObjectKey,
    pub host: String,
    pub spec: istio::DestinationRule,
    pub visibility: Visibility,
    /// Later DestinationRules for the same host merged into this one, as istiod merges
    /// them: their subsets added, their traffic policy used only if this had none.
    pub merged: Vec<ObjectKey>,
    #[serde(skip)]
    pub object: Arc<Object>,
}

impl DestinationRuleConfig {
    pub fn subset(&self, name: &str) -> Option<&istio::Subset> {
        self.spec.subsets.iter().find(|s| s.name == name)
    }
}

/// A Gateway.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    pub key: ObjectKey,
    pub spec: istio::Gateway,
    #[serde(skip)]
    pub object: Arc<Object>,
}

impl GatewayConfig {
    /// The namespace whose proxies serve it, when it is restricted to one (a Gateway API
    /// Gateway's, or its ListenerSet's parent's).
    pub fn proxy_namespace(&self) -> Option<&str> {
        self.object
            .annotations
            .get(super::gateway_api::convert::PROXY_NAMESPACE)
            .map(String::as_str)
    }

    /// Whether a proxy of `namespace` with `labels` serves it: its selector matches (an
    /// empty one selects nothing) and, for a Gateway API Gateway, the namespace is its.
    pub fn selects(&self, namespace: &str, labels: &Labels) -> bool {
        !self.spec.selector.is_empty()
            && labels_match(&self.spec.selector, labels)
            && self.proxy_namespace().is_none_or(|ns| ns == namespace)
    }
}

/// A Sidecar with its egress hosts parsed.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarConfig {
    pub key: ObjectKey,
    pub spec: istio::Sidecar,
    /// Per egress listener, its parsed hosts.
    pub egress_hosts: Vec<Vec<host::NamespacedHost>>,
    #[serde(skip)]
    pub object: Arc<Object>,
}

impl SidecarConfig {
    pub fn selects(&self, labels: &Labels) -> bool {
        match &self.spec.workload_selector {
            Some(sel) => labels_match(&sel.labels, labels),
            None => true,
        }
    }
}

/// A PeerAuthentication.
#[derive(Debug, Clone, Serialize)]
pub struct PeerAuthenticationConfig {
    pub key: ObjectKey,
    pub spec: istio::PeerAuthentication,
}

/// A workload (Pod or WorkloadEntry) known to the registry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    pub key: ObjectKey,
    /// The workload's name as istiod gives it (a pod's Deployment, CronJob, …).
    pub name: String,
    pub addresses: Vec<String>,
    pub labels: Arc<Labels>,
    pub service_account: String,
    /// `region/zone/subzone`: the `istio-locality` label, else the pod's Node's topology
    /// labels, else a WorkloadEntry's `locality`.
    pub locality: String,
}

/// The entry of [`Changes::secrets`] for CA bundles in ConfigMaps (read from every
/// namespace).
pub const CA_CONFIGMAPS: &str = "*configmaps";

/// Which keys changed from one snapshot to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Mesh-wide change (mesh config): every proxy is affected.
    pub full: bool,
    /// Hosts whose service definition changed (or appeared, or went away).
    pub services: BTreeSet<String>,
    /// Hosts whose VirtualServices changed: routes only.
    pub routes: BTreeSet<String>,
    /// Hosts whose VirtualService `tcp` or `tls` routes changed: these shape listeners
    /// (filter chains), not route configurations.
    pub l4_routes: BTreeSet<String>,
    /// Hosts whose DestinationRules changed: clusters, endpoints (subsets) and routes.
    pub policies: BTreeSet<String>,
    /// Hosts whose endpoints changed.
    pub endpoints: BTreeSet<String>,
    /// Of those, hosts whose endpoints are configuration as well: a headless service has
    /// a listener per pod and decides mTLS by its pods (clusters, listeners, routes).
    pub pod_shaped: BTreeSet<String>,
    /// Namespaces whose Sidecar selection changed.
    pub sidecars: BTreeSet<String>,
    /// Gateways changed (routers only).
    pub gateways: bool,
    /// Workloads changed (labels, addresses): proxies of these workloads re-resolve.
    pub workloads: BTreeSet<ObjectKey>,
    /// Namespaces whose TLS Secrets or ReferenceGrants changed (SDS `kubernetes://` and
    /// `kubernetes-gateway://` credentials).
    pub secrets: BTreeSet<String>,
}

impl Changes {
    /// Only endpoints moved (pods came, went, changed address or readiness): nothing
    /// that shapes clusters, listeners or routes, except for the proxies of the moved
    /// workloads themselves.
    pub fn is_endpoint_churn(&self) -> bool {
        !self.full
            && self.services.is_empty()
            && self.routes.is_empty()
            && self.l4_routes.is_empty()
            && self.policies.is_empty()
            && self.pod_shaped.is_empty()
            && self.sidecars.is_empty()
            && !self.gateways
            && self.secrets.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        // `pod_shaped` is a subset of `endpoints`.
        self.is_endpoint_churn() && self.endpoints.is_empty() && self.workloads.is_empty()
    }
}

/// Scopes by (namespace, Sidecar).
type ScopeCache = HashMap<(String, Option<ObjectKey>), Arc<Scope>>;

/// One immutable view of the mesh.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    pub mesh: Arc<MeshConfig>,
    /// Every accepted object (what /debug/configz lists).
    pub objects: crate::model::objects::ObjectMap,
    pub services: Arc<BTreeMap<String, Arc<Service>>>,
    pub endpoints: imbl::OrdMap<String, Arc<ServiceEndpoints>>,
    pub virtual_services: Vec<Arc<VirtualServiceConfig>>,
    pub destination_rules: Arc<BTreeMap<String, Vec<Arc<DestinationRuleConfig>>>>,
    pub gateways: Vec<Arc<GatewayConfig>>,
    pub sidecars: Vec<Arc<SidecarConfig>>,
    pub peer_authentications: Vec<Arc<PeerAuthenticationConfig>>,
    /// AuthorizationPolicies in key order (root namespace ones apply mesh-wide).
    pub authorization_policies: Vec<Arc<Object>>,
    /// RequestAuthentications in key order.
    pub request_authentications: Vec<Arc<Object>>,
    /// EnvoyFilters in the order their patches apply: root namespace first, then by
    /// priority, then by namespace/name.
    pub envoy_filters: Vec<Arc<Object>>,
    /// Each EnvoyFilter patch value in Envoy's normal JSON form, by (`Kind ns/name`, patch
    /// index): normalised once per snapshot, not once per proxy and push.
    pub envoy_filter_values: BTreeMap<(String, usize), serde_json::Value>,
    /// Each patch's `match.proxy.proxyVersion`, compiled once (anchored, as istiod).
    pub envoy_filter_versions: BTreeMap<(String, usize), regex::Regex>,
    /// Telemetry objects in key order.
    pub telemetries: Vec<Arc<Object>>,
    /// The status meshd computes for each Gateway API object it handles and each
    /// RateLimitPolicy (`meshd status`, and what the leader writes in Kubernetes mode).
    pub statuses: Arc<super::gateway_api::status::Statuses>,
    /// RateLimitPolicies in force, oldest first.
    pub rate_limits: Arc<super::ratelimit::Policies>,
    /// Whether some VirtualService route has session persistence (HTTP managers then
    /// carry Envoy's stateful session filter).
    pub sessions: bool,
    pub workloads: imbl::OrdMap<ObjectKey, Arc<Workload>>,
    /// Address → workloads with that address.
    pub workloads_by_ip: imbl::OrdMap<String, Arc<[ObjectKey]>>,
    /// Address → hosts of the services with an instance at that address (a proxy's
    /// inbound side, found without scanning every service).
    pub hosts_by_ip: imbl::OrdMap<String, Arc<[String]>>,
    pub diagnostics: Vec<Diagnostic>,
    /// Per-host hashes of everything that shapes a service's clusters and routes
    /// (definition, VirtualServices, DestinationRules), for [`Changes`].
    pub(super) config_hashes: Arc<BTreeMap<String, u64>>,
    /// Per-host hashes of the identities (namespace, service account) the host's
    /// endpoints run as: clients' clusters verify its pods by them.
    pub(super) identity_hashes: imbl::OrdMap<String, u64>,
    pub(super) route_hashes: Arc<BTreeMap<String, u64>>,
    pub(super) l4_route_hashes: Arc<BTreeMap<String, u64>>,
    pub(super) policy_hashes: Arc<BTreeMap<String, u64>>,
    pub(super) endpoint_hashes: imbl::OrdMap<String, u64>,
    /// The Pods selectors pick from, kept for the next build's endpoint patch.
    pub(super) pods: super::build::pods::PodIndex,
    /// Services by selector, for the next build's endpoint patch.
    pub(super) service_selectors: Arc<super::build::endpoints::ServiceSelectors>,
    /// EndpointSlices and Endpoints by Service and by what they name, for the next
    /// build's endpoint patch.
    pub(super) endpoint_objects: super::build::endpoint_objects::EndpointIndex,
    pub(super) sidecar_hashes: BTreeMap<String, u64>,
    pub(super) gateway_hash: u64,
    pub(super) peer_auth_hash: u64,
    /// Scopes computed for proxies, shared by all proxies with the same Sidecar.
    pub(super) scopes: Mutex<ScopeCache>,
    /// Label keys some configuration selects workloads by (computed on first use).
    pub(super) selector_keys: std::sync::OnceLock<BTreeSet<String>>,
    /// Of those, the keys `failoverPriority` names (computed with them).
    pub(super) failover_keys: std::sync::OnceLock<BTreeSet<String>>,
    /// How long each stage of [`Snapshot::build`] took (for the benchmark and
    /// `/debug/syncz`-style inspection of where a rebuild's time goes).
    pub build_stages: Vec<(&'static str, std::time::Duration)>,
    /// What the reusable stages were built from, and what they said.
    pub(super) stage_prints: StagePrints,
    pub(super) stage_diags: StageDiagnostics,
    /// Each configuration object's selector and failover keys, by object hash, so the
    /// next build reads the JSON of changed objects only.
    pub(super) selector_key_memo: KeyMemo,
}

/// Each selecting kind's selector and failover keys, by kind.
pub(super) type KeyMemo = HashMap<Kind, Arc<KindKeys>>;

/// The label keys one kind's objects name, and the print of the objects they were read
/// from: a kind whose print is unchanged keeps its keys without a look at its objects.
#[derive(Debug)]
pub(super) struct KindKeys {
    print: (u64, usize),
    keys: BTreeSet<String>,
    failover: BTreeSet<String>,
    /// So a changed kind reads the JSON of its changed objects only.
    objects: ObjectKeys,
}

/// Each object's selector and failover keys by content hash (themselves hashed with a
/// fast seeded hasher).
type ObjectKeys =
    HashMap<u64, Arc<(BTreeSet<String>, BTreeSet<String>)>, foldhash::quality::RandomState>;

/// Label keys under the selector-like fields of a configuration object's JSON (see
/// [`Snapshot::selector_keys`]). Both spellings are looked for: serde may name fields in
/// camelCase (Istio's) or snake_case.
pub(super) fn collect_selector_keys(
    v: &serde_json::Value,
    keys: &mut BTreeSet<String>,
    failover: &mut BTreeSet<String>,
) {
    use serde_json::Value;
    let label_keys = |m: &serde_json::Map<String, Value>, keys: &mut BTreeSet<String>| {
        keys.extend(m.keys().cloned());
    };
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                match (k.as_str(), child) {
                    ("selector" | "workloadSelector" | "workload_selector", Value::Object(sel)) => {
                        let inner = ["matchLabels", "match_labels", "labels"]
                            .iter()
                            .filter_map(|f| sel.get(*f).and_then(Value::as_object))
                            .collect::<Vec<_>>();
                        if inner.is_empty() {
                            // A Gateway's selector is the label map itself.
                            label_keys(sel, keys);
                        } else {
                            for m in inner {
                                label_keys(m, keys);
                            }
                        }
                    }
                    ("sourceLabels" | "source_labels", Value::Object(m)) => label_keys(m, keys),
                    ("failoverPriority" | "failover_priority", Value::Array(a)) => {
                        for s in a.iter().filter_map(Value::as_str) {
                            let k = s.split_once('=').map_or(s, |(k, _)| k).to_string();
                            keys.insert(k.clone());
                            failover.insert(k);
                        }
                    }
                    _ => collect_selector_keys(child, keys, failover),
                }
            }
        }
        Value::Array(a) => a
            .iter()
            .for_each(|c| collect_selector_keys(c, keys, failover)),
        _ => {}
    }
}

/// A workload's locality from its `istio-locality` label (`region.zone.subzone`, as
/// Istio reads it), as `region/zone/subzone`.
pub fn locality_label(labels: &Labels) -> String {
    labels
        .get("istio-locality")
        .map(|l| l.replace('.', "/"))
        .unwrap_or_default()
}

pub(super) fn hash_of<T: Serialize + ?Sized>(value: &T) -> u64 {
    // The JSON text streamed through the hash (through a buffer: serde_json writes in
    // small pieces) rather than collected first: the same bytes, so the same hash, with
    // no allocation the size of the value.
    let mut w = std::io::BufWriter::with_capacity(4096, HashWriter(xxhash_rust::xxh3::Xxh3::new()));
    let _ = serde_json::to_writer(&mut w, value);
    match w.into_inner() {
        Ok(h) => h.0.digest(),
        Err(_) => 0,
    }
}

/// An `io::Write` that feeds a hash.
struct HashWriter(xxhash_rust::xxh3::Xxh3);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Snapshot {
    /// What changed between `old` and `self`.
    pub fn changes_since(&self, old: &Snapshot) -> Changes {
        // A stage taken from the old snapshot shares its hashes: nothing to compare.
        fn shared(
            a: &Arc<BTreeMap<String, u64>>,
            b: &Arc<BTreeMap<String, u64>>,
        ) -> BTreeSet<String> {
            if Arc::ptr_eq(a, b) {
                return BTreeSet::new();
            }
            diff(a, b)
        }
        fn diff(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeSet<String> {
            let mut out = BTreeSet::new();
            for (k, v) in a {
                if b.get(k) != Some(v) {
                    out.insert(k.clone());
                }
            }
            for k in b.keys() {
                if !a.contains_key(k) {
                    out.insert(k.clone());
                }
            }
            out
        }
        // The keys whose values differ, reading only the nodes the two maps do not share
        // (a kept services stage shares them all; an endpoint patch copies just the paths
        // to what it changed).
        fn changed_keys<K: Ord + Clone, V: Clone + PartialEq>(
            a: &imbl::OrdMap<K, V>,
            b: &imbl::OrdMap<K, V>,
        ) -> BTreeSet<K> {
            use imbl::ordmap::DiffItem;
            a.diff(b)
                .map(|d| match d {
                    DiffItem::Add(k, _) | DiffItem::Remove(k, _) => k.clone(),
                    DiffItem::Update { new, .. } => new.0.clone(),
                })
                .collect()
        }
        let workloads = changed_keys(&old.workloads, &self.workloads);
        let endpoints = changed_keys(&self.endpoint_hashes, &old.endpoint_hashes);
        let pod_shaped = endpoints
            .iter()
            .filter(|h| {
                self.services
                    .get(*h)
                    .or_else(|| old.services.get(*h))
                    .is_some_and(|s| s.kubernetes && s.resolution == Resolution::Passthrough)
            })
            .cloned()
            .collect();
        Changes {
            // The stateful session filter comes or goes in every HTTP manager.
            full: self.mesh != old.mesh
                || self.peer_auth_hash != old.peer_auth_hash
                || self.sessions != old.sessions,
            services: {
                let mut s = shared(&self.config_hashes, &old.config_hashes);
                s.extend(changed_keys(&self.identity_hashes, &old.identity_hashes));
                s
            },
            routes: shared(&self.route_hashes, &old.route_hashes),
            l4_routes: shared(&self.l4_route_hashes, &old.l4_route_hashes),
            policies: shared(&self.policy_hashes, &old.policy_hashes),
            endpoints,
            pod_shaped,
            sidecars: diff(&self.sidecar_hashes, &old.sidecar_hashes),
            gateways: self.gateway_hash != old.gateway_hash,
            workloads,
            // Read only when a kind it reads differs (sources share untouched kinds).
            secrets: if !self
                .objects
                .unshared_kinds(&old.objects)
                .any(|k| matches!(k, Kind::Secret | Kind::ReferenceGrant | Kind::ConfigMap))
            {
                BTreeSet::new()
            } else {
                let of = |s: &Snapshot| -> BTreeMap<String, u64> {
                    let mut m: BTreeMap<String, u64> = BTreeMap::new();
                    // ReferenceGrants too: they decide which gateways may read a
                    // Secret of another namespace.
                    for o in s
                        .objects
                        .of_kind(Kind::Secret)
                        .chain(s.objects.of_kind(Kind::ReferenceGrant))
                    {
                        let e = m.entry(o.key.namespace.clone()).or_insert(0);
                        *e ^= o.hash;
                    }
                    // CA bundles in ConfigMaps (BackendTLSPolicy) are read by proxies of
                    // any namespace.
                    for o in s.objects.of_kind(Kind::ConfigMap) {
                        if matches!(&o.spec, Spec::ConfigMap(d) if super::gateway_api::backend_tls::ca_of(d).is_some())
                        {
                            let e = m.entry(CA_CONFIGMAPS.to_string()).or_insert(0);
                            *e ^= o.hash;
                        }
                    }
                    m
                };
                diff(&of(self), &of(old))
            },
        }
    }

    /// Errors and warnings, sorted by place.
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// The Sidecar that applies to a workload in `namespace` with `labels`: one with a
    /// matching selector in its namespace, else the namespace's selector-less one, else the
    /// root namespace's selector-less one.
    pub fn sidecar_for(&self, namespace: &str, labels: &Labels) -> Option<&Arc<SidecarConfig>> {
        let root = self.mesh.root_namespace.as_str();
        let find = |ns: &str, with_selector: bool| {
            self.sidecars.iter().find(|s| {
                s.key.namespace == ns
                    && s.spec.workload_selector.is_some() == with_selector
                    && s.selects(labels)
            })
        };
        find(namespace, true)
            .or_else(|| find(namespace, false))
            .or_else(|| find(root, false))
    }

    /// Every label key that some configuration object selects workloads by: the keys
    /// of `selector`/`matchLabels` and `workloadSelector.labels`, VirtualService
    /// `sourceLabels`, and the labels named in `failoverPriority`. Only these labels of
    /// a proxy can change what it is sent, so proxies that differ in nothing else (a
    /// `pod-template-hash`, a StatefulSet pod name) share their resources. Read from
    /// the objects' JSON so that a field added to any kind is covered without a list
    /// to keep in step.
    pub fn selector_keys(&self) -> &BTreeSet<String> {
        self.selector_keys.get_or_init(|| {
            let (keys, failover, _) = self.collect_selector_keys(None);
            let _ = self.failover_keys.set(failover);
            keys
        })
    }

    /// [`Snapshot::selector_keys`] and the failover keys. `memo` is the previous
    /// snapshot's: a kind whose print is unchanged keeps its keys unread, and in a
    /// changed kind only objects the memo lacks (by content hash) have their JSON
    /// read. Returns the memo for the next build.
    pub(super) fn collect_selector_keys(
        &self,
        memo: Option<&KeyMemo>,
    ) -> (BTreeSet<String>, BTreeSet<String>, KeyMemo) {
        let mut keys = BTreeSet::new();
        let mut failover = BTreeSet::new();
        // Mesh-wide locality load balancing can name labels too.
        if let Ok(v) = serde_json::to_value(&*self.mesh) {
            collect_selector_keys(&v, &mut keys, &mut failover);
        }
        // Only the kinds that select workloads, each its own map (not every Pod and
        // Service too).
        const SELECTING: [Kind; 10] = [
            Kind::VirtualService,
            Kind::DestinationRule,
            Kind::Gateway,
            Kind::Sidecar,
            Kind::EnvoyFilter,
            Kind::Telemetry,
            Kind::RateLimitPolicy,
            Kind::PeerAuthentication,
            Kind::AuthorizationPolicy,
            Kind::RequestAuthentication,
        ];
        let mut next = KeyMemo::new();
        for kind in SELECTING {
            let print = self.objects.kind_print(kind);
            let before = memo.and_then(|m| m.get(&kind));
            let found = match before.filter(|k| k.print == print) {
                Some(kept) => kept.clone(),
                None => Arc::new(self.kind_keys(kind, print, before.map(|k| &k.objects))),
            };
            keys.extend(found.keys.iter().cloned());
            failover.extend(found.failover.iter().cloned());
            next.insert(kind, found);
        }
        (keys, failover, next)
    }

    /// The keys `kind`'s objects name, reading the JSON of objects `before` lacks.
    fn kind_keys(&self, kind: Kind, print: (u64, usize), before: Option<&ObjectKeys>) -> KindKeys {
        let mut out = KindKeys {
            print,
            keys: BTreeSet::new(),
            failover: BTreeSet::new(),
            objects: HashMap::with_capacity_and_hasher(print.1, Default::default()),
        };
        for o in self.objects.of_kind(kind) {
            let found = match before.and_then(|m| m.get(&o.hash)) {
                Some(found) => found.clone(),
                None => {
                    let mut found = (BTreeSet::new(), BTreeSet::new());
                    if let Ok(v) = serde_json::to_value(&o.spec) {
                        collect_selector_keys(&v, &mut found.0, &mut found.1);
                    }
                    Arc::new(found)
                }
            };
            out.keys.extend(found.0.iter().cloned());
            out.failover.extend(found.1.iter().cloned());
            out.objects.insert(o.hash, found);
        }
        out
    }

    /// The label keys `failoverPriority` names (mesh-wide or in any DestinationRule): a
    /// client's values for them order its endpoints' priorities.
    pub fn failover_keys(&self) -> &BTreeSet<String> {
        self.selector_keys();
        self.failover_keys.get_or_init(BTreeSet::new)
    }

    /// The scope (visible services, VirtualServices, DestinationRules) for a proxy in
    /// `namespace` governed by `sidecar`; computed once per snapshot and shared.
    pub fn scope(&self, namespace: &str, sidecar: Option<&Arc<SidecarConfig>>) -> Arc<Scope> {
        let key = (namespace.to_string(), sidecar.map(|s| s.key.clone()));
        if let Ok(cache) = self.scopes.lock()
            && let Some(s) = cache.get(&key)
        {
            return s.clone();
        }
        let scope = Arc::new(Scope::new(self, namespace, sidecar));
        if let Ok(mut cache) = self.scopes.lock() {
            cache.insert(key, scope.clone());
        }
        scope
    }

    /// Takes `prev`'s scopes when nothing a scope reads differs: the same services (the
    /// map itself, which a build that kept or patched the services stage shares), the
    /// same VirtualServices, Sidecars of the same content and the same outbound policy.
    /// Under endpoint churn a snapshot is built several times a second, and a scope of
    /// 10,000 services took milliseconds to make, and to drop, for every one of them.
    pub(super) fn inherit_scopes(&self, prev: &Snapshot) {
        fn same<T>(a: &[Arc<T>], b: &[Arc<T>], eq: impl Fn(&T, &T) -> bool) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || eq(x, y))
        }
        let unchanged = Arc::ptr_eq(&self.services, &prev.services)
            && same(&self.virtual_services, &prev.virtual_services, |_, _| false)
            // Sidecars are made anew each build: compared by the hashes change
            // detection reads (each Sidecar's, key included, per namespace).
            && self.sidecars.len() == prev.sidecars.len()
            && self.sidecar_hashes == prev.sidecar_hashes
            && self.mesh.outbound_traffic_policy == prev.mesh.outbound_traffic_policy;
        if !unchanged {
            return;
        }
        // The same Sidecars (keys included): every scope still has its Sidecar.
        if let (Ok(before), Ok(mut now)) = (prev.scopes.lock(), self.scopes.lock()) {
            now.extend(before.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }

    /// The DestinationRule that applies to `host` for a client in `client_ns`, following
    /// istiod's precedence: the client's namespace, then the service's, then the root
    /// namespace; an exact host beats a wildcard.
    pub fn destination_rule(
        &self,
        client_ns: &str,
        client_labels: &Labels,
        service: &Service,
    ) -> Option<&Arc<DestinationRuleConfig>> {
        let candidates: Vec<&Arc<DestinationRuleConfig>> =
            rules_for(&self.destination_rules, &service.hostname)
                .filter(|dr| dr.visibility.visible_to(client_ns) || dr.key.namespace == client_ns)
                .filter(|dr| match &dr.spec.workload_selector {
                    Some(sel) => {
                        dr.key.namespace == client_ns
                            && labels_match(&sel.match_labels, client_labels)
                    }
                    None => true,
                })
                .collect();
        let rank = |dr: &DestinationRuleConfig| {
            let ns_rank = if dr.key.namespace == client_ns {
                if dr.spec.workload_selector.is_some() {
                    0
                } else {
                    1
                }
            } else if dr.key.namespace == service.namespace {
                2
            } else if dr.key.namespace == self.mesh.root_namespace {
                3
            } else {
                4
            };
            // Exact host first, then the longest (most specific) wildcard.
            let host_rank = if dr.host == service.hostname {
                0
            } else {
                usize::MAX - dr.host.len()
            };
            (ns_rank, host_rank, dr.key.clone())
        };
        candidates
            .into_iter()
            .filter(|dr| rank(dr).0 < 4)
            .min_by_key(|dr| rank(dr))
    }

    /// The effective mTLS mode for a workload in `namespace` with `labels` on `port`:
    /// workload policy (port-level first), else namespace policy, else the mesh policy in
    /// the root namespace, else PERMISSIVE; UNSET defers to the next level.
    pub fn mtls_mode(&self, namespace: &str, labels: &Labels, port: u16) -> istio::MtlsMode {
        self.mtls_mode_source(namespace, labels, port).0
    }

    /// [`Snapshot::mtls_mode`] with the PeerAuthentication that decided it (none: the
    /// PERMISSIVE default).
    pub fn mtls_mode_source(
        &self,
        namespace: &str,
        labels: &Labels,
        port: u16,
    ) -> (istio::MtlsMode, Option<&ObjectKey>) {
        use istio::MtlsMode;
        let set =
            |m: Option<&istio::MutualTls>| m.map(|m| m.mode).filter(|m| *m != MtlsMode::UNSET);
        if let Some(w) = self.workload_peer_authentication(namespace, labels) {
            if let Some(m) = set(w.spec.port_level_mtls.get(&u32::from(port))) {
                return (m, Some(&w.key));
            }
            if let Some(m) = set(w.spec.mtls.as_ref()) {
                return (m, Some(&w.key));
            }
        }
        let level = |ns: &str| {
            self.peer_authentications
                .iter()
                .find(|p| p.key.namespace == ns && p.spec.selector.is_none())
                .and_then(|p| set(p.spec.mtls.as_ref()).map(|m| (m, Some(&p.key))))
        };
        level(namespace)
            .or_else(|| level(&self.mesh.root_namespace))
            .unwrap_or((MtlsMode::PERMISSIVE, None))
    }

    /// The PeerAuthentication whose selector picks this workload, if any.
    fn workload_peer_authentication(
        &self,
        namespace: &str,
        labels: &Labels,
    ) -> Option<&Arc<PeerAuthenticationConfig>> {
        self.peer_authentications.iter().find(|p| {
            p.key.namespace == namespace
                && p.spec.selector.as_ref().is_some_and(|s| {
                    !s.match_labels.is_empty() && labels_match(&s.match_labels, labels)
                })
        })
    }

    /// Ports the workload's own PeerAuthentication sets a mode for (`portLevelMtls`).
    pub fn port_level_mtls_ports(&self, namespace: &str, labels: &Labels) -> Vec<u16> {
        self.workload_peer_authentication(namespace, labels)
            .map(|p| {
                p.spec
                    .port_level_mtls
                    .keys()
                    .filter_map(|k| u16::try_from(*k).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The AuthorizationPolicies that apply to a workload: the root namespace's (all
    /// workloads, or those its selector matches) and its own namespace's.
    pub fn authorization_policies_for(
        &self,
        namespace: &str,
        labels: &Labels,
    ) -> Vec<&Arc<Object>> {
        let mut out: Vec<&Arc<Object>> = self
            .authorization_policies
            .iter()
            .filter(|o| o.key.namespace == self.mesh.root_namespace || o.key.namespace == namespace)
            .filter(|o| match &o.spec {
                Spec::AuthorizationPolicy(p) => {
                    p.target_ref.is_none()
                        && p.target_refs.is_empty()
                        && p.selector
                            .as_ref()
                            .is_none_or(|s| labels_match(&s.match_labels, labels))
                }
                _ => false,
            })
            .collect();
        // Root namespace first, as istiod orders them.
        out.sort_by_key(|o| (o.key.namespace != self.mesh.root_namespace, o.key.clone()));
        out
    }

    /// The RequestAuthentications that apply to a workload (root namespace and its own).
    pub fn request_authentications_for(
        &self,
        namespace: &str,
        labels: &Labels,
    ) -> Vec<&Arc<Object>> {
        self.request_authentications
            .iter()
            .filter(|o| o.key.namespace == self.mesh.root_namespace || o.key.namespace == namespace)
            .filter(|o| match &o.spec {
                Spec::RequestAuthentication(r) => {
                    r.target_ref.is_none()
                        && r.target_refs.is_empty()
                        && r.selector
                            .as_ref()
                            .is_none_or(|s| labels_match(&s.match_labels, labels))
                }
                _ => false,
            })
            .collect()
    }

    /// The TLS material of Secret `namespace/name`, if it has any.
    pub fn tls_secret(&self, namespace: &str, name: &str) -> Option<&super::object::TlsSecret> {
        let key = ObjectKey {
            kind: Kind::Secret,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        match &self.objects.get(&key)?.spec {
            Spec::Secret(s) => Some(s),
            _ => None,
        }
    }

    /// A Gateway API listener's certificate (`kubernetes-gateway://NAMESPACE/NAME`), for a
    /// proxy of namespace `from` with `labels`: only when a Gateway of `from` that selects
    /// the proxy names it as a listener's certificate (as istiod requires), and — for
    /// another namespace's Secret — a ReferenceGrant in `namespace` lets Gateways of
    /// `from` refer to it. Any other workload of the namespace gets nothing.
    pub fn gateway_secret(
        &self,
        from: &str,
        labels: &Labels,
        namespace: &str,
        name: &str,
    ) -> Option<&super::object::TlsSecret> {
        let credential = format!(
            "{}{namespace}/{name}",
            super::gateway_api::convert::CROSS_NAMESPACE_CREDENTIAL
        );
        // Who names the Secret for this proxy: the Gateway itself (its generated Gateways
        // are in the proxy's namespace) or a ListenerSet of it (in the ListenerSet's).
        let owners: Vec<(&str, &str)> = self
            .gateways
            .iter()
            .filter(|g| {
                g.proxy_namespace() == Some(from)
                    && g.selects(from, labels)
                    && g.spec.servers.iter().any(|s| {
                        s.tls
                            .as_ref()
                            .is_some_and(|t| t.credential_name == credential)
                    })
            })
            .map(|g| {
                let from_set = g
                    .object
                    .annotations
                    .get(super::gateway_api::convert::GENERATED_FROM)
                    .is_some_and(|k| k.starts_with("ListenerSet "));
                let kind = if from_set { "ListenerSet" } else { "Gateway" };
                (kind, g.key.namespace.as_str())
            })
            .chain(
                (self.gateway_backend_certificate(from, labels)
                    == Some((namespace.to_string(), name.to_string())))
                .then_some(("Gateway", from)),
            )
            .collect();
        if owners.is_empty() {
            return None;
        }
        let grants: Vec<&Object> = self
            .objects
            .of_kind_in(Kind::ReferenceGrant, namespace)
            .map(|o| &**o)
            .collect();
        let permitted = owners.iter().any(|(kind, owner_ns)| {
            *owner_ns == namespace
                || super::gateway_api::convert::granted(
                    &grants, kind, owner_ns, "", "Secret", namespace, name,
                )
        });
        if !permitted {
            return None;
        }
        self.tls_secret(namespace, name)
    }

    /// The Secret (namespace, name) a Gateway API Gateway's proxies present to backends
    /// (`spec.tls.backend.clientCertificateRef`), for a proxy of namespace `from` with
    /// `labels`. Resolved once when the Gateway was converted: its generated Gateways
    /// carry it (`gateway_tls::BACKEND_CERTIFICATE`).
    pub fn gateway_backend_certificate(
        &self,
        from: &str,
        labels: &Labels,
    ) -> Option<(String, String)> {
        self.gateways
            .iter()
            .filter(|g| g.proxy_namespace() == Some(from) && g.selects(from, labels))
            .find_map(|g| {
                g.object
                    .annotations
                    .get(super::gateway_api::gateway_tls::BACKEND_CERTIFICATE)
            })
            .and_then(|c| c.split_once('/'))
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
    }

    /// A ConfigMap's CA bundle (`configmap://NAMESPACE/NAME`, BackendTLSPolicy's): any
    /// authenticated proxy may read it, as from istiod — it is public, and the proxy
    /// reading it is the client of the backend, not its owner.
    /// With the bundle, its revocation list when the ConfigMap has one (`ca.crl`, else
    /// `crl`, as istiod reads them).
    pub fn ca_configmap(&self, namespace: &str, name: &str) -> Option<(&String, Option<&String>)> {
        let key = ObjectKey {
            kind: Kind::ConfigMap,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        match &self.objects.get(&key)?.spec {
            Spec::ConfigMap(d) => {
                let crl = d
                    .get("ca.crl")
                    .or_else(|| d.get("crl"))
                    .filter(|c| !c.is_empty());
                super::gateway_api::backend_tls::ca_of(d).map(|ca| (ca, crl))
            }
            _ => None,
        }
    }

    /// Workloads whose address is `ip`.
    pub fn workloads_at(&self, ip: &str) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads_by_ip
            .get(ip)
            .into_iter()
            .flat_map(|keys| keys.iter())
            .filter_map(|k| self.workloads.get(k))
    }
}

/// DestinationRules whose host matches `host`: the exact entry by key, plus wildcard
/// entries (few in practice) — never a scan of every rule.
pub(super) fn rules_for<'a: 'h, 'h>(
    rules: &'a BTreeMap<String, Vec<Arc<DestinationRuleConfig>>>,
    host: &'h str,
) -> impl Iterator<Item = &'a Arc<DestinationRuleConfig>> + 'h {
    use std::ops::Bound;
    let exact = rules.get(host).into_iter().flatten();
    // Wildcard keys are exactly those in ["*", "+"): '+' follows '*' in ASCII.
    let wild = rules
        .range::<str, _>((Bound::Included("*"), Bound::Excluded("+")))
        .filter(move |(k, _)| k.as_str() != host && host::matches(k, host))
        .flat_map(|(_, v)| v.iter());
    exact.chain(wild)
}

/// `gateway` or `ns/gateway` → `ns/gateway` (istio resolves a bare name in the
/// VirtualService's namespace).
pub fn resolve_gateway(g: &str, vs_namespace: &str) -> String {
    if g == "mesh" || g.contains('/') {
        g.to_string()
    } else {
        format!("{vs_namespace}/{g}")
    }
}

/// A diagnostic that is not about any object.
pub fn general_error(reason: impl Into<String>) -> Diagnostic {
    Diagnostic::error(Origin::default(), reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::yaml::parse_documents;

    #[test]
    fn selector_keys_are_the_labels_configuration_selects_by() {
        let snap = snapshot(
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: default}
spec:
  host: r
  workloadSelector: {matchLabels: {app: client}}
  trafficPolicy:
    loadBalancer:
      localityLbSetting: {enabled: true, failoverPriority: ["topology.kubernetes.io/zone", "tier=gold"]}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: default}
spec: {selector: {matchLabels: {role: db}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v, namespace: default}
spec:
  hosts: [r]
  http: [{match: [{sourceLabels: {env: prod}}], route: [{destination: {host: r}}]}]
"#,
        );
        let keys: Vec<&str> = snap.selector_keys().iter().map(String::as_str).collect();
        // Subset labels select endpoints, not clients: `version` is not among them.
        assert_eq!(
            keys,
            [
                "app",
                "env",
                "istio",
                "role",
                "tier",
                "topology.kubernetes.io/zone"
            ]
        );
        let failover: Vec<&str> = snap.failover_keys().iter().map(String::as_str).collect();
        assert_eq!(failover, ["tier", "topology.kubernetes.io/zone"]);
    }

    fn snapshot(text: &str) -> Snapshot {
        crate::model::testing::snapshot(text, None)
    }

    /// Endpoint churn keeps the scopes; a change to what a scope reads makes them anew.
    #[test]
    fn scopes_outlive_endpoint_changes_only() {
        use crate::model::testing::snapshot;
        let base = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {selector: {app: a}, ports: [{name: http, port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{name: http, port: 80}]}\n---\n";
        let pod = |ip: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: a-1, labels: {{app: a}}}}\nspec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
            )
        };
        let vs = |host: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec: {{hosts: [{host}], http: [{{route: [{{destination: {{host: a}}}}]}}]}}\n---\n"
            )
        };
        let sidecar = |host: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s, namespace: other}}\nspec: {{egress: [{{hosts: [\"default/{host}.default.svc.cluster.local\"]}}]}}\n---\n"
            )
        };
        let text = |ip: &str, host: &str, sc: &str| {
            format!("{base}{}{}{}", pod(ip), vs(host), sidecar(sc))
        };
        let scopes = |s: &Snapshot| {
            let sc = s.sidecars.first().cloned();
            (s.scope("default", None), s.scope("other", sc.as_ref()))
        };
        let first = snapshot(&text("127.0.0.11", "a", "a"), None);
        let (one, other) = scopes(&first);
        let churn = snapshot(&text("127.0.0.12", "a", "a"), Some(&first));
        assert!(churn.changes_since(&first).is_endpoint_churn());
        let (one2, other2) = scopes(&churn);
        assert!(Arc::ptr_eq(&one, &one2) && Arc::ptr_eq(&other, &other2));
        // A VirtualService's hosts: the scope made anew sees the new host.
        let routed = snapshot(&text("127.0.0.12", "ext.example.com", "a"), Some(&churn));
        let (one3, _) = scopes(&routed);
        assert!(!Arc::ptr_eq(&one2, &one3));
        assert!(one3.sees("ext.example.com") && !one2.sees("ext.example.com"));
        // A Sidecar's egress hosts.
        let scoped = snapshot(&text("127.0.0.12", "ext.example.com", "b"), Some(&routed));
        let (_, other4) = scopes(&scoped);
        assert!(other4.sees("b.default.svc.cluster.local"));
        assert!(other2.sees("a.default.svc.cluster.local"));
        assert!(!other2.sees("b.default.svc.cluster.local"));
        // A Service added (in a mesh without VirtualServices, whose stage would
        // otherwise be made again with the services): the scope made anew sees it.
        let plain = snapshot(&format!("{base}{}", pod("127.0.0.12")), None);
        let one4 = plain.scope("default", None);
        let grown = snapshot(
            &format!(
                "{base}{}apiVersion: v1\nkind: Service\nmetadata: {{name: c}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n",
                pod("127.0.0.12")
            ),
            Some(&plain),
        );
        let one5 = grown.scope("default", None);
        assert!(!Arc::ptr_eq(&one4, &one5));
        assert!(one5.sees("c.default.svc.cluster.local"));
        assert!(!one4.sees("c.default.svc.cluster.local"));
    }

    /// A build that keeps stages from the previous snapshot must equal one that
    /// rebuilds everything: same accepted objects, diagnostics, services, rules, routes,
    /// hashes (so the same changes) and selector keys.
    #[test]
    fn a_creation_time_alone_is_a_change_of_the_stage() {
        use crate::model::testing::snapshot;
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{name: http, port: 80}]}\n";
        let dr = |name: &str, lb: &str, created: &str| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, creationTimestamp: '{created}'}}\nspec: {{host: a, trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}}}\n"
            )
        };
        let text = |one: &str, two: &str| {
            svc.to_string() + &dr("one", "ROUND_ROBIN", one) + &dr("two", "RANDOM", two)
        };
        let (early, late) = ("2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z");
        let first = snapshot(&text(early, late), None);
        // Only the creation times change places: the oldest rule wins, so the other
        // policy applies now.
        let kept = snapshot(&text(late, early), Some(&first));
        let fresh = snapshot(&text(late, early), None);
        assert_ne!(
            hash_of(&first.destination_rules),
            hash_of(&fresh.destination_rules)
        );
        assert_eq!(
            hash_of(&kept.destination_rules),
            hash_of(&fresh.destination_rules)
        );
    }

    #[test]
    fn kept_stages_equal_rebuilt_ones() {
        fn set(text: &str) -> ConfigSet {
            let mut set = ConfigSet::default();
            for (i, doc) in parse_documents(text).into_iter().enumerate() {
                let doc = doc.expect("yaml");
                let origin = Origin {
                    file: Some(Arc::new("mesh.yaml".into())),
                    line: Some(i as u32 * 10 + 1),
                    resource_version: None,
                };
                let (objs, _) = Object::from_value(doc.value, doc.lines, origin, "default");
                for o in objs {
                    set.objects.insert(o.key.clone(), o);
                }
            }
            set
        }
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {selector: {app: a}, ports: [{name: http, port: 80}]}\n";
        let pod = |version: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: a-1, labels: {{app: a, version: {version}}}}}\nspec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: 127.0.0.11}}\n"
            )
        };
        let dr = |lb: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: a}}\nspec: {{host: a, trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}, subsets: [{{name: v1, labels: {{version: v1}}}}]}}\n"
            )
        };
        let vs = |subset: &str, timeout: u32| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec: {{hosts: [a], http: [{{timeout: {timeout}s, route: [{{destination: {{host: a, subset: {subset}}}}}]}}]}}\n"
            )
        };
        let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {selector: {matchLabels: {tier: x}}, mtls: {mode: STRICT}}\n";
        // Unchanged throughout but for its place in the last step, with a warning: kept
        // alone (with its warning) when only the other VirtualService changes.
        let other = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\nspec: {hosts: [b.example.com], http: [{route: [{destination: {host: nowhere}}]}]}\n";
        let text = |p: &str, d: &str, v: &str| [svc, p, d, v, other, pa].join("---\n");
        let steps = [
            text(&pod("v1"), &dr("ROUND_ROBIN"), &vs("v1", 1)),
            // A route edit: only the VirtualService stage runs.
            text(&pod("v1"), &dr("ROUND_ROBIN"), &vs("v1", 2)),
            // A route naming an undefined subset is refused; its last good version stays.
            text(&pod("v1"), &dr("ROUND_ROBIN"), &vs("v2", 3)),
            // Nothing changed: every stage kept, including the refusal and its last good.
            text(&pod("v1"), &dr("ROUND_ROBIN"), &vs("v2", 3)),
            // Reverted to the last good version: its errors go (it is not kept alone
            // with them, though its content is that of the version in force).
            text(&pod("v1"), &dr("ROUND_ROBIN"), &vs("v1", 2)),
            // Refused again, for the steps after.
            text(&pod("v1"), &dr("ROUND_ROBIN"), &vs("v2", 3)),
            // A policy edit: rules and (they are its input) routes run again.
            text(&pod("v1"), &dr("LEAST_REQUEST"), &vs("v2", 3)),
            // A pod relabelled: services and endpoints run again.
            text(&pod("v2"), &dr("LEAST_REQUEST"), &vs("v1", 3)),
            // An object moved to another line: its diagnostics must say the new line.
            [
                pa,
                other,
                svc,
                &pod("v2"),
                &dr("LEAST_REQUEST"),
                &vs("v2", 3),
            ]
            .join("---\n"),
        ];
        // The stages each build is expected to keep.
        let keeps: [&[&str]; 8] = [
            &["services", "destination rules"],
            &["services", "destination rules"],
            &["services", "destination rules", "virtual services"],
            &["services", "destination rules"],
            &["services", "destination rules"],
            &["services"],
            &["destination rules"],
            &[],
        ];
        // The steps whose services stage is patched (only endpoints moved): the pod
        // relabelled.
        let patched = [false, false, false, false, false, false, true, false];
        let mut prev = Snapshot::build(&set(&steps[0]), None, "cluster.local", "istio-system");
        for ((step, keeps), patched) in steps[1..].iter().zip(keeps).zip(patched) {
            let input = set(step);
            let kept = Snapshot::build(&input, Some(&prev), "cluster.local", "istio-system");
            // The same build with nothing to reuse (the previous snapshot stays the
            // source of last good versions).
            let prints = prev.stage_prints;
            prev.stage_prints = StagePrints::default();
            let rebuilt = Snapshot::build(&input, Some(&prev), "cluster.local", "istio-system");
            prev.stage_prints = prints;
            let b = |s: &Snapshot| {
                s.virtual_services
                    .iter()
                    .find(|v| v.key.name == "b")
                    .cloned()
                    .expect("VirtualService b")
            };
            assert_eq!(
                kept.build_stages
                    .iter()
                    .any(|(n, _)| *n == "endpoints (patched)"),
                patched,
                "{step}"
            );
            // VirtualServices read service definitions, never endpoints.
            let same_context =
                (keeps.contains(&"services") || patched) && keeps.contains(&"destination rules");
            assert_eq!(
                Arc::ptr_eq(&b(&kept), &b(&prev)),
                same_context,
                "{step}: the unchanged VirtualService kept alone exactly when the others' context is unchanged"
            );
            assert!(
                kept.diagnostics
                    .iter()
                    .any(|d| d.object.as_deref() == Some("VirtualService default/b")),
                "{step}: its warning is said again"
            );
            let kept_stages: Vec<&str> = kept
                .build_stages
                .iter()
                .filter(|(n, _)| n.ends_with("(kept)"))
                .map(|(n, _)| n.split([' ', '(']).next().unwrap_or(""))
                .collect();
            let expected: Vec<&str> = keeps
                .iter()
                .map(|k| k.split(' ').next().unwrap_or(""))
                .collect();
            assert_eq!(kept_stages, expected, "{step}");
            assert!(
                !rebuilt
                    .build_stages
                    .iter()
                    .any(|(n, _)| n.ends_with("(kept)"))
            );
            let objects = |s: &Snapshot| -> Vec<(ObjectKey, u64)> {
                s.objects
                    .values()
                    .map(|o| (o.key.clone(), o.hash))
                    .collect()
            };
            assert_eq!(objects(&kept), objects(&rebuilt), "{step}");
            assert_eq!(kept.diagnostics, rebuilt.diagnostics, "{step}");
            assert_eq!(
                kept.changes_since(&prev),
                rebuilt.changes_since(&prev),
                "{step}"
            );
            assert_eq!(
                hash_of(&kept.services),
                hash_of(&rebuilt.services),
                "{step}"
            );
            assert_eq!(
                hash_of(&kept.endpoints),
                hash_of(&rebuilt.endpoints),
                "{step}"
            );
            assert_eq!(
                hash_of(&kept.destination_rules),
                hash_of(&rebuilt.destination_rules)
            );
            assert_eq!(
                hash_of(&kept.virtual_services),
                hash_of(&rebuilt.virtual_services)
            );
            assert_eq!(kept.route_hashes, rebuilt.route_hashes);
            assert_eq!(kept.config_hashes, rebuilt.config_hashes);
            assert_eq!(kept.identity_hashes, rebuilt.identity_hashes);
            assert_eq!(kept.policy_hashes, rebuilt.policy_hashes);
            assert_eq!(kept.endpoint_hashes, rebuilt.endpoint_hashes);
            assert_eq!(kept.hosts_by_ip, rebuilt.hosts_by_ip);
            assert_eq!(kept.workloads_by_ip, rebuilt.workloads_by_ip);
            // Both against keys read without any memo: a stale memo entry would make
            // both builds wrong alike.
            let (keys, failover, _) = rebuilt.collect_selector_keys(None);
            assert_eq!(kept.selector_keys(), &keys);
            assert_eq!(rebuilt.selector_keys(), &keys);
            assert_eq!(kept.failover_keys(), &failover);
            prev = kept;
        }
    }

    #[test]
    fn tcp_and_tls_route_changes_are_listener_changes() {
        let vs = |http: u32, tcp: u32| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec:\n  hosts: [a]\n  http: [{{timeout: {http}s, route: [{{destination: {{host: a}}}}]}}]\n  tcp: [{{match: [{{port: {tcp}}}], route: [{{destination: {{host: a}}}}]}}]\n"
            )
        };
        let host = "a.default.svc.cluster.local".to_string();
        let base = snapshot(&vs(1, 9000));
        let http_only = snapshot(&vs(2, 9000)).changes_since(&base);
        assert!(http_only.routes.contains(&host));
        assert!(http_only.l4_routes.is_empty(), "{http_only:?}");
        let tcp = snapshot(&vs(1, 9001)).changes_since(&base);
        assert!(tcp.l4_routes.contains(&host), "{tcp:?}");
        let gone = snapshot("").changes_since(&base);
        assert!(gone.l4_routes.contains(&host), "{gone:?}");
    }

    #[test]
    fn missing_references_carry_istios_analysis_code() {
        let s = snapshot(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{name: http, port: 80}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  gateways: [nowhere]\n  http: [{route: [{destination: {host: a, subset: v9}}, {destination: {host: b}, weight: 0}]}]\n",
        );
        let codes: Vec<(Option<&str>, &str)> = s
            .diagnostics
            .iter()
            .map(|d| (d.code, d.field.as_deref().unwrap_or("")))
            .collect();
        for field in [
            "spec.http[0].route[0].destination.subset",
            "spec.http[0].route[1].destination.host",
            "spec.gateways[0]",
        ] {
            assert!(
                codes.contains(&(Some("IST0101"), field)),
                "{field}: {codes:?}"
            );
        }
    }

    #[test]
    fn peer_authentication_inheritance() {
        use istio::MtlsMode::*;
        let s = snapshot(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ns, namespace: a}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: w, namespace: a}\nspec: {selector: {matchLabels: {app: w}}, mtls: {mode: DISABLE}, portLevelMtls: {8080: {mode: STRICT}}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: u, namespace: a}\nspec: {selector: {matchLabels: {app: u}}, mtls: {mode: UNSET}}\n",
        );
        let labels = |app: &str| -> Labels { [("app".to_string(), app.to_string())].into() };
        let cases = [
            ("b", "x", 80, STRICT, "mesh-wide policy"),
            ("a", "x", 80, PERMISSIVE, "namespace beats mesh"),
            ("a", "w", 80, DISABLE, "workload beats namespace"),
            ("a", "w", 8080, STRICT, "port level beats workload"),
            ("a", "u", 80, PERMISSIVE, "UNSET inherits the namespace's"),
        ];
        for (ns, app, port, want, why) in cases {
            assert_eq!(s.mtls_mode(ns, &labels(app), port), want, "{why}");
        }
        let empty = snapshot("");
        assert_eq!(
            empty.mtls_mode("a", &labels("x"), 80),
            PERMISSIVE,
            "istio's default"
        );
    }
}

#[cfg(test)]
mod identity_tests {
    use crate::model::testing::snapshot as build;

    /// Clients verify a service's pods by the identities its endpoints run as (auto
    /// mTLS): a pod with a new service account changes its clients' clusters, not only
    /// their endpoints, or the clients refuse the new pod's certificate.
    #[test]
    fn a_new_service_account_among_endpoints_is_a_service_change() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {selector: {app: a}, ports: [{name: http, port: 80}]}\n";
        let pod = |name: &str, ip: &str, sa: &str| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: a}}}}\nspec: {{serviceAccountName: {sa}, containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
            )
        };
        let one = build(&format!("{svc}{}", pod("a-1", "10.0.0.1", "sa1")), None);
        // Another pod of the same account: endpoints only.
        let same = build(
            &format!(
                "{svc}{}{}",
                pod("a-1", "10.0.0.1", "sa1"),
                pod("a-2", "10.0.0.2", "sa1")
            ),
            Some(&one),
        );
        let c = same.changes_since(&one);
        assert!(c.endpoints.contains("a.default.svc.cluster.local"), "{c:?}");
        assert!(c.is_endpoint_churn(), "{c:?}");
        // A pod of another account: the service's clusters change.
        let other = build(
            &format!(
                "{svc}{}{}{}",
                pod("a-1", "10.0.0.1", "sa1"),
                pod("a-2", "10.0.0.2", "sa1"),
                pod("a-3", "10.0.0.3", "sa2")
            ),
            Some(&same),
        );
        let c = other.changes_since(&same);
        assert!(c.services.contains("a.default.svc.cluster.local"), "{c:?}");
    }
}
