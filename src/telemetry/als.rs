//! Envoy's access log service on meshd's xDS ports: each stream carries one proxy's
//! records of one side (its first message names the node and the log), which are joined
//! and counted as they arrive.

use std::sync::Arc;

use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, ResponseFlags, TcpAccessLogEntry,
    tls_properties::certificate_properties::subject_alt_name::San,
};
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
    access_log_service_server::{AccessLogService, AccessLogServiceServer},
    stream_access_logs_message::LogEntries,
};
use tonic::{Request, Response, Status, Streaming};

use super::join::{self, Peer};
use super::overrides;
use super::series::{Connection, Request as Req};
use crate::envoy::pb;
use crate::model::proxy::Proxy;
use crate::model::snapshot::Snapshot;
use crate::translate::peer::SideMetrics;
use crate::xds::state::XdsState;

/// The service, for a tonic server.
pub fn service(state: Arc<XdsState>) -> AccessLogServiceServer<Als> {
    AccessLogServiceServer::new(Als { state })
        .max_decoding_message_size(crate::xds::state::MAX_REQUEST_BYTES)
}

pub struct Als {
    state: Arc<XdsState>,
}

/// Which side of a request a stream's records are from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reporter {
    Source,
    Destination,
}

/// What a stream's first message said, and what follows from it.
struct Stream {
    /// The node as its xDS stream to this meshd registered it.
    proxy: Arc<Proxy>,
    reporter: Reporter,
    /// The Telemetry metric overrides for its side, and the snapshot generation they are
    /// of (worked out again when the configuration changes).
    overrides: Option<(u64, Arc<SideMetrics>)>,
}

impl Stream {
    /// The side's overrides. When its metrics are off, none: a record that still arrives
    /// was logged by a listener configured before the change (Envoy flushes its buffer
    /// up to a second later, a draining listener serves its connections until they
    /// close) and is counted as that listener's configuration counted it.
    async fn overrides(&mut self, snap: &Arc<Snapshot>) -> Arc<SideMetrics> {
        if let Some((generation, o)) = &self.overrides
            && *generation == snap.generation
        {
            return o.clone();
        }
        // Working out a proxy's view is CPU work: off the async threads.
        let (at, proxy) = (snap.clone(), self.proxy.clone());
        let inbound = self.reporter == Reporter::Destination;
        let side = tokio::task::spawn_blocking(move || {
            let ctx = crate::translate::ProxyContext::new(&at, &proxy);
            Arc::new(crate::translate::telemetry::own_metrics(&ctx, inbound).unwrap_or_default())
        })
        .await
        .unwrap_or_default();
        self.overrides = Some((snap.generation, side.clone()));
        side
    }
}

#[tonic::async_trait]
impl AccessLogService for Als {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut inbound = request.into_inner();
        let mut stream: Option<Stream> = None;
        while let Some(msg) = inbound.message().await? {
            if let Some(id) = &msg.identifier {
                let node = id.node.as_ref();
                let metadata = node
                    .and_then(|n| n.metadata.as_ref())
                    .map(pb::struct_to_json)
                    .unwrap_or_default();
                let proxy = Proxy::from_node(node.map(|n| n.id.as_str()).unwrap_or(""), metadata)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let reporter = match id.log_name.as_str() {
                    super::LOG_SOURCE => Reporter::Source,
                    super::LOG_DESTINATION => Reporter::Destination,
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "unknown access log {other:?}: meshd counts {} and {}",
                            super::LOG_SOURCE,
                            super::LOG_DESTINATION
                        )));
                    }
                };
                // The proxy as its xDS stream registered it (authenticated on 15012), not
                // as this message describes itself: a record's labels come from what
                // meshd serves. A node meshd does not serve is refused (Envoy opens the
                // stream again with its next record).
                let Some(registered) = self.registered(&proxy.id) else {
                    return Err(Status::permission_denied(format!(
                        "node {} has no xDS stream to this meshd; its records are not counted",
                        proxy.id
                    )));
                };
                stream = Some(Stream {
                    proxy: registered,
                    reporter,
                    overrides: None,
                });
            }
            let Some(s) = stream.as_mut() else {
                return Err(Status::invalid_argument(
                    "the first message of an access log stream must name the node",
                ));
            };
            let snap = self.state.snapshot();
            let overrides = s.overrides(&snap).await;
            let s = &*s;
            match msg.log_entries {
                Some(LogEntries::HttpLogs(logs)) => {
                    for e in &logs.log_entry {
                        self.http(s, &snap, &overrides, e);
                    }
                }
                Some(LogEntries::TcpLogs(logs)) => {
                    for e in &logs.log_entry {
                        self.tcp(s, &snap, &overrides, e);
                    }
                }
                None => {}
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

impl Als {
    fn registered(&self, id: &str) -> Option<Arc<Proxy>> {
        self.state
            .connections
            .lock()
            .ok()?
            .values()
            .find(|c| c.proxy.id == id)
            .map(|c| c.proxy.clone())
    }

    fn http(&self, s: &Stream, snap: &Snapshot, o: &SideMetrics, e: &HttpAccessLogEntry) {
        let Some(common) = &e.common_properties else {
            return;
        };
        let response = e.response.as_ref();
        // gRPC's status codes are 0 to 16; anything else an application sends is not a
        // label value (label sets must stay bounded whatever upstreams answer).
        let grpc_status = response
            .and_then(|r| {
                r.response_trailers
                    .get("grpc-status")
                    .or_else(|| r.response_headers.get("grpc-status"))
            })
            .map(|s| match s.parse::<u8>() {
                Ok(n) if n <= 16 => n.to_string(),
                _ => "unknown".to_string(),
            });
        let (source, destination, service, policy) = ends(s, snap, common);
        let code = match response.and_then(|r| r.response_code).map(|c| c.value) {
            Some(c) if c <= 599 => c.to_string(),
            None => "0".to_string(),
            Some(_) => "unknown".to_string(),
        };
        let grpc_request = e
            .request
            .as_ref()
            .and_then(|r| r.request_headers.get("content-type"))
            .is_some_and(|t| t.starts_with("application/grpc"));
        let mut labels = peer_labels(s.reporter, &source, &destination, &service);
        labels.extend([
            if grpc_status.is_some() || grpc_request {
                "grpc"
            } else {
                "http"
            }
            .to_string(),
            code.to_string(),
            grpc_status.unwrap_or_default(),
            flags(common.response_flags.as_ref()),
            policy.to_string(),
        ]);
        let request = e.request.as_ref();
        let duration_ms = common
            .duration
            .as_ref()
            .or(common.time_to_last_downstream_tx_byte.as_ref())
            .map(|d| d.seconds as f64 * 1000.0 + f64::from(d.nanos) / 1e6)
            .unwrap_or(0.0);
        let r = Req {
            duration_ms,
            request_bytes: request
                .map(|r| r.request_headers_bytes + r.request_body_bytes)
                .unwrap_or(0),
            response_bytes: response
                .map(|r| r.response_headers_bytes + r.response_body_bytes)
                .unwrap_or(0),
        };
        let names = super::series::names(&super::series::HTTP_TAIL);
        let mesh = &self.state.metrics.mesh;
        for (labels, families) in overrides::apply(o, &overrides::HTTP, &names, labels, |tag, v| {
            overrides::eval_http(v, e).map(|x| mesh.bounded_tag(tag, x))
        }) {
            self.state.metrics.mesh.record_http(labels, r, families);
        }
    }

    fn tcp(&self, s: &Stream, snap: &Snapshot, o: &SideMetrics, e: &TcpAccessLogEntry) {
        let Some(common) = &e.common_properties else {
            return;
        };
        let (source, destination, service, policy) = ends(s, snap, common);
        let mut labels = peer_labels(s.reporter, &source, &destination, &service);
        labels.extend([
            "tcp".to_string(),
            flags(common.response_flags.as_ref()),
            policy.to_string(),
        ]);
        let bytes = e.connection_properties.as_ref();
        // A record comes when a connection ends (meshd asks for no periodic ones), with
        // its bytes: its opening and closing are counted then.
        let end = common.access_log_type
            != envoy_types::pb::envoy::data::accesslog::v3::AccessLogType::TcpPeriodic as i32;
        let c = Connection {
            sent: bytes.map(|b| b.sent_bytes).unwrap_or(0),
            received: bytes.map(|b| b.received_bytes).unwrap_or(0),
            opened: end,
            closed: end,
        };
        let names = super::series::names(&super::series::TCP_TAIL);
        for (labels, families) in overrides::apply(o, &overrides::TCP, &names, labels, |_, v| {
            overrides::eval_tcp(v)
        }) {
            self.state.metrics.mesh.record_tcp(labels, c, families);
        }
    }
}

/// Source, destination, destination service (host, name, namespace) and the connection
/// security policy of one record.
fn ends(
    s: &Stream,
    snap: &Snapshot,
    common: &AccessLogCommon,
) -> (Peer, Peer, (String, String, String), &'static str) {
    let me = Peer::of_proxy(&s.proxy, snap);
    match s.reporter {
        Reporter::Source => {
            let upstream = ip_of(common.upstream_remote_address.as_ref());
            let mut dest = upstream
                .as_deref()
                .and_then(|ip| Peer::at_address(snap, ip))
                .unwrap_or_else(Peer::unknown);
            // The client knows the server's identity only when mesh mTLS was used.
            if !upstream
                .as_deref()
                .is_some_and(|ip| Peer::in_mesh(snap, ip))
            {
                dest.principal = "unknown".into();
            }
            let service = join::service_of_cluster(snap, &common.upstream_cluster);
            (me, dest, service, "unknown")
        }
        Reporter::Destination => {
            // The connection's own peer address (not one an X-Forwarded-For can claim).
            let downstream = ip_of(common.downstream_direct_remote_address.as_ref());
            let peer_uri = common
                .tls_properties
                .as_ref()
                .and_then(|t| t.peer_certificate_properties.as_ref())
                .and_then(|c| {
                    c.subject_alt_name.iter().find_map(|san| match &san.san {
                        Some(San::Uri(u)) => Some(u.clone()),
                        _ => None,
                    })
                });
            let policy = if peer_uri.is_some() {
                "mutual_tls"
            } else {
                "none"
            };
            // The client's pod by its certificate's identity (proven by mTLS), else by its
            // address.
            let mut source = peer_uri
                .as_deref()
                .and_then(|u| Peer::of_principal(snap, u))
                .or_else(|| {
                    downstream
                        .as_deref()
                        .and_then(|ip| Peer::at_address(snap, ip))
                })
                .unwrap_or_else(Peer::unknown);
            source.principal = peer_uri.unwrap_or_else(|| "unknown".into());
            let local = common.downstream_local_address.as_ref();
            let service = socket_of(local)
                .and_then(|(ip, port)| join::service_at(snap, &ip, port?))
                .unwrap_or_else(|| ("unknown".into(), "unknown".into(), "unknown".into()));
            (source, me, service, policy)
        }
    }
}

/// The IP and port of a socket address (None for pipes and internal addresses).
fn socket_of(
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
) -> Option<(String, Option<u16>)> {
    use envoy_types::pb::envoy::config::core::v3::address::Address as A;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    match a?.address.as_ref()? {
        A::SocketAddress(sa) => Some((
            sa.address.clone(),
            match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
                _ => None,
            },
        )),
        _ => None,
    }
}

fn ip_of(a: Option<&envoy_types::pb::envoy::config::core::v3::Address>) -> Option<String> {
    socket_of(a).map(|(ip, _)| ip)
}

/// The peer labels, in the series' order (reporter first).
fn peer_labels(
    reporter: Reporter,
    source: &Peer,
    destination: &Peer,
    (host, name, namespace): &(String, String, String),
) -> Vec<String> {
    vec![
        match reporter {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
        .to_string(),
        source.workload.clone(),
        source.namespace.clone(),
        source.principal.clone(),
        source.app.clone(),
        source.version.clone(),
        source.canonical_service.clone(),
        source.canonical_revision.clone(),
        source.cluster.clone(),
        destination.workload.clone(),
        destination.namespace.clone(),
        destination.principal.clone(),
        destination.app.clone(),
        destination.version.clone(),
        host.clone(),
        name.clone(),
        namespace.clone(),
        destination.canonical_service.clone(),
        destination.canonical_revision.clone(),
        destination.cluster.clone(),
    ]
}

/// Envoy's short response flags (`UH`, `NR`, …, comma-separated; `-` for none), as
/// `%RESPONSE_FLAGS%` prints them.
fn flags(f: Option<&ResponseFlags>) -> String {
    let Some(f) = f else {
        return "-".into();
    };
    let all = [
        (f.failed_local_healthcheck, "LH"),
        (f.no_healthy_upstream, "UH"),
        (f.upstream_request_timeout, "UT"),
        (f.local_reset, "LR"),
        (f.upstream_remote_reset, "UR"),
        (f.upstream_connection_failure, "UF"),
        (f.upstream_connection_termination, "UC"),
        (f.upstream_overflow, "UO"),
        (f.no_route_found, "NR"),
        (f.delay_injected, "DI"),
        (f.fault_injected, "FI"),
        (f.rate_limited, "RL"),
        (f.unauthorized_details.is_some(), "UAEX"),
        (f.rate_limit_service_error, "RLSE"),
        (f.downstream_connection_termination, "DC"),
        (f.upstream_retry_limit_exceeded, "URX"),
        (f.stream_idle_timeout, "SI"),
        (f.invalid_envoy_request_headers, "IH"),
        (f.downstream_protocol_error, "DPE"),
        (f.upstream_max_stream_duration_reached, "UMSDR"),
        (f.no_filter_config_found, "NFCF"),
        (f.duration_timeout, "DT"),
        (f.upstream_protocol_error, "UPE"),
        (f.no_cluster_found, "NC"),
        (f.overload_manager, "OM"),
        (f.dns_resolution_failure, "DF"),
        (f.downstream_remote_reset, "DR"),
    ];
    let set: Vec<&str> = all.iter().filter(|(on, _)| *on).map(|(_, s)| *s).collect();
    if set.is_empty() {
        "-".into()
    } else {
        set.join(",")
    }
}
