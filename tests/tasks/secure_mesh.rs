//! Support for the security tasks (authorization_*.rs, mutual_tls_migration.rs): pods whose
//! real Envoy sidecars authenticate to meshd on 15012 with service-account tokens and get
//! their workload certificates from meshd's CA over SDS, so that sidecars talk mTLS and
//! policies see SPIFFE principals; the applications' HTTP client.
//!
//! There are no iptables per pod here (all pods share the test's network namespace), so a
//! sidecar binds for real: its inbound port on the pod address (Sidecar `ingress`,
//! `captureMode: NONE`) hands requests to the application at [`app_addr`], and its egress
//! listener at [`egress_addr`] is where the application sends outbound calls, with the
//! service name in the Host header. At most one pod per test may instead be `intercepted`
//! (istio-iptables style, nftables to 15006): 15006 can be bound only once per namespace.

#![allow(dead_code)]

use std::time::Duration;

use crate::harness::*;
use crate::tokens::TokenIssuer;

/// One pod of a task.
pub struct Workload {
    pub pod: &'static str,
    pub namespace: &'static str,
    pub ip: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    pub service_account: &'static str,
    /// Whether an Envoy sidecar was injected (a `legacy` pod has none).
    pub sidecar: bool,
    /// Ports the application serves, (number, protocol), through the sidecar's bound
    /// inbound listener on the pod address.
    pub inbound: &'static [(u16, &'static str)],
    /// Ports of the sidecar's egress listener at [`egress_addr`], (number, protocol).
    pub egress: &'static [(u16, &'static str)],
    /// Inbound capture by nftables to the sidecar's 15006 instead of bound listeners.
    pub intercepted: bool,
}

/// The address of the application of the pod at `pod_ip`: 127.0.0.N → 127.0.1.N.
pub fn app_ip(pod_ip: &str) -> String {
    shifted(pod_ip, 1)
}

/// Where the application of the pod at `pod_ip` listens on `port`.
pub fn app_addr(pod_ip: &str, port: u16) -> String {
    format!("{}:{port}", app_ip(pod_ip))
}

/// Where the sidecar of the pod at `pod_ip` takes its application's outbound calls:
/// 127.0.0.N → 127.0.2.N.
pub fn egress_addr(pod_ip: &str, port: u16) -> String {
    format!("{}:{port}", shifted(pod_ip, 2))
}

fn shifted(ip: &str, third: u8) -> String {
    let last = ip.rsplit('.').next().expect("an IPv4 address");
    format!("127.0.{third}.{last}")
}

fn flow_map(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Workload {
    /// Its labels as the injector leaves them (`security.istio.io/tlsMode: istio` on a pod
    /// with a sidecar: auto mTLS sends mTLS only to such endpoints).
    pub fn pod_labels(&self) -> Vec<(&'static str, &'static str)> {
        let mut l = self.labels.to_vec();
        if self.sidecar {
            l.push(("security.istio.io/tlsMode", "istio"));
        }
        l
    }

    /// The Pod, as the kubelet reports it (Running, with its address).
    pub fn pod_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {{{}}}\nspec: {{serviceAccountName: {}, containers: [{{name: app, image: app}}]}}\nstatus: {{phase: Running, podIP: {}}}\n",
            self.pod,
            self.namespace,
            flow_map(&self.pod_labels()),
            self.service_account,
            self.ip
        )
    }

    /// The Sidecar that makes its proxy bind its listeners for real (see the module doc);
    /// empty for an intercepted pod without egress, or a pod without a sidecar.
    pub fn sidecar_yaml(&self) -> String {
        let ingress = !self.inbound.is_empty() && !self.intercepted;
        if !self.sidecar || (!ingress && self.egress.is_empty()) {
            return String::new();
        }
        let mut s = format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {}, namespace: {}}}\nspec:\n  workloadSelector:\n    labels: {{{}}}\n",
            self.pod,
            self.namespace,
            flow_map(self.labels)
        );
        if ingress {
            s.push_str("  ingress:\n");
            for (port, protocol) in self.inbound {
                s.push_str(&format!(
                    "  - port: {{number: {port}, protocol: {protocol}, name: {}-{port}}}\n    captureMode: NONE\n    defaultEndpoint: {}\n",
                    protocol.to_ascii_lowercase(),
                    app_addr(self.ip, *port)
                ));
            }
        }
        if self.egress.is_empty() {
            // The application calls nothing: no outbound listeners (a catch-all scope
            // would bind every service port on 127.0.0.1, once per proxy).
            s.push_str("  egress:\n  - hosts: [\"~/*\"]\n");
        } else {
            s.push_str("  egress:\n");
            for (port, protocol) in self.egress {
                s.push_str(&format!(
                    "  - port: {{number: {port}, protocol: {protocol}, name: {}-{port}}}\n    bind: {}\n    captureMode: NONE\n    hosts: [\"*/*\"]\n",
                    protocol.to_ascii_lowercase(),
                    shifted(self.ip, 2)
                ));
            }
        }
        s
    }

    /// The SPIFFE identity its certificate carries.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// samples/httpbin in namespace `foo`, as the security tasks deploy it: its application on
/// 8080 behind the sidecar.
pub const HTTPBIN_FOO: Workload = Workload {
    pod: "httpbin-foo",
    namespace: "foo",
    ip: "127.0.0.21",
    labels: &[("app", "httpbin"), ("version", "v1")],
    service_account: "httpbin",
    sidecar: true,
    inbound: &[(8080, "HTTP")],
    egress: &[],
    intercepted: false,
};

/// samples/sleep in namespace `foo`, calling httpbin's port 8000 through its sidecar.
pub const SLEEP_FOO: Workload = Workload {
    pod: "sleep-foo",
    namespace: "foo",
    ip: "127.0.0.41",
    labels: &[("app", "sleep")],
    service_account: "sleep",
    sidecar: true,
    inbound: &[],
    egress: &[(8000, "HTTP")],
    intercepted: false,
};

/// samples/sleep in namespace `bar`.
pub const SLEEP_BAR: Workload = Workload {
    pod: "sleep-bar",
    namespace: "bar",
    ip: "127.0.0.42",
    ..SLEEP_FOO
};

/// samples/httpbin/httpbin.yaml's Service in namespace `ns` (port 8000 to the container's
/// 8080).
pub fn httpbin_service(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: httpbin\n  namespace: {ns}\n  labels: {{app: httpbin, service: httpbin}}\nspec:\n  ports:\n  - name: http\n    port: 8000\n    targetPort: 8080\n  selector: {{app: httpbin}}\n"
    )
}

/// meshd serving a task's folder, with a sidecar per pod (and optionally Istio's ingress
/// gateway). Fields drop in order: proxies, meshd, then the folders.
pub struct Mesh {
    pub envoys: Vec<(String, Envoy)>,
    pub meshd: Meshd,
    pub issuer: TokenIssuer,
    pub config: TempDir,
    pub dir: TempDir,
}

/// The ingress gateway's pod name in [`Mesh::envoy`]; it serves its Gateway ports on
/// 127.0.0.1 (HTTP 8080 for Bookinfo's gateway).
pub const GATEWAY: &str = "istio-ingressgateway";

impl Mesh {
    /// Writes the pods, their Sidecars and `files` (name, text) into a fresh folder, starts
    /// meshd on it and a proxy per pod with a sidecar (and the ingress gateway if asked).
    /// None when this machine cannot run it (skipped, or failed under MESHD_REQUIRE_ENVOY).
    pub fn start(
        tag: &str,
        pods: &[&Workload],
        files: &[(&str, &str)],
        gateway: bool,
    ) -> Option<Mesh> {
        let intercepted: Vec<&&Workload> = pods.iter().filter(|w| w.intercepted).collect();
        assert!(intercepted.len() <= 1, "15006 can be bound only once");
        let (dir, config) = if intercepted.is_empty() {
            envoy_test(tag)?
        } else {
            intercepting_test(tag)?
        };
        config.write(
            "pods.yaml",
            &pods
                .iter()
                .map(|w| w.pod_yaml())
                .collect::<Vec<_>>()
                .join("---\n"),
        );
        config.write(
            "sidecars.yaml",
            &pods
                .iter()
                .map(|w| w.sidecar_yaml())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("---\n"),
        );
        for (name, text) in files {
            config.write(name, text);
        }
        // The gateway wants 8080: meshd's debug port moves.
        let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
        let root = dir.path().join("ca/root-cert.pem");
        let mut envoys = Vec::new();
        if gateway {
            let sa = "istio-ingressgateway-service-account";
            let envoy = Envoy::start_with(
                &NodeSpec {
                    kind: "router",
                    ip: "127.0.0.2",
                    pod: GATEWAY,
                    namespace: "istio-system",
                    labels: &[("istio", "ingressgateway"), ("app", "istio-ingressgateway")],
                    service_account: sa,
                },
                &EnvoyOpts {
                    admin_port: 15000,
                    interception: "NONE",
                    xds: Xds::Tls {
                        root: root.clone(),
                        token: issuer.token("istio-system", sa, "istio-ca", 3600, "k1"),
                    },
                    ..Default::default()
                },
                dir.path(),
            );
            envoys.push((GATEWAY.to_string(), envoy));
        }
        for (i, w) in pods.iter().filter(|w| w.sidecar).enumerate() {
            let labels = w.pod_labels();
            let envoy = Envoy::start_with(
                &NodeSpec {
                    kind: "sidecar",
                    ip: w.ip,
                    pod: w.pod,
                    namespace: w.namespace,
                    labels: &labels,
                    service_account: w.service_account,
                },
                &EnvoyOpts {
                    admin_port: 15100 + 100 * i as u16,
                    interception: if w.intercepted { "REDIRECT" } else { "NONE" },
                    gid: w.intercepted.then_some(PROXY_GID),
                    xds: Xds::Tls {
                        root: root.clone(),
                        token: issuer.token(w.namespace, w.service_account, "istio-ca", 3600, "k1"),
                    },
                    ..Default::default()
                },
                dir.path(),
            );
            if w.intercepted {
                intercept_inbound(w.ip);
            }
            envoys.push((w.pod.to_string(), envoy));
        }
        Some(Mesh {
            envoys,
            meshd,
            issuer,
            config,
            dir,
        })
    }

    pub fn envoy(&self, pod: &str) -> &Envoy {
        self.envoys
            .iter()
            .find(|(p, _)| p == pod)
            .map(|(_, e)| e)
            .unwrap_or_else(|| panic!("no proxy for {pod}"))
    }

    /// The sum of the proxy's stats whose names end with `suffix`.
    pub fn stat(&self, pod: &str, suffix: &str) -> u64 {
        self.envoy(pod)
            .stats("")
            .iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Applies one configuration file (like `kubectl apply -f`) and returns once `pod`'s
    /// proxy has accepted a new listener configuration: for steps whose effect the traffic
    /// alone cannot show (a request refused before and after).
    pub fn apply_and_wait_lds(&self, pod: &str, name: &str, text: &str) {
        let before = self.stat(pod, "listener_manager.lds.update_success");
        self.config.write(name, text);
        wait_for(
            &format!("{pod} to accept the listeners after {name}"),
            Duration::from_secs(20),
            || (self.stat(pod, "listener_manager.lds.update_success") > before).then_some(()),
        );
    }

    /// Every proxy accepted everything meshd sent it, and got its certificates.
    pub fn assert_accepted(&self) {
        for (_, e) in &self.envoys {
            assert_envoy_accepted(e);
        }
        let syncz = self.meshd.get_json("/debug/syncz");
        for conn in syncz.as_array().expect("list") {
            let sds = &conn["types"]["type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"];
            assert!(!sds["sent_nonce"].is_null(), "secrets were sent: {conn}");
            assert_eq!(
                sds["sent_nonce"], sds["acked_nonce"],
                "secrets ACKed: {conn}"
            );
        }
    }
}

/// One HTTP/1.1 request with any method over a fresh connection (an empty body), given up
/// after 5 s.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    crate::traffic_apps::request(addr, method, path, headers, Duration::from_secs(5))
}

/// The status of a request, or 0 when no HTTP answer came back (curl's `000`).
pub fn status(r: std::io::Result<HttpResponse>) -> u16 {
    r.map(|r| r.status).unwrap_or(0)
}
