//! The mesh as a graph for `/ui`: services, how each VirtualService splits their traffic,
//! and the requests counted between workloads (from the mesh metrics). Counts, not
//! rates: the page takes the difference between two readings, so meshd keeps no
//! history for it.

use serde::Serialize;
use serde_json::{Value, json};

use crate::model::host;
use crate::model::snapshot::Snapshot;
use crate::telemetry::series::RequestCount;

#[derive(Debug, Serialize)]
pub struct Split {
    /// `namespace/name` of the VirtualService.
    #[serde(rename = "virtualService")]
    pub virtual_service: String,
    /// Its hosts (FQDNs) and gateways (`mesh` for sidecars).
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    /// `http`, `tls` or `tcp`, and the rule's index (and name when it has one).
    pub protocol: &'static str,
    pub rule: String,
    /// The rule's match conditions as written (empty: every request).
    #[serde(rename = "match")]
    pub matches: Value,
    pub destinations: Vec<Destination>,
}

#[derive(Debug, Serialize)]
pub struct Destination {
    pub host: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subset: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Percent of the rule's requests (a lone destination takes them all).
    pub weight: i32,
}

fn destinations<'a>(
    list: impl Iterator<Item = (&'a crate::model::istio::Destination, Option<i32>)>,
    namespace: &str,
    domain: &str,
) -> Vec<Destination> {
    let list: Vec<_> = list.collect();
    let alone = list.len() == 1;
    list.into_iter()
        .map(|(d, w)| Destination {
            host: host::resolve(&d.host, namespace, domain),
            subset: d.subset.clone(),
            port: d.port.as_ref().map(|p| p.number),
            weight: if alone {
                w.unwrap_or(100)
            } else {
                w.unwrap_or(0)
            },
        })
        .collect()
}

/// `v` without the fields a user would not have written: nulls, empty strings, lists and
/// maps, and `false` (every default of the typed spec).
fn compact(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, compact(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(compact).collect()),
        v => v,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Every routing rule with at least one destination, of every VirtualService in force.
pub fn splits(snap: &Snapshot) -> Vec<Split> {
    let domain = &snap.mesh.domain_suffix;
    let mut out = Vec::new();
    for vs in &snap.virtual_services {
        let ns = vs.key.namespace.as_str();

        let base = |protocol, i: usize, name: &str, matches: Value, dests| Split {
            virtual_service: format!("{}/{}", vs.key.namespace, vs.key.name),
            hosts: vs.hosts.clone(),
            gateways: vs.gateways.clone(),
            protocol,
            rule: if name.is_empty() {
                i.to_string()
            } else {
                format!("{i} ({name})")
            },
            matches,
            destinations: dests,
        };
        for (i, r) in vs.spec.http.iter().enumerate() {
            if r.route.is_empty() {
                continue;
            }
            let d = destinations(
                r.route.iter().map(|d| (&d.destination, d.weight)),
                ns,
                domain,
            );
            out.push(base("http", i, &r.name, compact(json!(r.matches)), d));
        }
        for (i, r) in vs.spec.tls.iter().enumerate() {
            let d = destinations(
                r.route.iter().map(|d| (&d.destination, d.weight)),
                ns,
                domain,
            );
            out.push(base("tls", i, "", compact(json!(r.matches)), d));
        }
        for (i, r) in vs.spec.tcp.iter().enumerate() {
            let d = destinations(
                r.route.iter().map(|d| (&d.destination, d.weight)),
                ns,
                domain,
            );
            out.push(base("tcp", i, "", compact(json!(r.matches)), d));
        }
    }
    out
}

/// The graph: services, splits and request counts.
pub fn graph(snap: &Snapshot, requests: Vec<RequestCount>) -> Value {
    let services: Vec<Value> = snap
        .services
        .values()
        .map(|s| {
            json!({
                "host": s.hostname,
                "namespace": s.namespace,
                "name": s.name,
                "ports": s.ports.iter().map(|p| json!({"port": p.port, "name": p.name})).collect::<Vec<_>>(),
                "external": s.mesh_external,
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "services": services,
        "splits": splits(snap),
        "requests": requests,
    })
}
