//! The push queue: new snapshots arrive from the model, bursts are debounced, and each
//! connection whose view changed gets a push of just the types the change touches (EDS
//! for endpoints, RDS for VirtualServices, everything for a service or Sidecar change),
//! and nothing when the change is not its business.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::info;

use super::registry::{Connection, PushRequest};
use super::state::XdsState;
use crate::model::proxy::ProxyKind;
use crate::model::snapshot::{Changes, Snapshot};
use crate::translate::ProxyContext;

/// Decides what a change means for one connection: which types it must regenerate.
/// `prev` matters for what went away: a deleted service is no longer in the new scope,
/// but the proxies that saw it must drop its clusters.
pub fn push_for(
    prev: &Snapshot,
    snap: &Snapshot,
    conn: &Connection,
    changes: &Changes,
    started: Instant,
) -> Option<PushRequest> {
    use crate::envoy::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
    let proxy = &conn.proxy;
    let router = proxy.kind == ProxyKind::Router;
    // Only the scopes (not whole contexts): this runs for every connected proxy. A
    // gateway has none: it routes to any service its VirtualServices name.
    let scopes = (!router).then(|| {
        (
            ProxyContext::scope_for(snap, proxy),
            ProxyContext::scope_for(prev, proxy),
        )
    });
    let sees = |h: &String| {
        scopes
            .as_ref()
            .is_none_or(|(now, before)| now.sees(h) || before.sees(h))
    };
    let mut types: BTreeSet<&'static str> = BTreeSet::new();
    let all = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];
    let mut full = changes.full;
    full |= changes.services.iter().any(sees);
    if router {
        full |= changes.gateways;
    } else {
        full |= changes.sidecars.contains(&proxy.namespace)
            || changes.sidecars.contains(&snap.mesh.root_namespace);
    }
    full |= changes.workloads.iter().any(|k| {
        k.namespace == proxy.namespace
            && snap
                .workloads
                .get(k)
                .is_none_or(|w| w.addresses.iter().any(|a| proxy.ips.contains(a)))
    });
    // A change to a service this workload serves reshapes its inbound side.
    full |= proxy
        .ips
        .iter()
        .flat_map(|ip| snap.hosts_by_ip.get(ip).into_iter().flat_map(|h| h.iter()))
        .any(|h| changes.services.contains(h));
    if full {
        types.extend(all);
    }
    if changes.policies.iter().any(sees) {
        // Listeners too: TCP proxies carry a DestinationRule's idle timeout.
        types.extend([CLUSTER, ENDPOINT, LISTENER, ROUTE]);
    }
    // A gateway may also read certificates of other namespaces (Gateway API listeners
    // with a ReferenceGrant): any namespace's change re-sends its secrets.
    if changes.secrets.contains(&proxy.namespace)
        || changes
            .secrets
            .contains(crate::model::snapshot::CA_CONFIGMAPS)
        || (router && !changes.secrets.is_empty())
    {
        types.insert(SECRET);
    }
    if changes.routes.iter().any(sees) || changes.routes.iter().any(|h| h.starts_with('*')) {
        types.insert(ROUTE);
    }
    // tcp and tls routes are filter chains.
    if changes.l4_routes.iter().any(sees) || changes.l4_routes.iter().any(|h| h.starts_with('*')) {
        types.insert(LISTENER);
    }
    let endpoints: BTreeSet<String> = changes
        .endpoints
        .iter()
        .filter(|h| sees(h))
        .cloned()
        .collect();
    if changes.pod_shaped.iter().any(sees) {
        types.extend([CLUSTER, LISTENER, ROUTE]);
    }
    if types.is_empty() && endpoints.is_empty() {
        return None;
    }
    Some(PushRequest {
        types,
        endpoints,
        started,
    })
}

/// Publishes `next` and queues pushes for the connections it affects.
pub fn publish(state: &XdsState, next: Arc<Snapshot>) -> Changes {
    let prev = state.snapshot();
    let changes = next.changes_since(&prev);
    publish_changes(state, prev, next, changes)
}

/// [`publish`] with the changes from `prev` (the published snapshot) already known.
fn publish_changes(
    state: &XdsState,
    prev: Arc<Snapshot>,
    next: Arc<Snapshot>,
    changes: Changes,
) -> Changes {
    let started = Instant::now();
    // Before any stream can read the new snapshot: what stays valid of the cache.
    state.cache.advance(
        next.generation,
        changes.is_endpoint_churn().then_some(&changes.endpoints),
    );
    state
        .vhosts
        .advance(prev.generation, next.generation, &changes);
    state.store(
        next.clone(),
        !changes.is_empty() && !changes.is_endpoint_churn(),
    );
    if changes.is_empty() {
        return changes;
    }
    // What caused the push, as istiod's pilot_push_triggers counts it.
    for (reason, caused) in [
        ("global", changes.full),
        ("service", !changes.services.is_empty()),
        (
            "config",
            !changes.routes.is_empty()
                || !changes.l4_routes.is_empty()
                || !changes.policies.is_empty()
                || !changes.sidecars.is_empty()
                || changes.gateways,
        ),
        ("endpoint", !changes.endpoints.is_empty()),
        ("secret", !changes.secrets.is_empty()),
        ("proxy", !changes.workloads.is_empty()),
    ] {
        if caused {
            state
                .metrics
                .push_triggers
                .get_or_create(&crate::metrics::Metrics::type_label(reason))
                .inc();
        }
    }
    let mut pushed = 0usize;
    let conns = state.connections();
    for c in &conns {
        if let Some(p) = push_for(&prev, &next, c, &changes, started) {
            c.push(p);
            pushed += 1;
        }
    }
    info!(
        generation = next.generation,
        services = changes.services.len(),
        routes = changes.routes.len(),
        policies = changes.policies.len(),
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
        // Endpoint churn skips the debounce: the source already gathered its burst, and
        // an EDS push is small and reaches only the proxies that see the hosts. Waiting
        // for quiet would only add its length to every pod's convergence.
        let st = state.clone();
        let s = snap.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let prev = st.snapshot();
            let changes = s.changes_since(&prev);
            if changes.is_endpoint_churn() && !changes.is_empty() {
                publish_changes(&st, prev, s, changes);
                None
            } else {
                Some((prev, changes))
            }
        })
        .await;
        // What was compared, kept for the publish if nothing newer comes meanwhile.
        let mut known = match checked {
            Ok(None) => continue,
            Ok(Some(k)) => Some(k),
            Err(_) => None,
        };
        if !debounce.is_zero() {
            let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
            loop {
                let wait =
                    debounce.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(newer)) => {
                        snap = newer;
                        known = None;
                    }
                    Ok(None) | Err(_) => break,
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
        // Comparing snapshots and choosing proxies is CPU work: off the async threads
        // that answer proxies.
        let st = state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || match known {
            // Nothing else was published meanwhile: the comparison still holds.
            Some((prev, changes)) if Arc::ptr_eq(&prev, &st.snapshot()) => {
                publish_changes(&st, prev, snap, changes);
            }
            _ => {
                publish(&st, snap);
            }
        })
        .await
        {
            tracing::error!(error = %e, "publishing a snapshot failed");
        }
    }
}
