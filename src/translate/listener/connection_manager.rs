//! HTTP connection managers and TCP proxies, with the access logs and filters every
//! chain of a proxy shares.

use super::*;

pub(super) fn text_format(text: &str) -> file_log::file_access_log::AccessLogFormat {
    file_log::file_access_log::AccessLogFormat::LogFormat(core::SubstitutionFormatString {
        format: Some(core::substitution_format_string::Format::TextFormatSource(
            core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(text.to_string())),
                ..Default::default()
            },
        )),
        ..Default::default()
    })
}

pub(super) fn json_format(
    fields: &serde_json::Value,
) -> file_log::file_access_log::AccessLogFormat {
    file_log::file_access_log::AccessLogFormat::LogFormat(core::SubstitutionFormatString {
        format: Some(core::substitution_format_string::Format::JsonFormat(
            pb::to_struct(fields),
        )),
        ..Default::default()
    })
}

pub(super) fn file_log(
    path: &str,
    format: Option<file_log::file_access_log::AccessLogFormat>,
    filter: Option<accesslog::AccessLogFilter>,
) -> accesslog::AccessLog {
    accesslog::AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter,
        config_type: Some(accesslog::access_log::ConfigType::TypedConfig(pb::any(
            &file_log::FileAccessLog {
                path: path.to_string(),
                access_log_format: format,
            },
        ))),
    }
}

/// Access logs of a listener: from the Telemetry objects that apply to the workload
/// (`accessLogging`), else from mesh config (`accessLogFile`). `inbound` is the server
/// side (Telemetry mode SERVER), outbound the client side (CLIENT).
/// Every access log of a connection manager (`tcp`: a TCP proxy): the files Telemetry
/// or mesh config asks for, and the record that feeds the mesh's metrics.
pub(crate) fn logs(ctx: &ProxyContext, inbound: bool, tcp: bool) -> Vec<accesslog::AccessLog> {
    let mut out = access_logs(ctx, inbound);
    out.extend(super::super::telemetry::metrics_log(ctx, inbound, tcp));
    out
}

pub(crate) fn access_logs(ctx: &ProxyContext, inbound: bool) -> Vec<accesslog::AccessLog> {
    if let Some(logs) = super::super::telemetry::access_logs(ctx, inbound) {
        return logs
            .into_iter()
            .map(|(provider, expression)| {
                let format = provider.log_format.as_ref().and_then(|f| {
                    if let Some(labels) = &f.labels {
                        Some(json_format(&serde_json::Value::Object(labels.clone())))
                    } else {
                        f.text.as_deref().map(text_format)
                    }
                });
                let filter = expression.map(|e| accesslog::AccessLogFilter {
                    filter_specifier: Some(accesslog::access_log_filter::FilterSpecifier::ExtensionFilter(
                        accesslog::ExtensionFilter {
                            name: "envoy.access_loggers.extension_filters.cel".into(),
                            config_type: Some(accesslog::extension_filter::ConfigType::TypedConfig(pb::any(
                                &envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter {
                                    expression: e,
                                    ..Default::default()
                                },
                            ))),
                        },
                    )),
                });
                file_log(&provider.path, format, filter)
            })
            .collect();
    }
    let mesh = &ctx.snap.mesh;
    if mesh.access_log_file.is_empty() {
        return vec![];
    }
    let format = if mesh.access_log_encoding.eq_ignore_ascii_case("JSON") {
        Some(json_format(&serde_json::json!({
            "start_time": "%START_TIME%",
            "method": "%REQ(:METHOD)%",
            "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
            "protocol": "%PROTOCOL%",
            "response_code": "%RESPONSE_CODE%",
            "response_flags": "%RESPONSE_FLAGS%",
            "bytes_received": "%BYTES_RECEIVED%",
            "bytes_sent": "%BYTES_SENT%",
            "duration": "%DURATION%",
            "upstream_host": "%UPSTREAM_HOST%",
            "upstream_cluster": "%UPSTREAM_CLUSTER%",
            "route_name": "%ROUTE_NAME%",
            "authority": "%REQ(:AUTHORITY)%",
            "request_id": "%REQ(X-REQUEST-ID)%",
        })))
    } else if !mesh.access_log_format.is_empty() {
        Some(text_format(&mesh.access_log_format))
    } else {
        // Envoy's default text format.
        None
    };
    vec![file_log(&mesh.access_log_file, format, None)]
}

pub(super) fn http_filter<T: prost::Message + prost::Name>(name: &str, msg: &T) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pb::any(msg))),
        ..Default::default()
    }
}

/// An HTTP connection manager as istiod configures it for sidecars and gateways;
/// `inbound` is the workload port it serves on the inbound side.
pub fn http_connection_manager(
    ctx: &ProxyContext,
    stat_prefix: &str,
    routes: Routes,
    inbound: Option<u16>,
) -> Filter {
    let inbound_port = inbound;
    let inbound = inbound_port.is_some();
    let gateway = ctx.proxy.kind == ProxyKind::Router;
    // X-Forwarded-Client-Cert: a sidecar's inbound side appends its peer's, its outbound
    // side removes any; a gateway (the edge) replaces it with its client's, or does what
    // the mesh's `defaultConfig.gatewayTopology.forwardClientCertDetails` says.
    let xfcc = if gateway {
        match ctx.snap.mesh.gateway_forward_client_cert() {
            Some("SANITIZE") => Xfcc::Sanitize,
            Some("FORWARD_ONLY") => Xfcc::ForwardOnly,
            Some("APPEND_FORWARD") => Xfcc::AppendForward,
            Some("ALWAYS_FORWARD_ONLY") => Xfcc::AlwaysForwardOnly,
            _ => Xfcc::SanitizeSet,
        }
    } else if inbound {
        Xfcc::AppendForward
    } else {
        Xfcc::Sanitize
    };
    let m = HttpConnectionManager {
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        // istio-proxy's stats tags find the prefix by its trailing `;` (see the clusters'
        // alt_stat_name); upstream Envoy keeps it plain.
        stat_prefix: if ctx.is_istio_proxy() {
            format!("{stat_prefix};")
        } else {
            stat_prefix.to_string()
        },
        route_specifier: Some(match routes {
            Routes::Rds(name) => RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(pb::ads_config_source()),
                route_config_name: name,
            }),
            Routes::Inline(rc) => RouteSpecifier::RouteConfig(*rc),
        }),
        // istiod's order: security, then fault before CORS (an injected abort is answered
        // before CORS runs; a preflight can be delayed or aborted too), the router last.
        http_filters: {
            // Authentication and authorization decide before anything else runs: on a
            // workload's inbound side, and at a gateway (the mesh's edge) for the
            // policies that select the gateway's workload.
            let mut f = Vec::new();
            // istio-proxy's metadata exchange first: a refusal below still knows its peer.
            let istio_proxy = ctx.is_istio_proxy();
            if istio_proxy {
                f.push(super::super::peer::http_mx(ctx, inbound));
            }
            if inbound || gateway {
                f.extend(inbound_security_filters(ctx));
            }
            // Rate limits after authorization: refused requests spend no tokens. (Where
            // the manager sits is worked out only when some policy exists.)
            if !ctx.snap.rate_limits.all.is_empty() {
                let attach = match (inbound_port, gateway) {
                    (Some(port), _) => Some(workload_attachment(ctx, port)),
                    (None, true) => Some(RateLimitAttach {
                        namespace: &ctx.proxy.namespace,
                        labels: ctx.labels,
                        services: Vec::new(),
                        gateways: super::super::gateway::selected(ctx),
                    }),
                    (None, false) => None,
                };
                f.extend(super::super::ratelimit::http_filters(ctx, attach.as_ref()));
            }
            f.extend([
                // gRPC request and message counts per cluster (`cluster.NAME.grpc.*`), and
                // in filter state for access logs, as istiod adds it.
                http_filter(GRPC_STATS_FILTER, &grpc_stats_config()),
            ]);
            if istio_proxy && !inbound {
                f.push(super::super::peer::alpn());
            }
            f.extend([
                http_filter(route::FAULT_FILTER, &fault::HttpFault::default()),
                http_filter(route::CORS_FILTER, &cors::Cors::default()),
            ]);
            if istio_proxy && let Some(m) = super::super::peer::prometheus(ctx) {
                let class = super::super::peer::Class::of(ctx, inbound);
                f.extend(super::super::peer::http_stats(m, class));
            }
            // ALLOW_ANY_DYNAMIC_DNS: every outbound manager may route an unknown host to
            // the dynamic forward proxy cluster, which needs this filter's lookup first.
            if !inbound && !gateway && super::super::dfp::enabled(ctx) {
                f.push(super::super::dfp::http_filter(ctx));
            }
            // Session persistence picks the endpoint just before the router does.
            if !inbound && ctx.snap.sessions {
                f.push(http_filter(
                    super::super::session::FILTER,
                    &super::super::session::manager_filter(),
                ));
            }
            f.push(http_filter(
                "envoy.filters.http.router",
                &router::Router::default(),
            ));
            f
        },
        access_log: logs(ctx, inbound, false),
        tracing: super::super::telemetry::tracing(ctx, inbound),
        // Sidecars trust the connection's peer; gateways are the edge and use the
        // client address.
        use_remote_address: pb::boolv(gateway),
        normalize_path: pb::boolv(true),
        merge_slashes: false,
        path_with_escaped_slashes_action:
            hcm::http_connection_manager::PathWithEscapedSlashesAction::KeepUnchanged as i32,
        upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        stream_idle_timeout: pb::secs(0),
        // istiod's proxy headers default: inbound and gateway responses say
        // `server: istio-envoy`; sidecar outbound keeps Envoy's own "envoy"
        // (pilot/pkg/networking/util/proxy_headers.go).
        server_name: if inbound || gateway {
            "istio-envoy".into()
        } else {
            String::new()
        },
        forward_client_cert_details: xfcc as i32,
        set_current_client_cert_details: match xfcc {
            // What the sidecar adds of its peer's certificate (istiod's choice).
            Xfcc::AppendForward if inbound => {
                Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
                    subject: pb::boolv(true),
                    dns: true,
                    uri: true,
                    ..Default::default()
                })
            }
            // A gateway passes on the whole client certificate when it forwards one.
            Xfcc::AppendForward | Xfcc::SanitizeSet => {
                Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
                    subject: pb::boolv(true),
                    cert: true,
                    dns: true,
                    uri: true,
                    ..Default::default()
                })
            }
            _ => None,
        },
        xff_num_trusted_hops: if gateway {
            ctx.snap.mesh.gateway_trusted_proxies()
        } else {
            0
        },
        // `Expect: 100-continue` goes to the application, whose `100 Continue` comes back
        // (istiod's ENABLE_100_CONTINUE_HEADERS); Envoy does not answer it itself.
        proxy_100_continue: true,
        ..Default::default()
    };
    Filter {
        name: HCM.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(pb::any(&m))),
    }
}

pub fn tcp_proxy(ctx: &ProxyContext, cluster: &str) -> Filter {
    let t = tcp::TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster.to_string(),
        )),
        // Inbound clusters are the server side.
        access_log: logs(
            ctx,
            cluster.starts_with("inbound|") || cluster == naming::INBOUND_PASSTHROUGH,
            true,
        ),
        idle_timeout: super::super::tcp::idle_timeout(ctx, cluster).map(pb::duration),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(pb::any(&t))),
    }
}

pub(super) const GRPC_STATS_FILTER: &str = "envoy.filters.http.grpc_stats";

pub(super) fn grpc_stats_config()
-> envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::FilterConfig {
    use envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::{
        FilterConfig, filter_config::PerMethodStatSpecifier,
    };
    FilterConfig {
        emit_filter_state: true,
        // Not per method: method names come from clients, and each would be a stat.
        per_method_stat_specifier: Some(PerMethodStatSpecifier::StatsForAllMethods(
            envoy_types::pb::google::protobuf::BoolValue { value: false },
        )),
        ..Default::default()
    }
}
