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

use std::time::{Duration, Instant};

use super::diagnostic::Diagnostic;
use super::object::{Kind, Object};
use super::objects::ObjectMap;

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
    /// The part of `services` that defines services (Services, ServiceEntries, the
    /// mesh config) rather than their endpoints: equal to the previous build's, an
    /// endpoint change patches the hosts it touches (`build::endpoints`), and the
    /// later stages, which read services but never endpoints, stay as they were.
    pub service_definitions: u64,
    pub destination_rules: u64,
    /// What a VirtualService's translation reads besides the VirtualService: the
    /// service definitions, the DestinationRules and the Gateways (a VirtualService unchanged under an unchanged
    /// context is kept alone when others changed).
    pub virtual_service_context: u64,
    /// Includes `service_definitions` and `destination_rules`: the stage checks
    /// references to hosts, ports and subsets, and to Gateways (never endpoints).
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
        objects: &ObjectMap,
        mesh: Option<&Object>,
        domain: &str,
        istio_namespace: &str,
    ) -> StagePrints {
        let base = {
            let mut buf = Vec::new();
            for part in [domain, istio_namespace] {
                put(&mut buf, part.as_bytes());
            }
            if let Some(m) = mesh {
                object_print(m, &mut buf);
            }
            xxhash_rust::xxh3::xxh3_64(&buf)
        };
        // Each kind's print is kept by the map as objects come and go, so a stage's
        // print reads a few numbers per kind instead of every object (50,000 of them
        // in a 10,000-service mesh took 4–8 ms per build).
        let kinds = |kinds: &[Kind], extra: &[u64]| {
            let mut buf = Vec::with_capacity(8 * (1 + extra.len() + 2 * kinds.len()));
            for v in std::iter::once(&base).chain(extra) {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            for &kind in kinds {
                let (print, len) = objects.kind_print(kind);
                buf.extend_from_slice(&print.to_le_bytes());
                buf.extend_from_slice(&(len as u64).to_le_bytes());
            }
            xxhash_rust::xxh3::xxh3_64(&buf)
        };
        let services = kinds(SERVICE_KINDS, &[]);
        let service_definitions = kinds(&[Kind::Service, Kind::ServiceEntry], &[]);
        let destination_rules = kinds(&[Kind::DestinationRule], &[]);
        let virtual_service_context =
            kinds(&[Kind::Gateway], &[service_definitions, destination_rules]);
        let virtual_services = kinds(
            &[Kind::VirtualService, Kind::Gateway],
            &[service_definitions, destination_rules],
        );
        StagePrints {
            services,
            service_definitions,
            destination_rules,
            virtual_service_context,
            virtual_services,
        }
    }
}

/// `bytes`, length first (so that consecutive fields cannot run into each other).
fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// An object's print as a stage sees it (what [`ObjectMap`] sums per kind).
pub(super) fn print_of(o: &Object) -> u64 {
    let mut buf = Vec::with_capacity(128);
    object_print(o, &mut buf);
    xxhash_rust::xxh3::xxh3_64(&buf)
}

/// An object as a stage sees it: its content hash (key, labels, annotations, spec),
/// where it came from (diagnostics carry the file and line), and the metadata the
/// content hash leaves out.
fn object_print(o: &Object, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&o.hash.to_le_bytes());
    put(buf, o.api_version.as_bytes());
    let origin = &o.origin;
    match &origin.file {
        Some(f) => put(buf, f.as_os_str().as_encoded_bytes()),
        None => buf.push(0xff),
    }
    match origin.line {
        Some(l) => buf.extend_from_slice(&u64::from(l).to_le_bytes()),
        None => buf.push(0xfe),
    }
    match &origin.resource_version {
        Some(v) => put(buf, v.as_bytes()),
        None => buf.push(0xfd),
    }
    // What the content hash leaves out and a stage reads: the creation time orders
    // DestinationRules and VirtualServices (oldest wins), the field lines place
    // diagnostics. (The same fields `build::same_object` compares.)
    match &o.created {
        Some(c) => put(buf, c.as_bytes()),
        None => buf.push(0xfc),
    }
    match o.generation {
        Some(g) => buf.extend_from_slice(&g.to_le_bytes()),
        None => buf.push(0xfb),
    }
    match &o.lines {
        Some(l) => buf.extend_from_slice(&l.fingerprint().to_le_bytes()),
        None => buf.push(0xfa),
    }
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
