//! A connected proxy's identity and settings, from its Envoy `Node` as istio-proxy sends
//! it: id `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local` and metadata such as
//! NAMESPACE, LABELS, SERVICE_ACCOUNT, ISTIO_VERSION and INTERCEPTION_MODE.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::istio::Labels;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ProxyKind {
    Sidecar,
    Router,
}

/// How traffic reaches the proxy (istio's INTERCEPTION_MODE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Interception {
    Redirect,
    Tproxy,
    /// No iptables: listeners bind for real.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proxy {
    pub id: String,
    pub kind: ProxyKind,
    pub ips: Vec<String>,
    /// Pod (or workload) name from the node id.
    pub pod: String,
    pub namespace: String,
    pub dns_domain: String,
    pub labels: Labels,
    pub service_account: String,
    pub cluster_id: String,
    /// Set by istio-proxy; absent for upstream Envoy, which then gets only upstream
    /// Envoy extensions.
    pub istio_version: Option<String>,
    pub interception: Interception,
    /// Whether the proxy can get its workload certificate (istio-proxy from its agent;
    /// plain Envoy over SDS once authenticated on the TLS port): only then is it given
    /// mTLS.
    pub mtls_ready: bool,
    /// A proxyless gRPC client (node metadata `GENERATOR: grpc`, as istiod reads it): it
    /// asks for listeners, routes and clusters by name and understands only what gRPC's
    /// xDS client implements.
    pub proxyless: bool,
    /// `region/zone/subzone` from the Envoy node's locality ("" when not sent).
    pub locality: String,
    /// What is read of the node metadata after the proxy is made.
    pub metadata: NodeMetadata,
    /// The Envoy node's `cluster` (istio-proxy's service cluster, `app.namespace`): the
    /// service name its spans report.
    pub service_cluster: String,
}

/// The node metadata a proxy keeps once it is made: the top-level strings (translation
/// reads a few by name, and an EnvoyFilter's `match.proxy.metadata` compares strings),
/// and the one annotation translation reads (OpenTelemetry's service name). The rest —
/// LABELS, parsed into the proxy's labels, and istio-proxy's PROXY_CONFIG, annotations
/// and the like, about 10 KB from a real istio-proxy — is read once and dropped: kept
/// as JSON, it was the largest part of a connected proxy's own state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetadata {
    /// Sorted by key.
    strings: Box<[(Box<str>, Box<str>)]>,
    otel_service_name: Option<Box<str>>,
}

/// The annotation naming a workload's OpenTelemetry service.
const OTEL_SERVICE_NAME: &str = "resource.opentelemetry.io/service.name";

impl NodeMetadata {
    fn of(metadata: &BTreeMap<String, Value>) -> NodeMetadata {
        // A BTreeMap iterates in key order: the strings come out sorted.
        let strings = metadata
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
            .collect();
        let otel_service_name = metadata
            .get("ANNOTATIONS")
            .and_then(|a| a.get(OTEL_SERVICE_NAME))
            .and_then(Value::as_str)
            .map(Into::into);
        NodeMetadata {
            strings,
            otel_service_name,
        }
    }

    /// A top-level string (possibly empty).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.strings
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.strings[i].1)
    }

    /// The top-level strings, by key.
    fn strings(&self) -> impl Iterator<Item = (&str, &str)> {
        self.strings.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The pod's `resource.opentelemetry.io/service.name` annotation (ANNOTATIONS).
    pub fn otel_service_name(&self) -> Option<&str> {
        self.otel_service_name.as_deref()
    }
}

impl Serialize for NodeMetadata {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.strings() {
            m.serialize_entry(k, v)?;
        }
        if let Some(name) = self.otel_service_name() {
            m.serialize_entry("ANNOTATIONS", &BTreeMap::from([(OTEL_SERVICE_NAME, name)]))?;
        }
        m.end()
    }
}

/// Why a node id was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdError(pub String);

impl fmt::Display for NodeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NodeIdError {}

impl Proxy {
    /// Parses the node id and metadata (metadata as JSON, converted from the protobuf
    /// Struct by the caller).
    pub fn from_node(id: &str, metadata: BTreeMap<String, Value>) -> Result<Proxy, NodeIdError> {
        let parts: Vec<&str> = id.split('~').collect();
        if parts.len() != 4 {
            return Err(NodeIdError(format!(
                "node id {id:?} must have 4 parts TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local"
            )));
        }
        let kind = match parts[0] {
            "sidecar" => ProxyKind::Sidecar,
            "router" => ProxyKind::Router,
            other => {
                return Err(NodeIdError(format!(
                    "node type {other:?} is not supported (use sidecar or router)"
                )));
            }
        };
        let meta_str = |k: &str| metadata.get(k).and_then(Value::as_str).map(str::to_string);
        let mut ips: Vec<String> = meta_str("INSTANCE_IPS")
            .map(|s| {
                s.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        // An empty address is a client with no workload of its own — istioctl's debug
        // connection (`sidecar~~test-1.default~…`), as istiod accepts it.
        if ips.is_empty() && !parts[1].is_empty() {
            ips.push(parts[1].to_string());
        }
        for ip in &ips {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(NodeIdError(format!(
                    "node id {id:?}: {ip:?} is not an IP address"
                )));
            }
        }
        let (pod, ns_from_id) = match parts[2].rsplit_once('.') {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => (parts[2].to_string(), String::new()),
        };
        let namespace = meta_str("NAMESPACE")
            .or_else(|| (!ns_from_id.is_empty()).then(|| ns_from_id.clone()))
            .unwrap_or_else(|| "default".into());
        let dns_domain = parts[3].to_string();
        let labels: Labels = match metadata.get("LABELS") {
            Some(Value::Object(m)) => m
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect(),
            _ => Labels::new(),
        };
        let interception = match meta_str("INTERCEPTION_MODE").as_deref() {
            Some("NONE") => Interception::None,
            Some("TPROXY") => Interception::Tproxy,
            _ => Interception::Redirect,
        };
        Ok(Proxy {
            id: id.to_string(),
            kind,
            ips,
            pod,
            namespace,
            dns_domain,
            labels,
            service_account: meta_str("SERVICE_ACCOUNT").unwrap_or_default(),
            cluster_id: meta_str("CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
            mtls_ready: meta_str("ISTIO_VERSION").is_some_and(|v| !v.is_empty()),
            istio_version: meta_str("ISTIO_VERSION").filter(|v| !v.is_empty()),
            interception,
            proxyless: meta_str("GENERATOR").as_deref() == Some("grpc"),
            locality: String::new(),
            metadata: NodeMetadata::of(&metadata),
            service_cluster: String::new(),
        })
    }

    /// A node metadata string, when set and not empty.
    pub fn meta_str(&self, key: &str) -> Option<String> {
        self.metadata
            .get(key)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// Whether this is istio-proxy of at least `major.minor` (never for upstream Envoy).
    pub fn istio_version_at_least(&self, major: u32, minor: u32) -> bool {
        let Some(v) = &self.istio_version else {
            return false;
        };
        let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>());
        match (parts.next(), parts.next()) {
            (Some(Ok(ma)), Some(Ok(mi))) => (ma, mi) >= (major, minor),
            // istiod treats a version it cannot read as the newest.
            _ => true,
        }
    }

    /// The first IP, for naming listeners and binding.
    pub fn ip(&self) -> &str {
        self.ips.first().map(String::as_str).unwrap_or("0.0.0.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_istio_proxy_node() {
        let meta: BTreeMap<String, Value> = serde_json::from_value(json!({
            "NAMESPACE": "default",
            "LABELS": {"app": "productpage", "version": "v1"},
            "SERVICE_ACCOUNT": "bookinfo-productpage",
            "ISTIO_VERSION": "1.31.0",
            "INTERCEPTION_MODE": "REDIRECT",
            "INSTANCE_IPS": "10.1.1.1,fe80::1"
        }))
        .expect("map");
        let p = Proxy::from_node(
            "sidecar~10.1.1.1~productpage-v1-123.default~default.svc.cluster.local",
            meta,
        )
        .expect("valid");
        assert_eq!(p.kind, ProxyKind::Sidecar);
        assert_eq!(p.pod, "productpage-v1-123");
        assert_eq!(p.namespace, "default");
        assert_eq!(p.ips, vec!["10.1.1.1", "fe80::1"]);
        assert_eq!(p.labels.get("app").map(String::as_str), Some("productpage"));
        assert_eq!(p.istio_version.as_deref(), Some("1.31.0"));
        assert_eq!(p.interception, Interception::Redirect);
        assert!(p.istio_version_at_least(1, 29) && p.istio_version_at_least(1, 31));
        assert!(!p.istio_version_at_least(1, 32) && !p.istio_version_at_least(2, 0));
        let mut old = p.clone();
        old.istio_version = Some("1.28.2-distroless".into());
        assert!(!old.istio_version_at_least(1, 29));
        old.istio_version = None;
        assert!(
            !old.istio_version_at_least(1, 0),
            "upstream Envoy is no istio-proxy"
        );
    }

    #[test]
    fn refuses_bad_ids() {
        for bad in [
            "x",
            "sidecar~1.2.3.4~a.b",
            "gateway~1.2.3.4~a.b~b.svc",
            "sidecar~nope~a.b~c",
        ] {
            assert!(Proxy::from_node(bad, BTreeMap::new()).is_err(), "{bad}");
        }
    }
}
