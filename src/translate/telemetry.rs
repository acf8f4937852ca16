//! Telemetry (telemetry.istio.io): which access logs a workload's listeners write.
//!
//! As istiod: the mesh-wide Telemetry (root namespace, no selector), then the
//! namespace's (no selector), then the workload's (selector), the most specific one that
//! says anything about access logging deciding. Its entries apply by mode (CLIENT:
//! outbound listeners, SERVER: inbound, both by default); an entry with `disabled: true`
//! turns logging off; providers come from mesh config (`envoyFileAccessLog`, or the
//! built-in `envoy`), defaulting to `defaultProviders.accessLogging`.

use super::context::ProxyContext;
use crate::model::istio::{AccessLogging, WorkloadMode};
use crate::model::mesh::FileAccessLogProvider;
use crate::model::object::Spec;
use crate::model::service::labels_match;

/// The access logging entries that apply to this proxy, if any Telemetry speaks of it.
fn entries<'a>(ctx: &'a ProxyContext) -> Option<&'a [AccessLogging]> {
    let root = &ctx.snap.mesh.root_namespace;
    let mut levels: [Option<&'a [AccessLogging]>; 3] = [None, None, None];
    for obj in &ctx.snap.telemetries {
        let Spec::Telemetry(t) = &obj.spec else {
            continue;
        };
        if t.access_logging.is_empty() {
            continue;
        }
        let level = match &t.selector {
            None if obj.key.namespace == *root => 0,
            None if obj.key.namespace == ctx.proxy.namespace => 1,
            Some(sel)
                if obj.key.namespace == ctx.proxy.namespace
                    && labels_match(&sel.match_labels, &ctx.labels) =>
            {
                2
            }
            _ => continue,
        };
        // Within a level the first (by namespace/name) wins, deterministically.
        levels[level].get_or_insert(&t.access_logging);
    }
    levels.into_iter().flatten().last()
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
