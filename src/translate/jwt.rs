//! RequestAuthentication → Envoy `jwt_authn`: one provider per JWT rule, the payload
//! stored where the RBAC filter looks for it (`payload`), and istiod's semantics: a request
//! with an invalid token is refused (401), a request without one passes unauthenticated
//! (an AuthorizationPolicy decides whether that is enough).

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, cluster::ClusterDiscoveryType, cluster::DiscoveryType,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use serde_json::{Map, Value, json};

use super::ProxyContext;
use crate::envoy::naming;
use crate::envoy::pb;
use crate::model::Spec;
use crate::model::istio::JwtRule;

const FILTER: &str = "envoy.filters.http.jwt_authn";
/// Where jwt_authn puts the verified payload: the RBAC filter reads `payload.iss` etc.
pub const PAYLOAD_KEY: &str = "payload";

/// Where a remote JWKS is fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JwksTarget {
    uri: String,
    host: String,
    port: u16,
    tls: bool,
}

fn jwks_target(uri: &str) -> Option<JwksTarget> {
    let (tls, rest) = if let Some(r) = uri.strip_prefix("https://") {
        (true, r)
    } else {
        (false, uri.strip_prefix("http://")?)
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h.to_string(), p.parse().ok()?),
        _ => (authority.to_string(), if tls { 443 } else { 80 }),
    };
    (!host.is_empty()).then(|| JwksTarget {
        uri: uri.to_string(),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        tls,
    })
}

fn rules_for<'a>(ctx: &'a ProxyContext) -> Vec<&'a JwtRule> {
    ctx.snap
        .request_authentications_for(&ctx.proxy.namespace, ctx.labels)
        .into_iter()
        .filter_map(|o| match &o.spec {
            Spec::RequestAuthentication(r) => Some(r.jwt_rules.iter()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn jwks_uri(r: &JwtRule) -> &str {
    if r.jwks_uri.is_empty() {
        &r.jwks_uri_snake
    } else {
        &r.jwks_uri
    }
}

/// The cluster a JWKS host is reached through: `outbound|PORT||HOST`, the service's own
/// when the host is in the registry, else the one [`clusters`] generates for it.
fn jwks_cluster(_ctx: &ProxyContext, t: &JwksTarget) -> String {
    naming::outbound_cluster(t.port, "", &t.host)
}

/// The jwt_authn HTTP filter for the workload, if any RequestAuthentication applies.
pub fn filter(ctx: &ProxyContext) -> Option<Value> {
    let rules = rules_for(ctx);
    if rules.is_empty() {
        return None;
    }
    let mut providers = Map::new();
    let mut requirements = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        let mut p = Map::new();
        p.insert("issuer".into(), json!(r.issuer));
        if !r.audiences.is_empty() {
            p.insert("audiences".into(), json!(r.audiences));
        }
        if !r.jwks.is_empty() {
            p.insert("localJwks".into(), json!({"inlineString": r.jwks}));
        } else if let Some(t) = jwks_target(jwks_uri(r)) {
            let timeout = r
                .timeout
                .map(|d| d.to_string())
                .unwrap_or_else(|| "5s".into());
            p.insert(
                "remoteJwks".into(),
                json!({"httpUri": {"uri": t.uri, "cluster": jwks_cluster(ctx, &t), "timeout": timeout},
                       "cacheDuration": "300s"}),
            );
        }
        if r.forward_original_token {
            p.insert("forward".into(), json!(true));
        }
        if !r.from_headers.is_empty() {
            let h: Vec<Value> = r
                .from_headers
                .iter()
                .map(|h| {
                    let mut m = json!({"name": h.name});
                    if !h.prefix.is_empty() {
                        m["valuePrefix"] = json!(h.prefix);
                    }
                    m
                })
                .collect();
            p.insert("fromHeaders".into(), json!(h));
        }
        if !r.from_params.is_empty() {
            p.insert("fromParams".into(), json!(r.from_params));
        }
        if !r.from_cookies.is_empty() {
            p.insert("fromCookies".into(), json!(r.from_cookies));
        }
        p.insert("payloadInMetadata".into(), json!(PAYLOAD_KEY));
        if !r.output_payload_to_header.is_empty() {
            p.insert(
                "forwardPayloadHeader".into(),
                json!(r.output_payload_to_header),
            );
        }
        if !r.output_claim_to_headers.is_empty() {
            let c: Vec<Value> = r
                .output_claim_to_headers
                .iter()
                .map(|c| json!({"headerName": c.header, "claimName": c.claim}))
                .collect();
            p.insert("claimToHeaders".into(), json!(c));
        }
        providers.insert(name.clone(), Value::Object(p));
        requirements.push(json!({"providerName": name}));
    }
    // A token that is present must be valid; no token at all is allowed through, and
    // AuthorizationPolicy `requestPrincipals` decide if that is enough (istio's model).
    requirements.push(json!({"allowMissing": {}}));
    Some(json!({
        "name": FILTER,
        "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": {"requiresAny": {"requirements": requirements}}}],
            "bypassCorsPreflight": true,
        }
    }))
}

/// Clusters for JWKS hosts that are not services of the registry.
pub fn clusters(ctx: &ProxyContext) -> Vec<Cluster> {
    let mut out = Vec::new();
    for r in rules_for(ctx) {
        if !r.jwks.is_empty() {
            continue;
        }
        let Some(t) = jwks_target(jwks_uri(r)) else {
            continue;
        };
        if ctx.snap.services.contains_key(&t.host) {
            continue;
        }
        let name = jwks_cluster(ctx, &t);
        let is_ip = t.host.parse::<std::net::IpAddr>().is_ok();
        let mut c = Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(if is_ip {
                DiscoveryType::Static
            } else {
                DiscoveryType::StrictDns
            } as i32)),
            connect_timeout: Some(pb::duration(ctx.snap.mesh.connect_timeout.as_std())),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: vec![super::endpoint::locality_endpoints(
                    "",
                    vec![super::endpoint::lb_endpoint(&t.host, t.port, 0)],
                )],
                ..Default::default()
            }),
            ..Default::default()
        };
        if t.tls {
            use envoy_types::pb::envoy::config::core::v3 as core;
            use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
                CertificateValidationContext, CommonTlsContext, UpstreamTlsContext,
                common_tls_context,
            };
            c.transport_socket = Some(super::tls::transport_socket(
                "envoy.transport_sockets.tls",
                &UpstreamTlsContext {
                    sni: t.host.clone(),
                    common_tls_context: Some(CommonTlsContext {
                        validation_context_type: Some(
                            common_tls_context::ValidationContextType::ValidationContext(
                                CertificateValidationContext {
                                    trusted_ca: Some(core::DataSource {
                                        specifier: Some(core::data_source::Specifier::Filename(
                                            "/etc/ssl/certs/ca-certificates.crt".into(),
                                        )),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                },
                            ),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ));
        }
        if !out.iter().any(|x: &Cluster| x.name == c.name) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_uris() {
        assert_eq!(
            jwks_target("https://example.com/.well-known/jwks.json"),
            Some(JwksTarget {
                uri: "https://example.com/.well-known/jwks.json".into(),
                host: "example.com".into(),
                port: 443,
                tls: true
            })
        );
        let t = jwks_target("http://127.0.1.50:8000/jwks").expect("valid");
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("127.0.1.50", 8000, false)
        );
        assert_eq!(jwks_target("ftp://x"), None);
    }
}
