//! EDS: ClusterLoadAssignments from the registry's instances, filtered by subset labels.
//! A load assignment depends only on the snapshot and the cluster name, never on the
//! proxy, so one computation serves every proxy.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};

use crate::envoy::naming::{self, Direction};
use crate::envoy::pb;
use crate::model::istio::Labels;
use crate::model::service::{Service, labels_match};
use crate::model::snapshot::Snapshot;

pub fn lb_endpoint(address: &str, port: u16, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(pb::socket_address(address, u32::from(port))),
            ..Default::default()
        })),
        load_balancing_weight: (weight > 0).then(|| pb::u32v(weight)).flatten(),
        health_status: core::HealthStatus::Healthy as i32,
        ..Default::default()
    }
}

/// Groups endpoints of one locality (`region/zone/subzone`).
pub fn locality_endpoints(locality: &str, lb_endpoints: Vec<LbEndpoint>) -> LocalityLbEndpoints {
    let mut parts = locality.split('/');
    let loc = core::Locality {
        region: parts.next().unwrap_or_default().to_string(),
        zone: parts.next().unwrap_or_default().to_string(),
        sub_zone: parts.next().unwrap_or_default().to_string(),
    };
    let weight: u32 = lb_endpoints
        .iter()
        .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
        .sum();
    LocalityLbEndpoints {
        // Always present, if empty: gRPC's xDS client refuses localities without it.
        locality: Some(loc),
        lb_endpoints,
        // istiod sets the locality weight to the sum of its endpoints' weights (none for a
        // locality left without endpoints).
        load_balancing_weight: if weight == 0 { None } else { pb::u32v(weight) },
        ..Default::default()
    }
}

/// The load assignment of `cluster_name` (service `svc`, service port `port`).
pub fn load_assignment(
    snap: &Snapshot,
    cluster_name: &str,
    svc: &Service,
    port: u16,
    subset_labels: Option<&Labels>,
) -> ClusterLoadAssignment {
    let mut by_locality: std::collections::BTreeMap<&str, Vec<LbEndpoint>> = Default::default();
    // A gateway's SNI-DNAT cluster passes the client's mesh TLS through: only endpoints
    // with a sidecar can end it (as istiod: nothing reaches a workload around mTLS).
    let sni_dnat = cluster_name.starts_with("outbound_.");
    if let Some(eps) = snap.endpoints.get(&svc.hostname) {
        for inst in &eps.instances {
            if !inst.ready {
                continue;
            }
            if sni_dnat && inst.tls_mode.as_deref() != Some("istio") {
                // istiod keeps the locality, empty.
                by_locality.entry(inst.locality.as_str()).or_default();
                continue;
            }
            if let Some(sel) = subset_labels
                && !labels_match(sel, &inst.labels)
            {
                continue;
            }
            let Some(target) = inst.ports.get(&port) else {
                continue;
            };
            let mut ep = lb_endpoint(&inst.address, *target, inst.weight);
            // Auto mTLS: mark endpoints whose workload has a sidecar that accepts mTLS on
            // this port (its PeerAuthentication is not DISABLE).
            if inst.tls_mode.as_deref() == Some("istio")
                && snap.mtls_mode(&inst.namespace, &inst.labels, *target)
                    != crate::model::istio::MtlsMode::DISABLE
            {
                ep.metadata = Some(core::Metadata {
                    filter_metadata: [(
                        super::tls::TLS_MODE_KEY.to_string(),
                        pb::to_struct(&serde_json::json!({"tlsMode": "istio"})),
                    )]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                });
            }
            by_locality
                .entry(inst.locality.as_str())
                .or_default()
                .push(ep);
        }
    }
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|(loc, eps)| locality_endpoints(loc, eps))
            .collect(),
        ..Default::default()
    }
}

/// Load assignment for an outbound cluster by name; None for names that are not
/// outbound clusters of a known service (Envoy then keeps waiting, as with istiod).
pub fn for_cluster(
    snap: &Snapshot,
    client_ns: &str,
    client_labels: &Labels,
    name: &str,
) -> Option<ClusterLoadAssignment> {
    let (dir, port, subset, host) = naming::parse_cluster(name)?;
    if dir != Direction::Outbound {
        return None;
    }
    let svc = snap.services.get(host)?;
    let labels = if subset.is_empty() {
        None
    } else {
        let dr = snap.destination_rule(client_ns, client_labels, svc)?;
        Some(&dr.subset(subset)?.labels)
    };
    Some(load_assignment(snap, name, svc, port, labels))
}
