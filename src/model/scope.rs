//! What one proxy can see: istiod's SidecarScope. Computed once per (namespace, Sidecar)
//! per snapshot and shared by every proxy with that combination, since at 10,000 proxies
//! most share a handful of scopes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::host;
use super::istio::{self, OutboundTrafficMode};
use super::service::{Service, Visibility};
use super::snapshot::{SidecarConfig, Snapshot, VirtualServiceConfig};

/// One egress listener of the scope: its Sidecar settings and what it sees.
#[derive(Debug, Clone)]
pub struct EgressScope {
    /// The Sidecar egress listener (None for the implicit catch-all `*/*`).
    pub listener: Option<istio::IstioEgressListener>,
    pub services: Vec<Arc<Service>>,
    pub virtual_services: Vec<Arc<VirtualServiceConfig>>,
    /// Positions in `virtual_services` by exact host, and those with a wildcard host:
    /// finding a service's VirtualService is a map lookup, not a scan of every
    /// VirtualService for every service (10,000 × 1,000 in a large mesh).
    /// (A seeded fast hasher: looked up once per service for every route configuration.)
    by_host: HashMap<String, Vec<usize>, foldhash::quality::RandomState>,
    wildcard: Vec<usize>,
}

impl EgressScope {
    pub fn new(
        listener: Option<istio::IstioEgressListener>,
        services: Vec<Arc<Service>>,
        virtual_services: Vec<Arc<VirtualServiceConfig>>,
    ) -> EgressScope {
        let mut by_host: HashMap<String, Vec<usize>, foldhash::quality::RandomState> =
            HashMap::default();
        let mut wildcard = Vec::new();
        for (i, vs) in virtual_services.iter().enumerate() {
            for h in &vs.hosts {
                if h.starts_with('*') {
                    if wildcard.last() != Some(&i) {
                        wildcard.push(i);
                    }
                } else {
                    let at = by_host.entry(h.clone()).or_default();
                    if at.last() != Some(&i) {
                        at.push(i);
                    }
                }
            }
        }
        EgressScope {
            listener,
            services,
            virtual_services,
            by_host,
            wildcard,
        }
    }

    /// The VirtualServices (with their positions) that list `host` itself, in order.
    pub fn with_host<'a>(
        &'a self,
        host: &str,
    ) -> impl Iterator<Item = (usize, &'a Arc<VirtualServiceConfig>)> + 'a {
        self.by_host
            .get(host)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.virtual_services.get(i).map(|v| (i, v)))
    }

    /// The first VirtualService naming `host` as written (a wildcard host too), from the
    /// indexes.
    pub fn first_naming(&self, host: &str) -> Option<&Arc<VirtualServiceConfig>> {
        let found = if host.starts_with('*') {
            self.with_wildcards()
                .find(|(_, vs)| vs.hosts.iter().any(|h| h == host))
        } else {
            self.with_host(host).next()
        };
        found.map(|(_, vs)| vs)
    }

    /// The VirtualServices (with their positions) that have a wildcard host, in order.
    pub fn with_wildcards(&self) -> impl Iterator<Item = (usize, &Arc<VirtualServiceConfig>)> + '_ {
        self.wildcard
            .iter()
            .filter_map(|&i| self.virtual_services.get(i).map(|v| (i, v)))
    }
}

/// Services and routes visible to proxies of one namespace under one Sidecar.
#[derive(Debug, Clone)]
pub struct Scope {
    pub namespace: String,
    pub sidecar: Option<Arc<SidecarConfig>>,
    pub egress: Vec<EgressScope>,
    /// Every host any egress listener sees (for deciding which changes matter).
    pub hosts: BTreeSet<String>,
    pub outbound_policy: OutboundTrafficMode,
}

impl Scope {
    pub fn new(snap: &Snapshot, namespace: &str, sidecar: Option<&Arc<SidecarConfig>>) -> Scope {
        let visible_services: Vec<&Arc<Service>> = snap
            .services
            .values()
            .filter(|s| s.visibility.visible_to(namespace))
            .collect();
        // As istiod lists them for a namespace: those exported to it by name (its own
        // private ones included) before the public ones, each group oldest first.
        // Routes converted from the Gateway API (GAMMA) apply only from the namespace of
        // the proxy (consumer routes) or of the Service they route (producer routes), and
        // the consumer's come first, so they win.
        let gateway_semantics = |v: &VirtualServiceConfig| v.gateway_semantics();
        let producer = |v: &VirtualServiceConfig| {
            v.hosts.iter().any(|h| {
                snap.services
                    .get(h)
                    .is_some_and(|s| s.namespace == v.key.namespace)
            })
        };
        let mut mesh_vs: Vec<&Arc<VirtualServiceConfig>> = snap
            .virtual_services
            .iter()
            .filter(|v| v.applies_to_mesh() && v.visibility.visible_to(namespace))
            .filter(|v| !gateway_semantics(v) || v.key.namespace == namespace || producer(v))
            .collect();
        mesh_vs.sort_by_key(|v| {
            (
                !(gateway_semantics(v) && v.key.namespace == namespace),
                matches!(v.visibility, Visibility::Public),
            )
        });
        let all_hosts = [host::NamespacedHost {
            namespace: "*".into(),
            host: "*".into(),
        }];
        let mut egress = Vec::new();
        let listeners: Vec<(Option<istio::IstioEgressListener>, &[host::NamespacedHost])> =
            match sidecar {
                Some(sc) if !sc.spec.egress.is_empty() => sc
                    .spec
                    .egress
                    .iter()
                    .zip(sc.egress_hosts.iter())
                    .map(|(l, h)| (Some(l.clone()), h.as_slice()))
                    .collect(),
                _ => vec![(None, &all_hosts[..])],
            };
        let mut hosts = BTreeSet::new();
        for (listener, egress_hosts) in listeners {
            let services: Vec<Arc<Service>> = visible_services
                .iter()
                .filter(|s| {
                    egress_hosts
                        .iter()
                        .any(|h| h.selects(&s.namespace, &s.hostname))
                })
                .map(|s| (*s).clone())
                .collect();
            let virtual_services: Vec<Arc<VirtualServiceConfig>> = mesh_vs
                .iter()
                .filter(|v| {
                    egress_hosts.iter().any(|eh| {
                        (eh.namespace == "*" || eh.namespace == v.key.namespace)
                            && v.hosts.iter().any(|vh| host::intersects(&eh.host, vh))
                    })
                })
                .map(|v| (*v).clone())
                .collect();
            hosts.extend(services.iter().map(|s| s.hostname.clone()));
            hosts.extend(
                virtual_services
                    .iter()
                    .flat_map(|v| v.hosts.iter().cloned()),
            );
            egress.push(EgressScope::new(listener, services, virtual_services));
        }
        let outbound_policy = sidecar
            .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
            .map(|p| OutboundTrafficMode::from(p.mode))
            .unwrap_or(snap.mesh.outbound_traffic_policy);
        Scope {
            namespace: namespace.to_string(),
            sidecar: sidecar.cloned(),
            egress,
            hosts,
            outbound_policy,
        }
    }

    /// All services any egress listener sees, each once, by host name.
    pub fn services(&self) -> Vec<Arc<Service>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for e in &self.egress {
            for s in &e.services {
                if seen.insert(s.hostname.clone()) {
                    out.push(s.clone());
                }
            }
        }
        out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        out
    }

    /// Does a change to `host` concern this scope? Wildcard VirtualService hosts count.
    pub fn sees(&self, h: &str) -> bool {
        self.hosts.contains(h)
            || self
                .hosts
                .iter()
                .any(|x| x.starts_with('*') && host::matches(x, h))
    }
}
