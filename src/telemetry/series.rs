//! The series themselves: counters and histograms per label set, named and labelled as
//! istio-proxy's stats filter names them, in Prometheus' text format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// The labels naming both ends of a request or connection, in the order values are
/// given (the reporter first).
pub const PEER_LABELS: [&str; 20] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
];

/// What follows the peer labels on the HTTP series.
pub const HTTP_TAIL: [&str; 5] = [
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// What follows the peer labels on the TCP series (no response code or gRPC status).
pub const TCP_TAIL: [&str; 3] = [
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

pub fn names(tail: &[&'static str]) -> Vec<&'static str> {
    PEER_LABELS.iter().chain(tail).copied().collect()
}

/// The families a record counts in (a Telemetry override may drop some, or give them
/// other labels): bits of `families` in [`MeshSeries::record_http`] and
/// [`MeshSeries::record_tcp`].
pub const REQUEST_COUNT: u8 = 1;
pub const REQUEST_DURATION: u8 = 2;
pub const REQUEST_SIZE: u8 = 4;
pub const RESPONSE_SIZE: u8 = 8;
pub const TCP_SENT_BYTES: u8 = 1;
pub const TCP_RECEIVED_BYTES: u8 = 2;
pub const TCP_OPENED_CONNECTIONS: u8 = 4;
pub const TCP_CLOSED_CONNECTIONS: u8 = 8;
pub const ALL_FAMILIES: u8 = 15;

/// An extra label (a Telemetry tag override naming a label istio-proxy does not have):
/// kept after the standard values as `name`, NUL, `value`. `name` must be
/// [`crate::model::metric_tags::valid_label_name`].
pub fn extra_label(name: &str, value: &str) -> String {
    format!("{name}\0{value}")
}

/// How many values one computed label (a Telemetry tag override) may take; beyond,
/// `other`. Request attributes and headers are chosen by clients: without a bound one
/// client could fill every family's label sets for all.
pub const MAX_TAG_VALUES: usize = 100;

/// istio-proxy's buckets for request durations (milliseconds).
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// istio-proxy's buckets for request and response sizes (bytes).
const SIZE_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// How many label sets each family keeps: with label values cut at [`MAX_VALUE`], a bound
/// on meshd's memory and on `/metrics`' size whatever the traffic (label values come from
/// the mesh's own objects, bounded response codes and gRPC statuses, so a real mesh stays
/// below it). Records for more are counted in `meshd_telemetry_series_dropped_total`.
pub const MAX_SERIES: usize = 20_000;

#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        // Per bucket, not cumulative: summed when written out.
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Clone)]
struct HttpStats {
    requests: u64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

#[derive(Debug, Clone, Default)]
struct TcpStats {
    sent: u64,
    received: u64,
    opened: u64,
    closed: u64,
    /// The families this label set was counted in.
    families: u8,
}

/// Requests between two workloads through one service with one response code, as one
/// reporter counted them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestCount {
    pub reporter: String,
    pub source_workload: String,
    pub source_namespace: String,
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub response_code: String,
    pub requests: u64,
}

/// The mesh's series, shared by every access log stream.
#[derive(Debug, Default)]
pub struct MeshSeries {
    /// Values seen per computed label, bounded by [`MAX_TAG_VALUES`].
    tag_values: Mutex<HashMap<String, std::collections::HashSet<String>>>,
    http: Mutex<HashMap<Vec<String>, HttpStats>>,
    tcp: Mutex<HashMap<Vec<String>, TcpStats>>,
    dropped: AtomicU64,
    records: AtomicU64,
}

/// One request, as the series count it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request {
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// One TCP connection (or a part of its life).
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection {
    pub sent: u64,
    pub received: u64,
    pub opened: bool,
    pub closed: bool,
}

impl MeshSeries {
    /// Counts a request in `families`; `labels` in [`PEER_LABELS`] then [`HTTP_TAIL`]
    /// order, then any [`extra_label`]s.
    pub fn record_http(&self, labels: Vec<String>, r: Request, families: u8) {
        self.records.fetch_add(1, Ordering::Relaxed);
        let labels = bounded(labels);
        let mut map = self.http.lock().unwrap_or_else(PoisonError::into_inner);
        let full = map.len() >= MAX_SERIES;
        let stats = match map.get_mut(&labels) {
            Some(s) => s,
            None if full => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            None => map.entry(labels).or_insert_with(|| HttpStats {
                requests: 0,
                duration: Histogram::new(&DURATION_BUCKETS),
                request_bytes: Histogram::new(&SIZE_BUCKETS),
                response_bytes: Histogram::new(&SIZE_BUCKETS),
            }),
        };
        if families & REQUEST_COUNT != 0 {
            stats.requests += 1;
        }
        if families & REQUEST_DURATION != 0 {
            stats.duration.observe(&DURATION_BUCKETS, r.duration_ms);
        }
        if families & REQUEST_SIZE != 0 {
            stats
                .request_bytes
                .observe(&SIZE_BUCKETS, r.request_bytes as f64);
        }
        if families & RESPONSE_SIZE != 0 {
            stats
                .response_bytes
                .observe(&SIZE_BUCKETS, r.response_bytes as f64);
        }
    }

    /// Counts a TCP connection's bytes (and its opening or closing) in `families`;
    /// `labels` in [`PEER_LABELS`] then [`TCP_TAIL`] order, then any [`extra_label`]s.
    pub fn record_tcp(&self, labels: Vec<String>, c: Connection, families: u8) {
        self.records.fetch_add(1, Ordering::Relaxed);
        let labels = bounded(labels);
        let mut map = self.tcp.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(&labels) && map.len() >= MAX_SERIES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let s = map.entry(labels).or_default();
        s.families |= families;
        if families & TCP_SENT_BYTES != 0 {
            s.sent = s.sent.saturating_add(c.sent);
        }
        if families & TCP_RECEIVED_BYTES != 0 {
            s.received = s.received.saturating_add(c.received);
        }
        if families & TCP_OPENED_CONNECTIONS != 0 {
            s.opened += u64::from(c.opened);
        }
        if families & TCP_CLOSED_CONNECTIONS != 0 {
            s.closed += u64::from(c.closed);
        }
    }

    /// Requests counted per pair of workloads, destination service and response code,
    /// the reporter's count kept apart (the service graph of `/ui`).
    pub fn request_counts(&self) -> Vec<RequestCount> {
        let label = |k: &[String], name: &str| {
            PEER_LABELS
                .iter()
                .chain(HTTP_TAIL.iter())
                .position(|l| *l == name)
                .and_then(|i| k.get(i))
                .cloned()
                .unwrap_or_default()
        };
        let map = self.http.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by: HashMap<[String; 7], u64> = HashMap::new();
        for (k, v) in map.iter() {
            let key = [
                label(k, "reporter"),
                label(k, "source_workload"),
                label(k, "source_workload_namespace"),
                label(k, "destination_service"),
                label(k, "destination_workload"),
                label(k, "destination_workload_namespace"),
                label(k, "response_code"),
            ];
            *by.entry(key).or_default() += v.requests;
        }
        drop(map);
        let mut out: Vec<RequestCount> = by
            .into_iter()
            .map(
                |([reporter, sw, sn, ds, dw, dn, code], requests)| RequestCount {
                    reporter,
                    source_workload: sw,
                    source_namespace: sn,
                    destination_service: ds,
                    destination_workload: dw,
                    destination_namespace: dn,
                    response_code: code,
                    requests,
                },
            )
            .collect();
        out.sort_by(|a, b| {
            (
                &a.destination_service,
                &a.source_workload,
                &a.destination_workload,
                &a.reporter,
                &a.response_code,
            )
                .cmp(&(
                    &b.destination_service,
                    &b.source_workload,
                    &b.destination_workload,
                    &b.reporter,
                    &b.response_code,
                ))
        });
        out
    }

    /// `value` for the computed label `tag`, or `other` once the label has taken
    /// [`MAX_TAG_VALUES`] others.
    pub fn bounded_tag(&self, tag: &str, value: String) -> String {
        let mut map = self
            .tag_values
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = map.entry(tag.to_string()).or_default();
        if seen.contains(&value) {
            return value;
        }
        if seen.len() >= MAX_TAG_VALUES {
            return "other".into();
        }
        seen.insert(value.clone());
        value
    }

    /// Records counted so far (requests and connection records).
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Prometheus text format (0.0.4), appended to `out`.
    pub fn encode(&self, out: &mut String) {
        let http: Vec<(Vec<String>, HttpStats)> = match self.http.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        };
        let tcp: Vec<(Vec<String>, TcpStats)> = match self.tcp.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        };
        let mut http = http;
        http.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tcp = tcp;
        tcp.sort_by(|a, b| a.0.cmp(&b.0));
        let (http_names, tcp_names) = (names(&HTTP_TAIL), names(&TCP_TAIL));

        family(
            out,
            "istio_requests_total",
            "counter",
            "Requests, by source, destination and response.",
        );
        // A label set not counted in a family (dropped there, or labelled apart by a
        // Telemetry override) has no series in it.
        for (labels, s) in http.iter().filter(|(_, s)| s.requests > 0) {
            sample(
                out,
                "istio_requests_total",
                &http_names,
                labels,
                None,
                s.requests as f64,
            );
        }
        for (name, help, buckets, pick) in [
            (
                "istio_request_duration_milliseconds",
                "Request durations (milliseconds).",
                &DURATION_BUCKETS[..],
                (|s: &HttpStats| &s.duration) as fn(&HttpStats) -> &Histogram,
            ),
            (
                "istio_request_bytes",
                "Request sizes, headers and body (bytes).",
                &SIZE_BUCKETS[..],
                |s: &HttpStats| &s.request_bytes,
            ),
            (
                "istio_response_bytes",
                "Response sizes, headers and body (bytes).",
                &SIZE_BUCKETS[..],
                |s: &HttpStats| &s.response_bytes,
            ),
        ] {
            family(out, name, "histogram", help);
            for (labels, s) in http.iter().filter(|(_, s)| pick(s).count > 0) {
                let h = pick(s);
                let mut cumulative = 0;
                for (bound, n) in buckets.iter().zip(&h.counts) {
                    cumulative += n;
                    sample(
                        out,
                        &format!("{name}_bucket"),
                        &http_names,
                        labels,
                        Some(&format_bound(*bound)),
                        cumulative as f64,
                    );
                }
                sample(
                    out,
                    &format!("{name}_bucket"),
                    &http_names,
                    labels,
                    Some("+Inf"),
                    h.count as f64,
                );
                sample(
                    out,
                    &format!("{name}_sum"),
                    &http_names,
                    labels,
                    None,
                    h.sum,
                );
                sample(
                    out,
                    &format!("{name}_count"),
                    &http_names,
                    labels,
                    None,
                    h.count as f64,
                );
            }
        }
        for (name, help, bit, pick) in [
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the downstream over TCP.",
                TCP_SENT_BYTES,
                (|s: &TcpStats| s.sent) as fn(&TcpStats) -> u64,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from the downstream over TCP.",
                TCP_RECEIVED_BYTES,
                |s: &TcpStats| s.received,
            ),
            (
                "istio_tcp_connections_opened_total",
                "TCP connections opened.",
                TCP_OPENED_CONNECTIONS,
                |s: &TcpStats| s.opened,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP connections closed.",
                TCP_CLOSED_CONNECTIONS,
                |s: &TcpStats| s.closed,
            ),
        ] {
            family(out, name, "counter", help);
            for (labels, s) in tcp.iter().filter(|(_, s)| s.families & bit != 0) {
                sample(out, name, &tcp_names, labels, None, pick(s) as f64);
            }
        }
        family(
            out,
            "meshd_telemetry_series_dropped_total",
            "counter",
            "Records not counted because their family already holds the most label sets meshd keeps.",
        );
        let _ = writeln!(
            out,
            "meshd_telemetry_series_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
        family(
            out,
            "meshd_telemetry_records_total",
            "counter",
            "Access log records (requests and TCP connections) received from proxies.",
        );
        let _ = writeln!(out, "meshd_telemetry_records_total {}", self.records());
    }
}

/// The longest label value kept (longer ones are cut): Kubernetes names and DNS names
/// fit; nothing a record carries can make one series large.
const MAX_VALUE: usize = 256;

fn bounded(mut labels: Vec<String>) -> Vec<String> {
    for v in &mut labels {
        if v.len() > MAX_VALUE {
            let mut end = MAX_VALUE;
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            v.truncate(end);
        }
    }
    labels
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn format_bound(b: f64) -> String {
    if b.fract() == 0.0 && b.abs() < 1e15 {
        format!("{}", b as i64)
    } else {
        format!("{b}")
    }
}

fn sample(
    out: &mut String,
    name: &str,
    names: &[&str],
    values: &[String],
    le: Option<&str>,
    v: f64,
) {
    out.push_str(name);
    out.push('{');
    for (i, (n, val)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{n}=\"{}\"", escape(val));
    }
    for extra in values.iter().skip(names.len()) {
        if let Some((n, val)) = extra.split_once('\0') {
            let _ = write!(out, ",{n}=\"{}\"", escape(val));
        }
    }
    if let Some(le) = le {
        let _ = write!(out, ",le=\"{le}\"");
    }
    let _ = writeln!(out, "}} {v}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(code: &str) -> Vec<String> {
        names(&HTTP_TAIL)
            .iter()
            .map(|l| {
                if *l == "response_code" {
                    code.to_string()
                } else {
                    format!("{l}-v")
                }
            })
            .collect()
    }

    #[test]
    fn counts_and_buckets_are_cumulative() {
        let s = MeshSeries::default();
        for d in [0.3, 3.0, 7.0] {
            s.record_http(
                labels("200"),
                Request {
                    duration_ms: d,
                    request_bytes: 5,
                    response_bytes: 500,
                },
                ALL_FAMILIES,
            );
        }
        s.record_http(labels("503"), Request::default(), ALL_FAMILIES);
        let mut out = String::new();
        s.encode(&mut out);
        assert!(out.contains("response_code=\"200\",grpc_response_status=\"grpc_response_status-v\",response_flags=\"response_flags-v\",connection_security_policy=\"connection_security_policy-v\"} 3\n"), "{out}");
        assert!(out.contains("response_code=\"503\","), "{out}");
        // 0.3 in 0.5; 3 in 5; 7 in 10: cumulative 1, 1, 2, 3.
        for (le, n) in [("0.5", 1), ("1", 1), ("5", 2), ("10", 3), ("+Inf", 3)] {
            let needle = format!(
                "connection_security_policy=\"connection_security_policy-v\",le=\"{le}\"}} {n}\n"
            );
            assert!(
                out.lines().any(
                    |l| l.starts_with("istio_request_duration_milliseconds_bucket")
                        && l.contains("response_code=\"200\"")
                        && format!("{l}\n").ends_with(&needle)
                ),
                "{le}: {out}"
            );
        }
        assert!(out.contains("meshd_telemetry_records_total 4"), "{out}");
    }
}
