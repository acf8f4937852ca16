//! Where listeners, chains and clusters go for cases a real-Envoy test cannot reach
//! cheaply (gateways, other proxy kinds, application TLS), each checked against what
//! istiod generates for the same input. Behaviour is proven in tests/conformance.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use meshd::model::snapshot::Snapshot;
use meshd::translate::Resources;

#[path = "support/config.rs"]
mod support_config;
use support_config::{cluster, generate, snapshot};

fn sidecar(snap: &Snapshot, interception: &str) -> Resources {
    generate(
        snap,
        "sidecar~10.0.0.9~sleep.default~default.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "default", "ISTIO_VERSION": "1.28.0",
                           "LABELS": {"app": "sleep"}, "INTERCEPTION_MODE": interception}),
    )
}

fn listener<'a>(r: &'a Resources, name: &str) -> &'a Listener {
    r.listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no listener {name}: {:?}",
                r.listeners.iter().map(|l| &l.name).collect::<Vec<_>>()
            )
        })
}

fn discovery(c: &Cluster) -> Option<cluster::DiscoveryType> {
    match c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(t).ok(),
        _ => None,
    }
}

const HEADLESS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: default, labels: {app: db, security.istio.io/tlsMode: istio}}
spec: {containers: [{name: db, image: db}]}
status: {phase: Running, podIP: 10.0.0.30}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all, namespace: istio-system}
spec:
  host: "*.svc.cluster.local"
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
"#;

#[test]
fn headless_services_by_proxy_kind() {
    let snap = snapshot(HEADLESS);
    let name = "outbound|5432||db.default.svc.cluster.local";
    // An intercepted sidecar keeps the dialled pod: ORIGINAL_DST, its own load balancer
    // (a DestinationRule's cannot replace it), mTLS since every pod takes it, and a
    // listener per pod.
    let r = sidecar(&snap, "REDIRECT");
    let c = cluster(&r, name);
    assert_eq!(discovery(c), Some(cluster::DiscoveryType::OriginalDst));
    assert_eq!(c.lb_policy, cluster::LbPolicy::ClusterProvided as i32);
    assert!(
        c.transport_socket.is_some(),
        "auto mTLS to a headless service's pods"
    );
    listener(&r, "10.0.0.30_5432");
    // Without iptables there is no original destination: EDS over the pods.
    let r = sidecar(&snap, "NONE");
    assert_eq!(
        discovery(cluster(&r, name)),
        Some(cluster::DiscoveryType::Eds)
    );
    // Gateways balance over the pods too, as istiod serves them.
    let r = generate(
        &snap,
        "router~10.0.0.7~gw.istio-system~istio-system.svc.cluster.local",
        serde_json::json!({"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}),
    );
    assert_eq!(
        discovery(cluster(&r, name)),
        Some(cluster::DiscoveryType::Eds)
    );
}

#[test]
fn passthrough_chains_follow_port_level_mtls_and_leave_application_tls_alone() {
    let pods = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {containers: [{name: web, image: web}]}
status: {phase: Running, podIP: 10.0.0.1}
"#;
    let web = |snap: &Snapshot| {
        generate(
            snap,
            "sidecar~10.0.0.1~web.default~default.svc.cluster.local",
            serde_json::json!({"NAMESPACE": "default", "ISTIO_VERSION": "1.28.0", "LABELS": {"app": "web"}}),
        )
    };
    let passthrough = |r: &Resources| {
        listener(r, "virtualInbound")
            .filter_chains
            .iter()
            .filter(|c| c.name == "virtualInbound")
            .cloned()
            .collect::<Vec<_>>()
    };
    // PERMISSIVE: everything passes through as it came (TLS here is the application's:
    // mesh clients reach undeclared ports in plaintext).
    let r = web(&snapshot(pods));
    let chains = passthrough(&r);
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert!(chains[0].transport_socket.is_none(), "no TLS termination");
    // Mesh STRICT, port 9102 DISABLE for a scraper without a sidecar.
    let strict = format!(
        "{pods}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: web, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  portLevelMtls: {{9102: {{mode: DISABLE}}}}\n"
    );
    let r = web(&snapshot(&strict));
    let chains = passthrough(&r);
    let on_9102: Vec<_> = chains
        .iter()
        .filter(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port.as_ref())
                .is_some_and(|p| p.value == 9102)
        })
        .collect();
    assert_eq!(on_9102.len(), 1, "{chains:?}");
    assert!(
        on_9102[0].transport_socket.is_none(),
        "9102 takes plaintext"
    );
    assert!(
        chains.iter().any(|c| c.transport_socket.is_some()
            && c.filter_chain_match
                .as_ref()
                .is_some_and(|m| m.transport_protocol == "tls")),
        "the rest is STRICT"
    );
}

#[test]
fn tls_services_keep_sni_chains_on_a_shared_port() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: stripe, namespace: default}
spec:
  hosts: [api.stripe.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: HTTPS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: default}
spec:
  hosts: [plain.internal]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: http, protocol: HTTP}]
"#,
    );
    let r = sidecar(&snap, "REDIRECT");
    let l = listener(&r, "0.0.0.0_443");
    assert!(
        l.filter_chains.iter().any(|c| c
            .filter_chain_match
            .as_ref()
            .is_some_and(|m| m.server_names == vec!["api.stripe.com".to_string()])),
        "api.stripe.com by SNI"
    );
    assert!(
        l.listener_filters
            .iter()
            .any(|f| f.name == "envoy.filters.listener.tls_inspector"),
        "SNI needs the TLS inspector"
    );
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, tcp_proxy::ClusterSpecifier,
    };
    use prost::Message;
    let target = l
        .default_filter_chain
        .as_ref()
        .and_then(|c| c.filters.first())
        .and_then(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(a)) => TcpProxy::decode(a.value.as_slice()).ok(),
            _ => None,
        })
        .and_then(|t| match t.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => Some(c),
            _ => None,
        });
    assert_eq!(
        target.as_deref(),
        Some("PassthroughCluster"),
        "other TLS on 443 goes out, not to api.stripe.com"
    );
}

#[test]
fn service_entry_addresses_are_checked() {
    let snap = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bad, namespace: default}
spec:
  hosts: [db.internal]
  addresses: ["db.internal/24"]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 5432, name: tcp, protocol: TCP}]
"#,
    );
    assert!(
        snap.diagnostics
            .iter()
            .any(|d| d.to_string().contains("is not an IP address or CIDR range")),
        "{:?}",
        snap.diagnostics
    );
}
