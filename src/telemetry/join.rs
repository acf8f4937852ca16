//! Who is at each end of a record: the proxy that sent it, or the workload at a peer's
//! address, described with the labels istio-proxy's metadata exchange would have given.

use crate::model::istio::Labels;
use crate::model::object::Kind;
use crate::model::proxy::Proxy;
use crate::model::snapshot::{Snapshot, Workload};

/// The cluster of the workloads meshd reads (istiod's default cluster ID; meshd serves
/// one cluster).
const DEFAULT_CLUSTER: &str = "Kubernetes";

/// One end of a request, as the series label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl Peer {
    /// An end meshd knows nothing of.
    pub fn unknown() -> Peer {
        Peer {
            workload: "unknown".into(),
            namespace: "unknown".into(),
            principal: "unknown".into(),
            app: "unknown".into(),
            version: "unknown".into(),
            canonical_service: "unknown".into(),
            canonical_revision: "unknown".into(),
            cluster: "unknown".into(),
        }
    }

    fn new(
        workload: String,
        namespace: &str,
        labels: &Labels,
        service_account: &str,
        trust_domain: &str,
        cluster: &str,
    ) -> Peer {
        let label = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
                .cloned()
        };
        Peer {
            canonical_service: label(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| workload.clone()),
            canonical_revision: label(&[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".into()),
            app: label(&["app"]).unwrap_or_else(|| "unknown".into()),
            version: label(&["version"]).unwrap_or_else(|| "unknown".into()),
            principal: if service_account.is_empty() {
                "unknown".into()
            } else {
                format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
            },
            workload,
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
        }
    }

    /// The proxy that sent a record (its node: pod, namespace, labels, account).
    pub fn of_proxy(p: &Proxy, snap: &Snapshot) -> Peer {
        // The injector's WORKLOAD_NAME (istiod's name for it), else the label override,
        // else what the pod's name tells.
        let workload = p
            .metadata
            .get("WORKLOAD_NAME")
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .or_else(|| p.labels.get("service.istio.io/workload-name").cloned())
            .unwrap_or_else(|| workload_name(&p.pod, &p.labels));
        let cluster = if p.cluster_id.is_empty() {
            DEFAULT_CLUSTER
        } else {
            p.cluster_id.as_str()
        };
        Peer::new(
            workload,
            &p.namespace,
            &p.labels,
            &p.service_account,
            &snap.mesh.trust_domain,
            cluster,
        )
    }

    fn of_workload(snap: &Snapshot, w: &Workload) -> Peer {
        Peer::new(
            w.name.clone(),
            &w.key.namespace,
            &w.labels,
            &w.service_account,
            &snap.mesh.trust_domain,
            DEFAULT_CLUSTER,
        )
    }

    /// The workload (Pod or WorkloadEntry) at `ip`, when meshd knows one.
    pub fn at_address(snap: &Snapshot, ip: &str) -> Option<Peer> {
        let key = snap.workloads_by_ip.get(ip)?.first()?;
        Some(Peer::of_workload(snap, snap.workloads.get(key)?))
    }

    /// The workload of a SPIFFE identity (`spiffe://TD/ns/NS/sa/SA`) when its account
    /// runs one workload: the client of a connection whose address says nothing (a node's
    /// or a gateway's NAT, a loopback address), known by its certificate.
    pub fn of_principal(snap: &Snapshot, principal: &str) -> Option<Peer> {
        let rest = principal.strip_prefix("spiffe://")?;
        let (_, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        let (Some("ns"), Some(ns), Some("sa"), Some(sa)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let mut found: Option<Peer> = None;
        for w in snap.workloads.values() {
            if w.key.namespace != ns || w.service_account != sa {
                continue;
            }
            let p = Peer::of_workload(snap, w);
            match &found {
                Some(f) if f.workload != p.workload => return None, // ambiguous
                Some(_) => {}
                None => found = Some(p),
            }
        }
        found.map(|mut p| {
            p.principal = principal.to_string();
            p
        })
    }

    /// Whether the workload at `ip` runs a sidecar (mesh mTLS between the two).
    pub fn in_mesh(snap: &Snapshot, ip: &str) -> bool {
        snap.workloads_by_ip
            .get(ip)
            .and_then(|keys| keys.first())
            .and_then(|k| snap.workloads.get(k))
            .is_some_and(|w| {
                w.key.kind == Kind::WorkloadEntry
                    || w.labels
                        .get("security.istio.io/tlsMode")
                        .map(String::as_str)
                        == Some("istio")
            })
    }
}

/// The workload a pod belongs to judged from its name (for a proxy whose node says no
/// more): [`crate::model::object::name_heuristic`].
pub fn workload_name(pod: &str, labels: &Labels) -> String {
    crate::model::object::name_heuristic(pod, labels)
}

/// The service a cluster sends to: (host, name, namespace) for `outbound|port|subset|host`
/// (of a known service, else the host); the passthrough and black hole clusters name
/// themselves; anything else is `unknown`.
pub fn service_of_cluster(snap: &Snapshot, cluster: &str) -> (String, String, String) {
    if let Some((_, _, _, host)) = crate::envoy::naming::parse_cluster(cluster)
        && let Some(svc) = snap.services.get(host)
    {
        return (
            svc.hostname.clone(),
            svc.name.clone(),
            svc.namespace.clone(),
        );
    }
    if let Some((_, _, _, host)) = crate::envoy::naming::parse_cluster(cluster) {
        return (host.to_string(), host.to_string(), "unknown".into());
    }
    // Envoy's own ways out, by their names; anything else is no service meshd knows.
    match cluster {
        "PassthroughCluster" | "BlackHoleCluster" | "InboundPassthroughCluster" => {
            (cluster.to_string(), cluster.to_string(), "unknown".into())
        }
        _ => ("unknown".into(), "unknown".into(), "unknown".into()),
    }
}

/// The service a workload at `ip` serves on `port` (its target port): the first whose
/// endpoints put it there.
pub fn service_at(snap: &Snapshot, ip: &str, port: u16) -> Option<(String, String, String)> {
    let hosts = snap.hosts_by_ip.get(ip)?;
    hosts.iter().find_map(|h| {
        let eps = snap.endpoints.get(h)?;
        let serves = eps
            .instances
            .iter()
            .any(|i| i.address == ip && i.ports.values().any(|p| *p == port));
        let svc = snap.services.get(h)?;
        serves.then(|| {
            (
                svc.hostname.clone(),
                svc.name.clone(),
                svc.namespace.clone(),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_as_istio_gives_them() {
        let mut l = Labels::new();
        assert_eq!(workload_name("productpage-v1", &l), "productpage-v1");
        l.insert("pod-template-hash".into(), "5d8f7c9b6".into());
        assert_eq!(
            workload_name("reviews-v1-5d8f7c9b6-x2x7z", &l),
            "reviews-v1"
        );
        let mut s = Labels::new();
        s.insert("statefulset.kubernetes.io/pod-name".into(), "db-0".into());
        assert_eq!(workload_name("db-0", &s), "db");
    }
}
