//! Telemetry (telemetry.istio.io): which access logs a workload's listeners write, and
//! where their HTTP connection managers report spans (tracing).
//!
//! As istiod: the mesh-wide Telemetry (root namespace, no selector), then the
//! namespace's (no selector), then the workload's (selector), the most specific one that
//! says anything about access logging deciding. Its entries apply by mode (CLIENT:
//! outbound listeners, SERVER: inbound, both by default); an entry with `disabled: true`
//! turns logging off; providers come from mesh config (`envoyFileAccessLog`, or the
//! built-in `envoy`), defaulting to `defaultProviders.accessLogging`.

use envoy_types::pb::envoy::config::trace::v3 as trace;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};

use super::context::ProxyContext;
use crate::envoy::pb;
use crate::model::istio::{AccessLogging, Tracing, WorkloadMode};
use crate::model::mesh::FileAccessLogProvider;
use crate::model::object::Spec;
use crate::model::service::labels_match;

/// The entries (`pick`ed from each Telemetry: access logging, tracing) of the
/// Telemetries that apply to this proxy, by level: the root namespace's, the
/// namespace's, the workload's (the first by namespace/name at each level that has any).
pub(super) fn levels<'a, T>(
    ctx: &'a ProxyContext,
    pick: impl Fn(&'a crate::model::istio::Telemetry) -> &'a [T],
) -> [Option<&'a [T]>; 3] {
    let root = &ctx.snap.mesh.root_namespace;
    let mut levels: [Option<&'a [T]>; 3] = [None, None, None];
    for obj in &ctx.snap.telemetries {
        let Spec::Telemetry(t) = &obj.spec else {
            continue;
        };
        let entries = pick(t);
        if entries.is_empty() {
            continue;
        }
        let level = match &t.selector {
            None if obj.key.namespace == *root => 0,
            None if obj.key.namespace == ctx.proxy.namespace => 1,
            Some(sel)
                if obj.key.namespace == ctx.proxy.namespace
                    && labels_match(&sel.match_labels, ctx.labels) =>
            {
                2
            }
            _ => continue,
        };
        // Within a level the first (by namespace/name) wins, deterministically.
        levels[level].get_or_insert(entries);
    }
    levels
}

/// The access logging entries that apply to this proxy, if any Telemetry speaks of it.
fn entries<'a>(ctx: &'a ProxyContext) -> Option<&'a [AccessLogging]> {
    // The most specific Telemetry that speaks of access logging decides.
    levels(ctx, |t| &t.access_logging)
        .into_iter()
        .flatten()
        .last()
}

/// (provider, CEL filter expression) for each access log of a listener; None when no
/// Telemetry applies (mesh config decides then).
pub fn access_logs(
    ctx: &ProxyContext,
    inbound: bool,
) -> Option<Vec<(FileAccessLogProvider, Option<String>)>> {
    let entries = entries(ctx)?;
    let mesh = &ctx.snap.mesh;
    let applies = |e: &&AccessLogging| match e.matches.as_ref().map(|m| m.mode) {
        None | Some(WorkloadMode::CLIENT_AND_SERVER) => true,
        Some(WorkloadMode::CLIENT) => !inbound,
        Some(WorkloadMode::SERVER) => inbound,
    };
    let mut out = Vec::new();
    for e in entries.iter().filter(applies) {
        if e.disabled == Some(true) {
            return Some(Vec::new());
        }
        let names: Vec<String> = if e.providers.is_empty() {
            mesh.default_access_log_providers()
        } else {
            e.providers.iter().map(|p| p.name.clone()).collect()
        };
        let expression = e
            .filter
            .as_ref()
            .map(|f| f.expression.clone())
            .filter(|x| !x.is_empty());
        for n in names {
            if let Some(p) = mesh.access_log_provider(&n) {
                out.push((p, expression.clone()));
            }
        }
    }
    Some(out)
}

/// The tracing entries of the Telemetries that apply to this proxy, in the order
/// istiod merges them (root namespace, namespace, workload; each one's in order).
fn tracing_entries<'a>(ctx: &'a ProxyContext) -> Vec<&'a Tracing> {
    levels(ctx, |t| &t.tracing)
        .into_iter()
        .flatten()
        .flatten()
        .collect()
}

/// One direction's tracing after istiod's merge: later entries override what they set.
struct TracingSpec<'a> {
    provider: Option<String>,
    disabled: bool,
    sampling: Option<f64>,
    custom_tags: Option<&'a std::collections::BTreeMap<String, crate::model::istio::CustomTag>>,
    istio_tags: bool,
}

fn literal(tag: &str, value: &str) -> CustomTag {
    CustomTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
            value: value.into(),
        })),
    }
}

/// A tag read from the RBAC filter's dynamic metadata: the dry-run (shadow) policies'
/// verdicts, where an AuthorizationPolicy with `istio.io/dry-run` records them.
fn dry_run_tag(tag: &str, key: &str) -> CustomTag {
    use envoy_types::pb::envoy::r#type::metadata::v3::{
        MetadataKey, MetadataKind, metadata_key::PathSegment, metadata_key::path_segment,
        metadata_kind,
    };
    CustomTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Metadata(custom_tag::Metadata {
            kind: Some(MetadataKind {
                kind: Some(metadata_kind::Kind::Request(metadata_kind::Request {})),
            }),
            metadata_key: Some(MetadataKey {
                key: "envoy.filters.http.rbac".into(),
                path: vec![PathSegment {
                    segment: Some(path_segment::Segment::Key(key.into())),
                }],
            }),
            ..Default::default()
        })),
    }
}

/// The tags istiod puts on every span of a workload (its canonical service and revision,
/// mesh, namespace, cluster, and the dry-run authorization verdicts).
fn istio_tags(ctx: &ProxyContext) -> Vec<CustomTag> {
    let label = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| ctx.labels.get(*k).filter(|v| !v.is_empty()))
            .cloned()
    };
    let meta = |k: &str| ctx.proxy.meta_str(k);
    vec![
        literal(
            "istio.canonical_revision",
            &label(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".into()),
        ),
        literal(
            "istio.canonical_service",
            &label(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| "unknown".into()),
        ),
        literal(
            "istio.mesh_id",
            &meta("MESH_ID").unwrap_or_else(|| "unknown".into()),
        ),
        literal(
            "istio.namespace",
            if ctx.proxy.namespace.is_empty() {
                "default"
            } else {
                &ctx.proxy.namespace
            },
        ),
        literal(
            "istio.cluster_id",
            &meta("CLUSTER_ID").unwrap_or_else(|| "unknown".into()),
        ),
        dry_run_tag(
            "istio.authorization.dry_run.allow_policy.name",
            "istio_dry_run_allow_shadow_effective_policy_id",
        ),
        dry_run_tag(
            "istio.authorization.dry_run.allow_policy.result",
            "istio_dry_run_allow_shadow_engine_result",
        ),
        dry_run_tag(
            "istio.authorization.dry_run.deny_policy.name",
            "istio_dry_run_deny_shadow_effective_policy_id",
        ),
        dry_run_tag(
            "istio.authorization.dry_run.deny_policy.result",
            "istio_dry_run_deny_shadow_engine_result",
        ),
    ]
}

/// The HTTP connection manager's tracing, as istiod configures it from Telemetry:
/// `defaultProviders.tracing`, then the root namespace's, the namespace's and the
/// workload's Telemetry entries for this direction (`inbound`: SERVER, else CLIENT),
/// each overriding what it sets (provider — the first named —, disableSpanReporting,
/// randomSamplingPercentage, customTags, enableIstioTags); sampling defaults to
/// `defaultConfig.tracing.sampling`, else 1%. The provider's tracer ([`super::tracers`])
/// is configured; None when nothing speaks of tracing, reporting is off, or the provider
/// cannot be reached from this proxy.
pub fn tracing(ctx: &ProxyContext, inbound: bool) -> Option<HcmTracing> {
    let mesh = &ctx.snap.mesh;
    let entries = tracing_entries(ctx);
    let defaults = mesh.default_tracing_providers();
    // Nothing in Telemetry speaks of tracing: istiod's pre-Telemetry way, for istio-proxy
    // (its bootstrap may carry a tracer of its own, proxyConfig.tracing) unless the mesh's
    // `enableTracing` is false. Upstream Envoy only gets tracing with a provider.
    let legacy = entries.is_empty() && defaults.is_empty();
    if legacy && (!ctx.is_istio_proxy() || !mesh.enable_tracing()) {
        return None;
    }
    let proxy_tags = mesh.default_trace_custom_tags();
    let mut spec = TracingSpec {
        provider: defaults.into_iter().next(),
        disabled: false,
        sampling: None,
        custom_tags: None,
        istio_tags: if legacy {
            mesh.default_trace_istio_tags()
        } else {
            true
        },
    };
    for e in entries {
        let applies = match e.matches.as_ref().map(|m| m.mode) {
            None | Some(WorkloadMode::CLIENT_AND_SERVER) => true,
            Some(WorkloadMode::CLIENT) => !inbound,
            Some(WorkloadMode::SERVER) => inbound,
        };
        if !applies {
            continue;
        }
        if let Some(p) = e.providers.first() {
            spec.provider = Some(p.name.clone());
        }
        if let Some(d) = e.disable_span_reporting {
            spec.disabled = d;
        }
        if !e.custom_tags.is_empty() {
            spec.custom_tags = Some(&e.custom_tags);
        }
        if let Some(p) = e.random_sampling_percentage {
            spec.sampling = Some(p);
        }
        if let Some(t) = e.enable_istio_tags {
            spec.istio_tags = t;
        }
    }
    if spec.disabled {
        return None;
    }
    let sampling = spec
        .sampling
        .unwrap_or_else(|| mesh.default_trace_sampling());
    let mut tags = if spec.istio_tags {
        istio_tags(ctx)
    } else {
        Vec::new()
    };
    // Telemetry's custom tags, else the proxy config's (as istiod).
    for (tag, t) in spec.custom_tags.unwrap_or(&proxy_tags) {
        let ty = if let Some(l) = &t.literal {
            custom_tag::Type::Literal(custom_tag::Literal {
                value: l.value.clone(),
            })
        } else if let Some(env) = &t.environment {
            custom_tag::Type::Environment(custom_tag::Environment {
                name: env.name.clone(),
                default_value: env.default_value.clone(),
            })
        } else if let Some(h) = &t.header {
            custom_tag::Type::RequestHeader(custom_tag::Header {
                name: h.name.clone(),
                default_value: h.default_value.clone(),
            })
        } else {
            continue;
        };
        tags.push(CustomTag {
            tag: tag.clone(),
            r#type: Some(ty),
        });
    }
    // Sorted by name, as istiod sorts them (its custom tags come from a map).
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    let percent = |v: f64| Some(envoy_types::pb::envoy::r#type::v3::Percent { value: v });
    let base = HcmTracing {
        client_sampling: percent(100.0),
        overall_sampling: percent(100.0),
        random_sampling: percent(sampling),
        custom_tags: tags,
        max_path_tag_length: if legacy {
            let n = mesh.default_trace_max_path_tag_length();
            (n != 0).then(|| pb::u32v(n)).flatten()
        } else {
            None
        },
        ..Default::default()
    };
    let provider = spec
        .provider
        .and_then(|name| mesh.extension_providers.iter().find(|p| p.name == name));
    // As istiod: a provider it cannot find leaves istio-proxy with the sampling and tags
    // (its bootstrap may hold a tracer); a provider found but unusable (not a tracer, or
    // its collector out of reach) means no tracing at all.
    let Some(provider) = provider else {
        return ctx.is_istio_proxy().then_some(base);
    };
    let tracer = super::tracers::tracer(ctx, provider)?;
    Some(HcmTracing {
        max_path_tag_length: (tracer.max_tag_length != 0)
            .then(|| pb::u32v(tracer.max_tag_length))
            .flatten(),
        spawn_upstream_span: if tracer.spawn_upstream_span {
            pb::boolv(true)
        } else {
            None
        },
        provider: Some(trace::tracing::Http {
            name: tracer.name.into(),
            config_type: Some(trace::tracing::http::ConfigType::TypedConfig(tracer.config)),
        }),
        ..base
    })
}

/// meshd's own series' configuration for this proxy's inbound (SERVER) or outbound
/// (CLIENT) side, when they are kept there: Telemetry `metrics` merged as istiod merges
/// them ([`super::peer`]); None when the `prometheus` provider is out of scope or all
/// metrics are off for the side.
pub fn own_metrics(ctx: &ProxyContext, inbound: bool) -> Option<super::peer::SideMetrics> {
    let m = super::peer::own_series(ctx)?;
    let side = m.for_class(super::peer::Class::of(ctx, inbound));
    (!side.disabled).then(|| side.clone())
}

/// The request and response headers the side's tag overrides read (the access log must
/// carry them for meshd to compute the labels).
fn tag_headers(side: &super::peer::SideMetrics) -> (Vec<String>, Vec<String>) {
    use crate::model::metric_tags::TagValue;
    let mut req = std::collections::BTreeSet::new();
    let mut resp = std::collections::BTreeSet::new();
    for o in &side.overrides {
        for v in o.tags.iter().filter_map(|(_, v)| v.as_deref()) {
            match TagValue::parse(v) {
                Some(TagValue::RequestHeader(h)) => {
                    req.insert(h);
                }
                Some(TagValue::ResponseHeader(h)) => {
                    resp.insert(h);
                }
                _ => {}
            }
        }
    }
    (req.into_iter().collect(), resp.into_iter().collect())
}

/// The access log that feeds the mesh's metrics (crate::telemetry): every request (or,
/// with `tcp`, every connection) is recorded to meshd over the proxy's own xDS cluster,
/// as `inbound` (the destination's report) or outbound (the source's). None for
/// istio-proxy (its bootstrap's `xds-grpc` leads to istio-agent, which forwards only
/// xDS) and proxyless clients, or where Telemetry turns metrics off.
pub fn metrics_log(
    ctx: &ProxyContext,
    inbound: bool,
    tcp: bool,
) -> Option<envoy_types::pb::envoy::config::accesslog::v3::AccessLog> {
    use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log::ConfigType};
    use envoy_types::pb::envoy::config::core::v3::{
        ApiVersion, GrpcService,
        grpc_service::{EnvoyGrpc, TargetSpecifier},
    };
    use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
        CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
    };
    if ctx.is_istio_proxy() || ctx.proxy.proxyless {
        return None;
    }
    let side = own_metrics(ctx, inbound)?;
    let (request_headers, mut response_headers) = tag_headers(&side);
    let common = CommonGrpcAccessLogConfig {
        log_name: if inbound {
            crate::envoy::naming::METRICS_LOG_DESTINATION
        } else {
            crate::envoy::naming::METRICS_LOG_SOURCE
        }
        .into(),
        grpc_service: Some(GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: crate::envoy::naming::XDS_CLUSTER.into(),
                ..Default::default()
            })),
            ..Default::default()
        }),
        transport_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    };
    let (name, config) = if tcp {
        (
            "envoy.access_loggers.tcp_grpc",
            pb::any(&TcpGrpcAccessLogConfig {
                common_config: Some(common),
            }),
        )
    } else {
        (
            "envoy.access_loggers.http_grpc",
            pb::any(&HttpGrpcAccessLogConfig {
                common_config: Some(common),
                // gRPC's status: in trailers, or in the headers of a trailers-only reply;
                // and the headers Telemetry tag overrides read.
                // content-type tells a gRPC request (request_protocol) even when it
                // ends without a gRPC status.
                additional_request_headers_to_log: {
                    let mut h = request_headers;
                    h.push("content-type".into());
                    h.sort();
                    h.dedup();
                    h
                },
                additional_response_headers_to_log: {
                    response_headers.push("grpc-status".into());
                    response_headers.sort();
                    response_headers.dedup();
                    response_headers
                },
                additional_response_trailers_to_log: vec!["grpc-status".into()],
            }),
        )
    };
    Some(AccessLog {
        name: name.into(),
        config_type: Some(ConfigType::TypedConfig(config)),
        ..Default::default()
    })
}
