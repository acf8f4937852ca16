//! Everything translation needs to know about one proxy, resolved once per push.

use std::sync::Arc;

use crate::model::istio::Labels;
use crate::model::proxy::{Interception, Proxy, ProxyKind};
use crate::model::scope::Scope;
use crate::model::service::{Port, Service};
use crate::model::snapshot::Snapshot;

/// A service port this proxy's workload serves (its inbound side).
#[derive(Debug, Clone)]
pub struct ServiceTarget {
    pub service: Arc<Service>,
    pub port: Port,
    /// The port the workload listens on.
    pub target_port: u16,
}

/// The inputs of every generator for one proxy.
#[derive(Debug, Clone)]
pub struct ProxyContext<'a> {
    pub snap: &'a Snapshot,
    pub proxy: &'a Proxy,
    /// Labels from node metadata, or of the workload at the proxy's address (borrowed:
    /// a context is made for every push).
    pub labels: &'a Labels,
    pub scope: Arc<Scope>,
    pub targets: Vec<ServiceTarget>,
    /// `region/zone/subzone`: the node's, else the workload's `istio-locality` label.
    pub locality: String,
    /// Telemetry `metrics` merged for this proxy (istio-proxy's Prometheus provider, and
    /// meshd's own series), worked out once: every connection manager and TCP proxy reads
    /// them ([`super::peer`]).
    pub(super) metrics: std::sync::OnceLock<super::peer::Merged>,
}

impl<'a> ProxyContext<'a> {
    /// Labels from node metadata, or of the workload at the proxy's address.
    fn labels_of(snap: &'a Snapshot, proxy: &'a Proxy) -> &'a Labels {
        if !proxy.labels.is_empty() {
            return &proxy.labels;
        }
        // Upstream Envoy rarely sends LABELS: take them from the workload at its IP.
        proxy
            .ips
            .iter()
            .flat_map(|ip| snap.workloads_at(ip))
            .find(|w| w.key.namespace == proxy.namespace)
            .map_or(&proxy.labels, |w| &*w.labels)
    }

    /// The scope of `proxy` in `snap`, as [`ProxyContext::new`] finds it, without the
    /// rest of a context: what deciding a push reads for every connected proxy.
    pub fn scope_for(snap: &'a Snapshot, proxy: &'a Proxy) -> Arc<Scope> {
        Self::scope_with(snap, proxy, Self::labels_of(snap, proxy))
    }

    fn scope_with(snap: &Snapshot, proxy: &Proxy, labels: &Labels) -> Arc<Scope> {
        let sidecar = match proxy.kind {
            ProxyKind::Sidecar => snap.sidecar_for(&proxy.namespace, labels),
            ProxyKind::Router => None,
        };
        snap.scope(&proxy.namespace, sidecar)
    }

    pub fn new(snap: &'a Snapshot, proxy: &'a Proxy) -> ProxyContext<'a> {
        let labels = Self::labels_of(snap, proxy);
        let scope = Self::scope_with(snap, proxy, labels);
        let mut targets = Vec::new();
        if proxy.kind == ProxyKind::Sidecar {
            // Only the services with an instance at the proxy's addresses (an index),
            // never a scan of every service.
            let hosts: std::collections::BTreeSet<&String> = proxy
                .ips
                .iter()
                .flat_map(|ip| snap.hosts_by_ip.get(ip).into_iter().flat_map(|h| h.iter()))
                .collect();
            for host in hosts {
                let (Some(svc), Some(eps)) = (snap.services.get(host), snap.endpoints.get(host))
                else {
                    continue;
                };
                if svc.namespace != proxy.namespace {
                    continue;
                }
                for inst in &eps.instances {
                    if !proxy.ips.contains(&inst.address) {
                        continue;
                    }
                    for (sp, tp) in &inst.ports {
                        if let Some(port) = svc.port(*sp) {
                            targets.push(ServiceTarget {
                                service: svc.clone(),
                                port: port.clone(),
                                target_port: *tp,
                            });
                        }
                    }
                }
            }
        }
        let locality = if !proxy.locality.is_empty() {
            proxy.locality.clone()
        } else {
            // The workload's: its label, its Node's topology, its WorkloadEntry's.
            proxy
                .ips
                .iter()
                .flat_map(|ip| snap.workloads_at(ip))
                .find(|w| w.key.namespace == proxy.namespace)
                .map(|w| w.locality.clone())
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| crate::model::snapshot::locality_label(labels))
        };
        ProxyContext {
            snap,
            proxy,
            labels,
            scope,
            targets,
            locality,
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// istio-proxy may get istio's own extensions; upstream Envoy only upstream ones.
    pub fn is_istio_proxy(&self) -> bool {
        self.proxy.istio_version.is_some()
    }

    pub fn intercepted(&self) -> bool {
        self.proxy.interception != Interception::None
    }

    /// The outbound cluster of `svc`'s `port` when this proxy has it (a gateway has
    /// every service's, a sidecar those its scope sees): where an extension provider's
    /// traffic (rate limit service, trace collector) goes.
    pub fn provider_cluster(
        &self,
        svc: &crate::model::service::Service,
        port: u16,
    ) -> Option<String> {
        (self.proxy.kind == crate::model::proxy::ProxyKind::Router
            || self.scope.sees(&svc.hostname))
        .then(|| crate::envoy::naming::outbound_cluster(port, "", &svc.hostname))
    }
}
