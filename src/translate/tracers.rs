//! The tracer an HTTP connection manager reports spans to, from a mesh config
//! `extensionProviders` entry: Zipkin, OpenTelemetry (gRPC or HTTP), Datadog or
//! SkyWalking, configured as istiod configures them (its `configureFromProviderConfig`).
//! The collector must be a service this proxy can reach (a cluster it has); else no
//! tracer, as istiod skips a provider whose cluster it cannot find.

use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, HeaderValue, HeaderValueOption, HttpService, HttpUri, TypedExtensionConfig,
    grpc_service, header_value_option, http_uri,
};
use envoy_types::pb::envoy::config::trace::v3::{
    DatadogConfig, OpenTelemetryConfig, SkyWalkingConfig, ZipkinConfig, zipkin_config,
};
use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::{
    DynatraceResourceDetectorConfig, EnvironmentResourceDetectorConfig,
};
use envoy_types::pb::google::protobuf::Any;

use super::context::ProxyContext;
use crate::envoy::pb;
use crate::model::mesh::{ExtensionProvider, ProviderHeader};
use crate::model::proxy::ProxyKind;

/// A tracer for the connection manager's `tracing.provider`.
pub struct Tracer {
    /// Envoy's extension name (`envoy.tracers.zipkin`, …).
    pub name: &'static str,
    pub config: Any,
    /// `maxTagLength` (0: Envoy's default).
    pub max_tag_length: u32,
    /// Whether the proxy is its own hop (a span for the upstream call): gateways, and
    /// every SkyWalking proxy (SkyWalking needs the pair).
    pub spawn_upstream_span: bool,
}

/// The collector's host name and this proxy's cluster for it.
fn collector(ctx: &ProxyContext, service: &str, port: u32) -> Option<(String, String)> {
    let (svc, port) =
        crate::model::service::provider_service(&ctx.snap.services, service, port).ok()?;
    let cluster = ctx.provider_cluster(svc, port)?;
    Some((svc.hostname.clone(), cluster))
}

fn headers_to_add(headers: &[ProviderHeader]) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|h| HeaderValueOption {
            header: Some(HeaderValue {
                key: h.name.clone(),
                value: h.resolved_value(),
                ..Default::default()
            }),
            append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .collect()
}

/// The tracer `p` names for this proxy, when `p` is a tracer and its collector is
/// reachable.
pub fn tracer(ctx: &ProxyContext, p: &ExtensionProvider) -> Option<Tracer> {
    let gateway = ctx.proxy.kind == ProxyKind::Router;
    // The span's service is the proxy that produces it: its node's cluster.
    let service_name = ctx.proxy.service_cluster.clone();
    if let Some(z) = &p.zipkin {
        let (host, cluster) = collector(ctx, &z.service, z.port)?;
        let path = if z.path.is_empty() {
            "/api/v2/spans".to_string()
        } else {
            z.path.clone()
        };
        let mut config = ZipkinConfig {
            trace_id_128bit: !z.enable_64bit_trace_id,
            shared_span_context: pb::boolv(false),
            collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
            ..Default::default()
        };
        // istio-proxy 1.29 and later gets the collector as an HTTP service (timeout and
        // headers); older ones and upstream Envoy the cluster, path and host fields.
        if ctx.proxy.istio_version_at_least(1, 29) {
            config.collector_service = Some(HttpService {
                http_uri: Some(HttpUri {
                    uri: format!("http://{host}{path}"),
                    timeout: Some(pb::duration(
                        z.timeout
                            .as_ref()
                            .map_or(std::time::Duration::from_secs(5), |d| d.as_std()),
                    )),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
                }),
                request_headers_to_add: headers_to_add(&z.headers),
                ..Default::default()
            });
        } else {
            config.collector_cluster = cluster;
            config.collector_endpoint = path;
            config.collector_hostname = host;
        }
        if ctx.proxy.istio_version_at_least(1, 28)
            && z.trace_context_option.as_deref() == Some("USE_B3_WITH_W3C_PROPAGATION")
        {
            config.trace_context_option =
                zipkin_config::TraceContextOption::UseB3WithW3cPropagation as i32;
        }
        return Some(Tracer {
            name: "envoy.tracers.zipkin",
            config: pb::any(&config),
            max_tag_length: z.max_tag_length,
            spawn_upstream_span: gateway,
        });
    }
    if let Some(o) = &p.opentelemetry {
        let (host, cluster) = collector(ctx, &o.service, o.port)?;
        let enrich = o.service_attribute_enrichment.as_deref() == Some("OTEL_SEMANTIC_CONVENTIONS");
        let mut config = OpenTelemetryConfig {
            service_name: if enrich {
                otel_service_name(ctx)
            } else {
                service_name
            },
            ..Default::default()
        };
        if let Some(http) = &o.http {
            // istiod joins host and path as a URL path (no scheme): Envoy takes the
            // authority and path from it and the connection from the cluster.
            let path = http.path.trim_start_matches('/');
            config.http_service = Some(HttpService {
                http_uri: Some(HttpUri {
                    uri: if path.is_empty() {
                        host
                    } else {
                        format!("{host}/{path}")
                    },
                    timeout: http.timeout.as_ref().map(|d| pb::duration(d.as_std())),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
                }),
                request_headers_to_add: headers_to_add(&http.headers),
                ..Default::default()
            });
        } else {
            let grpc = o.grpc.clone().unwrap_or_default();
            config.grpc_service = Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: cluster,
                        authority: host,
                        ..Default::default()
                    },
                )),
                timeout: grpc.timeout.as_ref().map(|d| pb::duration(d.as_std())),
                initial_metadata: grpc
                    .initial_metadata
                    .iter()
                    .map(|h| HeaderValue {
                        key: h.name.clone(),
                        value: h.resolved_value(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        }
        let detectors = o.resource_detectors.clone().unwrap_or_default();
        if detectors.environment.is_some() || enrich {
            config.resource_detectors.push(TypedExtensionConfig {
                name: "envoy.tracers.opentelemetry.resource_detectors.environment".into(),
                typed_config: Some(pb::any(&EnvironmentResourceDetectorConfig {})),
            });
        }
        if detectors.dynatrace.is_some() {
            config.resource_detectors.push(TypedExtensionConfig {
                name: "envoy.tracers.opentelemetry.resource_detectors.dynatrace".into(),
                typed_config: Some(pb::any(&DynatraceResourceDetectorConfig {})),
            });
        }
        return Some(Tracer {
            name: "envoy.tracers.opentelemetry",
            config: pb::any(&config),
            max_tag_length: o.max_tag_length,
            spawn_upstream_span: gateway,
        });
    }
    if let Some(d) = &p.datadog {
        let (host, cluster) = collector(ctx, &d.service, d.port)?;
        return Some(Tracer {
            name: "envoy.tracers.datadog",
            config: pb::any(&DatadogConfig {
                collector_cluster: cluster,
                service_name,
                collector_hostname: host,
                ..Default::default()
            }),
            max_tag_length: d.max_tag_length,
            spawn_upstream_span: gateway,
        });
    }
    if let Some(s) = &p.skywalking {
        let (host, cluster) = collector(ctx, &s.service, s.port)?;
        // As istiod: the client config is Envoy's default (the service cluster and node
        // id). The provider's `accessToken` is not sent, so no token sits in a listener
        // that the proxy and every config dump would show.
        return Some(Tracer {
            name: "envoy.tracers.skywalking",
            config: pb::any(&SkyWalkingConfig {
                grpc_service: Some(GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                        grpc_service::EnvoyGrpc {
                            cluster_name: cluster,
                            authority: host,
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }),
                client_config: None,
            }),
            max_tag_length: 0,
            spawn_upstream_span: true,
        });
    }
    None
}

/// OpenTelemetry's service.name for a Kubernetes workload: the
/// `resource.opentelemetry.io/service.name` annotation, the `app.kubernetes.io/instance`
/// or `app.kubernetes.io/name` label, the workload's name, the pod's, or
/// `unknown_service`.
fn otel_service_name(ctx: &ProxyContext) -> String {
    let meta = |k: &str| ctx.proxy.meta_str(k);
    let annotation = ctx
        .proxy
        .metadata
        .otel_service_name()
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    annotation
        .or_else(|| {
            ["app.kubernetes.io/instance", "app.kubernetes.io/name"]
                .iter()
                .find_map(|k| ctx.labels.get(*k).filter(|v| !v.is_empty()).cloned())
        })
        .or_else(|| meta("WORKLOAD_NAME"))
        .or_else(|| (!ctx.proxy.pod.is_empty()).then(|| ctx.proxy.pod.clone()))
        .or_else(|| meta("APP_CONTAINERS").filter(|c| !c.contains(',')))
        .unwrap_or_else(|| "unknown_service".into())
}
