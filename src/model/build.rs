//! Building a [`Snapshot`] from the sources' objects: validation, last good versions,
//! the registry (workloads, services, endpoints), DestinationRules and VirtualServices
//! resolved, policies ordered, and the per-host hashes change detection compares. Stages
//! whose inputs did not change are taken from the previous snapshot (see
//! [`super::stages`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use super::diagnostic::{
    Diagnostic, MULTIPLE_SIDECARS_WITHOUT_SELECTORS, REFERENCED_RESOURCE_NOT_FOUND,
};
use super::host;
use super::istio::{self, Labels};
use super::mesh::MeshConfig;
use super::object::{Kind, Object, ObjectKey, Spec, TargetPort};
use super::service::{
    Instance, Port, Protocol, Resolution, Service, ServiceEndpoints, Visibility, labels_match,
};
use super::snapshot::{
    ConfigSet, DestinationRuleConfig, GatewayConfig, KeyMemo, PeerAuthenticationConfig,
    SidecarConfig, Snapshot, VirtualServiceConfig, Workload, hash_of, locality_label,
    resolve_gateway, rules_for,
};
use super::stages::{StageClock, StageDiagnostics, StagePrints};
use super::validate;

pub(in crate::model) mod endpoint_objects;
pub(in crate::model) mod endpoints;
mod lists;
pub(in crate::model) mod pods;

impl Snapshot {
    /// Builds a snapshot from the sources' objects. `previous` supplies the last good
    /// version of objects that are now invalid.
    pub fn build(
        input: &ConfigSet,
        previous: Option<&Snapshot>,
        domain_suffix: &str,
        istio_namespace: &str,
    ) -> Snapshot {
        let mut b = Builder {
            diags: input.diagnostics.clone(),
            domain: domain_suffix.to_string(),
            ..Default::default()
        };
        let mut clock = StageClock::start();
        b.mesh = b.mesh_config(input, domain_suffix, istio_namespace);
        clock.lap("mesh config");
        b.objects = input.objects.clone();
        clock.lap("objects copied");
        // Gateway API objects become Istio Gateways and VirtualServices first; from here
        // on they are built like any other (and their stages fingerprinted with them).
        if has_gateway_api(&input.objects) {
            let converted = super::gateway_api::convert::convert(&input.objects, domain_suffix);
            for o in converted.objects {
                b.objects.insert(o.key.clone(), o);
            }
            b.diags.extend(converted.diagnostics);
            b.statuses = converted.statuses;
            clock.lap("gateway api");
        }
        let mesh_key = ObjectKey {
            kind: Kind::ConfigMap,
            namespace: istio_namespace.to_string(),
            name: "istio".into(),
        };
        let prints = StagePrints::of(
            &b.objects,
            b.objects.get(&mesh_key).map(|o| &**o),
            domain_suffix,
            istio_namespace,
        );
        let mut stage_diags = StageDiagnostics::default();
        clock.lap("stage prints");
        // A stage whose inputs are those of the previous snapshot's is taken from it.
        let same = |print: fn(&StagePrints) -> u64| {
            previous.filter(|p| print(&p.stage_prints) == print(&prints))
        };
        // The services stage's hashes and indexes, when an endpoint patch made them.
        let mut patched = None;
        let reused = Reused {
            services: same(|p| p.services),
            rules: same(|p| p.destination_rules),
            routes: same(|p| p.virtual_services),
        };
        if let Some(prev) = reused.services {
            b.workloads = prev.workloads.clone();
            b.pods = prev.pods.clone();
            b.endpoint_objects = prev.endpoint_objects.clone();
            b.service_selectors = prev.service_selectors.clone();
            b.services = prev.services.clone();
            b.endpoints = prev.endpoints.clone();
            stage_diags.services = prev.stage_diags.services.clone();
            b.diags.extend(stage_diags.services.iter().cloned());
            clock.lap("services and endpoints (kept)");
        } else if let Some((prev, indexes)) = previous
            .filter(|p| p.stage_prints.service_definitions == prints.service_definitions)
            .and_then(|p| Some((p, b.patch_endpoints(p)?)))
        {
            // Only endpoints moved: the hosts they reach are patched, the rest kept.
            patched = Some(indexes);
            stage_diags.services = prev.stage_diags.services.clone();
            b.diags.extend(stage_diags.services.iter().cloned());
            clock.lap("endpoints (patched)");
        } else {
            let mark = b.diags.len();
            b.build_workloads(previous);
            clock.lap("workloads");
            b.build_services();
            b.service_selectors =
                Arc::new(endpoints::ServiceSelectors::of(b.of_kind(Kind::Service)));
            b.resolve_aliases();
            b.keep_unchanged_services(previous);
            stage_diags.services = b.diags[mark..].to_vec();
            clock.lap("services and endpoints");
        }
        if let Some(prev) = reused.rules {
            b.destination_rules = prev.destination_rules.clone();
            stage_diags.destination_rules = prev.stage_diags.destination_rules.clone();
            b.diags
                .extend(stage_diags.destination_rules.iter().cloned());
            b.adopt(prev, Kind::DestinationRule, &stage_diags.destination_rules);
            clock.lap("destination rules (kept)");
        } else {
            let mark = b.diags.len();
            b.build_destination_rules(previous);
            stage_diags.destination_rules = b.diags[mark..].to_vec();
            clock.lap("destination rules");
        }
        if let Some(prev) = reused.routes {
            b.virtual_services = prev.virtual_services.clone();
            stage_diags.virtual_services = prev.stage_diags.virtual_services.clone();
            b.diags.extend(stage_diags.virtual_services.iter().cloned());
            b.adopt(prev, Kind::VirtualService, &stage_diags.virtual_services);
            clock.lap("virtual services (kept)");
        } else {
            let mark = b.diags.len();
            // Under the same context, an unchanged VirtualService is kept alone.
            b.build_virtual_services(previous, same(|p| p.virtual_service_context));
            stage_diags.virtual_services = b.diags[mark..].to_vec();
            clock.lap("virtual services");
        }
        b.build_gateways();
        b.build_sidecars();
        clock.lap("gateways and sidecars");
        b.build_peer_authentications();
        b.build_authorization_policies();
        b.build_request_authentications();
        b.build_envoy_filters();
        b.build_telemetries();
        b.build_rate_limits();
        clock.lap("policies, envoy filters, telemetry");
        let mut snap = b.finish(previous, &reused, patched);
        clock.lap("hashes");
        // Computed here, on the builder's thread, not by the first proxy that needs it.
        let (keys, failover, memo) =
            snap.collect_selector_keys(previous.map(|p| &p.selector_key_memo));
        let _ = snap.selector_keys.set(keys);
        let _ = snap.failover_keys.set(failover);
        snap.selector_key_memo = memo;
        snap.stage_prints = prints;
        snap.stage_diags = stage_diags;
        clock.lap("selector keys");
        if let Some(prev) = previous {
            snap.inherit_scopes(prev);
        }
        clock.lap("scopes");
        snap.build_stages = clock.laps;
        snap
    }
}

/// The key of (namespace, label, value) in the Pod label index.
fn label_key(namespace: &str, label: &str, value: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    (namespace, label, value).hash(&mut h);
    h.finish()
}

/// Whether any Gateway API object is present (a look at the kinds, not the objects).
/// A WorkloadEntry's workload.
fn entry_workload(we: &Object) -> Option<Arc<Workload>> {
    let Spec::WorkloadEntry(spec) = &we.spec else {
        return None;
    };
    // istiod: the object's own labels win over `spec.labels`.
    let mut labels = spec.labels.clone();
    labels.extend(we.labels.clone());
    // A WorkloadEntry has an identity only if it names one.
    let locality = if spec.locality.is_empty() {
        locality_label(&labels)
    } else {
        spec.locality.clone()
    };
    Some(Arc::new(Workload {
        key: we.key.clone(),
        name: labels
            .get("service.istio.io/workload-name")
            .cloned()
            .unwrap_or_else(|| we.key.name.clone()),
        addresses: vec![spec.address.clone()],
        labels: Arc::new(labels),
        service_account: spec.service_account.clone(),
        locality,
    }))
}

fn has_gateway_api(objects: &crate::model::objects::ObjectMap) -> bool {
    objects.has_any(Kind::is_gateway_api)
}

/// The previous snapshot, for each stage whose output this build takes from it.
struct Reused<'a> {
    services: Option<&'a Snapshot>,
    rules: Option<&'a Snapshot>,
    routes: Option<&'a Snapshot>,
}

/// A Kubernetes Service's ports, protocols as Istio reads them (name prefix,
/// appProtocol).
fn service_ports(spec: &super::object::ServiceSpec) -> Vec<Port> {
    spec.ports
        .iter()
        .map(|p| Port {
            name: p.name.clone(),
            port: p.port,
            protocol: Protocol::of_service_port(&p.name, &p.protocol, p.app_protocol.as_deref())
                .or_well_known(p.port),
        })
        .collect()
}

/// A Service's `networking.istio.io/exportTo` annotation.
fn export_to_annotation(obj: &Object) -> Vec<String> {
    obj.annotations
        .get("networking.istio.io/exportTo")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_default()
}

/// The services stage's per-host hashes and address indexes.
struct ServiceIndexes {
    config_hashes: Arc<BTreeMap<String, u64>>,
    identity_hashes: imbl::OrdMap<String, u64>,
    endpoint_hashes: imbl::OrdMap<String, u64>,
    workloads_by_ip: imbl::OrdMap<String, Arc<[ObjectKey]>>,
    hosts_by_ip: imbl::OrdMap<String, Arc<[String]>>,
}

#[derive(Default)]
struct Builder {
    mesh: MeshConfig,
    domain: String,
    objects: crate::model::objects::ObjectMap,
    diags: Vec<Diagnostic>,
    // Shared with the snapshot (and the next build, when its services stage is kept or
    // patched): the services written through `Arc::make_mut` while this build makes
    // them; the endpoints and workloads persistent maps, which share all but what a
    // write copies.
    services: Arc<BTreeMap<String, Arc<Service>>>,
    endpoints: imbl::OrdMap<String, Arc<ServiceEndpoints>>,
    workloads: imbl::OrdMap<ObjectKey, Arc<Workload>>,
    destination_rules: Arc<BTreeMap<String, Vec<Arc<DestinationRuleConfig>>>>,
    virtual_services: Vec<Arc<VirtualServiceConfig>>,
    gateways: Vec<Arc<GatewayConfig>>,
    sidecars: Vec<Arc<SidecarConfig>>,
    peer_authentications: Vec<Arc<PeerAuthenticationConfig>>,
    authorization_policies: Vec<Arc<Object>>,
    request_authentications: Vec<Arc<Object>>,
    envoy_filters: Vec<Arc<Object>>,
    envoy_filter_values: BTreeMap<(String, usize), serde_json::Value>,
    envoy_filter_versions: BTreeMap<(String, usize), regex::Regex>,
    telemetries: Vec<Arc<Object>>,
    /// The Pods selectors pick from (the snapshot's index, made with the workloads).
    pods: pods::PodIndex,
    /// Services by selector (the snapshot's, made with the services stage).
    service_selectors: Arc<endpoints::ServiceSelectors>,
    /// EndpointSlices and Endpoints by Service and by what they name (the snapshot's,
    /// made with the services stage).
    endpoint_objects: endpoint_objects::EndpointIndex,
    /// Address → workloads there, in key order (the snapshot's index, made with the
    /// workloads).
    workloads_by_ip: imbl::OrdMap<String, Arc<[ObjectKey]>>,
    /// Port-less ExternalName Services: (target host, the Service).
    aliases: Vec<(String, Arc<Object>)>,
    statuses: super::gateway_api::status::Statuses,
    rate_limits: super::ratelimit::Policies,
}

impl Builder {
    /// Pods in `namespace` whose labels contain `selector`, in key order.
    fn selected_pods(&self, namespace: &str, selector: &Labels) -> Vec<Arc<Object>> {
        self.pods.selected(namespace, selector)
    }

    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<Object>> {
        self.objects.of_kind(kind)
    }

    /// Takes `kind`'s accepted objects from `prev`, whose stage for `kind` this build
    /// reuses. Only a stage that refused an object (an error) changed its kind's objects
    /// (dropped it, or kept its last good version), so without errors there is nothing
    /// to copy.
    fn adopt(&mut self, prev: &Snapshot, kind: Kind, said: &[Diagnostic]) {
        if !said.iter().any(Diagnostic::is_error) {
            return;
        }
        let mine: Vec<ObjectKey> = self.of_kind(kind).map(|o| o.key.clone()).collect();
        for k in mine {
            self.objects.remove(&k);
        }
        for o in prev.objects.of_kind(kind) {
            self.objects.insert(o.key.clone(), o.clone());
        }
    }

    fn mesh_config(&mut self, input: &ConfigSet, domain: &str, istio_ns: &str) -> MeshConfig {
        let key = ObjectKey {
            kind: Kind::ConfigMap,
            namespace: istio_ns.to_string(),
            name: "istio".into(),
        };
        let Some(obj) = input.objects.get(&key) else {
            return MeshConfig {
                domain_suffix: domain.to_string(),
                ..MeshConfig::default()
            };
        };
        let Spec::ConfigMap(data) = &obj.spec else {
            return MeshConfig::default();
        };
        let Some(text) = data.get("mesh") else {
            return MeshConfig {
                domain_suffix: domain.to_string(),
                ..MeshConfig::default()
            };
        };
        let parsed = crate::sources::yaml::parse_documents(text);
        let value = match parsed.into_iter().next() {
            None => serde_json::Value::Object(Default::default()),
            Some(Ok(doc)) => doc.value,
            Some(Err(e)) => {
                self.diags.push(
                    obj.diag_error(
                        "data.mesh",
                        format!("mesh config is not YAML: {}", e.message),
                    )
                    .hint("the defaults are used until it is fixed"),
                );
                return MeshConfig::default();
            }
        };
        match MeshConfig::from_value(value, domain) {
            Ok(m) => m,
            Err(e) => {
                self.diags.push(
                    obj.diag_error("data.mesh", e)
                        .hint("the defaults are used until it is fixed"),
                );
                MeshConfig::default()
            }
        }
    }

    fn build_workloads(&mut self, previous: Option<&Snapshot>) {
        let mut workloads = BTreeMap::new();
        for pod in self.of_kind(Kind::Pod) {
            if let Some(w) = self.pod_workload(pod, previous) {
                workloads.insert(pod.key.clone(), w);
            }
        }
        for we in self.of_kind(Kind::WorkloadEntry) {
            if let Some(w) = entry_workload(we) {
                workloads.insert(we.key.clone(), w);
            }
        }
        self.workloads = workloads.into_iter().collect();
        self.pods = pods::PodIndex::of(self.of_kind(Kind::Pod));
        let mut by_ip: BTreeMap<String, Vec<ObjectKey>> = BTreeMap::new();
        for w in self.workloads.values() {
            for a in &w.addresses {
                by_ip.entry(a.clone()).or_default().push(w.key.clone());
            }
        }
        self.workloads_by_ip = by_ip.into_iter().map(|(a, k)| (a, Arc::from(k))).collect();
    }

    /// A Pod's workload. One whose object (content) and locality are those of the
    /// previous build keeps its workload: under pod churn only the Pods that changed
    /// are rebuilt.
    fn pod_workload(&self, pod: &Object, previous: Option<&Snapshot>) -> Option<Arc<Workload>> {
        let Spec::Pod(info) = &pod.spec else {
            return None;
        };
        let mut locality = locality_label(&pod.labels);
        if locality.is_empty() && !info.node_name.is_empty() {
            let node = ObjectKey {
                kind: Kind::Node,
                namespace: String::new(),
                name: info.node_name.clone(),
            };
            if let Some(Spec::Node(l)) = self.objects.get(&node).map(|o| &o.spec) {
                locality = l.clone();
            }
        }
        let unchanged = previous.and_then(|prev| {
            let before = prev.objects.get(&pod.key)?;
            let w = prev.workloads.get(&pod.key)?;
            (before.hash == pod.hash && w.locality == locality).then(|| w.clone())
        });
        if unchanged.is_some() {
            return unchanged;
        }
        Some(Arc::new(Workload {
            key: pod.key.clone(),
            name: info.workload_name(&pod.key.name, &pod.labels),
            addresses: info.ips.clone(),
            labels: Arc::new(pod.labels.clone()),
            service_account: info.service_account.clone(),
            locality,
        }))
    }

    fn add_service(&mut self, svc: Service, endpoints: ServiceEndpoints, obj: &Object) {
        if let Some(existing) = self.services.get(&svc.hostname) {
            self.diags.push(
                obj.diag_warning(
                    "",
                    format!(
                        "host {} is already defined by {}; this definition is ignored",
                        svc.hostname, existing.source
                    ),
                )
                .hint("give each service one definition (a Service or a ServiceEntry)"),
            );
            return;
        }
        self.endpoints
            .insert(svc.hostname.clone(), Arc::new(endpoints));
        Arc::make_mut(&mut self.services).insert(svc.hostname.clone(), Arc::new(svc));
    }

    /// A service or endpoint set equal to the previous build's becomes that same `Arc`,
    /// so that its hashes are reused (`service_indexes`) and what a push compares is
    /// shared.
    fn keep_unchanged_services(&mut self, previous: Option<&Snapshot>) {
        fn keep<T: PartialEq>(
            now: &mut BTreeMap<String, Arc<T>>,
            before: &BTreeMap<String, Arc<T>>,
        ) {
            for (host, v) in now.iter_mut() {
                if let Some(b) = before.get(host)
                    && **b == **v
                {
                    *v = b.clone();
                }
            }
        }
        if let Some(prev) = previous {
            keep(Arc::make_mut(&mut self.services), &prev.services);
            let same: Vec<(String, Arc<ServiceEndpoints>)> = self
                .endpoints
                .iter()
                .filter_map(|(host, v)| {
                    let b = prev.endpoints.get(host)?;
                    (!Arc::ptr_eq(b, v) && **b == **v).then(|| (host.clone(), b.clone()))
                })
                .collect();
            for (host, b) in same {
                self.endpoints.insert(host, b);
            }
        }
    }

    fn build_services(&mut self) {
        // Kubernetes Services first: they win host conflicts, as in istiod.
        let services: Vec<Arc<Object>> = self.of_kind(Kind::Service).cloned().collect();
        // Each Service's EndpointSlices and Endpoints are found through the index (by
        // lookup, not by scanning every slice for every Service), which the snapshot
        // keeps for the next build's endpoint patch.
        self.endpoint_objects = endpoint_objects::EndpointIndex::of(
            self.of_kind(Kind::Endpoints)
                .chain(self.of_kind(Kind::EndpointSlice)),
        );
        let index = self.endpoint_objects.clone();
        for obj in &services {
            let Spec::Service(spec) = &obj.spec else {
                continue;
            };
            let hostname = format!("{}.{}.svc.{}", obj.key.name, obj.key.namespace, self.domain);
            if spec.service_type == "ExternalName" {
                self.external_name_service(obj, spec, hostname);
                continue;
            }
            let ports = service_ports(spec);
            let export_to = export_to_annotation(obj);
            let svc = Service {
                hostname,
                namespace: obj.key.namespace.clone(),
                name: obj.key.name.clone(),
                ports,
                addresses: spec.cluster_ips.clone(),
                // A headless service's clients dial its pods themselves: connections
                // keep their original destination, as in istiod.
                resolution: if spec.headless {
                    Resolution::Passthrough
                } else {
                    Resolution::ClientSideLb
                },
                mesh_external: false,
                visibility: Visibility::from_export_to(
                    &export_to,
                    &obj.key.namespace,
                    &self.mesh.default_service_export_to,
                ),
                source: obj.key.clone(),
                kubernetes: true,
                subject_alt_names: vec![],
                aliases: vec![],
            };
            let explicit = index.of_service(&obj.key.namespace, &obj.key.name);
            let instances = self.kube_service_instances(obj, spec, &svc.ports, &explicit);
            self.add_service(svc, ServiceEndpoints { instances }, obj);
        }

        let entries: Vec<Arc<Object>> = self.of_kind(Kind::ServiceEntry).cloned().collect();
        for obj in &entries {
            let Spec::ServiceEntry(se) = &obj.spec else {
                continue;
            };
            let errors = validate::service_entry(obj, se);
            let failed = errors.iter().any(Diagnostic::is_error);
            self.diags.extend(errors);
            if failed {
                continue;
            }
            let ports: Vec<Port> = se
                .ports
                .iter()
                .map(|p| Port {
                    name: p.name.clone(),
                    port: p.number as u16,
                    protocol: Protocol::parse(&p.protocol),
                })
                .collect();
            let resolution = match se.resolution {
                istio::Resolution::NONE => Resolution::Passthrough,
                istio::Resolution::STATIC => Resolution::ClientSideLb,
                istio::Resolution::DNS | istio::Resolution::DYNAMIC_DNS => Resolution::Dns,
                istio::Resolution::DNS_ROUND_ROBIN => Resolution::DnsRoundRobin,
            };
            for h in &se.hosts {
                let svc = Service {
                    hostname: h.clone(),
                    namespace: obj.key.namespace.clone(),
                    name: obj.key.name.clone(),
                    ports: ports.clone(),
                    addresses: se.addresses.clone(),
                    resolution,
                    mesh_external: se.location == istio::Location::MESH_EXTERNAL,
                    visibility: Visibility::from_export_to(
                        &se.export_to,
                        &obj.key.namespace,
                        &self.mesh.default_service_export_to,
                    ),
                    source: obj.key.clone(),
                    kubernetes: false,
                    subject_alt_names: se.subject_alt_names.clone(),
                    aliases: vec![],
                };
                let instances = self.entry_instances(obj, se, h, &ports, resolution);
                self.add_service(svc, ServiceEndpoints { instances }, obj);
            }
        }
    }

    /// The endpoints of one host of a ServiceEntry: its own endpoints, the Pods and
    /// WorkloadEntries its workloadSelector selects, or the host itself to resolve.
    fn entry_instances(
        &self,
        obj: &Object,
        se: &istio::ServiceEntry,
        h: &str,
        ports: &[Port],
        resolution: Resolution,
    ) -> Vec<Instance> {
        let target_of = |p: &Port| {
            se.ports
                .iter()
                .find(|sp| sp.number as u16 == p.port)
                .and_then(|sp| sp.target_port)
                .map(|t| t as u16)
        };
        let mut instances = Vec::new();
        for ep in &se.endpoints {
            let mut port_map = BTreeMap::new();
            for p in ports {
                let t = ep
                    .ports
                    .get(&p.name)
                    .map(|n| *n as u16)
                    .or_else(|| target_of(p))
                    .unwrap_or(p.port);
                port_map.insert(p.port, t);
            }
            let mut inst = self.instance(&ep.address, port_map, None, false);
            inst.labels = Arc::new(ep.labels.clone());
            inst.service_account = ep.service_account.clone();
            inst.locality = ep.locality.clone();
            inst.weight = ep.weight.unwrap_or(0);
            inst.namespace = obj.key.namespace.clone();
            inst.dns = resolution == Resolution::Dns || resolution == Resolution::DnsRoundRobin;
            inst.tls_mode = ep.labels.get("security.istio.io/tlsMode").cloned();
            instances.push(inst);
        }
        if let Some(sel) = &se.workload_selector {
            for pod in self.selected_pods(&obj.key.namespace, &sel.labels) {
                let Spec::Pod(info) = &pod.spec else { continue };
                if info.ips.is_empty() || !info.ready {
                    continue;
                }
                let port_map = ports
                    .iter()
                    .map(|p| (p.port, target_of(p).unwrap_or(p.port)))
                    .collect();
                let w = self.workloads.get(&pod.key).cloned();
                instances.push(self.instance(&info.ips[0], port_map, w.as_deref(), true));
            }
            instances.extend(self.workload_entry_instances(
                &obj.key.namespace,
                &sel.labels,
                ports,
                |p, we_ports| {
                    Some(
                        we_ports
                            .get(&p.name)
                            .map(|n| *n as u16)
                            .filter(|n| *n > 0)
                            .or_else(|| target_of(p))
                            .unwrap_or(p.port),
                    )
                },
            ));
        }
        if se.endpoints.is_empty()
            && se.workload_selector.is_none()
            && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && !h.starts_with('*')
        {
            // DNS resolution without endpoints: Envoy resolves the host itself.
            let port_map = ports
                .iter()
                .map(|p| (p.port, target_of(p).unwrap_or(p.port)))
                .collect();
            let mut inst = self.instance(h, port_map, None, false);
            inst.dns = true;
            inst.namespace = obj.key.namespace.clone();
            instances.push(inst);
        }
        instances
    }

    /// A Kubernetes Service's endpoints: its EndpointSlices and Endpoints (`explicit`)
    /// if it has any, else the Pods its selector selects; then the WorkloadEntries the
    /// selector selects. In address order.
    fn kube_service_instances(
        &self,
        obj: &Object,
        spec: &super::object::ServiceSpec,
        ports: &[Port],
        explicit: &[&Arc<Object>],
    ) -> Vec<Instance> {
        let mut instances = Vec::new();
        // Hand-made (or controller-made) endpoint objects win over the selector, as
        // the EndpointSlice controller writes them from the selector anyway.
        if !explicit.is_empty() {
            let mut seen = BTreeSet::new();
            for g in explicit.iter().copied() {
                let Spec::Endpoints(group) = &g.spec else {
                    continue;
                };
                for (addrs, eports) in &group.subsets {
                    for a in addrs {
                        if !a.ready && !spec.publish_not_ready {
                            continue;
                        }
                        let mut ports = BTreeMap::new();
                        for sp in &spec.ports {
                            let ep = eports
                                .iter()
                                .find(|e| e.name == sp.name)
                                .or_else(|| (eports.len() == 1).then(|| &eports[0]));
                            if let Some(ep) = ep {
                                ports.insert(sp.port, ep.port);
                            }
                        }
                        if !seen.insert(a.ip.clone()) || ports.is_empty() {
                            continue;
                        }
                        let pod = a
                            .pod
                            .as_ref()
                            .map(|name| ObjectKey {
                                kind: Kind::Pod,
                                namespace: obj.key.namespace.clone(),
                                name: name.clone(),
                            })
                            .and_then(|k| self.workloads.get(&k))
                            .cloned()
                            .or_else(|| self.workload_at(&a.ip, &obj.key.namespace));
                        instances.push(self.instance(&a.ip, ports, pod.as_deref(), true));
                    }
                }
            }
        } else if let Some(selector) = &spec.selector {
            for pod in self.selected_pods(&obj.key.namespace, selector) {
                let Spec::Pod(info) = &pod.spec else { continue };
                if info.ips.is_empty() || info.phase == "Succeeded" || info.phase == "Failed" {
                    continue;
                }
                let ready = info.ready && !info.terminating;
                if !ready && !spec.publish_not_ready {
                    continue;
                }
                let mut ports = BTreeMap::new();
                for sp in &spec.ports {
                    let target = match &sp.target_port {
                        TargetPort::Number(n) => Some(*n),
                        TargetPort::Name(name) => info
                            .container_ports
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, p)| *p),
                    };
                    if let Some(t) = target {
                        ports.insert(sp.port, t);
                    }
                }
                if ports.is_empty() {
                    continue;
                }
                let w = self.workloads.get(&pod.key).cloned();
                instances.push(self.instance(&info.ips[0], ports, w.as_deref(), true));
            }
        }
        // WorkloadEntries a Kubernetes Service selects (istio's VM support) add to its
        // endpoints, however the Pods' endpoints are known. Headless services pass
        // traffic to the address dialled and take none.
        if let Some(selector) = &spec.selector
            && !spec.headless
        {
            instances.extend(self.workload_entry_instances(
                &obj.key.namespace,
                selector,
                ports,
                |p, we_ports| {
                    let sp = spec.ports.iter().find(|sp| sp.port == p.port)?;
                    match &sp.target_port {
                        // A named target port must be one the entry names.
                        TargetPort::Name(name) => we_ports.get(name).map(|n| *n as u16),
                        TargetPort::Number(n) => Some(
                            we_ports
                                .get(&p.name)
                                .map(|n| *n as u16)
                                .filter(|n| *n > 0)
                                .unwrap_or(*n),
                        ),
                    }
                },
            ));
        }
        instances.sort_by(|a, b| a.address.cmp(&b.address));
        instances
    }

    /// A Service of type ExternalName, as istiod models it: the Kubernetes name with one
    /// DNS endpoint, the external name, on each service port.
    fn external_name_service(
        &mut self,
        obj: &Arc<Object>,
        spec: &super::object::ServiceSpec,
        hostname: String,
    ) {
        let Some(target) = spec.external_name.as_deref().filter(|n| !n.is_empty()) else {
            self.diags.push(
                obj.diag_error(
                    "spec.externalName",
                    "an ExternalName Service needs externalName",
                )
                .hint("externalName: api.example.com"),
            );
            return;
        };
        let ports = service_ports(spec);
        if ports.is_empty() {
            // Without ports it is another name for its target (istiod's alias), resolved
            // once every service is known; nothing of its own is routed.
            self.aliases.push((target.to_string(), obj.clone()));
            return;
        }
        let export_to = export_to_annotation(obj);
        let svc = Service {
            hostname,
            namespace: obj.key.namespace.clone(),
            name: obj.key.name.clone(),
            ports: ports.clone(),
            addresses: Vec::new(),
            resolution: Resolution::Dns,
            mesh_external: true,
            visibility: Visibility::from_export_to(
                &export_to,
                &obj.key.namespace,
                &self.mesh.default_service_export_to,
            ),
            source: obj.key.clone(),
            kubernetes: true,
            subject_alt_names: vec![],
            aliases: vec![],
        };
        let port_map = ports.iter().map(|p| (p.port, p.port)).collect();
        let mut inst = self.instance(target, port_map, None, false);
        inst.dns = true;
        inst.namespace = obj.key.namespace.clone();
        self.add_service(
            svc,
            ServiceEndpoints {
                instances: vec![inst],
            },
            obj,
        );
    }

    /// Attaches each port-less ExternalName Service to the service it names; one naming
    /// no known service routes nothing, and says so.
    fn resolve_aliases(&mut self) {
        for (target, obj) in std::mem::take(&mut self.aliases) {
            match Arc::make_mut(&mut self.services).get_mut(&target) {
                Some(svc) => Arc::make_mut(svc)
                    .aliases
                    .push((obj.key.name.clone(), obj.key.namespace.clone())),
                None => self.diags.push(
                    obj.diag_warning(
                        "spec.ports",
                        format!("an ExternalName Service without ports is only an alias of a service in the mesh, and none is named {target}: ignored"),
                    )
                    .hint("declare ports to route to an external name, or point it at a mesh service"),
                ),
            }
        }
    }

    fn workload_at(&self, ip: &str, namespace: &str) -> Option<Arc<Workload>> {
        let key = self
            .workloads_by_ip
            .get(ip)?
            .iter()
            .find(|k| k.namespace == namespace)?;
        self.workloads.get(key).cloned()
    }

    /// Endpoints of the WorkloadEntries in `namespace` that `selector` selects, each
    /// service port mapped by `target_of(port, the entry's named ports)` (None: the
    /// entry does not serve that port).
    fn workload_entry_instances(
        &self,
        namespace: &str,
        selector: &Labels,
        ports: &[Port],
        target_of: impl Fn(&Port, &BTreeMap<String, u32>) -> Option<u16>,
    ) -> Vec<Instance> {
        let mut out = Vec::new();
        // Only the namespace's entries (one range of the map), not every entry per service.
        for we in self.objects.of_kind_in(Kind::WorkloadEntry, namespace) {
            let Spec::WorkloadEntry(spec) = &we.spec else {
                continue;
            };
            let Some(w) = self.workloads.get(&we.key) else {
                continue;
            };
            if !labels_match(selector, &w.labels) {
                continue;
            }
            let port_map: BTreeMap<u16, u16> = ports
                .iter()
                .filter_map(|p| Some((p.port, target_of(p, &spec.ports)?)))
                .collect();
            if port_map.is_empty() {
                continue;
            }
            // A WorkloadEntry is an endpoint as soon as it exists (istiod's health-checked
            // entries, with their conditions, are not modelled).
            let mut inst = self.instance(&spec.address, port_map, Some(w), true);
            inst.weight = spec.weight.unwrap_or(0);
            // An entry with an identity runs a sidecar: mTLS, unless its label says not.
            if inst.tls_mode.is_none() && !spec.service_account.is_empty() {
                inst.tls_mode = Some("istio".into());
            }
            out.push(inst);
        }
        out
    }

    fn instance(
        &self,
        address: &str,
        ports: BTreeMap<u16, u16>,
        workload: Option<&Workload>,
        ready: bool,
    ) -> Instance {
        let labels = workload.map(|w| w.labels.clone()).unwrap_or_default();
        let locality = workload.map(|w| w.locality.clone()).unwrap_or_default();
        Instance {
            address: address.to_string(),
            ports,
            tls_mode: labels.get("security.istio.io/tlsMode").cloned(),
            labels,
            service_account: workload
                .map(|w| w.service_account.clone())
                .unwrap_or_default(),
            namespace: workload
                .map(|w| w.key.namespace.clone())
                .unwrap_or_default(),
            workload: workload.map(|w| w.key.name.clone()).unwrap_or_default(),
            locality,
            weight: 0,
            ready: ready || workload.is_none(),
            dns: false,
        }
    }

    fn build_destination_rules(&mut self, previous: Option<&Snapshot>) {
        let objs: Vec<Arc<Object>> = self.of_kind(Kind::DestinationRule).cloned().collect();
        let mut accepted: Vec<Arc<Object>> = Vec::new();
        for obj in objs {
            let Spec::DestinationRule(spec) = &obj.spec else {
                continue;
            };
            let mut diags = validate::destination_rule(&obj, spec);
            let mut chosen = obj.clone();
            if diags.iter().any(Diagnostic::is_error) {
                match last_good(previous, &obj.key, |o| match &o.spec {
                    Spec::DestinationRule(s) => !validate::destination_rule(o, s)
                        .iter()
                        .any(Diagnostic::is_error),
                    _ => false,
                }) {
                    Some(prev) => {
                        diags.push(keeping_last_good(&obj, &prev));
                        chosen = prev;
                    }
                    None => {
                        self.diags.extend(diags);
                        self.objects.remove(&obj.key);
                        continue;
                    }
                }
                self.objects.insert(obj.key.clone(), chosen.clone());
            }
            self.diags.extend(diags);
            accepted.push(chosen);
        }
        // istiod's order: rules with a workload selector first, then the oldest, then by
        // name and namespace. The first rule for a host is the one others merge into.
        accepted.sort_by(|a, b| {
            let selector = |o: &Object| match &o.spec {
                Spec::DestinationRule(s) => s.workload_selector.is_none(),
                _ => true,
            };
            (
                selector(a),
                a.created.as_deref().unwrap_or(""),
                &a.key.name,
                &a.key.namespace,
            )
                .cmp(&(
                    selector(b),
                    b.created.as_deref().unwrap_or(""),
                    &b.key.name,
                    &b.key.namespace,
                ))
        });
        let mut rules: BTreeMap<String, Vec<Arc<DestinationRuleConfig>>> = BTreeMap::new();
        for chosen in accepted {
            let Spec::DestinationRule(spec) = &chosen.spec else {
                continue;
            };
            let host = host::resolve(&spec.host, &chosen.key.namespace, &self.domain);
            let cfg = DestinationRuleConfig {
                key: chosen.key.clone(),
                host: host.clone(),
                spec: spec.clone(),
                visibility: Visibility::from_export_to(
                    &spec.export_to,
                    &chosen.key.namespace,
                    &self.mesh.default_destination_rule_export_to,
                ),
                merged: Vec::new(),
                object: chosen.clone(),
            };
            let list = rules.entry(host).or_default();
            if merge_destination_rule(list, &cfg, &mut self.diags) {
                list.push(Arc::new(cfg));
            }
        }
        self.destination_rules = Arc::new(rules);
    }

    /// `same_context`: the previous snapshot, when what a VirtualService's checks and
    /// translation read besides the VirtualService itself (services, DestinationRules,
    /// Gateways, the mesh configuration) is as it was; then a VirtualService whose object
    /// is as it was keeps its previous result and diagnostics, unless delegation ties it
    /// to others.
    fn build_virtual_services(
        &mut self,
        previous: Option<&Snapshot>,
        same_context: Option<&Snapshot>,
    ) {
        let objs: Vec<Arc<Object>> = self.of_kind(Kind::VirtualService).cloned().collect();
        let mut out = Vec::new();
        let (kept, kept_diags) = match same_context {
            Some(prev) => (
                prev.virtual_services
                    .iter()
                    .map(|v| (&v.key, v))
                    .collect::<HashMap<_, _>>(),
                {
                    let mut by_object: HashMap<&str, Vec<&Diagnostic>> = HashMap::new();
                    for d in &prev.stage_diags.virtual_services {
                        by_object
                            .entry(d.object.as_deref().unwrap_or_default())
                            .or_default()
                            .push(d);
                    }
                    by_object
                },
            ),
            None => Default::default(),
        };
        for obj in objs {
            // (The key is spelled out only when there are diagnostics to look up.)
            let said = if kept_diags.is_empty() {
                None
            } else {
                kept_diags.get(obj.key.to_string().as_str())
            };
            // Not after an error: the previous result was then a last good version,
            // which equal content now makes current again (its errors must go).
            if let Some(old) = kept.get(&obj.key)
                && same_object(&old.object, &obj)
                && !delegates(&obj)
                && !said.is_some_and(|d| d.iter().any(|d| d.is_error()))
            {
                self.diags
                    .extend(said.into_iter().flatten().map(|d| (*d).clone()));
                out.push((*old).clone());
                continue;
            }
            let mut diags = self.check_virtual_service(&obj);
            if obj.is_generated() {
                // Converted from an HTTPRoute: its backends that do not resolve are
                // reported on the route (and answer 500 by design), not again here.
                diags.retain(Diagnostic::is_error);
            }
            let mut chosen = obj.clone();
            if diags.iter().any(Diagnostic::is_error) {
                let prev = last_good(previous, &obj.key, |o| {
                    !self
                        .check_virtual_service(o)
                        .iter()
                        .any(Diagnostic::is_error)
                });
                match prev {
                    Some(prev) => {
                        diags.push(keeping_last_good(&obj, &prev));
                        chosen = prev;
                        self.objects.insert(obj.key.clone(), chosen.clone());
                    }
                    None => {
                        self.diags.extend(diags);
                        self.objects.remove(&obj.key);
                        continue;
                    }
                }
            }
            self.diags.extend(diags);
            let Spec::VirtualService(spec) = &chosen.spec else {
                continue;
            };
            if spec.hosts.is_empty() {
                // A delegate: used through the root VirtualServices that name it.
                continue;
            }
            // Only a VirtualService that delegates is rewritten (and copied for it).
            let expanded;
            let spec = if spec.http.iter().any(|r| r.delegate.is_some()) {
                expanded = self.expand_delegates(&chosen, spec);
                &expanded
            } else {
                spec
            };
            let ns = &chosen.key.namespace;
            let hosts = spec
                .hosts
                .iter()
                .map(|h| host::resolve(h, ns, &self.domain))
                .collect();
            let gateways = if spec.gateways.is_empty() {
                vec!["mesh".to_string()]
            } else {
                spec.gateways
                    .iter()
                    .map(|g| resolve_gateway(g, ns))
                    .collect()
            };
            out.push(Arc::new(VirtualServiceConfig {
                key: chosen.key.clone(),
                spec: spec.clone(),
                hosts,
                gateways,
                visibility: Visibility::from_export_to(
                    &spec.export_to,
                    ns,
                    &self.mesh.default_virtual_service_export_to,
                ),
                sessions: super::gateway_api::session::of_virtual_service(&chosen),
                object: chosen.clone(),
                hash: Default::default(),
            }));
        }
        // istiod's order (the config store's): oldest first, then by name and namespace.
        // The first VirtualService for a host is the one that routes it.
        // (Compared in place: this runs at every build, over every VirtualService.)
        fn order(v: &VirtualServiceConfig) -> (&str, &str, &str) {
            (
                v.object.created.as_deref().unwrap_or_default(),
                &v.key.name,
                &v.key.namespace,
            )
        }
        out.sort_by(|a, b| order(a).cmp(&order(b)));
        self.virtual_services = out;
    }

    /// A root VirtualService with its `delegate` routes replaced by the delegates' routes,
    /// merged as istiod merges them. A missing, unexported or hosted delegate, and a
    /// delegate route whose matches conflict with the root's, are diagnostics; the other
    /// routes stay.
    fn expand_delegates(
        &mut self,
        obj: &Object,
        spec: &istio::VirtualService,
    ) -> istio::VirtualService {
        if spec.http.iter().all(|r| r.delegate.is_none()) {
            return spec.clone();
        }
        let mut out = spec.clone();
        out.http = Vec::new();
        for (i, r) in spec.http.iter().enumerate() {
            let Some(d) = &r.delegate else {
                out.http.push(r.clone());
                continue;
            };
            let ns = if d.namespace.is_empty() {
                obj.key.namespace.clone()
            } else {
                d.namespace.clone()
            };
            let key = ObjectKey {
                kind: Kind::VirtualService,
                namespace: ns.clone(),
                name: d.name.clone(),
            };
            let path = format!("spec.http[{i}].delegate");
            let delegate = match self.objects.get(&key).map(|o| (o.clone(), &o.spec)) {
                Some((o, Spec::VirtualService(dv))) if dv.hosts.is_empty() => {
                    let visible = Visibility::from_export_to(
                        &dv.export_to,
                        &ns,
                        &self.mesh.default_virtual_service_export_to,
                    )
                    .visible_to(&obj.key.namespace);
                    if !visible {
                        self.diags.push(
                            obj.diag_warning(
                                &path,
                                format!(
                                    "delegate {key} is not exported to namespace {}",
                                    obj.key.namespace
                                ),
                            )
                            .code(REFERENCED_RESOURCE_NOT_FOUND)
                            .hint("add the root's namespace to the delegate's exportTo"),
                        );
                        continue;
                    }
                    (o, dv.clone())
                }
                Some(_) => {
                    self.diags.push(
                        obj.diag_warning(
                            &path,
                            format!(
                                "{key} has hosts, so it is not a delegate; this route is skipped"
                            ),
                        )
                        .hint("a delegate VirtualService has no hosts and no gateways"),
                    );
                    continue;
                }
                None => {
                    self.diags.push(
                        obj.diag_warning(
                            &path,
                            format!("delegate {key} does not exist; this route is skipped"),
                        )
                        .code(REFERENCED_RESOURCE_NOT_FOUND)
                        .hint("the route takes effect once the delegate exists"),
                    );
                    continue;
                }
            };
            let (dobj, dspec) = delegate;
            for (j, leaf) in dspec.http.iter().enumerate() {
                match super::delegate::merge_route(r, leaf, &ns, &self.domain) {
                    Some(m) => out.http.push(m),
                    None => self.diags.push(
                        dobj.diag_warning(
                            &format!("spec.http[{j}].match"),
                            format!(
                                "these matches conflict with the matches of {} (spec.http[{i}]) that delegates here; this route is skipped",
                                obj.key
                            ),
                        )
                        .hint("a delegate's matches must narrow the root's (e.g. a longer prefix)"),
                    ),
                }
            }
        }
        out
    }

    /// Structural validation plus references to other objects (hosts, subsets).
    fn check_virtual_service(&self, obj: &Object) -> Vec<Diagnostic> {
        let Spec::VirtualService(spec) = &obj.spec else {
            return vec![];
        };
        let mut diags = validate::virtual_service(obj, spec);
        let ns = &obj.key.namespace;
        let check_dest = |diags: &mut Vec<Diagnostic>, d: &istio::Destination, path: String| {
            if d.host.is_empty() {
                return;
            }
            let host = host::resolve(&d.host, ns, &self.domain);
            let svc = self.services.get(&host);
            if svc.is_none() && !host.contains('*') {
                diags.push(
                    obj.diag_warning(
                        &format!("{path}.host"),
                        format!("host {host} is not a known service or ServiceEntry"),
                    )
                    .code(REFERENCED_RESOURCE_NOT_FOUND)
                    .hint(
                        "requests routed here fail with 503 until the service exists; \
                           for external hosts add a ServiceEntry",
                    ),
                );
            }
            if let (Some(svc), Some(port)) = (svc, &d.port)
                && svc.port(port.number as u16).is_none()
            {
                let ports: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
                diags.push(
                    obj.diag_warning(
                        &format!("{path}.port.number"),
                        format!("service {host} has no port {}", port.number),
                    )
                    .hint(format!("its ports are: {}", ports.join(", "))),
                );
            }
            if d.subset.is_empty() {
                return;
            }
            let rules: Vec<&Arc<DestinationRuleConfig>> = rules_for(&self.destination_rules, &host)
                .filter(|r| r.visibility.visible_to(ns) || r.key.namespace == *ns)
                .collect();
            if rules.iter().any(|r| r.subset(&d.subset).is_some()) {
                return;
            }
            let defined: Vec<String> = rules
                .iter()
                .flat_map(|r| r.spec.subsets.iter().map(|s| s.name.clone()))
                .collect();
            let hint = if rules.is_empty() {
                format!(
                    "no DestinationRule defines subsets for {host}; create one with a subset named {:?}",
                    d.subset
                )
            } else {
                let names: Vec<String> = rules.iter().map(|r| r.key.to_string()).collect();
                format!(
                    "{} defines subsets [{}]",
                    names.join(", "),
                    defined.join(", ")
                )
            };
            diags.push(
                obj.diag_error(
                    &format!("{path}.subset"),
                    format!("subset {:?} of host {host} is not defined", d.subset),
                )
                .code(REFERENCED_RESOURCE_NOT_FOUND)
                .hint(hint),
            );
        };
        for (i, r) in spec.http.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                check_dest(
                    &mut diags,
                    &d.destination,
                    format!("spec.http[{i}].route[{j}].destination"),
                );
            }
            if let Some(m) = &r.mirror {
                check_dest(&mut diags, m, format!("spec.http[{i}].mirror"));
            }
            for (j, m) in r.mirrors.iter().enumerate() {
                check_dest(
                    &mut diags,
                    &m.destination,
                    format!("spec.http[{i}].mirrors[{j}].destination"),
                );
            }
        }
        for (i, r) in spec.tcp.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                check_dest(
                    &mut diags,
                    &d.destination,
                    format!("spec.tcp[{i}].route[{j}].destination"),
                );
            }
        }
        for (i, r) in spec.tls.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                check_dest(
                    &mut diags,
                    &d.destination,
                    format!("spec.tls[{i}].route[{j}].destination"),
                );
            }
        }
        for (i, g) in spec.gateways.iter().enumerate() {
            if g == "mesh" {
                continue;
            }
            let (gns, gname) = resolve_gateway(g, ns)
                .split_once('/')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .unwrap_or_default();
            let key = ObjectKey {
                kind: Kind::Gateway,
                namespace: gns,
                name: gname,
            };
            if !self.objects.contains_key(&key) {
                diags.push(
                    obj.diag_warning(
                        &format!("spec.gateways[{i}]"),
                        format!("gateway {g} does not exist"),
                    )
                    .code(REFERENCED_RESOURCE_NOT_FOUND)
                    .hint("routes bound to it take effect once the Gateway exists"),
                );
            }
        }
        diags
    }

    fn build_gateways(&mut self) {
        let objs: Vec<Arc<Object>> = self.of_kind(Kind::Gateway).cloned().collect();
        for obj in objs {
            let Spec::Gateway(spec) = &obj.spec else {
                continue;
            };
            let diags = validate::gateway(&obj, spec);
            let failed = diags.iter().any(Diagnostic::is_error);
            self.diags.extend(diags);
            if failed {
                self.objects.remove(&obj.key);
                continue;
            }
            self.gateways.push(Arc::new(GatewayConfig {
                key: obj.key.clone(),
                spec: spec.clone(),
                object: obj.clone(),
            }));
        }
    }

    fn build_telemetries(&mut self) {
        self.telemetries = self.accepted(Kind::Telemetry);
    }

    /// RateLimitPolicies, oldest first (the order ties are broken in), with their status
    /// and warnings for those that attach to nothing or lose a conflict.
    fn build_rate_limits(&mut self) {
        let given: Vec<Arc<Object>> = self.of_kind(Kind::RateLimitPolicy).cloned().collect();
        let mut all = self.accepted(Kind::RateLimitPolicy);
        all.sort_by(|a, b| (&a.created, &a.key).cmp(&(&b.created, &b.key)));
        // Refused ones get a status too (in Kubernetes an old `Accepted` would stay).
        for o in given.iter().filter(|o| !all.iter().any(|a| a.key == o.key)) {
            let name = o.key.to_string();
            let why: Vec<String> = self
                .diags
                .iter()
                .filter(|d| d.is_error() && d.object.as_deref() == Some(name.as_str()))
                .map(|d| match &d.field {
                    Some(f) => format!("{f}: {}", d.reason),
                    None => d.reason.clone(),
                })
                .collect();
            let c =
                super::gateway_api::status::Condition::fail("Accepted", "Invalid", &why.join("; "));
            self.statuses
                .set(&o.key, serde_json::json!({"conditions": [c.json(o)]}));
        }
        self.rate_limits = super::ratelimit::Policies::new(all, &self.virtual_services);
        let (diags, statuses) = super::ratelimit::check(
            &self.rate_limits,
            &super::ratelimit::World {
                mesh: &self.mesh,
                root: &self.mesh.root_namespace,
                domain: &self.domain,
                services: &self.services,
                workloads: &self.workloads,
                virtual_services: &self.virtual_services,
                gateways: &self.gateways,
            },
        );
        self.diags.extend(diags);
        for (key, status) in statuses {
            self.statuses.set(&key, status);
        }
    }

    fn build_envoy_filters(&mut self) {
        // A patch meshd cannot apply refuses the whole EnvoyFilter: half an EnvoyFilter
        // is worse than none.
        self.envoy_filters = self.accepted(Kind::EnvoyFilter);
        for obj in &self.envoy_filters {
            let Spec::EnvoyFilter(ef) = &obj.spec else {
                continue;
            };
            for (i, p) in ef.config_patches.iter().enumerate() {
                if let Some(v) = p.patch.as_ref().and_then(|x| x.value.as_ref())
                    && let Ok(n) = validate::envoy_filter_value(p.apply_to, v)
                {
                    self.envoy_filter_values.insert((obj.key.to_string(), i), n);
                }
                if let Some(pv) = p
                    .matches
                    .as_ref()
                    .and_then(|m| m.proxy.as_ref())
                    .map(|m| &m.proxy_version)
                    .filter(|v| !v.is_empty())
                    && let Ok(re) = regex::Regex::new(&format!("^(?:{pv})$"))
                {
                    self.envoy_filter_versions
                        .insert((obj.key.to_string(), i), re);
                }
            }
        }
        let root = self.mesh.root_namespace.clone();
        self.envoy_filters.sort_by_key(|o| {
            let priority = match &o.spec {
                Spec::EnvoyFilter(s) => s.priority,
                _ => 0,
            };
            (o.key.namespace != root, priority, o.key.clone())
        });
    }

    fn build_sidecars(&mut self) {
        let objs: Vec<Arc<Object>> = self.of_kind(Kind::Sidecar).cloned().collect();
        for obj in objs {
            let Spec::Sidecar(spec) = &obj.spec else {
                continue;
            };
            let mut diags = Vec::new();
            let mut egress_hosts = Vec::new();
            if let Some(p) = &spec.outbound_traffic_policy
                && p.egress_proxy.is_some()
                && p.mode == istio::SidecarOutboundMode::REGISTRY_ONLY
            {
                diags.push(
                    obj.diag_warning(
                        "spec.outboundTrafficPolicy.egressProxy",
                        "egressProxy applies only with mode ALLOW_ANY; it is ignored",
                    )
                    .hint("REGISTRY_ONLY blocks unknown destinations instead of sending them to the egress proxy"),
                );
            }
            for (i, ing) in spec.ingress.iter().enumerate() {
                if let Some(t) = &ing.tls {
                    use istio::ServerTlsMode as M;
                    if matches!(
                        t.mode,
                        M::PASSTHROUGH | M::AUTO_PASSTHROUGH | M::ISTIO_MUTUAL
                    ) {
                        diags.push(
                            obj.diag_error(
                                &format!("spec.ingress[{i}].tls.mode"),
                                format!("ingress tls mode {:?} is not allowed", t.mode),
                            )
                            .hint("SIMPLE or MUTUAL (OPTIONAL_MUTUAL), as Istio allows"),
                        );
                    } else if t.credential_name.is_empty()
                        && t.credential_names.is_empty()
                        && (t.server_certificate.is_empty() || t.private_key.is_empty())
                    {
                        diags.push(
                            obj.diag_error(
                                &format!("spec.ingress[{i}].tls"),
                                "ingress tls needs serverCertificate and privateKey (or credentialName)",
                            )
                            .hint("files mounted in the proxy, or a TLS Secret of the workload's namespace"),
                        );
                    }
                }
            }
            for (i, e) in spec.egress.iter().enumerate() {
                let mut hosts = Vec::new();
                if e.hosts.is_empty() {
                    diags.push(
                        obj.diag_error(
                            &format!("spec.egress[{i}].hosts"),
                            "an egress listener needs at least one host",
                        )
                        .hint("use \"*/*\" for every service in the mesh"),
                    );
                }
                for (j, h) in e.hosts.iter().enumerate() {
                    match host::NamespacedHost::parse(h, &obj.key.namespace) {
                        Ok(nh) => hosts.push(nh),
                        Err(msg) => {
                            diags.push(obj.diag_error(&format!("spec.egress[{i}].hosts[{j}]"), msg))
                        }
                    }
                }
                if let Some(p) = &e.port
                    && (p.number == 0 || p.number > 65535)
                {
                    diags.push(obj.diag_error(
                        &format!("spec.egress[{i}].port.number"),
                        format!("port {} is out of range", p.number),
                    ));
                }
                if !e.bind.is_empty()
                    && e.bind.parse::<std::net::IpAddr>().is_err()
                    && !e.bind.starts_with("unix://")
                {
                    diags.push(obj.diag_error(
                        &format!("spec.egress[{i}].bind"),
                        format!("bind {:?} is not an IP address", e.bind),
                    ));
                }
                egress_hosts.push(hosts);
            }
            if spec.egress.iter().filter(|e| e.port.is_none()).count() > 1 {
                diags.push(obj.diag_error(
                    "spec.egress",
                    "only one egress listener may omit the port (the catch-all)",
                ));
            }
            for (i, ing) in spec.ingress.iter().enumerate() {
                if ing.port.number == 0 || ing.port.number > 65535 {
                    diags.push(obj.diag_error(
                        &format!("spec.ingress[{i}].port.number"),
                        "ingress listener needs a port number",
                    ));
                }
            }
            let same_scope = self.sidecars.iter().find(|s| {
                s.key.namespace == obj.key.namespace
                    && s.spec.workload_selector.is_none()
                    && spec.workload_selector.is_none()
            });
            if let Some(other) = same_scope {
                diags.push(
                    obj.diag_error(
                        "",
                        format!(
                            "namespace {} already has a Sidecar without workloadSelector ({})",
                            obj.key.namespace, other.key
                        ),
                    )
                    .code(MULTIPLE_SIDECARS_WITHOUT_SELECTORS)
                    .hint("a namespace can have one default Sidecar; add a workloadSelector"),
                );
            }
            let failed = diags.iter().any(Diagnostic::is_error);
            self.diags.extend(diags);
            if failed {
                self.objects.remove(&obj.key);
                continue;
            }
            self.sidecars.push(Arc::new(SidecarConfig {
                key: obj.key.clone(),
                spec: spec.clone(),
                egress_hosts,
                object: obj.clone(),
            }));
        }
    }

    fn build_peer_authentications(&mut self) {
        let objs: Vec<Arc<Object>> = self.of_kind(Kind::PeerAuthentication).cloned().collect();
        for obj in objs {
            let Spec::PeerAuthentication(spec) = &obj.spec else {
                continue;
            };
            if spec.selector.is_none() && !spec.port_level_mtls.is_empty() {
                self.diags.push(
                    obj.diag_warning(
                        "spec.portLevelMtls",
                        "portLevelMtls only applies to PeerAuthentications with a selector; ignored",
                    )
                    .hint("add `selector.matchLabels` for the workload whose ports it sets"),
                );
            }
            let same_level = self.peer_authentications.iter().find(|p| {
                p.key.namespace == obj.key.namespace
                    && p.spec.selector.is_none()
                    && spec.selector.is_none()
            });
            if let Some(first) = same_level {
                self.diags.push(obj.diag_warning(
                    "",
                    format!(
                        "namespace {} already has a PeerAuthentication without selector ({}); this one is ignored",
                        obj.key.namespace, first.key
                    ),
                ));
                continue;
            }
            self.peer_authentications
                .push(Arc::new(PeerAuthenticationConfig {
                    key: obj.key.clone(),
                    spec: spec.clone(),
                }));
        }
    }

    fn build_authorization_policies(&mut self) {
        self.authorization_policies = self.accepted(Kind::AuthorizationPolicy);
    }

    fn build_request_authentications(&mut self) {
        self.request_authentications = self.accepted(Kind::RequestAuthentication);
    }

    /// Objects of `kind` that pass their per-object checks (what the validation webhook
    /// runs); the others are diagnostics and leave the snapshot.
    fn accepted(&mut self, kind: Kind) -> Vec<Arc<Object>> {
        let objs: Vec<Arc<Object>> = self.of_kind(kind).cloned().collect();
        let mut out = Vec::new();
        for obj in objs {
            let diags = validate::object(&obj, &self.mesh);
            let failed = diags.iter().any(Diagnostic::is_error);
            self.diags.extend(diags);
            if failed {
                self.objects.remove(&obj.key);
                continue;
            }
            out.push(obj);
        }
        out
    }

    /// Hashes and address indexes of the workloads-and-services stage's output.
    #[allow(clippy::type_complexity)]
    fn service_indexes(&self, previous: Option<&Snapshot>) -> ServiceIndexes {
        // The previous build's hash of a service or endpoint set kept as it was (the same
        // `Arc`, `keep_unchanged_services`).
        fn hashes<'a, T: serde::Serialize + 'a, M: FromIterator<(String, u64)>>(
            now: impl Iterator<Item = (&'a String, &'a Arc<T>)>,
            kept: impl Fn(&str, &Arc<T>) -> Option<u64>,
        ) -> M {
            now.map(|(h, v)| (h.clone(), kept(h, v).unwrap_or_else(|| hash_of(&**v))))
                .collect()
        }
        let config_hashes: BTreeMap<String, u64> = hashes(self.services.iter(), |h, v| {
            let p = previous?;
            let b = p.services.get(h).filter(|b| Arc::ptr_eq(b, v));
            b.and(p.config_hashes.get(h).copied())
        });
        let endpoint_hashes = hashes(self.endpoints.iter(), |h, v| {
            let p = previous?;
            let b = p.endpoints.get(h).filter(|b| Arc::ptr_eq(b, v));
            b.and(p.endpoint_hashes.get(h).copied())
        });
        let mut hosts_by_ip: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (h, eps) in self.endpoints.iter() {
            for inst in &eps.instances {
                let hosts = hosts_by_ip.entry(inst.address.clone()).or_default();
                if hosts.last() != Some(h) {
                    hosts.push(h.clone());
                }
            }
        }
        // The identities each service's endpoints run as: clients verify its pods by them
        // (auto mTLS), so a pod of a new service account changes the clients' clusters,
        // not only their endpoints (istiod pushes them in full too).
        let identity_hashes = self
            .endpoints
            .iter()
            .filter_map(|(h, eps)| Some((h.clone(), identity_hash(eps)?)))
            .collect();
        ServiceIndexes {
            config_hashes: Arc::new(config_hashes),
            identity_hashes,
            endpoint_hashes,
            workloads_by_ip: self.workloads_by_ip.clone(),
            hosts_by_ip: hosts_by_ip
                .into_iter()
                .map(|(a, h)| (a, Arc::from(h)))
                .collect(),
        }
    }

    /// `patched`: the services stage's hashes and indexes an endpoint patch made
    /// (`endpoints`), instead of computing them from every service.
    fn finish(
        self,
        previous: Option<&Snapshot>,
        reused: &Reused,
        patched: Option<ServiceIndexes>,
    ) -> Snapshot {
        let generation = previous.map_or(1, |p| p.generation + 1);
        // Per-host hashes of what shapes the host's clusters (service, DestinationRules)
        // and routes (VirtualServices), kept apart so a route change pushes only routes.
        // A stage taken from the previous snapshot keeps its hashes and indexes too.
        fn mix(map: &mut BTreeMap<String, u64>, host: &str, v: u64) {
            let e = map.entry(host.to_string()).or_insert(0);
            *e = xxhash_rust::xxh3::xxh3_64(&[e.to_le_bytes(), v.to_le_bytes()].concat());
        }
        let ServiceIndexes {
            config_hashes,
            identity_hashes,
            endpoint_hashes,
            workloads_by_ip,
            hosts_by_ip,
        } = match (reused.services, patched) {
            (_, Some(patched)) => patched,
            (Some(prev), None) => ServiceIndexes {
                config_hashes: prev.config_hashes.clone(),
                identity_hashes: prev.identity_hashes.clone(),
                endpoint_hashes: prev.endpoint_hashes.clone(),
                workloads_by_ip: prev.workloads_by_ip.clone(),
                hosts_by_ip: prev.hosts_by_ip.clone(),
            },
            (None, None) => self.service_indexes(previous),
        };
        let (route_hashes, l4_route_hashes) = match reused.routes {
            Some(prev) => (prev.route_hashes.clone(), prev.l4_route_hashes.clone()),
            None => {
                let mut route_hashes: BTreeMap<String, u64> = BTreeMap::new();
                let mut l4_route_hashes: BTreeMap<String, u64> = BTreeMap::new();
                for vs in &self.virtual_services {
                    let h = vs.hash();
                    let l4 = (!vs.spec.tcp.is_empty() || !vs.spec.tls.is_empty())
                        .then(|| hash_of(&(&vs.spec.tcp, &vs.spec.tls, &vs.gateways, &vs.key)));
                    for host in &vs.hosts {
                        mix(&mut route_hashes, host, h);
                        if let Some(l4) = l4 {
                            mix(&mut l4_route_hashes, host, l4);
                        }
                    }
                }
                (Arc::new(route_hashes), Arc::new(l4_route_hashes))
            }
        };
        let policy_hashes = match reused.rules {
            Some(prev) => prev.policy_hashes.clone(),
            None => {
                let mut policy_hashes: BTreeMap<String, u64> = BTreeMap::new();
                for (host, rules) in self.destination_rules.iter() {
                    for r in rules {
                        mix(&mut policy_hashes, host, hash_of(&**r));
                    }
                }
                Arc::new(policy_hashes)
            }
        };
        let mut sidecar_hashes: BTreeMap<String, u64> = BTreeMap::new();
        for s in &self.sidecars {
            let e = sidecar_hashes.entry(s.key.namespace.clone()).or_insert(0);
            *e ^= hash_of(&**s);
        }
        // The objects' own hashes too: generated Gateways carry settings in annotations
        // (a Gateway API Gateway's backend client certificate, client validation mode).
        let sessions = self
            .virtual_services
            .iter()
            .any(|v| v.sessions.iter().any(Option::is_some));
        let gateway_hash = hash_of(&self.gateways)
            ^ hash_of(
                &self
                    .gateways
                    .iter()
                    .map(|g| g.object.hash)
                    .collect::<Vec<u64>>(),
            );
        // PeerAuthentication shapes inbound chains and (through auto mTLS) every client's
        // clusters: a change is mesh-wide.
        // What the objects mean (key, creation time for tie-breaks, metadata, spec), not their
        // bookkeeping: a status written back changes the resourceVersion, which must
        // not push every proxy again.
        let meaning = |objs: &[Arc<Object>]| -> u64 {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            for o in objs {
                h.update(
                    &serde_json::to_vec(&(&o.key, &o.created, &o.labels, &o.annotations, &o.spec))
                        .unwrap_or_default(),
                );
            }
            h.digest()
        };
        let peer_auth_hash = xxhash_rust::xxh3::xxh3_64(
            &[
                hash_of(&self.peer_authentications).to_le_bytes(),
                // Authorization shapes inbound chains of the workloads it selects.
                meaning(&self.authorization_policies).to_le_bytes(),
                meaning(&self.request_authentications).to_le_bytes(),
                // EnvoyFilters patch anything, anywhere.
                meaning(&self.envoy_filters).to_le_bytes(),
                meaning(&self.telemetries).to_le_bytes(),
                // Rate limits shape the connection managers and routes they attach to.
                meaning(&self.rate_limits.all).to_le_bytes(),
            ]
            .concat(),
        );
        let mut diagnostics = self.diags;
        diagnostics.sort_by(|a, b| (&a.origin, &a.object).cmp(&(&b.origin, &b.object)));
        diagnostics.dedup();
        Snapshot {
            generation,
            mesh: Arc::new(self.mesh),
            objects: self.objects,
            services: self.services,
            endpoints: self.endpoints,
            virtual_services: self.virtual_services,
            destination_rules: self.destination_rules,
            gateways: self.gateways,
            sidecars: self.sidecars,
            peer_authentications: self.peer_authentications,
            authorization_policies: self.authorization_policies,
            request_authentications: self.request_authentications,
            envoy_filters: self.envoy_filters,
            envoy_filter_values: self.envoy_filter_values,
            envoy_filter_versions: self.envoy_filter_versions,
            telemetries: self.telemetries,
            statuses: Arc::new(self.statuses),
            rate_limits: Arc::new(self.rate_limits),
            sessions,
            workloads: self.workloads,
            workloads_by_ip,
            hosts_by_ip,
            diagnostics,
            config_hashes,
            identity_hashes,
            route_hashes,
            l4_route_hashes,
            policy_hashes,
            endpoint_hashes,
            pods: self.pods,
            service_selectors: self.service_selectors,
            endpoint_objects: self.endpoint_objects,
            sidecar_hashes,
            gateway_hash,
            peer_auth_hash,
            scopes: Mutex::new(HashMap::new()),
            selector_keys: Default::default(),
            failover_keys: Default::default(),
            build_stages: Vec::new(),
            stage_prints: StagePrints::default(),
            stage_diags: StageDiagnostics::default(),
            selector_key_memo: KeyMemo::default(),
        }
    }
}

/// The hash of the identities (namespace, service account) a service's endpoints run
/// as, if any has one.
fn identity_hash(eps: &ServiceEndpoints) -> Option<u64> {
    let mut ids: Vec<(&str, &str)> = eps
        .instances
        .iter()
        .filter(|i| !i.service_account.is_empty() && !i.namespace.is_empty())
        .map(|i| (i.namespace.as_str(), i.service_account.as_str()))
        .collect();
    if ids.is_empty() {
        return None;
    }
    ids.sort_unstable();
    ids.dedup();
    Some(hash_of(&ids))
}

/// The same object for a stage's purpose: the same `Arc`, or equal content from the
/// same place (sources that rebuild unchanged objects make new `Arc`s).
fn same_object(a: &Arc<Object>, b: &Arc<Object>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.hash == b.hash
            && a.api_version == b.api_version
            && a.origin == b.origin
            && a.created == b.created
            && a.generation == b.generation
            && a.lines == b.lines)
}

/// Whether a VirtualService's result depends on other VirtualServices: a root that
/// delegates, or a delegate (no hosts of its own).
fn delegates(obj: &Object) -> bool {
    match &obj.spec {
        Spec::VirtualService(spec) => {
            spec.hosts.is_empty() || spec.http.iter().any(|r| r.delegate.is_some())
        }
        _ => true,
    }
}

/// The previous snapshot's accepted version of `key`, if it is still acceptable.
fn last_good(
    previous: Option<&Snapshot>,
    key: &ObjectKey,
    still_valid: impl Fn(&Object) -> bool,
) -> Option<Arc<Object>> {
    let prev = previous?.objects.get(key)?;
    still_valid(prev).then(|| prev.clone())
}

/// Merges `new` into the rules already listed for its host, as istiod does for rules
/// of one namespace: a rule with the same workload selector (or none) and a compatible
/// `exportTo` (the same, or a superset of a non-empty one) gains `new`'s subsets — a
/// subset name already defined stays the first rule's — and `new`'s traffic policy if
/// it had none. A rule without a selector also feeds the selector rules of its
/// namespace (they then stand alone for their workloads). Returns whether `new` must be
/// listed separately (it merged into no rule that it can replace).
fn merge_destination_rule(
    list: &mut [Arc<DestinationRuleConfig>],
    new: &DestinationRuleConfig,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    // A rule with a workload selector applies in its own namespace only: its export set
    // is `.` whatever it says (istiod's view when merging).
    let export_of = |dr: &DestinationRuleConfig| -> BTreeSet<String> {
        if dr.spec.workload_selector.is_some() {
            BTreeSet::from([".".to_string()])
        } else {
            dr.spec.export_to.iter().cloned().collect()
        }
    };
    let export = export_of(new);
    let mut separate = true;
    for existing in list.iter_mut() {
        if existing.key.namespace != new.key.namespace {
            continue;
        }
        let theirs = export_of(existing);
        if !(theirs == export || (!theirs.is_empty() && export.is_superset(&theirs))) {
            continue;
        }
        let same_selector = existing.spec.workload_selector == new.spec.workload_selector;
        if !same_selector && (new.spec.workload_selector.is_some()) {
            continue;
        }
        let e = Arc::make_mut(existing);
        for subset in &new.spec.subsets {
            if e.spec.subsets.iter().any(|s| s.name == subset.name) {
                diags.push(
                    new.object
                        .diag_warning(
                            "spec.subsets",
                            format!(
                                "subset {:?} for host {} is already defined by DestinationRule {}; \
                                 this one is ignored (rules for one host merge, the first subset wins)",
                                subset.name, new.host, e.key
                            ),
                        )
                        .hint("give the subset another name, or define it in one DestinationRule"),
                );
            } else {
                e.spec.subsets.push(subset.clone());
            }
        }
        match (&e.spec.traffic_policy, &new.spec.traffic_policy) {
            (None, Some(p)) => e.spec.traffic_policy = Some(p.clone()),
            (Some(_), Some(_)) => diags.push(
                new.object
                    .diag_warning(
                        "spec.trafficPolicy",
                        format!(
                            "DestinationRule {} already sets the traffic policy for host {}; \
                             this rule's trafficPolicy is ignored (its subsets still apply)",
                            e.key, new.host
                        ),
                    )
                    .hint("set the traffic policy in one DestinationRule per host"),
            ),
            _ => {}
        }
        e.merged.push(new.key.clone());
        if same_selector {
            separate = false;
        }
    }
    separate
}

fn keeping_last_good(new: &Object, prev: &Object) -> Diagnostic {
    Diagnostic::warning(
        new.origin.clone(),
        format!(
            "the new version of {} was refused; the last good version (from {}) stays in force",
            new.key, prev.origin
        ),
    )
    .object(new.key.to_string())
}
