//! Configuration objects as meshd stores them: a kind, a namespace/name, a typed spec
//! (Istio kinds in full, Kubernetes kinds trimmed to what translation reads), and where
//! the object came from.
//!
//! Every source (files, Kubernetes) produces `Object`s through [`Object::from_value`], so
//! validation and diagnostics are the same whichever way configuration arrives.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::diagnostic::{Diagnostic, Origin, closest};
use super::gateway_api;
use super::istio;
use crate::sources::yaml::FieldLines;

/// The kinds meshd reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    Namespace,
    Service,
    Pod,
    Endpoints,
    EndpointSlice,
    ConfigMap,
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    Secret,
    EnvoyFilter,
    Telemetry,
    Node,
    /// Kubernetes Gateway API (`gateway.networking.k8s.io`).
    GatewayClass,
    /// The Gateway API's Gateway (named `Gateway` in its group; this name keeps it apart
    /// from Istio's).
    KubeGateway,
    HTTPRoute,
    ReferenceGrant,
    TLSRoute,
    TCPRoute,
    GRPCRoute,
    ListenerSet,
    BackendTLSPolicy,
    /// meshd's own rate limiting policy (`policy.meshd.io`).
    RateLimitPolicy,
}

const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

/// Istio kinds meshd recognises but does not translate yet: they are reported, not
/// silently dropped, so nobody believes a policy is enforced when it is not.
const NOT_YET_SUPPORTED: &[(&str, &str)] = &[
    ("networking.istio.io", "WorkloadGroup"),
    ("networking.istio.io", "ProxyConfig"),
    ("extensions.istio.io", "WasmPlugin"),
    ("extensions.istio.io", "TrafficExtension"),
    ("gateway.networking.k8s.io", "UDPRoute"),
];

impl Kind {
    pub const ALL: [Kind; 29] = [
        Kind::Namespace,
        Kind::Service,
        Kind::Pod,
        Kind::Endpoints,
        Kind::EndpointSlice,
        Kind::ConfigMap,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::WorkloadEntry,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Secret,
        Kind::EnvoyFilter,
        Kind::Telemetry,
        Kind::Node,
        Kind::GatewayClass,
        Kind::KubeGateway,
        Kind::HTTPRoute,
        Kind::ReferenceGrant,
        Kind::TLSRoute,
        Kind::TCPRoute,
        Kind::GRPCRoute,
        Kind::ListenerSet,
        Kind::BackendTLSPolicy,
        Kind::RateLimitPolicy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::Endpoints => "Endpoints",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ConfigMap => "ConfigMap",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Secret => "Secret",
            Kind::EnvoyFilter => "EnvoyFilter",
            Kind::Telemetry => "Telemetry",
            Kind::Node => "Node",
            Kind::GatewayClass => "GatewayClass",
            Kind::KubeGateway => "Gateway",
            Kind::HTTPRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::TLSRoute => "TLSRoute",
            Kind::TCPRoute => "TCPRoute",
            Kind::GRPCRoute => "GRPCRoute",
            Kind::ListenerSet => "ListenerSet",
            Kind::BackendTLSPolicy => "BackendTLSPolicy",
            Kind::RateLimitPolicy => "RateLimitPolicy",
        }
    }

    /// API group ("" for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Namespace
            | Kind::Service
            | Kind::Pod
            | Kind::Endpoints
            | Kind::ConfigMap
            | Kind::Secret
            | Kind::Node => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::GatewayClass
            | Kind::KubeGateway
            | Kind::HTTPRoute
            | Kind::ReferenceGrant
            | Kind::TLSRoute
            | Kind::TCPRoute
            | Kind::GRPCRoute
            | Kind::ListenerSet
            | Kind::BackendTLSPolicy => gateway_api::GROUP,
            Kind::Telemetry => "telemetry.istio.io",
            Kind::RateLimitPolicy => super::ratelimit::GROUP,
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            _ => "networking.istio.io",
        }
    }

    /// Versions of the group this kind is served in.
    pub fn versions(self) -> &'static [&'static str] {
        if self == Kind::EnvoyFilter {
            return &["v1alpha3"];
        }
        if self == Kind::Telemetry {
            return &["v1", "v1alpha1"];
        }
        if self == Kind::TLSRoute {
            return &["v1", "v1alpha2", "v1alpha3"];
        }
        if self == Kind::TCPRoute {
            return &["v1alpha2"];
        }
        if self == Kind::RateLimitPolicy {
            return &["v1alpha1"];
        }
        if self == Kind::GRPCRoute || self == Kind::ListenerSet {
            return &["v1"];
        }
        if self == Kind::BackendTLSPolicy {
            return &["v1", "v1alpha3"];
        }
        match self.group() {
            "" | "discovery.k8s.io" => &["v1"],
            gateway_api::GROUP => &["v1", "v1beta1"],
            "security.istio.io" => &["v1", "v1beta1"],
            _ => NETWORKING_VERSIONS,
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::GatewayClass)
    }

    pub fn is_istio(self) -> bool {
        self.group().ends_with("istio.io")
    }

    pub fn is_gateway_api(self) -> bool {
        self.group() == gateway_api::GROUP
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Two kinds are named Gateway: this one says its group, as kubectl does.
            Kind::KubeGateway => f.write_str("Gateway.gateway.networking.k8s.io"),
            _ => f.write_str(self.name()),
        }
    }
}

/// What an apiVersion/kind pair is to meshd.
#[derive(Debug, PartialEq, Eq)]
pub enum TypeLookup {
    Known(Kind),
    /// An Istio kind meshd does not translate yet.
    NotYetSupported,
    /// A kind meshd has no use for (Deployment, ServiceAccount, …): ignored quietly.
    Ignored,
    /// A kind meshd knows, in a version nobody serves.
    BadVersion {
        kind: Kind,
        served: &'static [&'static str],
    },
}

pub fn lookup_type(api_version: &str, kind: &str) -> TypeLookup {
    let (group, version) = match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    if let Some(k) = Kind::ALL
        .iter()
        .copied()
        .find(|k| k.name() == kind && k.group() == group)
    {
        if k.versions().contains(&version) {
            return TypeLookup::Known(k);
        }
        return TypeLookup::BadVersion {
            kind: k,
            served: k.versions(),
        };
    }
    if NOT_YET_SUPPORTED.contains(&(group, kind)) {
        return TypeLookup::NotYetSupported;
    }
    TypeLookup::Ignored
}

/// Identity of an object: two objects with the same key are the same object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A Service port as translation needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
    /// L4 protocol: TCP, UDP or SCTP.
    pub protocol: String,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// The parts of a Kubernetes Service spec that matter to the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
    /// None: endpoints are managed by hand (Endpoints/EndpointSlice objects).
    pub selector: Option<BTreeMap<String, String>>,
    /// Cluster IPs; empty for headless services.
    pub cluster_ips: Vec<String>,
    pub headless: bool,
    pub service_type: String,
    pub external_name: Option<String>,
    pub publish_not_ready: bool,
}

/// The parts of a Pod that make endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub ips: Vec<String>,
    pub phase: String,
    pub ready: bool,
    pub service_account: String,
    pub node_name: String,
    /// (name, containerPort) of every container port.
    pub container_ports: Vec<(String, u16)>,
    pub host_network: bool,
    pub terminating: bool,
    /// The controlling owner (kind, name) from `metadata.ownerReferences`, when the pod's
    /// name was generated (`metadata.generateName`), as istiod looks it up.
    pub controller: Option<(String, String)>,
}

impl PodInfo {
    /// The workload the pod belongs to, as istiod names it (its `GetWorkloadMetaFromPod`):
    /// the `service.istio.io/workload-name` label; else, for a pod a controller made, the
    /// Deployment behind a ReplicaSet (or an Argo Rollout), an OpenShift DeploymentConfig,
    /// the CronJob behind a Job named `NAME-<timestamp>`, or the controller itself; else
    /// (a pod with no controller, as files often give them) the pod name with the
    /// Deployment and StatefulSet suffixes taken off.
    pub fn workload_name(&self, pod: &str, labels: &BTreeMap<String, String>) -> String {
        if let Some(w) = labels.get("service.istio.io/workload-name") {
            return w.clone();
        }
        let label = |k: &str| labels.get(k).filter(|v| !v.is_empty());
        let Some((kind, name)) = &self.controller else {
            return name_heuristic(pod, labels);
        };
        match kind.as_str() {
            "ReplicaSet" => {
                for hash in ["pod-template-hash", "rollouts-pod-template-hash"] {
                    if let Some(h) = label(hash)
                        && let Some(base) = name.strip_suffix(h.as_str())
                        && let Some(base) = base.strip_suffix('-')
                    {
                        return base.to_string();
                    }
                }
                name.clone()
            }
            "ReplicationController" => label("deploymentconfig").unwrap_or(name).clone(),
            "Job" => match name.rsplit_once('-') {
                Some((cron, stamp))
                    if (8..=10).contains(&stamp.len())
                        && stamp.chars().all(|c| c.is_ascii_digit()) =>
                {
                    cron.to_string()
                }
                _ => name.clone(),
            },
            _ => name.clone(),
        }
    }
}

/// A pod's workload from its name alone: a Deployment's pods carry the ReplicaSet's
/// `pod-template-hash` (`reviews-v1-5d8f7c9b6-x2x7z` → `reviews-v1`), a StatefulSet's
/// their index (`db-0` → `db`); any other pod is its own workload.
pub fn name_heuristic(pod: &str, labels: &BTreeMap<String, String>) -> String {
    if let Some(hash) = labels.get("pod-template-hash").filter(|h| !h.is_empty())
        && let Some(i) = pod.find(&format!("-{hash}"))
    {
        return pod[..i].to_string();
    }
    if labels.contains_key("statefulset.kubernetes.io/pod-name")
        && let Some((base, index)) = pod.rsplit_once('-')
        && index.chars().all(|c| c.is_ascii_digit())
    {
        return base.to_string();
    }
    pod.to_string()
}

/// One address of an Endpoints subset or EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointAddress {
    pub ip: String,
    pub ready: bool,
    /// Name of the Pod behind the address (targetRef), if any.
    pub pod: Option<String>,
}

/// A named port of an Endpoints subset or EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    pub name: String,
    pub port: u16,
}

/// Endpoints or an EndpointSlice, normalised: addresses × ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointGroup {
    /// Name of the Service the endpoints belong to.
    pub service: String,
    pub subsets: Vec<(Vec<EndpointAddress>, Vec<EndpointPort>)>,
}

/// The TLS material of a Secret (`tls.crt`, `tls.key`, `ca.crt`, or istio's generic
/// `cert`, `key`, `cacert`). Never serialized: /debug/configz shows only which keys exist.
#[derive(Clone, PartialEq)]
pub struct TlsSecret {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub ca: Option<String>,
    /// Revoked client or server certificates (`ca.crl`), checked with `ca`.
    pub crl: Option<String>,
}

impl std::fmt::Debug for TlsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSecret")
            .field("cert", &self.cert.is_some())
            .field("key", &self.key.is_some())
            .field("ca", &self.ca.is_some())
            .field("crl", &self.crl.is_some())
            .finish()
    }
}

impl Serialize for TlsSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("TlsSecret", 4)?;
        st.serialize_field("cert", &self.cert.as_ref().map(|_| "<redacted>"))?;
        st.serialize_field("key", &self.key.as_ref().map(|_| "<redacted>"))?;
        st.serialize_field("ca", &self.ca.as_ref().map(|_| "<redacted>"))?;
        st.serialize_field("crl", &self.crl.as_ref().map(|_| "<redacted>"))?;
        st.end()
    }
}

/// A typed spec.
// Objects live behind an Arc, one allocation each: boxing the larger variants would only
// add a second one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    Namespace,
    Service(ServiceSpec),
    Pod(PodInfo),
    Endpoints(EndpointGroup),
    ConfigMap(BTreeMap<String, String>),
    VirtualService(istio::VirtualService),
    DestinationRule(istio::DestinationRule),
    Gateway(istio::Gateway),
    ServiceEntry(istio::ServiceEntry),
    Sidecar(istio::Sidecar),
    EnvoyFilter(istio::EnvoyFilter),
    Telemetry(istio::Telemetry),
    /// A Kubernetes Node: only its locality (`region/zone/subzone` from the topology
    /// labels) is kept.
    Node(String),
    WorkloadEntry(istio::WorkloadEntry),
    PeerAuthentication(istio::PeerAuthentication),
    AuthorizationPolicy(istio::AuthorizationPolicy),
    RequestAuthentication(istio::RequestAuthentication),
    Secret(TlsSecret),
    GatewayClass(gateway_api::GatewayClassSpec),
    KubeGateway(gateway_api::GatewaySpec),
    HTTPRoute(gateway_api::HttpRouteSpec),
    ReferenceGrant(gateway_api::ReferenceGrantSpec),
    TLSRoute(gateway_api::StreamRouteSpec),
    TCPRoute(gateway_api::StreamRouteSpec),
    GRPCRoute(gateway_api::GrpcRouteSpec),
    ListenerSet(gateway_api::ListenerSetSpec),
    BackendTLSPolicy(gateway_api::BackendTlsPolicySpec),
    RateLimitPolicy(super::ratelimit::RateLimitPolicySpec),
}

/// One stored configuration object.
#[derive(Debug, Clone, Serialize)]
pub struct Object {
    pub key: ObjectKey,
    pub api_version: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp` (RFC 3339, so it sorts as text), when the source
    /// gives one: istiod orders some kinds by it (oldest first wins).
    pub created: Option<String>,
    /// `metadata.generation` when the source gives one (Kubernetes): Gateway API status
    /// conditions report the generation they describe.
    pub generation: Option<i64>,
    pub spec: Spec,
    pub origin: Origin,
    /// Field lines of the source document (file source only; Istio kinds only).
    #[serde(skip)]
    pub lines: Option<FieldLines>,
    /// Hash of the object's content, independent of where it came from.
    pub hash: u64,
}

impl Object {
    /// Whether meshd made this object from another (an Istio Gateway or VirtualService
    /// converted from the Gateway API): it exists in no source, so no status is written
    /// for it.
    pub fn is_generated(&self) -> bool {
        self.annotations
            .contains_key(super::gateway_api::convert::GENERATED_FROM)
    }

    /// A diagnostic about `field` (a path inside the object) with its line when known.
    pub fn diag_error(&self, field: &str, reason: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.origin_of(field), reason)
            .object(self.key.to_string())
            .field(field)
    }

    pub fn diag_warning(&self, field: &str, reason: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(self.origin_of(field), reason)
            .object(self.key.to_string())
            .field(field)
    }

    fn origin_of(&self, field: &str) -> Origin {
        match self.lines.as_ref().and_then(|l| l.line_of(field)) {
            Some(line) => self.origin.at_line(line),
            None => self.origin.clone(),
        }
    }

    /// Builds the objects in one parsed document (several for `kind: List`).
    /// Kinds meshd has no use for yield nothing; bad objects yield a diagnostic.
    pub fn from_value(
        value: Value,
        lines: FieldLines,
        origin: Origin,
        default_namespace: &str,
    ) -> (Vec<Arc<Object>>, Vec<Diagnostic>) {
        let mut objects = Vec::new();
        let mut diags = Vec::new();
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
            let items = match value {
                Value::Object(mut m) => m.remove("items"),
                _ => None,
            };
            for (i, item) in items
                .and_then(|v| match v {
                    Value::Array(a) => Some(a),
                    _ => None,
                })
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let item_lines = lines.child(&format!("items[{i}]"));
                let item_origin = match item_lines.line_of("") {
                    Some(l) => origin.at_line(l),
                    None => origin.clone(),
                };
                match Object::one_from_value(item, item_lines, item_origin, default_namespace) {
                    Ok(Some(o)) => objects.push(Arc::new(o)),
                    Ok(None) => {}
                    Err(d) => diags.push(d),
                }
            }
        } else {
            match Object::one_from_value(value, lines, origin, default_namespace) {
                Ok(Some(o)) => objects.push(Arc::new(o)),
                Ok(None) => {}
                Err(d) => diags.push(d),
            }
        }
        (objects, diags)
    }

    fn one_from_value(
        value: Value,
        lines: FieldLines,
        origin: Origin,
        default_namespace: &str,
    ) -> Result<Option<Object>, Diagnostic> {
        let at = |field: &str| match lines.line_of(field) {
            Some(l) => origin.at_line(l),
            None => origin.clone(),
        };
        let Value::Object(mut map) = value else {
            return Err(Diagnostic::error(
                origin.clone(),
                "a manifest must be a mapping with apiVersion, kind and metadata",
            ));
        };
        let api_version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind_name = map
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if api_version.is_empty() || kind_name.is_empty() {
            return Err(
                Diagnostic::error(at(""), "object has no apiVersion or no kind")
                    .hint("every manifest needs `apiVersion:` and `kind:`, as kubectl requires"),
            );
        }
        let kind = match lookup_type(&api_version, &kind_name) {
            TypeLookup::Known(k) => k,
            TypeLookup::Ignored => return Ok(None),
            TypeLookup::NotYetSupported => {
                return Err(Diagnostic::warning(
                    at("kind"),
                    format!("{kind_name} is not supported by meshd yet; the object is ignored"),
                )
                .object(format!("{kind_name} {}", meta_name(&map)))
                .hint("see docs/COMPATIBILITY.md for what is translated"));
            }
            TypeLookup::BadVersion { kind, served } => {
                let group = kind.group();
                let list: Vec<String> = served
                    .iter()
                    .map(|v| {
                        if group.is_empty() {
                            v.to_string()
                        } else {
                            format!("{group}/{v}")
                        }
                    })
                    .collect();
                return Err(Diagnostic::error(
                    at("apiVersion"),
                    format!("apiVersion {api_version} is not served for {kind}"),
                )
                .object(format!("{kind} {}", meta_name(&map)))
                .field("apiVersion")
                .hint(format!("use one of: {}", list.join(", "))));
            }
        };
        let meta = map.remove("metadata").unwrap_or(Value::Null);
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(
                Diagnostic::error(at("metadata"), format!("{kind} has no metadata.name"))
                    .field("metadata.name")
                    .hint("file-based configuration needs explicit names (no generateName)"),
            );
        }
        let namespace = if kind.namespaced() {
            meta.get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(default_namespace)
                .to_string()
        } else {
            String::new()
        };
        let key = ObjectKey {
            kind,
            namespace,
            name,
        };
        let string_map = |field: &str| -> Result<BTreeMap<String, String>, Diagnostic> {
            match meta.get(field) {
                None | Some(Value::Null) => Ok(BTreeMap::new()),
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                    Diagnostic::error(
                        at(&format!("metadata.{field}")),
                        format!("metadata.{field} must map strings to strings: {e}"),
                    )
                    .object(key.to_string())
                    .field(format!("metadata.{field}"))
                    .hint("quote values such as \"true\" or \"1.0\"")
                }),
            }
        };
        let labels = string_map("labels")?;
        let annotations = string_map("annotations")?;
        let created = meta
            .get("creationTimestamp")
            .and_then(Value::as_str)
            .map(str::to_string);
        let generation = meta.get("generation").and_then(Value::as_i64);
        let resource_version = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);

        // Hash the content that defines the object's meaning, not bookkeeping fields.
        let hash = {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(key.to_string().as_bytes());
            h.update(&serde_json::to_vec(&(&labels, &annotations)).unwrap_or_default());
            for (k, v) in &map {
                if k != "apiVersion" && k != "kind" {
                    h.update(k.as_bytes());
                    h.update(&serde_json::to_vec(v).unwrap_or_default());
                }
            }
            h.digest()
        };

        let spec = parse_spec(kind, &key, &mut map, &meta, &lines, &origin)?;
        let Some(spec) = spec else { return Ok(None) };
        let origin = match (&origin.file, resource_version) {
            (None, Some(rv)) => Origin {
                resource_version: Some(rv),
                ..origin
            },
            _ => origin,
        };
        Ok(Some(Object {
            key,
            api_version,
            labels,
            annotations,
            created,
            generation,
            spec,
            origin,
            lines: (kind.is_istio() || kind.is_gateway_api() || kind == Kind::RateLimitPolicy)
                .then_some(lines),
            hash,
        }))
    }
}

/// The key a document would have, read without validating it (to find the last good
/// version of an object whose new version is refused).
pub fn key_of(value: &Value, default_namespace: &str) -> Option<ObjectKey> {
    let api_version = value.get("apiVersion")?.as_str()?;
    let kind = match lookup_type(api_version, value.get("kind")?.as_str()?) {
        TypeLookup::Known(k) | TypeLookup::BadVersion { kind: k, .. } => k,
        _ => return None,
    };
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let namespace = if kind.namespaced() {
        meta.get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(default_namespace)
            .to_string()
    } else {
        String::new()
    };
    Some(ObjectKey {
        kind,
        namespace,
        name,
    })
}

fn meta_name(map: &serde_json::Map<String, Value>) -> String {
    let meta = map.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Deserialises an Istio spec with the path of the first bad field.
fn istio_spec<T: serde::de::DeserializeOwned + Default>(
    key: &ObjectKey,
    spec: Option<Value>,
    lines: &FieldLines,
    origin: &Origin,
) -> Result<T, Diagnostic> {
    let Some(spec) = spec else {
        return Ok(T::default());
    };
    serde_path_to_error::deserialize::<_, T>(spec).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        let inner = err.into_inner().to_string();
        let line = lines.line_of(&path);
        let origin = line.map_or_else(|| origin.clone(), |l| origin.at_line(l));
        let mut d = Diagnostic::error(origin, inner.clone())
            .object(key.to_string())
            .field(&path);
        if let Some(hint) = unknown_field_hint(&inner) {
            d = d.hint(hint);
        } else if inner.contains("invalid type") {
            d = d.hint("check the field's type against Istio's API reference");
        } else if inner.contains("unknown variant") {
            d = d.hint("enum values are upper case, exactly as in Istio's API");
        }
        d
    })
}

/// "did you mean" for serde's `unknown field `x`, expected one of `a`, `b``.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    match closest(field, expected.iter().copied()) {
        Some(c) => Some(format!("did you mean `{c}`?")),
        None if !expected.is_empty() => Some(format!("valid fields: {}", expected.join(", "))),
        None => Some("this object takes no fields here".into()),
    }
}

fn parse_spec(
    kind: Kind,
    key: &ObjectKey,
    map: &mut serde_json::Map<String, Value>,
    meta: &Value,
    lines: &FieldLines,
    origin: &Origin,
) -> Result<Option<Spec>, Diagnostic> {
    let spec = map.remove("spec");
    let kube_err = |what: &str, e: serde_json::Error| {
        Diagnostic::error(origin.clone(), format!("malformed {what}: {e}")).object(key.to_string())
    };
    Ok(Some(match kind {
        Kind::VirtualService => Spec::VirtualService(istio_spec(key, spec, lines, origin)?),
        Kind::DestinationRule => Spec::DestinationRule(istio_spec(key, spec, lines, origin)?),
        Kind::Gateway => Spec::Gateway(istio_spec(key, spec, lines, origin)?),
        Kind::ServiceEntry => Spec::ServiceEntry(istio_spec(key, spec, lines, origin)?),
        Kind::Sidecar => Spec::Sidecar(istio_spec(key, spec, lines, origin)?),
        Kind::EnvoyFilter => Spec::EnvoyFilter(istio_spec(key, spec, lines, origin)?),
        Kind::Telemetry => Spec::Telemetry(istio_spec(key, spec, lines, origin)?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(istio_spec(key, spec, lines, origin)?),
        Kind::PeerAuthentication => Spec::PeerAuthentication(istio_spec(key, spec, lines, origin)?),
        Kind::AuthorizationPolicy => {
            Spec::AuthorizationPolicy(istio_spec(key, spec, lines, origin)?)
        }
        Kind::RequestAuthentication => {
            Spec::RequestAuthentication(istio_spec(key, spec, lines, origin)?)
        }
        Kind::GatewayClass => Spec::GatewayClass(istio_spec(key, spec, lines, origin)?),
        Kind::KubeGateway => Spec::KubeGateway(istio_spec(key, spec, lines, origin)?),
        Kind::HTTPRoute => Spec::HTTPRoute(istio_spec(key, spec, lines, origin)?),
        Kind::ReferenceGrant => Spec::ReferenceGrant(istio_spec(key, spec, lines, origin)?),
        Kind::TLSRoute => Spec::TLSRoute(istio_spec(key, spec, lines, origin)?),
        Kind::TCPRoute => Spec::TCPRoute(istio_spec(key, spec, lines, origin)?),
        Kind::GRPCRoute => Spec::GRPCRoute(istio_spec(key, spec, lines, origin)?),
        Kind::ListenerSet => Spec::ListenerSet(istio_spec(key, spec, lines, origin)?),
        Kind::BackendTLSPolicy => Spec::BackendTLSPolicy(istio_spec(key, spec, lines, origin)?),
        Kind::RateLimitPolicy => Spec::RateLimitPolicy(istio_spec(key, spec, lines, origin)?),
        Kind::Namespace => Spec::Namespace,
        Kind::Node => {
            let labels = meta.get("labels").cloned().unwrap_or(Value::Null);
            let get = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| labels.get(*k).and_then(Value::as_str))
                    .unwrap_or("")
                    .to_string()
            };
            let region = get(&[
                "topology.kubernetes.io/region",
                "failure-domain.beta.kubernetes.io/region",
            ]);
            let zone = get(&[
                "topology.kubernetes.io/zone",
                "failure-domain.beta.kubernetes.io/zone",
            ]);
            let subzone = get(&["topology.istio.io/subzone"]);
            Spec::Node(
                [region, zone, subzone]
                    .join("/")
                    .trim_end_matches('/')
                    .to_string(),
            )
        }
        Kind::Secret => {
            use base64::Engine;
            let mut entries: BTreeMap<String, String> = BTreeMap::new();
            if let Some(Value::Object(data)) = map.remove("data") {
                for (k, v) in data {
                    let b64 = v.as_str().unwrap_or_default();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| {
                            Diagnostic::error(
                                origin.clone(),
                                format!("Secret data {k:?} is not base64: {e}"),
                            )
                            .object(key.to_string())
                            .field(format!("data.{k}"))
                        })?;
                    entries.insert(k, String::from_utf8_lossy(&bytes).into_owned());
                }
            }
            if let Some(Value::Object(data)) = map.remove("stringData") {
                for (k, v) in data {
                    entries.insert(k, v.as_str().unwrap_or_default().to_string());
                }
            }
            let pick = |a: &str, b: &str| entries.get(a).or_else(|| entries.get(b)).cloned();
            let secret = TlsSecret {
                cert: pick("tls.crt", "cert"),
                key: pick("tls.key", "key"),
                ca: pick("ca.crt", "cacert"),
                crl: pick("ca.crl", "crl"),
            };
            if secret.cert.is_none() && secret.key.is_none() && secret.ca.is_none() {
                // Not TLS material: meshd has no use for it and does not keep it.
                return Ok(None);
            }
            Spec::Secret(secret)
        }
        Kind::ConfigMap => {
            let data = map.remove("data").unwrap_or(Value::Null);
            let data: BTreeMap<String, String> = if data.is_null() {
                BTreeMap::new()
            } else {
                serde_json::from_value(data).map_err(|e| kube_err("ConfigMap data", e))?
            };
            Spec::ConfigMap(data)
        }
        Kind::Service => {
            let spec: k8s_openapi::api::core::v1::ServiceSpec =
                serde_json::from_value(spec.unwrap_or(Value::Null))
                    .map_err(|e| kube_err("Service spec", e))?;
            Spec::Service(service_spec(spec, key, origin)?)
        }
        Kind::Pod => {
            let pod_spec: k8s_openapi::api::core::v1::PodSpec =
                serde_json::from_value(spec.unwrap_or(Value::Null))
                    .map_err(|e| kube_err("Pod spec", e))?;
            let status: k8s_openapi::api::core::v1::PodStatus =
                serde_json::from_value(map.remove("status").unwrap_or(Value::Null))
                    .map_err(|e| kube_err("Pod status", e))?;
            Spec::Pod(pod_info(pod_spec, status, meta))
        }
        Kind::Endpoints => {
            let subsets: Vec<k8s_openapi::api::core::v1::EndpointSubset> =
                serde_json::from_value(map.remove("subsets").unwrap_or(Value::Array(vec![])))
                    .map_err(|e| kube_err("Endpoints subsets", e))?;
            Spec::Endpoints(EndpointGroup {
                service: key.name.clone(),
                subsets: subsets
                    .into_iter()
                    .map(|s| {
                        let ready = s
                            .addresses
                            .unwrap_or_default()
                            .into_iter()
                            .map(|a| (a, true));
                        let not_ready = s
                            .not_ready_addresses
                            .unwrap_or_default()
                            .into_iter()
                            .map(|a| (a, false));
                        let addrs = ready
                            .chain(not_ready)
                            .map(|(a, ready)| EndpointAddress {
                                ip: a.ip,
                                ready,
                                pod: a
                                    .target_ref
                                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                                    .and_then(|r| r.name),
                            })
                            .collect();
                        let ports = s
                            .ports
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|p| {
                                Some(EndpointPort {
                                    name: p.name.unwrap_or_default(),
                                    port: u16::try_from(p.port).ok()?,
                                })
                            })
                            .collect();
                        (addrs, ports)
                    })
                    .collect(),
            })
        }
        Kind::EndpointSlice => {
            let endpoints: Vec<k8s_openapi::api::discovery::v1::Endpoint> =
                serde_json::from_value(map.remove("endpoints").unwrap_or(Value::Array(vec![])))
                    .map_err(|e| kube_err("EndpointSlice endpoints", e))?;
            let ports: Vec<k8s_openapi::api::discovery::v1::EndpointPort> =
                serde_json::from_value(map.remove("ports").unwrap_or(Value::Array(vec![])))
                    .map_err(|e| kube_err("EndpointSlice ports", e))?;
            let service = meta
                .get("labels")
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if service.is_empty() {
                return Err(Diagnostic::warning(
                    origin.clone(),
                    "EndpointSlice has no kubernetes.io/service-name label; ignored",
                )
                .object(key.to_string()));
            }
            let addrs = endpoints
                .into_iter()
                .flat_map(|e| {
                    let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    let pod = e
                        .target_ref
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| r.name);
                    e.addresses.into_iter().map(move |ip| EndpointAddress {
                        ip,
                        ready,
                        pod: pod.clone(),
                    })
                })
                .collect();
            let ports = ports
                .into_iter()
                .filter_map(|p| {
                    Some(EndpointPort {
                        name: p.name.unwrap_or_default(),
                        port: u16::try_from(p.port?).ok()?,
                    })
                })
                .collect();
            Spec::Endpoints(EndpointGroup {
                service,
                subsets: vec![(addrs, ports)],
            })
        }
    }))
}

fn service_spec(
    spec: k8s_openapi::api::core::v1::ServiceSpec,
    key: &ObjectKey,
    origin: &Origin,
) -> Result<ServiceSpec, Diagnostic> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().into_iter().enumerate() {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                Diagnostic::error(origin.clone(), format!("port {} is out of range", p.port))
                    .object(key.to_string())
                    .field(format!("spec.ports[{i}].port"))
            })?;
        let target_port = match p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(u16::try_from(n).ok().filter(|n| *n > 0).unwrap_or(port))
            }
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) => TargetPort::Number(n),
                Err(_) => TargetPort::Name(s),
            },
        };
        ports.push(ServicePort {
            name: p.name.unwrap_or_default(),
            port,
            target_port,
            protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
            app_protocol: p.app_protocol,
        });
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut cluster_ips: Vec<String> = spec.cluster_ips.unwrap_or_default();
    if cluster_ips.is_empty()
        && let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None")
    {
        cluster_ips.push(ip);
    }
    cluster_ips.retain(|ip| ip != "None" && !ip.is_empty());
    Ok(ServiceSpec {
        ports,
        selector: spec.selector.filter(|s| !s.is_empty()),
        cluster_ips,
        headless,
        service_type: spec.type_.unwrap_or_else(|| "ClusterIP".into()),
        external_name: spec.external_name,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
    })
}

fn pod_info(
    spec: k8s_openapi::api::core::v1::PodSpec,
    status: k8s_openapi::api::core::v1::PodStatus,
    meta: &Value,
) -> PodInfo {
    let mut ips: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.ip)
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.filter(|ip| !ip.is_empty())
    {
        ips.push(ip);
    }
    // A Pod without conditions (hand-written in a file) is taken as ready; with
    // conditions, Kubernetes' Ready condition decides, as the EndpointSlice controller does.
    let ready = match &status.conditions {
        None => true,
        Some(c) if c.is_empty() => true,
        Some(c) => c.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
    };
    let container_ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    PodInfo {
        ips,
        phase: status.phase.unwrap_or_else(|| "Running".into()),
        ready,
        service_account: spec
            .service_account_name
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        node_name: spec.node_name.unwrap_or_default(),
        container_ports,
        host_network: spec.host_network.unwrap_or(false),
        terminating: meta.get("deletionTimestamp").is_some_and(|v| !v.is_null()),
        controller: meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
            .and_then(|_| {
                meta.get("ownerReferences")?
                    .as_array()?
                    .iter()
                    .find(|r| r["controller"] == true)
                    .and_then(|r| {
                        Some((
                            r["kind"].as_str()?.to_string(),
                            r["name"].as_str()?.to_string(),
                        ))
                    })
            }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_workload_names_as_istiod_derives_them() {
        let info = |controller: Option<(&str, &str)>| PodInfo {
            ips: vec![],
            phase: "Running".into(),
            ready: true,
            service_account: "default".into(),
            node_name: String::new(),
            container_ports: vec![],
            host_network: false,
            terminating: false,
            controller: controller.map(|(k, n)| (k.to_string(), n.to_string())),
        };
        let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let hash = labels(&[("pod-template-hash", "5d8f7c9b6")]);
        assert_eq!(
            info(Some(("ReplicaSet", "reviews-v1-5d8f7c9b6")))
                .workload_name("reviews-v1-5d8f7c9b6-x2x7z", &hash),
            "reviews-v1"
        );
        assert_eq!(
            info(Some(("DaemonSet", "node-agent"))).workload_name("node-agent-q8x2k", &labels(&[])),
            "node-agent"
        );
        assert_eq!(
            info(Some(("Job", "backup-28391234")))
                .workload_name("backup-28391234-abcde", &labels(&[])),
            "backup"
        );
        assert_eq!(
            info(Some(("Job", "migrate"))).workload_name("migrate-abcde", &labels(&[])),
            "migrate"
        );
        assert_eq!(
            info(Some(("ReplicaSet", "bare"))).workload_name("bare-xyz", &labels(&[])),
            "bare"
        );
        assert_eq!(
            info(None).workload_name("reviews-v1-5d8f7c9b6-x2x7z", &hash),
            "reviews-v1",
            "no owner (a file's pod): from the name"
        );
        assert_eq!(
            info(Some(("DaemonSet", "ds"))).workload_name(
                "ds-1",
                &labels(&[("service.istio.io/workload-name", "chosen")])
            ),
            "chosen"
        );
    }

    use super::*;
    use crate::sources::yaml::parse_documents;

    fn objects(text: &str) -> (Vec<Arc<Object>>, Vec<Diagnostic>) {
        let mut all = (Vec::new(), Vec::new());
        for doc in parse_documents(text) {
            let doc = doc.expect("yaml parses");
            let origin = Origin::file(Arc::new("t.yaml".into()), doc.start_line);
            let (o, d) = Object::from_value(doc.value, doc.lines, origin, "default");
            all.0.extend(o);
            all.1.extend(d);
        }
        all
    }

    #[test]
    fn types_are_looked_up_by_group_and_version() {
        assert_eq!(
            lookup_type("networking.istio.io/v1alpha3", "VirtualService"),
            TypeLookup::Known(Kind::VirtualService)
        );
        assert_eq!(
            lookup_type("v1", "Service"),
            TypeLookup::Known(Kind::Service)
        );
        assert_eq!(lookup_type("apps/v1", "Deployment"), TypeLookup::Ignored);
        assert!(matches!(
            lookup_type("networking.istio.io/v2", "Gateway"),
            TypeLookup::BadVersion { .. }
        ));
        assert_eq!(
            lookup_type("security.istio.io/v1", "AuthorizationPolicy"),
            TypeLookup::Known(Kind::AuthorizationPolicy)
        );
        assert_eq!(
            lookup_type("telemetry.istio.io/v1", "Telemetry"),
            TypeLookup::Known(Kind::Telemetry)
        );
        assert_eq!(
            lookup_type("extensions.istio.io/v1alpha1", "WasmPlugin"),
            TypeLookup::NotYetSupported
        );
    }

    #[test]
    fn unknown_field_names_line_and_suggests() {
        let (objs, diags) = objects(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination:\n        host: r\n        subsets: v1\n",
        );
        assert!(objs.is_empty());
        assert_eq!(diags.len(), 1);
        let d = &diags[0];
        assert_eq!(d.origin.line, Some(11), "{d}");
        assert_eq!(
            d.field.as_deref(),
            Some("spec.http[0].route[0].destination.subsets")
        );
        assert_eq!(d.hint.as_deref(), Some("did you mean `subset`?"));
    }

    #[test]
    fn wrong_type_is_a_diagnostic() {
        let (objs, diags) = objects(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: r\n",
        );
        assert!(objs.is_empty());
        assert_eq!(diags[0].field.as_deref(), Some("spec.hosts"));
        assert_eq!(diags[0].origin.line, Some(6));
        assert!(diags[0].reason.contains("invalid type"), "{}", diags[0]);
    }

    #[test]
    fn lists_pods_and_services_parse() {
        let (objs, diags) = objects(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: reviews}\n  spec:\n    selector: {app: reviews}\n    ports:\n    - {name: http, port: 9080}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: reviews-v1, namespace: bookinfo, labels: {app: reviews, version: v1}}\n  spec:\n    serviceAccountName: bookinfo-reviews\n    containers: [{name: app, image: x}]\n  status: {podIP: 127.0.0.11}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: ignored}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].key.namespace, "default");
        assert_eq!(objs[0].origin.line, Some(4));
        let Spec::Pod(pod) = &objs[1].spec else {
            panic!("a pod")
        };
        assert_eq!(pod.ips, vec!["127.0.0.11".to_string()]);
        assert_eq!(pod.service_account, "bookinfo-reviews");
        assert_eq!(objs[1].key.namespace, "bookinfo");
    }

    #[test]
    fn same_content_same_hash_regardless_of_origin() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n";
        let (a, _) = objects(text);
        let (b, _) = objects(&format!("# moved\n\n{text}"));
        assert_eq!(a[0].hash, b[0].hash);
        assert_ne!(a[0].origin, b[0].origin);
    }
}
