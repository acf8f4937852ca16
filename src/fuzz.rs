//! Fuzz targets: one function per input meshd takes from outside, each taking raw bytes
//! and panicking only on a defect (a crash, a hang, or a broken promise that the target
//! checks, such as a secret reaching the wrong proxy).
//!
//! They live in the library so that two drivers share them: `fuzz/` (cargo-afl, run by
//! hand with `scripts/fuzz`) and `tests/fuzz_corpus.rs`, which replays every saved input
//! in `fuzz/corpus/` and `fuzz/regressions/` in the ordinary test build.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf as gpb;

use crate::envoy::pb;
use crate::model::diagnostic::Origin;
use crate::model::object::Object;
use crate::model::proxy::Proxy;
use crate::model::snapshot::{ConfigSet, Snapshot};
use crate::sources::yaml::parse_documents;

pub mod admission;
pub mod ca;
pub mod envoy_filter;
pub mod jwt;
pub mod xds;
pub mod yaml;

/// A fuzz target: any bytes in, a panic only on a defect.
pub type Target = fn(&[u8]);

/// The targets by name, as the drivers and the corpus folders call them.
pub const TARGETS: [(&str, Target); 6] = [
    ("yaml", yaml::run),
    ("xds", xds::run),
    ("csr", ca::run),
    ("admission", admission::run),
    ("jwt", jwt::run),
    ("envoy_filter", envoy_filter::run),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The objects of manifest texts (multi-document YAML) as the file source reads them;
/// documents meshd refuses are left out, as the file source leaves them out.
pub(crate) fn config_set(texts: &[&str]) -> ConfigSet {
    let mut set = ConfigSet::default();
    for text in texts {
        for doc in parse_documents(text).into_iter().flatten() {
            let (objs, _) = Object::from_value(doc.value, doc.lines, Origin::default(), "default");
            for o in objs {
                set.objects.insert(o.key.clone(), o);
            }
        }
    }
    set
}

/// A sidecar of `reviews` in `default` and an ingress gateway in `istio-system`.
pub(crate) fn proxies() -> Vec<Proxy> {
    let node = |id: &str, meta: serde_json::Value| {
        let meta: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(meta).unwrap_or_default();
        Proxy::from_node(id, meta).ok()
    };
    [
        node(
            "sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local",
            serde_json::json!({"NAMESPACE": "default", "LABELS": {"app": "reviews", "version": "v1"}}),
        ),
        node(
            "router~10.0.0.9~ingressgateway.istio-system~istio-system.svc.cluster.local",
            serde_json::json!({"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Every resource generated for `proxy`, as meshd sends it (canonical bytes, which its
/// versions hash), in order, with its message type.
pub(crate) fn encoded(snap: &Snapshot, proxy: &Proxy) -> Vec<(String, Vec<u8>)> {
    let r = crate::translate::generate(snap, proxy);
    let mut out: Vec<gpb::Any> = Vec::new();
    out.extend(r.clusters.into_iter().map(pb::cluster_resource));
    out.extend(r.endpoints.iter().map(pb::resource));
    out.extend(r.listeners.iter().map(pb::resource));
    out.extend(r.routes.iter().map(pb::resource));
    out.into_iter()
        .map(|a| {
            let name = a
                .type_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            (name, a.value)
        })
        .collect()
}

/// Reads a fuzzer's bytes as a sequence of choices. Past the end every read returns
/// zero, so any input is a complete program.
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    pub(crate) fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.byte() as usize % from.len()]
    }

    /// Up to `max` bytes, the count read first.
    pub(crate) fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = (self.byte() as usize).min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    pub(crate) fn string(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }
}
