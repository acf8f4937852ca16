//! The push queue: new snapshots arrive from the model, bursts are debounced, and each
//! connection whose view changed gets a push — an EDS-only push when only endpoints of
//! hosts it sees changed, a full push otherwise, nothing when the change is not its
//! business.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::info;

use super::connection::{Connection, PushRequest};
use super::server::XdsState;
use crate::model::proxy::ProxyKind;
use crate::model::snapshot::{Changes, Snapshot};
use crate::translate::ProxyContext;

/// Decides what a change means for one connection.
pub fn push_for(
    snap: &Snapshot,
    conn: &Connection,
    changes: &Changes,
    started: Instant,
) -> Option<PushRequest> {
    let proxy = &conn.proxy;
    let ctx = ProxyContext::new(snap, proxy);
    let mut full = changes.full;
    if proxy.kind == ProxyKind::Router {
        // Gateways route to any service their VirtualServices name.
        full |= changes.gateways || !changes.services.is_empty();
    } else {
        full |= changes.services.iter().any(|h| ctx.scope.sees(h));
        full |= changes.sidecars.contains(&proxy.namespace)
            || changes.sidecars.contains(&snap.mesh.root_namespace);
    }
    full |= changes.workloads.iter().any(|k| {
        snap.workloads
            .get(k)
            .is_none_or(|w| w.addresses.iter().any(|a| proxy.ips.contains(a)))
            && k.namespace == proxy.namespace
    });
    // A change of the services this workload serves reshapes its inbound side.
    full |= ctx
        .targets
        .iter()
        .any(|t| changes.services.contains(&t.service.hostname));
    let endpoints: BTreeSet<String> = changes
        .endpoints
        .iter()
        .filter(|h| proxy.kind == ProxyKind::Router || ctx.scope.sees(h))
        .cloned()
        .collect();
    if !full && endpoints.is_empty() {
        return None;
    }
    Some(PushRequest {
        full,
        endpoints,
        started,
    })
}

/// Publishes `next` and queues pushes for the connections it affects.
pub fn publish(state: &XdsState, next: Arc<Snapshot>) -> Changes {
    let prev = state.snapshot();
    let changes = next.changes_since(&prev);
    let started = Instant::now();
    state.store(next.clone());
    if changes.is_empty() {
        return changes;
    }
    let mut pushed = 0usize;
    let conns = state.connections();
    for c in &conns {
        if let Some(p) = push_for(&next, c, &changes, started) {
            c.push(p);
            pushed += 1;
        }
    }
    info!(
        generation = next.generation,
        services = changes.services.len(),
        endpoints = changes.endpoints.len(),
        full = changes.full,
        proxies = pushed,
        connected = conns.len(),
        "config change pushed"
    );
    changes
}

/// Longest a burst of changes can hold a push back (istiod's PILOT_DEBOUNCE_MAX).
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(10);

/// Receives snapshots, waits for `debounce` of quiet (but never longer than
/// [`DEBOUNCE_MAX`] in all), publishes the latest.
pub async fn run(state: Arc<XdsState>, mut rx: mpsc::Receiver<Arc<Snapshot>>, debounce: Duration) {
    while let Some(mut snap) = rx.recv().await {
        if !debounce.is_zero() {
            let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
            loop {
                let wait =
                    debounce.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(newer)) => snap = newer,
                    Ok(None) | Err(_) => break,
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
        publish(&state, snap);
    }
}
