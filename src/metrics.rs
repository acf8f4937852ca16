//! Prometheus metrics, with istiod's names where dashboards use them. Labels are bounded
//! (type, version, severity): never a proxy id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// cds, eds, lds, rds, sds
    pub r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// A gRPC status code's name (`invalid_argument`, `resource_exhausted`, …): a fixed set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabel {
    pub severity: String,
}

/// A configuration or registry event: the kind (`VirtualService`, `Services`, …) and
/// `add`, `update` or `delete`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub r#type: String,
    pub event: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub component: String,
    pub tag: String,
}

/// Response sizes, as istiod buckets them (1 B to 40 MB).
fn bytes_buckets() -> impl Iterator<Item = f64> {
    [
        1.0,
        10_000.0,
        1_000_000.0,
        4_000_000.0,
        10_000_000.0,
        40_000_000.0,
    ]
    .into_iter()
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0,
    ]
    .into_iter()
}

/// meshd's metrics.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// pilot_xds: connected proxies by istio version ("upstream" for plain Envoy).
    /// Change it through [`Metrics::proxy_connected`] / [`Metrics::proxy_disconnected`],
    /// which drop a version's series when its last proxy leaves.
    pub xds_connections: Family<VersionLabel, Gauge>,
    /// Serializes connection counting, so a series is never removed while another
    /// proxy of that version connects.
    connections_lock: std::sync::Mutex<()>,
    /// pilot_xds_pushes: responses sent, by type.
    pub pushes: Family<TypeLabel, Counter>,
    /// pilot_total_xds_rejects: NACKs, by type.
    pub rejects: Family<TypeLabel, Counter>,
    /// pilot_xds_expired_nonce: requests for stale nonces, by type.
    pub expired_nonce: Family<TypeLabel, Counter>,
    /// pilot_xds_write_timeout: responses a proxy did not take within the send
    /// deadline (its stream is then closed).
    pub write_timeouts: Counter,
    /// meshd_xds_stream_errors: ADS streams meshd ended because of what the client sent
    /// (malformed or oversized requests, a missing node, failed authentication), by
    /// gRPC code.
    pub stream_errors: Family<CodeLabel, Counter>,
    /// pilot_xds_push_time: time to generate and send one response, by type.
    pub push_time: Family<TypeLabel, Histogram>,
    /// pilot_proxy_convergence_time: from a config change to the push reaching the proxy.
    pub convergence: Histogram,
    /// meshd_config_diagnostics: current diagnostics by severity.
    pub diagnostics: Family<SeverityLabel, Gauge>,
    /// meshd_config_objects: accepted configuration objects.
    pub objects: Gauge,
    /// meshd_snapshot_builds_total and the time each takes.
    pub snapshot_builds: Counter,
    pub snapshot_build_time: Histogram,
    /// citadel_server_csr_count: CSRs received.
    pub csr_count: Counter,
    /// citadel_server_success_cert_issuance_count.
    pub certs_issued: Counter,
    /// citadel_server_csr_sign_error_count: CSRs refused or failed.
    pub csr_errors: Counter,
    /// citadel_server_authentication_failure_count.
    pub auth_failures: Counter,
    /// citadel_server_root_cert_expiry_timestamp (seconds since the epoch).
    pub root_expiry: Gauge,
    /// meshd_sds_refusals: SDS requests for secrets the caller does not own.
    pub sds_refusals: Counter,
    /// sidecar_injection_{requests,success,skip,failure}_total, as istiod names them.
    pub injection_requests: Counter,
    pub injection_success: Counter,
    pub injection_skip: Counter,
    pub injection_failure: Counter,
    /// galley_validation_{passed,failed}: validation webhook verdicts.
    pub validation_passed: Counter,
    pub validation_failed: Counter,
    /// pilot_services, pilot_virt_services: services and VirtualServices in force.
    pub services: Gauge,
    pub virtual_services: Gauge,
    /// pilot_xds_config_size_bytes: size of each response, by type.
    pub config_size: Family<TypeLabel, Histogram>,
    /// pilot_total_xds_internal_errors: responses meshd could not build or send for
    /// reasons of its own (not the proxy's).
    pub internal_errors: Counter,
    /// pilot_push_triggers: what changes caused pushes (global, service, config,
    /// endpoint, secret, proxy).
    pub push_triggers: Family<TypeLabel, Counter>,
    /// pilot_k8s_cfg_events: configuration objects added, updated, deleted, by kind.
    pub cfg_events: Family<EventLabel, Counter>,
    /// pilot_k8s_reg_events: registry objects (Services, Pods, EndpointSlices, …).
    pub reg_events: Family<EventLabel, Counter>,
    /// The mesh's request and connection series (crate::telemetry).
    pub mesh: crate::telemetry::series::MeshSeries,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let xds_connections = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS",
            xds_connections.clone(),
        );
        let pushes = Family::<TypeLabel, Counter>::default();
        registry.register(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds",
            pushes.clone(),
        );
        let rejects = Family::<TypeLabel, Counter>::default();
        registry.register(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy",
            rejects.clone(),
        );
        // Zero series for every xDS type from the start: a dashboard shows 0 rejects,
        // not "no data", before the first NACK.
        for t in ["cds", "eds", "lds", "rds", "sds"] {
            let _ = rejects.get_or_create(&Metrics::type_label(t));
        }
        let expired_nonce = Family::<TypeLabel, Counter>::default();
        registry.register(
            "pilot_xds_expired_nonce",
            "Total number of XDS requests with an expired nonce",
            expired_nonce.clone(),
        );
        let push_time = Family::<TypeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(seconds_buckets())
        });
        registry.register(
            "pilot_xds_push_time",
            "Total time in seconds Pilot takes to push lds, rds, cds and eds",
            push_time.clone(),
        );
        let convergence = Histogram::new(seconds_buckets());
        registry.register("pilot_proxy_convergence_time", "Delay in seconds between config change and a proxy receiving all required configuration", convergence.clone());
        let diagnostics = Family::<SeverityLabel, Gauge>::default();
        registry.register(
            "meshd_config_diagnostics",
            "Current configuration diagnostics by severity",
            diagnostics.clone(),
        );
        let objects = Gauge::default();
        registry.register(
            "meshd_config_objects",
            "Configuration objects in force",
            objects.clone(),
        );
        let snapshot_builds = Counter::default();
        registry.register(
            "meshd_snapshot_builds",
            "Snapshots built",
            snapshot_builds.clone(),
        );
        let snapshot_build_time = Histogram::new(seconds_buckets());
        registry.register(
            "meshd_snapshot_build_time",
            "Seconds to build a snapshot",
            snapshot_build_time.clone(),
        );
        let csr_count = Counter::default();
        registry.register(
            "citadel_server_csr_count",
            "The number of CSRs received by Citadel server",
            csr_count.clone(),
        );
        let certs_issued = Counter::default();
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issuances that have succeeded",
            certs_issued.clone(),
        );
        let csr_errors = Counter::default();
        registry.register(
            "citadel_server_csr_sign_error_count",
            "The number of errors occurred when signing the CSR",
            csr_errors.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "citadel_server_authentication_failure_count",
            "The number of authentication failures",
            auth_failures.clone(),
        );
        let root_expiry = Gauge::default();
        registry.register(
            "citadel_server_root_cert_expiry_timestamp",
            "The unix timestamp, in seconds, when Citadel root cert will expire",
            root_expiry.clone(),
        );
        let write_timeouts = Counter::default();
        registry.register(
            "pilot_xds_write_timeout",
            "Pilot XDS response write timeouts",
            write_timeouts.clone(),
        );
        let stream_errors = Family::<CodeLabel, Counter>::default();
        registry.register(
            "meshd_xds_stream_errors",
            "ADS streams ended because of what the client sent, by gRPC code",
            stream_errors.clone(),
        );
        let sds_refusals = Counter::default();
        registry.register(
            "meshd_sds_refusals",
            "SDS requests refused because the caller does not own the secret",
            sds_refusals.clone(),
        );
        // istiod's names for these end in `_total` (see KEEP_TOTAL).
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let injection_requests = counter(
            &mut registry,
            "sidecar_injection_requests",
            "Injection requests",
        );
        let injection_success =
            counter(&mut registry, "sidecar_injection_success", "Pods injected");
        let injection_skip = counter(
            &mut registry,
            "sidecar_injection_skip",
            "Pods not injected by policy",
        );
        let injection_failure = counter(
            &mut registry,
            "sidecar_injection_failure",
            "Injections that failed",
        );
        let validation_passed = counter(
            &mut registry,
            "galley_validation_passed",
            "Objects the validation webhook accepted",
        );
        let validation_failed = counter(
            &mut registry,
            "galley_validation_failed",
            "Objects the validation webhook refused",
        );
        let info = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "pilot_info",
            "Pilot version and build information",
            info.clone(),
        );
        info.get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
        let build = Family::<BuildLabel, Gauge>::default();
        registry.register("istio_build", "Istio component build info", build.clone());
        build
            .get_or_create(&BuildLabel {
                component: "pilot".into(),
                tag: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        let services = Gauge::default();
        registry.register(
            "pilot_services",
            "Total services known to pilot",
            services.clone(),
        );
        let virtual_services = Gauge::default();
        registry.register(
            "pilot_virt_services",
            "Total virtual services known to pilot",
            virtual_services.clone(),
        );
        let config_size =
            Family::<TypeLabel, Histogram>::new_with_constructor(
                || Histogram::new(bytes_buckets()),
            );
        registry.register(
            "pilot_xds_config_size_bytes",
            "Distribution of configuration sizes pushed to clients",
            config_size.clone(),
        );
        let internal_errors = Counter::default();
        registry.register(
            "pilot_total_xds_internal_errors",
            "Total number of internal XDS errors in pilot",
            internal_errors.clone(),
        );
        let push_triggers = Family::<TypeLabel, Counter>::default();
        registry.register(
            "pilot_push_triggers",
            "Total number of times a push was triggered, labeled by reason for the push",
            push_triggers.clone(),
        );
        let cfg_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "pilot_k8s_cfg_events",
            "Events from k8s config",
            cfg_events.clone(),
        );
        let reg_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "pilot_k8s_reg_events",
            "Events from k8s registry",
            reg_events.clone(),
        );
        Metrics {
            mesh: Default::default(),
            services,
            virtual_services,
            config_size,
            internal_errors,
            push_triggers,
            cfg_events,
            reg_events,
            injection_requests,
            injection_success,
            injection_skip,
            injection_failure,
            validation_passed,
            validation_failed,
            csr_count,
            certs_issued,
            csr_errors,
            auth_failures,
            root_expiry,
            sds_refusals,
            write_timeouts,
            stream_errors,
            registry,
            xds_connections,
            connections_lock: std::sync::Mutex::new(()),
            pushes,
            rejects,
            expired_nonce,
            push_time,
            convergence,
            diagnostics,
            objects,
            snapshot_builds,
            snapshot_build_time,
        }
    }

    pub fn type_label(short: &str) -> TypeLabel {
        TypeLabel {
            r#type: short.to_ascii_lowercase(),
        }
    }

    /// Prometheus text exposition (format 0.0.4), with counters named as istiod names
    /// them: `pilot_xds_pushes`, not OpenMetrics' `pilot_xds_pushes_total`, so that
    /// Istio's dashboards and alerts keep working.
    pub fn encode(&self) -> String {
        let mut open_metrics = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry);
        let mut out = to_prometheus_text(&open_metrics);
        out.push_str(&process_metrics());
        self.mesh.encode(&mut out);
        out
    }

    /// Counts what changed between two snapshots' objects as istiod counts its
    /// informers' events: configuration kinds in `pilot_k8s_cfg_events`, the service
    /// registry's (Services, Pods, Endpoints, …) in `pilot_k8s_reg_events`. Objects
    /// meshd generated (from the Gateway API) are not events.
    pub fn count_events(
        &self,
        old: Option<&crate::model::objects::ObjectMap>,
        new: &crate::model::objects::ObjectMap,
    ) {
        use crate::model::object::Kind;
        let empty = crate::model::objects::ObjectMap::new();
        let old = old.unwrap_or(&empty);
        let event = |k: Kind, what: &str| {
            let (family, kind) = match k {
                Kind::Service => (&self.reg_events, "Services"),
                Kind::Pod => (&self.reg_events, "Pods"),
                Kind::Endpoints => (&self.reg_events, "Endpoints"),
                Kind::EndpointSlice => (&self.reg_events, "EndpointSlice"),
                Kind::Namespace => (&self.reg_events, "Namespaces"),
                Kind::Node => (&self.reg_events, "Nodes"),
                other => (&self.cfg_events, other.name()),
            };
            family
                .get_or_create(&EventLabel {
                    r#type: kind.into(),
                    event: what.into(),
                })
                .inc();
        };
        // A kind the sources did not touch is shared by both maps and skipped unread.
        for kind in new.unshared_kinds(old) {
            let kept = |o: &&std::sync::Arc<crate::model::object::Object>| !o.is_generated();
            for o in old.of_kind(kind).filter(kept) {
                match new.get(&o.key).filter(kept) {
                    None => event(kind, "delete"),
                    Some(n) if !std::sync::Arc::ptr_eq(o, n) && o.hash != n.hash => {
                        event(kind, "update")
                    }
                    Some(_) => {}
                }
            }
            for o in new.of_kind(kind).filter(kept) {
                if old.get(&o.key).filter(kept).is_none() {
                    event(kind, "add");
                }
            }
        }
    }
}

/// The process's own series (what Prometheus client libraries export as `process_*`):
/// CPU seconds, resident and virtual memory, open and maximum descriptors, start time.
/// Read from /proc at scrape time; empty where there is no /proc.
fn process_metrics() -> String {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return String::new();
    };
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux's USER_HZ (clock ticks in /proc) is 100 on every architecture meshd builds
    // for; memory comes from /proc/self/status in kB, whatever the page size.
    let ticks = 100.0;
    let cpu = (num(11) + num(12)) / ticks; // utime, stime
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |v| v * 1024.0)
    };
    let vsize = kb("VmSize:");
    let rss = kb("VmRSS:");
    let start_ticks = num(19);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let mut out = String::new();
    for (name, kind, help, value) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds as f64,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot + start_ticks / ticks,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out
}

/// Counters istiod exports with `_total` in their names (its injection metrics).
const KEEP_TOTAL: &[&str] = &[
    "sidecar_injection_requests",
    "sidecar_injection_success",
    "sidecar_injection_skip",
    "sidecar_injection_failure",
];

/// OpenMetrics text → Prometheus text 0.0.4: no `# EOF`, no `_total` on counter samples
/// (except for the counters istiod itself names `…_total`).
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<String> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .filter(|name| !KEEP_TOTAL.contains(name))
        .map(|name| format!("{name}_total"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = counters.iter().find_map(|c| {
            let rest = line.strip_prefix(c.as_str())?;
            (rest.starts_with('{') || rest.starts_with(' '))
                .then(|| format!("{}{rest}", &c[..c.len() - "_total".len()]))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

impl Metrics {
    /// Counts a connected proxy under its version label.
    pub fn proxy_connected(&self, label: &VersionLabel) {
        let _g = self.connections_lock.lock();
        self.xds_connections.get_or_create(label).inc();
    }

    /// Uncounts a proxy; the label's series goes when no proxy of that version is left
    /// (clients choose the version they report, so series must not outlive them).
    pub fn proxy_disconnected(&self, label: &VersionLabel) {
        let _g = self.connections_lock.lock();
        if self.xds_connections.get_or_create(label).dec() <= 1 {
            self.xds_connections.remove(label);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_istiod_names() {
        let m = Metrics::new();
        m.pushes.get_or_create(&Metrics::type_label("CDS")).inc();
        m.xds_connections
            .get_or_create(&VersionLabel {
                version: "upstream".into(),
            })
            .inc();
        let text = m.encode();
        assert!(text.contains("# TYPE pilot_xds_pushes counter"), "{text}");
        assert!(
            text.contains("pilot_xds_pushes{type=\"cds\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("pilot_xds_pushes_total"), "{text}");
        assert!(
            text.contains("pilot_xds{version=\"upstream\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
