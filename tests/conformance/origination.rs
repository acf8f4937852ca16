//! DestinationRule `tls` SIMPLE and MUTUAL: a sidecar originating TLS to a real HTTPS
//! server outside the mesh, with certificates from files on the proxy or from a Secret
//! served over SDS (`credentialName`).

use std::time::Duration;

use crate::ca::TokenIssuer;
use crate::harness::*;

/// `secure.example.com` (optional client certificates) and `strict.example.com`
/// (client certificate required), both outside the mesh, plain HTTP on port 9080 to
/// the application and HTTPS on 8443 on the wire.
const SERVICE_ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 8443}]
  endpoints: [{address: 127.0.1.60}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: strict}
spec:
  hosts: [strict.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 8443}]
  endpoints: [{address: 127.0.1.61}]
"#;

fn destination_rule(host: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {host}\n  trafficPolicy:\n    tls: {tls}\n",
        name = host.split('.').next().unwrap_or("dr"),
    )
}

fn tls_secret(name: &str, cert: &str, key: &str, ca: &str) -> String {
    tls_secret_yaml(name, "default", cert, key, ca, None)
}

// Fields drop in order: processes first, then the folders.
struct Setup {
    meshd: Meshd,
    client: Envoy,
    _servers: Vec<TlsBackend>,
    config: TempDir,
    dir: TempDir,
    ca: TestCa,
    issuer: TokenIssuer,
}

impl Setup {
    fn start() -> Option<Setup> {
        if envoy_bin().is_none() && !skip_or_fail("envoy is not installed") {
            return None;
        }
        if !isolate() {
            return None;
        }
        let dir = TempDir::new("origination");
        let config = TempDir::new("origination-config");
        config.copy_from(
            &repo().join("examples/bookinfo/sidecar-productpage.yaml"),
            "sidecar-productpage.yaml",
        );
        config.write("service-entries.yaml", SERVICE_ENTRIES);
        let ca = TestCa::new("outside-ca");
        dir.write("ca.pem", &ca.pem);
        let (cert, key) = ca.leaf_with_serial(
            "secure.example.com",
            &["secure.example.com", "alt.example.com"],
            Some(SECURE_SERIAL),
        );
        let (strict_cert, strict_key) = ca.leaf("strict.example.com", &["strict.example.com"]);
        let servers = vec![
            TlsBackend::start("127.0.1.60:8443", &cert, &key, &ca.pem, false),
            TlsBackend::start("127.0.1.61:8443", &strict_cert, &strict_key, &ca.pem, true),
        ];
        let (meshd, issuer) = meshd_with_tokens(config.path(), &dir, 8080);
        let client = Envoy::start_with(
            &NodeSpec {
                kind: "sidecar",
                ip: "127.0.0.10",
                pod: "productpage-v1",
                namespace: "default",
                labels: &[("app", "productpage"), ("version", "v1")],
                service_account: "bookinfo-productpage",
            },
            &EnvoyOpts {
                xds: Xds::Tls {
                    root: dir.path().join("ca/root-cert.pem"),
                    token: issuer.token("default", "bookinfo-productpage", "istio-ca", 3600, "k1"),
                },
                ..Default::default()
            },
            dir.path(),
        );
        Some(Setup {
            meshd,
            client,
            _servers: servers,
            config,
            dir,
            ca,
            issuer,
        })
    }

    /// A service-account token meshd accepts for `namespace/sa`.
    fn token(&self, namespace: &str, sa: &str) -> String {
        self.issuer.token(namespace, sa, "istio-ca", 3600, "k1")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Through the sidecar to `host`: (status, body).
    fn get(&self, host: &str) -> Option<(u16, String)> {
        let r = http_get("127.0.0.1:9080", "/", &[("Host", host)]).ok()?;
        Some((r.status, r.body))
    }

    /// Waits until a request to `host` gets `status` and a body containing `body`.
    fn expect(&self, host: &str, status: u16, body: &str, why: &str) -> String {
        let mut last = None;
        wait_for(why, Duration::from_secs(20), || {
            let got = self.get(host);
            let ok = matches!(&got, Some((s, b)) if *s == status && b.contains(body));
            last = got.clone();
            ok.then(|| got.map(|(_, b)| b).unwrap_or_default())
        })
    }

    fn assert_no_rejections(&self) {
        let bad: Vec<_> = self
            .client
            .stats("update_rejected")
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        assert!(bad.is_empty(), "{bad:?}\n{}", self.client.proc.log_text());
        self.meshd.assert_no_nacks();
    }

    /// A TLS statistic of `host`'s cluster in the sidecar.
    fn ssl_stat(&self, host: &str, stat: &str) -> u64 {
        let name = format!("cluster.outbound|9080||{host}.ssl.{stat}");
        self.client
            .stats("ssl.")
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .sum()
    }
}

/// The serial number of secure.example.com's certificate (revocation tests name it).
const SECURE_SERIAL: u64 = 0x5ec;

#[test]
fn simple_tls_verifies_the_server_against_the_given_ca_and_names() {
    let Some(s) = Setup::start() else { return };
    // Plaintext to an HTTPS port: no 200 while no DestinationRule says TLS.
    wait_for(
        "the route to secure.example.com",
        Duration::from_secs(20),
        || {
            s.get("secure.example.com")
                .filter(|(st, _)| *st != 404 && *st != 0)
        },
    );
    assert_ne!(s.get("secure.example.com").map(|r| r.0), Some(200));

    s.config.write(
        "dr.yaml",
        &destination_rule(
            "secure.example.com",
            &format!("{{mode: SIMPLE, caCertificates: {}}}", s.path("ca.pem")),
        ),
    );
    let body = s.expect(
        "secure.example.com",
        200,
        "sni=",
        "SIMPLE TLS to the server",
    );
    assert_eq!(body, "sni=secure.example.com client=none");

    // The right CA, but the server's names do not include the one required.
    s.config.write(
        "dr.yaml",
        &destination_rule(
            "secure.example.com",
            &format!(
                "{{mode: SIMPLE, caCertificates: {}, subjectAltNames: [other.example.com]}}",
                s.path("ca.pem")
            ),
        ),
    );
    s.expect("secure.example.com", 503, "", "wrong SAN refused");
    assert!(s.ssl_stat("secure.example.com", "fail_verify_san") > 0);

    // A CA that did not sign the server's certificate: refused by the sidecar.
    let other = TestCa::new("someone-else");
    s.dir.write("other-ca.pem", &other.pem);
    s.config.write(
        "dr.yaml",
        &destination_rule(
            "secure.example.com",
            &format!(
                "{{mode: SIMPLE, caCertificates: {}}}",
                s.path("other-ca.pem")
            ),
        ),
    );
    wait_for("untrusted server refused", Duration::from_secs(20), || {
        let refused = s.get("secure.example.com").is_some_and(|r| r.0 == 503);
        (refused && s.ssl_stat("secure.example.com", "fail_verify_error") > 0).then_some(())
    });

    // An explicit SNI reaches the server; a SAN it does have is accepted.
    s.config.write(
        "dr.yaml",
        &destination_rule(
            "secure.example.com",
            &format!(
                "{{mode: SIMPLE, caCertificates: {}, sni: alt.example.com, subjectAltNames: [alt.example.com]}}",
                s.path("ca.pem")
            ),
        ),
    );
    let body = s.expect("secure.example.com", 200, "sni=alt", "explicit SNI");
    assert_eq!(body, "sni=alt.example.com client=none");

    // caCrl: a revocation list naming the server's certificate refuses it; one naming
    // another certificate does not.
    s.dir.write("revoked.crl", &s.ca.crl(&[SECURE_SERIAL]));
    s.dir.write("other.crl", &s.ca.crl(&[SECURE_SERIAL + 1]));
    let before = s.ssl_stat("secure.example.com", "fail_verify_error");
    s.config.write(
        "dr.yaml",
        &destination_rule(
            "secure.example.com",
            &format!(
                "{{mode: SIMPLE, caCertificates: {}, caCrl: {}}}",
                s.path("ca.pem"),
                s.path("revoked.crl")
            ),
        ),
    );
    wait_for("revoked server refused", Duration::from_secs(20), || {
        let refused = s.get("secure.example.com").is_some_and(|r| r.0 == 503);
        (refused && s.ssl_stat("secure.example.com", "fail_verify_error") > before).then_some(())
    });
    s.config.write(
        "dr.yaml",
        &destination_rule(
            "secure.example.com",
            &format!(
                "{{mode: SIMPLE, caCertificates: {}, caCrl: {}}}",
                s.path("ca.pem"),
                s.path("other.crl")
            ),
        ),
    );
    s.expect(
        "secure.example.com",
        200,
        "sni=secure",
        "a CRL not naming the server",
    );

    // No caCertificates: the system trust store, which does not know the test CA.
    let before = s.ssl_stat("secure.example.com", "fail_verify_error");
    s.config.write(
        "dr.yaml",
        &destination_rule("secure.example.com", "{mode: SIMPLE}"),
    );
    wait_for(
        "server checked against system roots",
        Duration::from_secs(20),
        || {
            let refused = s.get("secure.example.com").is_some_and(|r| r.0 == 503);
            (refused && s.ssl_stat("secure.example.com", "fail_verify_error") > before)
                .then_some(())
        },
    );
    // insecureSkipVerify: the user's explicit choice to trust any server.
    s.config.write(
        "dr.yaml",
        &destination_rule(
            "secure.example.com",
            "{mode: SIMPLE, insecureSkipVerify: true}",
        ),
    );
    s.expect(
        "secure.example.com",
        200,
        "sni=secure.example.com",
        "verification skipped",
    );

    // A server demanding a client certificate refuses SIMPLE...
    s.config.write(
        "dr-strict.yaml",
        &destination_rule(
            "strict.example.com",
            &format!("{{mode: SIMPLE, caCertificates: {}}}", s.path("ca.pem")),
        ),
    );
    s.expect(
        "strict.example.com",
        503,
        "",
        "no client certificate, refused",
    );
    // ...and accepts MUTUAL with the client certificate from files.
    let (cert, key) = s.ca.leaf("client-from-file", &[]);
    s.dir.write("client.pem", &cert);
    s.dir.write("client-key.pem", &key);
    s.config.write(
        "dr-strict.yaml",
        &destination_rule(
            "strict.example.com",
            &format!(
                "{{mode: MUTUAL, caCertificates: {}, clientCertificate: {}, privateKey: {}}}",
                s.path("ca.pem"),
                s.path("client.pem"),
                s.path("client-key.pem")
            ),
        ),
    );
    let body = s.expect("strict.example.com", 200, "", "MUTUAL from files");
    assert_eq!(body, "sni=strict.example.com client=client-from-file");
    s.assert_no_rejections();
}

#[test]
fn mutual_tls_with_credential_name_is_served_over_sds_and_rotates() {
    let Some(s) = Setup::start() else { return };
    let (cert, key) = s.ca.leaf("client-one", &[]);
    s.config.write(
        "secret.yaml",
        &tls_secret("client-credential", &cert, &key, &s.ca.pem),
    );
    s.config.write(
        "dr-strict.yaml",
        &destination_rule(
            "strict.example.com",
            "{mode: MUTUAL, credentialName: client-credential}",
        ),
    );
    let body = s.expect("strict.example.com", 200, "", "MUTUAL from the Secret");
    assert_eq!(body, "sni=strict.example.com client=client-one");

    // A new certificate in the Secret reaches the sidecar without a restart.
    let (cert, key) = s.ca.leaf("client-two", &[]);
    s.config.write(
        "secret.yaml",
        &tls_secret("client-credential", &cert, &key, &s.ca.pem),
    );
    s.expect(
        "strict.example.com",
        200,
        "client=client-two",
        "rotated client certificate",
    );

    // A proxy of another namespace naming the same Secret gets nothing: the Secret is
    // not its namespace's. Its connections fail closed and meshd counts the refusal.
    s.config.write(
        "other.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: sleep, namespace: other}
spec:
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.0.2
    captureMode: NONE
    hosts: ["*/*"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: strict, namespace: other}
spec:
  host: strict.example.com
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: client-credential}
"#,
    );
    let other = Envoy::start_with(
        &NodeSpec {
            kind: "sidecar",
            ip: "127.0.0.20",
            pod: "sleep-1",
            namespace: "other",
            labels: &[("app", "sleep")],
            service_account: "sleep",
        },
        &EnvoyOpts {
            admin_port: 15100,
            xds: Xds::Tls {
                root: s.dir.path().join("ca/root-cert.pem"),
                token: s.token("other", "sleep"),
            },
            ..Default::default()
        },
        s.dir.path(),
    );
    wait_for("the refusal counted", Duration::from_secs(20), || {
        let m = http_get(&s.meshd.http, "/metrics", &[]).ok()?;
        let n: u64 = m
            .body
            .lines()
            .find_map(|l| l.strip_prefix("meshd_sds_refusals "))?
            .trim()
            .parse()
            .ok()?;
        (n > 0).then_some(())
    });
    // (Its listener may still be on its way when the refusal is counted.)
    let r = wait_for("sleep-1's listener", Duration::from_secs(20), || {
        http_get("127.0.0.2:9080", "/", &[("Host", "strict.example.com")]).ok()
    });
    assert_eq!(r.status, 503, "{}", r.body);
    // The rightful owner is unaffected.
    s.expect(
        "strict.example.com",
        200,
        "client=client-two",
        "owner still served",
    );
    drop(other);

    // The Secret's CA is the trust anchor too: a CA that did not sign the server fails.
    let other = TestCa::new("someone-else");
    let (cert, key) = other.leaf("client-three", &[]);
    s.config.write(
        "secret.yaml",
        &tls_secret("client-credential", &cert, &key, &other.pem),
    );
    s.expect("strict.example.com", 503, "", "untrusted server refused");
    s.assert_no_rejections();
}

/// A Service whose pods speak HTTPS on 8443 (the `secure.example.com` server), and a
/// BackendTLSPolicy for it with the CA in a ConfigMap.
fn backend_tls_config(ca_pem: &str, hostname: &str, ca_map: &str, crl: Option<&str>) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ca = indent(ca_pem);
    let crl = crl
        .map(|c| format!("  ca.crl: |\n{}\n", indent(c)))
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: secure-svc, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, targetPort: 8443}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: secure-svc, namespace: default}}
subsets: [{{addresses: [{{ip: 127.0.1.60}}], ports: [{{name: http, port: 8443}}]}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: outside-ca, namespace: default}}
data:
  ca.crt: |
{ca}
{crl}---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: secure-tls, namespace: default}}
spec:
  targetRefs: [{{group: "", kind: Service, name: secure-svc}}]
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: {ca_map}}}]
    hostname: {hostname}
"#
    )
}

#[test]
fn backend_tls_policy_originates_tls_verified_by_the_configmaps_ca() {
    let Some(s) = Setup::start() else { return };
    let host = "secure-svc.default.svc.cluster.local";
    let cluster_stat = |stat: &str| -> u64 {
        let name = format!("cluster.outbound|9080||{host}.ssl.{stat}");
        s.client
            .stats("ssl.")
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .sum()
    };
    // The CA in a ConfigMap, the hostname as SNI and as the name to verify.
    s.config.write(
        "btls.yaml",
        &backend_tls_config(&s.ca.pem, "secure.example.com", "outside-ca", None),
    );
    let body = s.expect(host, 200, "sni=", "TLS to the backend by BackendTLSPolicy");
    assert_eq!(body, "sni=secure.example.com client=none");

    // A hostname the certificate does not carry: refused (the spec's rule; the SNI alone
    // would not be checked).
    s.config.write(
        "btls.yaml",
        &backend_tls_config(&s.ca.pem, "other.example.com", "outside-ca", None),
    );
    s.expect(host, 503, "", "a certificate without the hostname refused");
    assert!(cluster_stat("fail_verify_san") > 0);

    // Another CA in the ConfigMap: the server is not trusted.
    let other = TestCa::new("someone-else");
    s.config.write(
        "btls.yaml",
        &backend_tls_config(&other.pem, "secure.example.com", "outside-ca", None),
    );
    wait_for("untrusted backend refused", Duration::from_secs(20), || {
        let refused = s.get(host).is_some_and(|r| r.0 == 503);
        (refused && cluster_stat("fail_verify_error") > 0).then_some(())
    });

    // Back to the right CA: a change of the ConfigMap alone reaches the proxy over SDS.
    s.config.write(
        "btls.yaml",
        &backend_tls_config(&s.ca.pem, "secure.example.com", "outside-ca", None),
    );
    s.expect(host, 200, "sni=secure.example.com", "the CA fixed");

    // A ConfigMap that does not exist: nothing reaches the backend unverified, and
    // meshd says why in the policy's status.
    s.config.write(
        "btls.yaml",
        &backend_tls_config(&s.ca.pem, "secure.example.com", "missing-ca", None),
    );
    wait_for(
        "a missing CA refuses traffic",
        Duration::from_secs(30),
        || s.get(host).is_some_and(|r| r.0 != 200).then_some(()),
    );
    for _ in 0..5 {
        assert_ne!(s.get(host).map(|r| r.0), Some(200));
    }
    let status = std::process::Command::new(meshd_bin())
        .args(["status", "--config-dir"])
        .arg(s.config.path())
        .args(["-o", "json"])
        .output()
        .expect("meshd status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("NoValidCACertificate") && text.contains("ConfigMap default/missing-ca"),
        "{text}"
    );
    // The ConfigMap's revocation list (`ca.crl`) naming the backend's certificate: refused.
    let revoked = s.ca.crl(&[SECURE_SERIAL]);
    let before = cluster_stat("fail_verify_error");
    s.config.write(
        "btls.yaml",
        &backend_tls_config(
            &s.ca.pem,
            "secure.example.com",
            "outside-ca",
            Some(&revoked),
        ),
    );
    wait_for(
        "the revoked backend refused",
        Duration::from_secs(20),
        || {
            let refused = s.get(host).is_some_and(|r| r.0 == 503);
            (refused && cluster_stat("fail_verify_error") > before).then_some(())
        },
    );

    s.assert_no_rejections();
}
