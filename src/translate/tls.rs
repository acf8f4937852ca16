//! mTLS: transport sockets for sidecars, with the workload certificate (`default`) and
//! trust bundle (`ROOTCA`) from SDS — over ADS for plain Envoy, from the istio-agent's SDS
//! server for istio-proxy, as each gets them.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, SubjectAltNameMatcher, TlsParameters,
    UpstreamTlsContext, common_tls_context, subject_alt_name_matcher, tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};

use super::context::ProxyContext;
use super::secret;
use crate::envoy::pb;

/// ALPN a server sidecar accepts over mTLS. The HTTP connection manager picks its codec
/// from the negotiated protocol, so a client offers exactly what it will speak.
const SERVER_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// Where a proxy fetches its secrets.
pub fn sds_config(ctx: &ProxyContext) -> core::ConfigSource {
    if ctx.is_istio_proxy() {
        // istio-proxy's bootstrap defines `sds-grpc`: the agent's SDS socket.
        core::ConfigSource {
            config_source_specifier: Some(
                core::config_source::ConfigSourceSpecifier::ApiConfigSource(
                    core::ApiConfigSource {
                        api_type: core::api_config_source::ApiType::Grpc as i32,
                        transport_api_version: core::ApiVersion::V3 as i32,
                        grpc_services: vec![core::GrpcService {
                            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                                core::grpc_service::EnvoyGrpc {
                                    cluster_name: "sds-grpc".into(),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        set_node_on_first_message_only: true,
                        ..Default::default()
                    },
                ),
            ),
            initial_fetch_timeout: pb::secs(0),
            resource_api_version: core::ApiVersion::V3 as i32,
            ..Default::default()
        }
    } else {
        core::ConfigSource {
            // Not forever: a proxy that cannot get secrets must still finish starting
            // (its TLS then fails closed) instead of waiting on one listener or cluster.
            initial_fetch_timeout: pb::secs(10),
            ..pb::ads_config_source()
        }
    }
}

fn sds(ctx: &ProxyContext, name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(sds_config(ctx)),
    }
}

/// A `kubernetes://` credential: always fetched from meshd over ADS, for istio-proxy too
/// (its agent serves only the workload's own certificate and roots, as istiod's does).
fn sds_credential(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(core::ConfigSource {
            // A missing Secret must not keep the whole listener or cluster warming forever.
            initial_fetch_timeout: pb::secs(10),
            ..pb::ads_config_source()
        }),
    }
}

fn uri_matcher(pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        }),
        ..Default::default()
    }
}

/// Peers must present a certificate from our roots with a SAN matching `sans`.
fn common(ctx: &ProxyContext, sans: Vec<SubjectAltNameMatcher>, alpn: &[&str]) -> CommonTlsContext {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, common_tls_context::CombinedCertificateValidationContext,
    };
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(ctx, secret::DEFAULT)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ctx, secret::ROOTCA)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn transport_socket<T: prost::Message + prost::Name>(
    name: &str,
    msg: &T,
) -> core::TransportSocket {
    core::TransportSocket {
        name: name.to_string(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(pb::any(
            msg,
        ))),
    }
}

/// Client side of mesh mTLS to a service: our identity out, the destination's service
/// accounts (or any identity of our trust domain when none is known) verified.
pub fn upstream_mtls(
    ctx: &ProxyContext,
    sni: &str,
    peer_identities: &[String],
    alpn: &[&str],
) -> core::TransportSocket {
    let sans = if peer_identities.is_empty() {
        vec![uri_matcher(MatchPattern::Prefix(format!(
            "spiffe://{}/",
            ctx.snap.mesh.trust_domain
        )))]
    } else {
        peer_identities
            .iter()
            .map(|id| uri_matcher(MatchPattern::Exact(id.clone())))
            .collect()
    };
    let mut common = common(ctx, sans, alpn);
    common.tls_params = Some(client_tls_params());
    transport_socket(
        "envoy.transport_sockets.tls",
        &UpstreamTlsContext {
            common_tls_context: Some(common),
            sni: sni.to_string(),
            ..Default::default()
        },
    )
}

/// What a client offers, as istiod sets it for every TLS it originates: TLS 1.2 to 1.3
/// (Envoy's client default stops at 1.2).
fn client_tls_params() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

/// The ciphers a sidecar accepts for mesh mTLS when `meshMTLS.cipherSuites` names none
/// (istiod's list: forward-secret AES-GCM first, no CBC, no ChaCha20).
const MESH_CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

/// Server side of mesh mTLS: clients must present a certificate of our trust domain.
pub fn downstream_mtls(ctx: &ProxyContext) -> core::TransportSocket {
    let sans = vec![uri_matcher(MatchPattern::Prefix(format!(
        "spiffe://{}/",
        ctx.snap.mesh.trust_domain
    )))];
    let mut common = common(ctx, sans, &SERVER_ALPN);
    let mesh = &ctx.snap.mesh;
    // `meshMTLS`: the mesh's floor (TLS 1.2 unless it says 1.3) and its ciphers.
    common.tls_params = Some(TlsParameters {
        cipher_suites: mesh
            .mesh_mtls_cipher_suites()
            .unwrap_or_else(|| MESH_CIPHERS.iter().map(|c| c.to_string()).collect()),
        tls_minimum_protocol_version: if mesh.mesh_mtls_requires_tls13() {
            TlsProtocol::TlSv13 as i32
        } else {
            TlsProtocol::TlSv12 as i32
        },
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        ..Default::default()
    });
    transport_socket(
        "envoy.transport_sockets.tls",
        &DownstreamTlsContext {
            common_tls_context: Some(common),
            require_client_certificate: pb::boolv(true),
            ..Default::default()
        },
    )
}

pub fn raw_buffer() -> core::TransportSocket {
    transport_socket("envoy.transport_sockets.raw_buffer", &RawBuffer::default())
}

/// istiod's SNI for mesh traffic: `outbound_.PORT_.SUBSET_.HOST`.
pub fn mesh_sni(port: u16, subset: &str, host: &str) -> String {
    crate::envoy::naming::sni_dnat_cluster(port, subset, host)
}

/// The endpoint metadata key auto mTLS matches on.
pub const TLS_MODE_KEY: &str = "envoy.transport_socket_match";

/// `kubernetes://NAME`: a Secret's certificate and key, served over SDS. A Gateway API
/// listener's certificate of another namespace keeps its own name
/// (`kubernetes-gateway://NS/NAME`, which meshd's SDS serves).
pub fn credential_name(name: &str) -> String {
    if has_scheme(name) {
        return name.to_string();
    }
    format!("kubernetes://{name}")
}

/// Credentials that name their own source: a Gateway API listener's certificate of
/// another namespace, a ConfigMap's CA bundle, or istiod's never-resolving `invalid://`.
fn has_scheme(name: &str) -> bool {
    use crate::model::gateway_api::{backend_tls, convert};
    [
        convert::CROSS_NAMESPACE_CREDENTIAL,
        backend_tls::CONFIGMAP_CREDENTIAL,
        backend_tls::INVALID_CREDENTIAL,
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// `kubernetes://NAME-cacert`: a Secret's CA certificate, served over SDS (for a
/// credential with its own scheme, `configmap://NS/NAME-cacert` and the like, as istiod
/// names them).
pub fn credential_ca_name(name: &str) -> String {
    if has_scheme(name) {
        return format!("{name}-cacert");
    }
    format!("kubernetes://{name}-cacert")
}

/// The system trust bundle inside istio-proxy (Ubuntu) and most Debian-based images.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn file(path: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    })
}

/// DestinationRule `tls` SIMPLE (verify the server) or MUTUAL (and present a client
/// certificate): from files on the proxy, or from a Secret (`credentialName`) over SDS.
pub fn originate(
    t: &crate::model::istio::ClientTlsSettings,
    sni: &str,
    alpn: &[&str],
    client_credential: Option<&str>,
) -> core::TransportSocket {
    use crate::model::istio::ClientTlsMode;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, TlsCertificate,
        common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    };
    let skip_verify = t.insecure_skip_verify == Some(true);
    let sans: Vec<SubjectAltNameMatcher> = t
        .subject_alt_names
        .iter()
        .flat_map(|n| {
            [
                subject_alt_name_matcher::SanType::Dns,
                subject_alt_name_matcher::SanType::Uri,
            ]
            .map(|ty| SubjectAltNameMatcher {
                san_type: ty as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(n.clone())),
                    ignore_case: false,
                }),
                ..Default::default()
            })
        })
        .collect();
    let mut common = CommonTlsContext {
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    if !t.credential_name.is_empty() {
        if t.mode == ClientTlsMode::MUTUAL {
            common.tls_certificate_sds_secret_configs =
                vec![sds_credential(&credential_name(&t.credential_name))];
        }
        if !skip_verify {
            common.validation_context_type =
                Some(ValidationContextType::CombinedValidationContext(
                    CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: sans,
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds_credential(
                            &credential_ca_name(&t.credential_name),
                        )),
                        ..Default::default()
                    },
                ));
        }
    } else {
        if t.mode == ClientTlsMode::MUTUAL {
            common.tls_certificates = vec![TlsCertificate {
                certificate_chain: file(&t.client_certificate),
                private_key: file(&t.private_key),
                ..Default::default()
            }];
        }
        if !skip_verify {
            // No caCertificates: the proxy's system trust store, as istiod does since
            // VERIFY_CERTIFICATE_AT_CLIENT became the default. Never "trust anything".
            let ca = if t.ca_certificates.is_empty() {
                SYSTEM_ROOTS
            } else {
                t.ca_certificates.as_str()
            };
            common.validation_context_type = Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: file(ca),
                    crl: (!t.ca_crl.is_empty()).then(|| file(&t.ca_crl)).flatten(),
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                },
            ));
        }
    }
    // A Gateway's own client certificate for backends (Gateway API
    // `tls.backend.clientCertificateRef`), where the rule names none.
    if t.mode != ClientTlsMode::MUTUAL
        && let Some(c) = client_credential
    {
        common.tls_certificate_sds_secret_configs = vec![sds_credential(c)];
    }
    common.tls_params = Some(client_tls_params());
    transport_socket(
        "envoy.transport_sockets.tls",
        &UpstreamTlsContext {
            common_tls_context: Some(common),
            sni: sni.to_string(),
            ..Default::default()
        },
    )
}

fn tls_version(v: crate::model::istio::TlsProtocol) -> i32 {
    use crate::model::istio::TlsProtocol as P;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol as E;
    (match v {
        P::TLS_AUTO => E::TlsAuto,
        P::TLSV1_0 => E::TlSv10,
        P::TLSV1_1 => E::TlSv11,
        P::TLSV1_2 => E::TlSv12,
        P::TLSV1_3 => E::TlSv13,
    }) as i32
}

/// A Gateway server's TLS termination (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL), as
/// istiod builds it: the certificate from a Secret of the gateway's namespace over SDS
/// (`credentialName`, `credentialNames`), from files on the proxy, or the workload's own
/// mesh certificate; client certificates verified against the Secret's `ca.crt` (or
/// `caCertCredentialName`), a file, or the mesh roots. `None` for modes that do not
/// terminate (PASSTHROUGH, AUTO_PASSTHROUGH).
pub fn gateway_server(
    ctx: &ProxyContext,
    t: &crate::model::istio::ServerTlsSettings,
    alpn: &[&str],
    accept_untrusted: bool,
) -> Option<core::TransportSocket> {
    use crate::model::istio::{ServerTlsMode as M, TlsProtocol};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, TlsCertificate, TlsParameters,
        certificate_validation_context,
        common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    };
    let mutual = match t.mode {
        M::SIMPLE => false,
        M::MUTUAL | M::OPTIONAL_MUTUAL | M::ISTIO_MUTUAL => true,
        M::PASSTHROUGH | M::AUTO_PASSTHROUGH => return None,
    };
    let sans: Vec<SubjectAltNameMatcher> = t
        .subject_alt_names
        .iter()
        .map(|n| SubjectAltNameMatcher {
            // A client certificate's identity is usually a URI (SPIFFE) or a DNS name;
            // Istio matches the value against either.
            san_type: if n.contains("://") {
                subject_alt_name_matcher::SanType::Uri
            } else {
                subject_alt_name_matcher::SanType::Dns
            } as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(n.clone())),
                ignore_case: false,
            }),
            ..Default::default()
        })
        .collect();
    let default_validation = CertificateValidationContext {
        match_typed_subject_alt_names: sans,
        verify_certificate_spki: t.verify_certificate_spki.clone(),
        verify_certificate_hash: t.verify_certificate_hash.clone(),
        // A certificate is asked for and passed on, not verified (Gateway API frontend
        // validation AllowInsecureFallback).
        trust_chain_verification: if accept_untrusted {
            certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32
        } else {
            0
        },
        ..Default::default()
    };
    let mut common = CommonTlsContext {
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let credentials: Vec<&String> = if !t.credential_names.is_empty() {
        t.credential_names.iter().collect()
    } else if !t.credential_name.is_empty() {
        vec![&t.credential_name]
    } else {
        Vec::new()
    };
    if t.mode == M::ISTIO_MUTUAL {
        // The gateway's own mesh identity; callers must be mesh workloads.
        common = self::common(
            ctx,
            vec![uri_matcher(MatchPattern::Prefix(format!(
                "spiffe://{}/",
                ctx.snap.mesh.trust_domain
            )))],
            alpn,
        );
    } else if !credentials.is_empty() {
        common.tls_certificate_sds_secret_configs = credentials
            .iter()
            .map(|c| sds_credential(&credential_name(c)))
            .collect();
        if mutual {
            let ca = if t.ca_cert_credential_name.is_empty() {
                credential_ca_name(credentials[0])
            } else {
                credential_name(&t.ca_cert_credential_name)
            };
            common.validation_context_type =
                Some(ValidationContextType::CombinedValidationContext(
                    CombinedCertificateValidationContext {
                        default_validation_context: Some(default_validation),
                        validation_context_sds_secret_config: Some(sds_credential(&ca)),
                        ..Default::default()
                    },
                ));
        }
    } else {
        let mut pairs: Vec<(&str, &str)> = t
            .tls_certificates
            .iter()
            .map(|c| (c.server_certificate.as_str(), c.private_key.as_str()))
            .collect();
        if pairs.is_empty() {
            pairs.push((&t.server_certificate, &t.private_key));
        }
        common.tls_certificates = pairs
            .into_iter()
            .map(|(c, k)| TlsCertificate {
                certificate_chain: file(c),
                private_key: file(k),
                ..Default::default()
            })
            .collect();
        if mutual {
            common.validation_context_type = Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: file(&t.ca_certificates),
                    crl: (!t.ca_crl.is_empty()).then(|| file(&t.ca_crl)).flatten(),
                    ..default_validation
                },
            ));
        }
    }
    // Istio's gateways refuse anything older than TLS 1.2 unless told otherwise.
    let min = if t.min_protocol_version == TlsProtocol::TLS_AUTO {
        TlsProtocol::TLSV1_2
    } else {
        t.min_protocol_version
    };
    common.tls_params = Some(TlsParameters {
        tls_minimum_protocol_version: tls_version(min),
        tls_maximum_protocol_version: tls_version(t.max_protocol_version),
        cipher_suites: t.cipher_suites.clone(),
        ecdh_curves: t.ecdh_curves.clone(),
        ..Default::default()
    });
    Some(transport_socket(
        "envoy.transport_sockets.tls",
        &DownstreamTlsContext {
            common_tls_context: Some(common),
            require_client_certificate: pb::boolv(matches!(t.mode, M::MUTUAL | M::ISTIO_MUTUAL)),
            ..Default::default()
        },
    ))
}
