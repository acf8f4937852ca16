//! The mesh's service registry: Kubernetes Services and ServiceEntries turned into one
//! shape (`Service`), and their endpoints (`Instance`s) from Pods, Endpoints,
//! EndpointSlices and WorkloadEntries.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::istio::Labels;
use super::object::ObjectKey;

/// Application protocol of a port, as Istio decides it from the port name prefix
/// (`http-web`), `appProtocol`, or a ServiceEntry/Gateway `protocol` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    Udp,
    /// No protocol declared: Envoy sniffs HTTP vs TCP (istio's "auto" detection).
    Unsupported,
}

impl Protocol {
    /// Istio's protocol name parsing (case-insensitive).
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "http" | "http1" => Protocol::Http,
            "http2" | "h2c" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            "udp" => Protocol::Udp,
            _ => Protocol::Unsupported,
        }
    }

    /// istiod's rule for ports that name no protocol: SMTP (25), DNS (53), MySQL (3306)
    /// and MongoDB (27017) are TCP, because their servers speak first and sniffing
    /// (which waits for the client's bytes) would hang them.
    pub fn or_well_known(self, port: u16) -> Protocol {
        match (self, port) {
            (Protocol::Unsupported, 25 | 53 | 3306 | 27017) => Protocol::Tcp,
            (p, _) => p,
        }
    }

    /// The protocol of a Kubernetes Service port: `appProtocol` first, then the name
    /// prefix before the first `-` (istio's `kube.ConvertProtocol`).
    pub fn of_service_port(name: &str, l4: &str, app_protocol: Option<&str>) -> Protocol {
        if l4.eq_ignore_ascii_case("UDP") {
            return Protocol::Udp;
        }
        if let Some(ap) = app_protocol {
            let p = match ap {
                "kubernetes.io/h2c" => Protocol::Http2,
                "kubernetes.io/ws" | "kubernetes.io/wss" => Protocol::Http,
                other => Protocol::parse(other),
            };
            if p != Protocol::Unsupported {
                return p;
            }
        }
        let prefix = name.split('-').next().unwrap_or("");
        // `grpc-web` is the one protocol whose name has a dash.
        if name.to_ascii_lowercase().starts_with("grpc-web") {
            return Protocol::GrpcWeb;
        }
        Protocol::parse(prefix)
    }

    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// HTTP/2 to the upstream (gRPC needs it).
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    pub fn is_tcp_like(self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Redis
                | Protocol::Mysql
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Udp => "UDP",
            Protocol::Unsupported => "UnsupportedProtocol",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Port {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// How a service's endpoints are found by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Resolution {
    /// meshd sends the endpoints (EDS).
    ClientSideLb,
    /// Envoy resolves the host names (STRICT_DNS).
    Dns,
    /// Envoy resolves, one address at a time (LOGICAL_DNS).
    DnsRoundRobin,
    /// Traffic goes to the original destination (ORIGINAL_DST).
    Passthrough,
}

/// Who may see an object: Istio's exportTo.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Visibility {
    Public,
    /// Only the object's own namespace (`.`) and/or the listed namespaces.
    Namespaces(Vec<String>),
    /// `~`: nobody.
    None,
}

impl Visibility {
    /// Reads an exportTo list for an object in `own_ns`, falling back to `default`.
    pub fn from_export_to(export_to: &[String], own_ns: &str, default: &[String]) -> Visibility {
        let list = if export_to.is_empty() {
            default
        } else {
            export_to
        };
        if list.iter().any(|e| e == "*") {
            return Visibility::Public;
        }
        if list.iter().any(|e| e == "~") {
            return Visibility::None;
        }
        let mut namespaces: Vec<String> = list
            .iter()
            .map(|e| {
                if e == "." {
                    own_ns.to_string()
                } else {
                    e.clone()
                }
            })
            .collect();
        namespaces.sort();
        namespaces.dedup();
        Visibility::Namespaces(namespaces)
    }

    pub fn visible_to(&self, namespace: &str) -> bool {
        match self {
            Visibility::Public => true,
            Visibility::Namespaces(ns) => ns.iter().any(|n| n == namespace),
            Visibility::None => false,
        }
    }
}

/// A service in the registry, from a Kubernetes Service or one host of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// Fully qualified host name (`reviews.default.svc.cluster.local`, `api.example.com`).
    pub hostname: String,
    pub namespace: String,
    /// Kubernetes Service name (or the ServiceEntry name).
    pub name: String,
    pub ports: Vec<Port>,
    /// Virtual IPs (clusterIP, ServiceEntry addresses).
    pub addresses: Vec<String>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    pub visibility: Visibility,
    /// The object this service comes from.
    pub source: ObjectKey,
    /// Whether it is a Kubernetes Service (else a ServiceEntry).
    pub kubernetes: bool,
    pub subject_alt_names: Vec<String>,
    /// Port-less ExternalName Services naming this host: other names clients use for it
    /// (istiod's service aliases), as (name, namespace).
    pub aliases: Vec<(String, String)>,
}

impl Service {
    pub fn port(&self, number: u16) -> Option<&Port> {
        self.ports.iter().find(|p| p.port == number)
    }
}

/// One workload instance behind a service: an address plus the mapping of service ports
/// to the ports it listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Instance {
    pub address: String,
    /// service port → target port on this instance.
    pub ports: BTreeMap<u16, u16>,
    pub labels: Arc<Labels>,
    pub service_account: String,
    pub namespace: String,
    /// Pod or WorkloadEntry name.
    pub workload: String,
    pub locality: String,
    pub weight: u32,
    pub ready: bool,
    /// `security.istio.io/tlsMode` of the workload (`istio` when it has a sidecar).
    pub tls_mode: Option<String>,
    /// DNS name to resolve (DNS-resolution ServiceEntries without addresses).
    pub dns: bool,
}

/// The endpoints of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ServiceEndpoints {
    pub instances: Vec<Instance>,
}

/// The service an extension provider names (`host`, or `namespace/host` to name the
/// namespace too) and its `port`, looked up in the registry.
pub fn provider_service<'a>(
    services: &'a std::collections::BTreeMap<String, std::sync::Arc<Service>>,
    service: &str,
    port: u32,
) -> Result<(&'a Service, u16), String> {
    let (ns, host) = match service.split_once('/') {
        Some((ns, h)) => (Some(ns), h),
        None => (None, service),
    };
    let svc = services
        .get(host)
        .filter(|s| ns.is_none_or(|ns| s.namespace == ns))
        .ok_or_else(|| format!("service {service:?} is not in the registry"))?;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| svc.port(*p).is_some())
        .ok_or_else(|| format!("service {host} has no port {port}"))?;
    Ok((svc, port))
}

/// Does `labels` contain every `selector` entry? (An empty selector selects everything.)
pub fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_from_port_names() {
        let cases = [
            ("http", None, Protocol::Http),
            ("http-web", None, Protocol::Http),
            ("HTTP2", None, Protocol::Http2),
            ("grpc-web", None, Protocol::GrpcWeb),
            ("grpc-backend", None, Protocol::Grpc),
            ("tcp-db", None, Protocol::Tcp),
            ("web", None, Protocol::Unsupported),
            ("", None, Protocol::Unsupported),
            ("web", Some("http"), Protocol::Http),
            ("tcp", Some("kubernetes.io/h2c"), Protocol::Http2),
            ("httpfoo", None, Protocol::Unsupported),
        ];
        for (name, app, want) in cases {
            assert_eq!(
                Protocol::of_service_port(name, "TCP", app),
                want,
                "{name} {app:?}"
            );
        }
        assert_eq!(
            Protocol::of_service_port("http", "UDP", None),
            Protocol::Udp
        );
        // Server-first protocols on their usual ports are never sniffed.
        assert_eq!(Protocol::Unsupported.or_well_known(3306), Protocol::Tcp);
        assert_eq!(
            Protocol::Unsupported.or_well_known(3307),
            Protocol::Unsupported
        );
        assert_eq!(Protocol::Http.or_well_known(3306), Protocol::Http);
    }

    #[test]
    fn visibility_follows_export_to() {
        let star = vec!["*".to_string()];
        assert!(Visibility::from_export_to(&[], "a", &star).visible_to("b"));
        let dot = Visibility::from_export_to(&[".".into()], "a", &star);
        assert!(dot.visible_to("a") && !dot.visible_to("b"));
        let none = Visibility::from_export_to(&["~".into()], "a", &star);
        assert!(!none.visible_to("a"));
        let list = Visibility::from_export_to(&["b".into(), ".".into()], "a", &star);
        assert!(list.visible_to("a") && list.visible_to("b") && !list.visible_to("c"));
    }
}
