//! AuthorizationPolicy → RBAC against istiod's own golden cases
//! (../shared/istio/authz, from pilot/pkg/security/authz/builder/testdata), compared
//! structurally: both sides go through Envoy's descriptors to one JSON form.

use std::path::PathBuf;
use std::sync::Arc;

use meshd::envoy::pb::normalize_json;
use meshd::model::diagnostic::Origin;
use meshd::model::mesh::{ExtAuthzBody, ExtAuthzGrpc, ExtAuthzHttp, ExtensionProvider};
use meshd::model::object::{Object, Spec};
use meshd::sources::yaml::parse_documents;
use meshd::translate::authz::{AuthzOptions, PolicyInput, build};

#[path = "support/istio_data.rs"]
mod istio_data;
use istio_data::shared_or_skip;

/// Istio's authz golden cases.
fn data() -> PathBuf {
    istio_data::shared().join("authz")
}

fn objects(path: &PathBuf) -> Vec<Arc<Object>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for doc in parse_documents(&text) {
        let doc = doc.expect("yaml");
        let (objs, diags) = Object::from_value(doc.value, doc.lines, Origin::default(), "default");
        assert!(diags.is_empty(), "{}: {diags:?}", path.display());
        out.extend(objs);
    }
    out
}

fn grpc(
    service: &str,
    timeout_ms: Option<u64>,
    body: Option<ExtAuthzBody>,
) -> Vec<ExtensionProvider> {
    vec![ExtensionProvider {
        name: "default".into(),
        envoy_file_access_log: None,
        envoy_rate_limit: None,
        zipkin: None,
        opentelemetry: None,
        datadog: None,
        skywalking: None,
        prometheus: None,
        envoy_ext_authz_grpc: Some(ExtAuthzGrpc {
            service: service.into(),
            port: 9000,
            timeout: timeout_ms
                .map(|ms| meshd::model::istio::Duration(std::time::Duration::from_micros(ms))),
            fail_open: true,
            status_on_error: "403".into(),
            include_request_body_in_check: body,
        }),
        envoy_ext_authz_http: None,
    }]
}

/// The mesh configs istiod's builder test uses (reconstructed from its goldens).
fn providers(name: &str) -> Vec<ExtensionProvider> {
    let patterns = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match name {
        "grpc-no-namespace" => grpc("my-custom-ext-authz.foo.svc.cluster.local", None, None),
        "grpc" => grpc(
            "foo/my-custom-ext-authz.foo.svc.cluster.local",
            Some(2000),
            Some(ExtAuthzBody {
                max_request_bytes: 4096,
                allow_partial_message: true,
                pack_as_bytes: false,
            }),
        ),
        "http" => vec![ExtensionProvider {
            name: "default".into(),
            envoy_file_access_log: None,
            envoy_rate_limit: None,
            zipkin: None,
            opentelemetry: None,
            datadog: None,
            skywalking: None,
            prometheus: None,
            envoy_ext_authz_grpc: None,
            envoy_ext_authz_http: Some(ExtAuthzHttp {
                service: "foo/my-custom-ext-authz.foo.svc.cluster.local".into(),
                port: 9000,
                timeout: Some(meshd::model::istio::Duration(
                    std::time::Duration::from_secs(10),
                )),
                path_prefix: "/check".into(),
                fail_open: true,
                status_on_error: "403".into(),
                include_request_headers_in_check: patterns(&[
                    "x-custom-id",
                    "x-prefix-*",
                    "*-suffix",
                ]),
                include_headers_in_check: patterns(&[
                    "should-not-include-when-IncludeRequestHeadersInCheck-is-set",
                ]),
                include_additional_headers_in_check: [
                    ("x-header-1".to_string(), "value-1".to_string()),
                    ("x-header-2".to_string(), "value-2".to_string()),
                ]
                .into_iter()
                .collect(),
                include_request_body_in_check: Some(ExtAuthzBody {
                    max_request_bytes: 2048,
                    allow_partial_message: true,
                    pack_as_bytes: true,
                }),
                headers_to_upstream_on_allow: patterns(&[
                    "Authorization",
                    "x-prefix-*",
                    "*-suffix",
                ]),
                headers_to_downstream_on_deny: patterns(&["Set-cookie", "x-prefix-*", "*-suffix"]),
                headers_to_downstream_on_allow: patterns(&["Set-cookie", "x-prefix-*", "*-suffix"]),
            }),
        }],
        "invalid" => vec![ExtensionProvider {
            name: "default".into(),
            envoy_file_access_log: None,
            envoy_rate_limit: None,
            zipkin: None,
            opentelemetry: None,
            datadog: None,
            skywalking: None,
            prometheus: None,
            envoy_ext_authz_grpc: None,
            envoy_ext_authz_http: Some(ExtAuthzHttp {
                service: "foo/my-custom-ext-authz".into(),
                port: 999999,
                path_prefix: "check".into(),
                status_on_error: "999".into(),
                ..Default::default()
            }),
        }],
        _ => vec![],
    }
}

struct Case {
    input: &'static str,
    want: &'static [&'static str],
    trust_domains: &'static [&'static str],
    mesh: &'static str,
}

const fn case(input: &'static str, want: &'static [&'static str]) -> Case {
    Case {
        input,
        want,
        trust_domains: &[],
        mesh: "",
    }
}

const HTTP: &[Case] = &[
    case("allow-empty-rule-in.yaml", &["allow-empty-rule-out.yaml"]),
    case("allow-full-rule-in.yaml", &["allow-full-rule-out.yaml"]),
    case("allow-nil-rule-in.yaml", &["allow-nil-rule-out.yaml"]),
    case("allow-path-in.yaml", &["allow-path-out.yaml"]),
    Case {
        mesh: "grpc-no-namespace",
        ..case(
            "custom-simple-http-in.yaml",
            &[
                "custom-grpc-provider-no-namespace-out1.yaml",
                "custom-grpc-provider-no-namespace-out2.yaml",
            ],
        )
    },
    Case {
        mesh: "grpc",
        ..case(
            "custom-simple-http-in.yaml",
            &[
                "custom-grpc-provider-out1.yaml",
                "custom-grpc-provider-out2.yaml",
            ],
        )
    },
    Case {
        mesh: "http",
        ..case(
            "custom-simple-http-in.yaml",
            &[
                "custom-http-provider-out1.yaml",
                "custom-http-provider-out2.yaml",
            ],
        )
    },
    Case {
        mesh: "http",
        ..case(
            "custom-bad-multiple-providers-in.yaml",
            &["custom-bad-out.yaml"],
        )
    },
    Case {
        mesh: "invalid",
        ..case("custom-simple-http-in.yaml", &["custom-bad-out.yaml"])
    },
    case("deny-empty-rule-in.yaml", &["deny-empty-rule-out.yaml"]),
    case(
        "dry-run-allow-and-deny-in.yaml",
        &[
            "dry-run-allow-and-deny-out1.yaml",
            "dry-run-allow-and-deny-out2.yaml",
        ],
    ),
    case("dry-run-mix-in.yaml", &["dry-run-mix-out.yaml"]),
    case("multiple-policies-in.yaml", &["multiple-policies-out.yaml"]),
    Case {
        trust_domains: &["td1", "cluster.local"],
        ..case(
            "simple-policy-td-aliases-in.yaml",
            &["simple-policy-td-aliases-out.yaml"],
        )
    },
    Case {
        trust_domains: &["td1", "foobar"],
        ..case(
            "simple-policy-principal-with-wildcard-in.yaml",
            &["simple-policy-principal-with-wildcard-out.yaml"],
        )
    },
    Case {
        trust_domains: &["new-td", "old-td", "some-trustdomain"],
        ..case(
            "td-aliases-source-principal-in.yaml",
            &["td-aliases-source-principal-out.yaml"],
        )
    },
    case("trust-domains-in.yaml", &["trust-domains-out.yaml"]),
];

const TCP: &[Case] = &[
    case(
        "allow-both-http-tcp-in.yaml",
        &["allow-both-http-tcp-out.yaml"],
    ),
    case("allow-only-http-in.yaml", &["allow-only-http-out.yaml"]),
    Case {
        mesh: "grpc",
        ..case(
            "custom-both-http-tcp-in.yaml",
            &[
                "custom-both-http-tcp-out1.yaml",
                "custom-both-http-tcp-out2.yaml",
            ],
        )
    },
    Case {
        mesh: "http",
        ..case("custom-only-http-in.yaml", &[])
    },
    case("dry-run-mix-in.yaml", &["dry-run-mix-out.yaml"]),
];

fn run(dir: &str, cases: &[Case], tcp: bool, want_prefix: &str) -> Vec<String> {
    let filter_type = if tcp {
        "envoy.config.listener.v3.Filter"
    } else {
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"
    };
    let mut failures = Vec::new();
    for c in cases {
        let objs = objects(&data().join(dir).join(c.input));
        let inputs: Vec<PolicyInput> = objs
            .iter()
            .filter_map(|o| match &o.spec {
                Spec::AuthorizationPolicy(spec) => Some(PolicyInput {
                    namespace: &o.key.namespace,
                    name: &o.key.name,
                    spec,
                    dry_run: o
                        .annotations
                        .get("istio.io/dry-run")
                        .is_some_and(|v| v == "true"),
                }),
                _ => None,
            })
            .collect();
        let providers = providers(c.mesh);
        let exists = |ns: Option<&str>, host: &str| {
            host == "my-custom-ext-authz.foo.svc.cluster.local" && ns.is_none_or(|n| n == "foo")
        };
        let opts = AuthzOptions {
            namespace: "foo",
            trust_domains: c.trust_domains.iter().map(|s| s.to_string()).collect(),
            providers: &providers,
            service_exists: &exists,
        };
        let got = build(&inputs, &opts, tcp);
        if got.len() != c.want.len() {
            failures.push(format!(
                "{dir}/{}: got {} filters, want {}: {got:#?}",
                c.input,
                got.len(),
                c.want.len()
            ));
            continue;
        }
        for (g, w) in got.iter().zip(c.want.iter()) {
            let want_path = data().join(dir).join(format!("{want_prefix}{w}"));
            if !want_path.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&want_path).expect("golden");
            let want_value = parse_documents(&text).remove(0).expect("yaml").value;
            let want =
                normalize_json(filter_type, &want_value).expect("golden parses as Envoy config");
            let got = match normalize_json(filter_type, g) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!(
                        "{}: our filter is not valid Envoy config: {e}\n{g:#}",
                        want_path.display()
                    ));
                    continue;
                }
            };
            if got != want {
                failures.push(format!(
                    "{}:\n--- want\n{}\n--- got\n{}",
                    want_path.display(),
                    serde_json::to_string_pretty(&want).unwrap_or_default(),
                    serde_json::to_string_pretty(&got).unwrap_or_default()
                ));
            }
        }
    }
    failures
}

#[test]
fn http_golden_cases() {
    let Some(_) = shared_or_skip("istiod's HTTP authz golden cases") else {
        return;
    };
    let f = run("http", HTTP, false, "");
    assert!(f.is_empty(), "{} failing:\n{}", f.len(), f.join("\n\n"));
}

#[test]
fn http_golden_cases_extended() {
    let Some(_) = shared_or_skip("istiod's extended HTTP authz golden cases") else {
        return;
    };
    let f = run("http", HTTP, false, "extended-");
    assert!(f.is_empty(), "{} failing:\n{}", f.len(), f.join("\n\n"));
}

#[test]
fn tcp_golden_cases() {
    let Some(_) = shared_or_skip("istiod's TCP authz golden cases") else {
        return;
    };
    let f = run("tcp", TCP, true, "");
    assert!(f.is_empty(), "{} failing:\n{}", f.len(), f.join("\n\n"));
}
