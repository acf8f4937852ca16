//! istio.io "Ingress Gateways" and "Secure Gateways", step by step through a real Envoy
//! ingress gateway (`istio: ingressgateway`, behind its Service's ports 80 → 8080 and
//! 443 → 8443 as installed): httpbin exposed on `httpbin.example.com` for `/status` and
//! `/delay` only (404 for other paths and hosts), then on any host for `/headers`; then
//! HTTPS with a credential from a Kubernetes Secret (SIMPLE, rotated, two hosts with
//! their own certificates on one port) and MUTUAL TLS, where a client without a
//! certificate fails the handshake and one with a certificate from the Secret's CA gets
//! through.

use std::time::Duration;

use crate::harness::*;
use crate::scripted::Scripted;
use crate::traffic_apps::call;

/// The gateway's address and the target ports of its Service's ports 80 and 443
/// (`$INGRESS_HOST:$INGRESS_PORT`, `$SECURE_INGRESS_PORT`).
const INGRESS: &str = "127.0.0.20:8080";
const SECURE_INGRESS: &str = "127.0.0.20:8443";

/// The ingress gateway as `istioctl install` deploys it, and httpbin
/// (samples/httpbin/httpbin.yaml: Service port 8000; its container listens on 80 as in
/// the sample's kennethreitz/httpbin days, because every "pod" here shares one network
/// namespace and the gateway holds 8080).
const INSTALL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system, labels: {istio: ingressgateway}}
spec:
  type: LoadBalancer
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-1
  namespace: istio-system
  labels: {istio: ingressgateway, app: istio-ingressgateway}
spec: {serviceAccountName: istio-ingressgateway-service-account, containers: [{name: istio-proxy, image: proxyv2}]}
status: {phase: Running, podIP: 127.0.0.20}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: default, labels: {app: httpbin, service: httpbin}}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: httpbin-1, namespace: default, labels: {app: httpbin, version: v1}}
spec: {serviceAccountName: httpbin, containers: [{name: httpbin, image: docker.io/kennethreitz/httpbin, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIP: 127.0.0.30}
"#;

/// "Configuring ingress using a gateway" (Istio classic): the Gateway and the
/// VirtualService for `/status` and `/delay`.
const HTTPBIN_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway # use Istio default gateway implementation
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "httpbin.example.com"
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - httpbin-gateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"#;

/// "Accessing ingress services using a browser": any host, `/headers` only.
const HTTPBIN_ANY_HOST: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway # use Istio default gateway implementation
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "*"
  gateways:
  - httpbin-gateway
  http:
  - match:
    - uri:
        prefix: /headers
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"#;

// Fields drop in order: processes first, then their folders.
struct Setup {
    gateway: Envoy,
    meshd: Meshd,
    /// httpbin, helloworld-v1.
    apps: Vec<Scripted>,
    config: TempDir,
    _dir: TempDir,
}

impl Setup {
    /// Istio with its ingress gateway, httpbin, and `extra` manifests. The gateway gets
    /// credentials over SDS, so it talks to meshd on 15012 with its service-account
    /// token, as istio-proxy does.
    fn start(extra: &[(&str, &str)]) -> Option<Setup> {
        let (dir, config) = envoy_test("ingress")?;
        config.write("install.yaml", INSTALL);
        for (name, text) in extra {
            config.write(name, text);
        }
        // httpbin: `/status/CODE` answers CODE, anything else 200 (scripted.rs).
        let apps = vec![
            Scripted::start("httpbin", "127.0.0.30:80"),
            Scripted::start(
                "Hello version: v1, instance: helloworld-v1",
                "127.0.0.31:5000",
            ),
        ];
        // The gateway listens on 8080: meshd's debug port moves.
        let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 18080);
        let gateway = start_ingress_gateway(&dir, &issuer);
        Some(Setup {
            gateway,
            meshd,
            apps,
            config,
            _dir: dir,
        })
    }

    fn assert_no_rejections(&self) {
        assert_envoy_accepted(&self.gateway);
        self.meshd.assert_no_nacks();
    }
}

/// `curl -s -I -HHost:HOST "http://$INGRESS_HOST:$INGRESS_PORT/PATH"`: (status, server).
/// Without a host, curl's own: the address.
fn curl(host: Option<&str>, path: &str) -> Result<(u16, String), String> {
    call(
        INGRESS,
        host.unwrap_or(INGRESS),
        path,
        &[],
        Duration::from_secs(10),
    )
    .map(|r| (r.status, r.header("server").unwrap_or_default().to_string()))
    .map_err(|e| e.to_string())
}

/// The status of [`curl`], failing the test if there was no answer.
fn status(host: Option<&str>, path: &str) -> u16 {
    curl(host, path)
        .unwrap_or_else(|e| panic!("GET {path} (Host {host:?}): {e}"))
        .0
}

#[test]
fn ingress_gateway_exposes_httpbin_status_and_delay() {
    let Some(s) = Setup::start(&[("httpbin-gateway.yaml", HTTPBIN_GATEWAY)]) else {
        return;
    };
    // "Access the httpbin service using curl": HTTP/1.1 200 OK, server: istio-envoy.
    let r = wait_for(
        "httpbin through the gateway",
        Duration::from_secs(20),
        || {
            curl(Some("httpbin.example.com"), "/status/200")
                .ok()
                .filter(|(status, _)| *status == 200)
        },
    );
    assert_eq!(
        r,
        (200, "istio-envoy".to_string()),
        "the task's `HTTP/1.1 200 OK` and `server: istio-envoy`"
    );
    // httpbin's own answer comes back through the gateway, on both exposed prefixes
    // (the stand-in's /delay is in milliseconds).
    assert_eq!(status(Some("httpbin.example.com"), "/status/418"), 418);
    assert_eq!(status(Some("httpbin.example.com"), "/delay/1"), 200);
    // "Access any other URL that has not been explicitly exposed. You should see an
    // HTTP 404 error", and the same for a host the Gateway does not serve.
    assert_eq!(status(Some("httpbin.example.com"), "/headers"), 404);
    assert_eq!(status(Some("other.example.com"), "/status/200"), 404);
    assert_eq!(
        status(None, "/status/200"),
        404,
        "no Host: the gateway's address"
    );
    let httpbin = &s.apps[0];
    assert_eq!(
        (httpbin.count("/headers"), httpbin.count("/status/200")),
        (0, 1),
        "the 404s came from the gateway: httpbin saw only the routed /status/200"
    );

    // "Accessing ingress services using a browser": `*` hosts, `/headers` only.
    s.config.write("httpbin-gateway.yaml", HTTPBIN_ANY_HOST);
    wait_for("/headers on any host", Duration::from_secs(20), || {
        curl(None, "/headers")
            .ok()
            .filter(|(status, _)| *status == 200)
    });
    for host in [
        None,
        Some("httpbin.example.com"),
        Some("anything.example.org"),
    ] {
        assert_eq!(status(host, "/headers"), 200, "/headers for {host:?}");
        assert_eq!(
            status(host, "/status/200"),
            404,
            "/status is no longer routed ({host:?})"
        );
    }
    s.assert_no_rejections();
}

/// A Secret as `kubectl create secret` makes it: `type` (`kubernetes.io/tls` or
/// `Opaque`) with the given entries.
fn secret(name: &str, kind: &str, entries: &[(&str, &str)]) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut s = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\ntype: {kind}\ndata:\n"
    );
    for (k, v) in entries {
        s.push_str(&format!("  {k}: {}\n", b64(v)));
    }
    s
}

/// "Configure a TLS ingress gateway for a single host": the Gateway for port 443.
const MYGATEWAY_SIMPLE: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential # must be the same as secret
    hosts:
    - httpbin.example.com
"#;

/// The same step's VirtualService.
const HTTPBIN_VS: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"#;

/// "Configure a TLS ingress gateway for multiple hosts": helloworld-v1, the Gateway with
/// two servers on port 443 and helloworld-v1's VirtualService.
const MULTIPLE_HOSTS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: helloworld-v1
  labels:
    app: helloworld-v1
spec:
  ports:
  - name: http
    port: 5000
  selector:
    app: helloworld-v1
---
apiVersion: v1
kind: Pod
metadata: {name: helloworld-v1-1, namespace: default, labels: {app: helloworld-v1, version: v1}}
spec: {containers: [{name: helloworld, image: istio/examples-helloworld-v1, ports: [{containerPort: 5000}]}]}
status: {phase: Running, podIP: 127.0.0.31}
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https-httpbin
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential
    hosts:
    - httpbin.example.com
  - port:
      number: 443
      name: https-helloworld
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: helloworld-credential
    hosts:
    - helloworld-v1.example.com
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: helloworld-v1
spec:
  hosts:
  - helloworld-v1.example.com
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        exact: /hello
    route:
    - destination:
        host: helloworld-v1
        port:
          number: 5000
"#;

/// "Configure a mutual TLS ingress gateway": the Gateway in MUTUAL mode.
const MYGATEWAY_MUTUAL: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
 name: mygateway
spec:
 selector:
   istio: ingressgateway # use istio default ingress gateway
 servers:
 - port:
     number: 443
     name: https
     protocol: HTTPS
   tls:
     mode: MUTUAL
     credentialName: httpbin-credential # must be the same as secret
   hosts:
   - httpbin.example.com
"#;

/// `curl -HHost:HOST --resolve … --cacert CA [--cert --key] https://HOST:$SECURE_INGRESS_PORT/PATH`.
fn curl_https(
    host: &str,
    path: &str,
    ca: &str,
    client: Option<(&str, &str)>,
) -> std::io::Result<HttpsResponse> {
    https_get(SECURE_INGRESS, host, path, ca, client)
}

#[test]
fn secure_gateways_simple_rotation_multiple_hosts_and_mutual() {
    // "Generate client and server certificates and keys": the example.com root and
    // httpbin.example.com's certificate.
    let example = TestCa::new("example.com");
    let (httpbin_crt, httpbin_key) = example.leaf("httpbin.example.com", &["httpbin.example.com"]);
    let httpbin_credential = secret(
        "httpbin-credential",
        "kubernetes.io/tls",
        &[("tls.crt", &httpbin_crt), ("tls.key", &httpbin_key)],
    );
    let Some(s) = Setup::start(&[
        ("httpbin-credential.yaml", &httpbin_credential),
        ("mygateway.yaml", MYGATEWAY_SIMPLE),
        ("httpbin-vs.yaml", HTTPBIN_VS),
    ]) else {
        return;
    };
    // "The httpbin service will return the 418 I'm a Teapot code", over TLS with the
    // Secret's certificate.
    let r = wait_for("HTTPS through the gateway", Duration::from_secs(20), || {
        curl_https("httpbin.example.com", "/status/418", &example.pem, None).ok()
    });
    assert_eq!(r.status, 418, "{r:?}");
    assert_eq!(r.server_cn, "httpbin.example.com");
    assert_eq!(
        curl_https("httpbin.example.com", "/headers", &example.pem, None)
            .expect("HTTPS")
            .status,
        404,
        "only /status and /delay are routed"
    );

    // "Delete the gateway's secret and create a new one": a new root, a new certificate.
    std::fs::remove_file(s.config.path().join("httpbin-credential.yaml")).expect("rm");
    let new_example = TestCa::new("example.com");
    let (new_crt, new_key) = new_example.leaf("httpbin.example.com", &["httpbin.example.com"]);
    s.config.write(
        "httpbin-credential.yaml",
        &secret(
            "httpbin-credential",
            "kubernetes.io/tls",
            &[("tls.crt", &new_crt), ("tls.key", &new_key)],
        ),
    );
    let r = wait_for("the new certificate chain", Duration::from_secs(20), || {
        curl_https("httpbin.example.com", "/status/418", &new_example.pem, None).ok()
    });
    assert_eq!(r.status, 418, "{r:?}");
    // "If you try to access httpbin with the previous certificate chain, the attempt
    // now fails."
    let old = curl_https("httpbin.example.com", "/status/418", &example.pem, None);
    assert!(old.is_err(), "the old chain no longer verifies: {old:?}");

    // "Configure a TLS ingress gateway for multiple hosts": httpbin's credential
    // restored, helloworld-v1.example.com with its own.
    s.config
        .write("httpbin-credential.yaml", &httpbin_credential);
    let (hw_crt, hw_key) =
        example.leaf("helloworld-v1.example.com", &["helloworld-v1.example.com"]);
    s.config.write(
        "helloworld-credential.yaml",
        &secret(
            "helloworld-credential",
            "kubernetes.io/tls",
            &[("tls.crt", &hw_crt), ("tls.key", &hw_key)],
        ),
    );
    s.config.write("mygateway.yaml", MULTIPLE_HOSTS);
    let r = wait_for("helloworld-v1 over HTTPS", Duration::from_secs(20), || {
        curl_https("helloworld-v1.example.com", "/hello", &example.pem, None).ok()
    });
    assert_eq!(
        (r.status, r.server_cn.as_str()),
        (200, "helloworld-v1.example.com"),
        "HTTP/2 200 with helloworld's own certificate: {r:?}"
    );
    assert_eq!(r.body, "Hello version: v1, instance: helloworld-v1");
    let r = wait_for(
        "httpbin's restored credential",
        Duration::from_secs(20),
        || curl_https("httpbin.example.com", "/status/418", &example.pem, None).ok(),
    );
    assert_eq!(
        (r.status, r.server_cn.as_str()),
        (418, "httpbin.example.com"),
        "\"still get a teapot\": {r:?}"
    );

    // "Configure a mutual TLS ingress gateway": the credential gains ca.crt, the
    // Gateway asks for client certificates.
    std::fs::remove_file(s.config.path().join("helloworld-credential.yaml")).expect("rm");
    s.config.write(
        "httpbin-credential.yaml",
        &secret(
            "httpbin-credential",
            "Opaque",
            &[
                ("tls.key", &httpbin_key),
                ("tls.crt", &httpbin_crt),
                ("ca.crt", &example.pem),
            ],
        ),
    );
    s.config.write("mygateway.yaml", MYGATEWAY_MUTUAL);
    // "Attempt to send an HTTPS request using the prior approach and see how it fails".
    // (Waiting for the listener rather than polling with requests: a request that races
    // the change is answered on the old chain, whose connection Envoy then drains.)
    wait_for(
        "the gateway to ask for client certificates",
        Duration::from_secs(20),
        || {
            http_get(
                &s.gateway.admin,
                "/config_dump?resource=dynamic_listeners",
                &[],
            )
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
            .filter(|dump| {
                // Active (not still warming) and asking for client certificates.
                dump["configs"].as_array().is_some_and(|ls| {
                    ls.iter().any(|l| {
                        l["warming_state"].is_null()
                            && l["active_state"]
                                .to_string()
                                .contains("\"require_client_certificate\":true")
                    })
                })
            })
        },
    );
    for _ in 0..5 {
        let r = curl_https("httpbin.example.com", "/status/418", &example.pem, None);
        assert!(r.is_err(), "no client certificate, no answer: {r:?}");
    }
    // "Pass a client certificate and private key to curl and resend the request."
    let (client_crt, client_key) = example.leaf("client.example.com", &["client.example.com"]);
    for _ in 0..5 {
        let r = curl_https(
            "httpbin.example.com",
            "/status/418",
            &example.pem,
            Some((&client_crt, &client_key)),
        )
        .expect("with a client certificate");
        assert_eq!(r.status, 418, "{r:?}");
    }
    // A certificate the Secret's CA did not sign is refused too.
    let stranger = TestCa::new("example.com");
    let (other_crt, other_key) = stranger.leaf("client.example.com", &["client.example.com"]);
    let r = curl_https(
        "httpbin.example.com",
        "/status/418",
        &example.pem,
        Some((&other_crt, &other_key)),
    );
    assert!(r.is_err(), "a client certificate from another CA: {r:?}");
    s.assert_no_rejections();
}
