//! What lets [`Snapshot::build`](super::Snapshot::build) keep work from the previous
//! snapshot: a fingerprint of each stage's inputs, the diagnostics the stage produced,
//! and a clock for where a build's time goes.
//!
//! A build is a chain of stages (workloads and services, DestinationRules,
//! VirtualServices, …). Each expensive stage reads a known set of object kinds plus the
//! mesh configuration and the outputs of earlier stages. When the fingerprint of all of
//! that equals the previous snapshot's, the stage's output is the previous one — a
//! VirtualService edit in a 10,000-service mesh re-runs the VirtualService stage and
//! nothing else, instead of rebuilding services, endpoints and every hash.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use super::diagnostic::Diagnostic;
use super::object::{Kind, Object, ObjectKey};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Kinds the workloads-and-services stage reads (Pods and WorkloadEntries become
/// workloads and endpoints; Nodes give Pods their locality).
const SERVICE_KINDS: &[Kind] = &[
    Kind::Pod,
    Kind::WorkloadEntry,
    Kind::Node,
    Kind::Service,
    Kind::Endpoints,
    Kind::EndpointSlice,
    Kind::ServiceEntry,
];

/// Fingerprints of the inputs of the stages a build can reuse.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct StagePrints {
    pub services: u64,
    pub destination_rules: u64,
    /// Includes `services` and `destination_rules`: the stage checks references to
    /// hosts, ports and subsets, and to Gateways.
    pub virtual_services: u64,
}

/// What reusable stages said, kept so a reused stage says it again.
#[derive(Debug, Default, Clone)]
pub(super) struct StageDiagnostics {
    pub services: Vec<Diagnostic>,
    pub destination_rules: Vec<Diagnostic>,
    pub virtual_services: Vec<Diagnostic>,
}

impl StagePrints {
    /// `mesh` is the mesh configuration object (if any): every stage reads the mesh
    /// config's defaults, so it is part of every print, with the names a build is given.
    pub fn of(
        objects: &BTreeMap<ObjectKey, Arc<Object>>,
        mesh: Option<&Object>,
        domain: &str,
        istio_namespace: &str,
    ) -> StagePrints {
        let base = {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            domain.hash(&mut h);
            istio_namespace.hash(&mut h);
            if let Some(m) = mesh {
                object_print(m, &mut h);
            }
            h.finish()
        };
        let kinds = |kinds: &[Kind], extra: &[u64]| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            base.hash(&mut h);
            extra.hash(&mut h);
            for &kind in kinds {
                for o in of_kind(objects, kind) {
                    object_print(o, &mut h);
                }
            }
            h.finish()
        };
        let services = kinds(SERVICE_KINDS, &[]);
        let destination_rules = kinds(&[Kind::DestinationRule], &[]);
        let virtual_services = kinds(
            &[Kind::VirtualService, Kind::Gateway],
            &[services, destination_rules],
        );
        StagePrints {
            services,
            destination_rules,
            virtual_services,
        }
    }
}

/// An object as a stage sees it: its content hash (key, labels, annotations, spec) and
/// where it came from (diagnostics carry the file and line).
fn object_print(o: &Object, h: &mut xxhash_rust::xxh3::Xxh3) {
    o.hash.hash(h);
    o.api_version.hash(h);
    o.origin.hash(h);
}

/// The objects of one kind, in key order.
pub(super) fn of_kind(
    objects: &BTreeMap<ObjectKey, Arc<Object>>,
    kind: Kind,
) -> impl Iterator<Item = &Arc<Object>> {
    let start = ObjectKey {
        kind,
        namespace: String::new(),
        name: String::new(),
    };
    objects
        .range(start..)
        .take_while(move |(k, _)| k.kind == kind)
        .map(|(_, o)| o)
}

/// The objects of `kind` in `namespace`, in name order (one range of the map).
pub(super) fn of_kind_in<'a>(
    objects: &'a BTreeMap<ObjectKey, Arc<Object>>,
    kind: Kind,
    namespace: &'a str,
) -> impl Iterator<Item = &'a Arc<Object>> {
    let start = ObjectKey {
        kind,
        namespace: namespace.to_string(),
        name: String::new(),
    };
    objects
        .range(start..)
        .take_while(move |(k, _)| k.kind == kind && k.namespace == namespace)
        .map(|(_, o)| o)
}

/// Times the stages of a build, one lap each.
pub(super) struct StageClock {
    last: Instant,
    pub laps: Vec<(&'static str, Duration)>,
}

impl StageClock {
    pub fn start() -> StageClock {
        StageClock {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    pub fn lap(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.laps.push((stage, now - self.last));
        self.last = now;
    }
}
