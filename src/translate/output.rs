//! Renderings of a proxy's resources: Envoy's `/config_dump` JSON shape, and a complete
//! static bootstrap that `envoy --mode validate -c` accepts and `envoy -c` runs.

use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, cluster::ClusterDiscoveryType, cluster::DiscoveryType,
};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use prost::Message;
use serde_json::Value;

use super::Resources;
use crate::envoy::pb;
use crate::model::proxy::Proxy;

/// Envoy's `/config_dump` shape (what istioctl proxy-config reads), with `version` as
/// each resource's version_info.
pub fn config_dump(res: &Resources, version: &str) -> Value {
    let clusters = admin::ClustersConfigDump {
        version_info: version.to_string(),
        dynamic_active_clusters: res
            .clusters
            .iter()
            .map(|c| admin::clusters_config_dump::DynamicCluster {
                version_info: version.to_string(),
                cluster: Some(pb::any(c)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let listeners = admin::ListenersConfigDump {
        version_info: version.to_string(),
        dynamic_listeners: res
            .listeners
            .iter()
            .map(|l| admin::listeners_config_dump::DynamicListener {
                name: l.name.clone(),
                active_state: Some(admin::listeners_config_dump::DynamicListenerState {
                    version_info: version.to_string(),
                    listener: Some(pb::any(l)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let routes = admin::RoutesConfigDump {
        dynamic_route_configs: res
            .routes
            .iter()
            .map(|r| admin::routes_config_dump::DynamicRouteConfig {
                version_info: version.to_string(),
                route_config: Some(pb::any(r)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let endpoints = admin::EndpointsConfigDump {
        dynamic_endpoint_configs: res
            .endpoints
            .iter()
            .map(|e| admin::endpoints_config_dump::DynamicEndpointConfig {
                version_info: version.to_string(),
                endpoint_config: Some(pb::any(e)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let dump = admin::ConfigDump {
        configs: vec![
            pb::any(&clusters),
            pb::any(&listeners),
            pb::any(&routes),
            pb::any(&endpoints),
        ],
    };
    strip_type(pb::any_to_json(&pb::any(&dump)))
}

fn strip_type(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("@type");
    }
    v
}

/// The Envoy Node for a proxy (id and metadata as it would send them).
pub fn node(proxy: &Proxy) -> core::Node {
    // What the proxy kept of its metadata, with its labels back under LABELS.
    let mut metadata = serde_json::to_value(&proxy.metadata).unwrap_or_default();
    if let Some(m) = metadata.as_object_mut()
        && !proxy.labels.is_empty()
    {
        m.insert(
            "LABELS".into(),
            serde_json::to_value(&proxy.labels).unwrap_or_default(),
        );
    }
    core::Node {
        id: proxy.id.clone(),
        cluster: format!(
            "{}.{}",
            proxy
                .labels
                .get("app")
                .cloned()
                .unwrap_or_else(|| proxy.pod.clone()),
            proxy.namespace
        ),
        metadata: Some(pb::to_struct(&metadata)),
        ..Default::default()
    }
}

/// A complete static bootstrap: EDS clusters carry their endpoints inline and RDS
/// references become inline route configurations.
pub fn bootstrap(proxy: &Proxy, res: &Resources, admin_port: u16) -> Value {
    let clusters: Vec<Cluster> = res
        .clusters
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let is_eds = matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
            if is_eds {
                c.cluster_discovery_type =
                    Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
                c.eds_cluster_config = None;
                c.load_assignment = Some(
                    res.endpoints
                        .iter()
                        .find(|e| e.cluster_name == c.name)
                        .cloned()
                        .unwrap_or_else(|| envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
                            cluster_name: c.name.clone(),
                            ..Default::default()
                        }),
                );
            }
            c
        })
        .collect();
    let listeners: Vec<Listener> = res
        .listeners
        .iter()
        .map(|l| inline_routes(l, res))
        .collect();
    let b = bootstrap::Bootstrap {
        node: Some(node(proxy)),
        admin: Some(bootstrap::Admin {
            address: Some(pb::socket_address("127.0.0.1", u32::from(admin_port))),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::bootstrap::StaticResources {
            clusters,
            listeners,
            ..Default::default()
        }),
        ..Default::default()
    };
    strip_type(pb::any_to_json(&pb::any(&b)))
}

fn inline_routes(l: &Listener, res: &Resources) -> Listener {
    let mut l = l.clone();
    for fc in &mut l.filter_chains {
        for f in &mut fc.filters {
            let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            let Ok(mut m) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(RouteSpecifier::Rds(rds)) = &m.route_specifier {
                let rc = res
                    .routes
                    .iter()
                    .find(|r| r.name == rds.route_config_name)
                    .cloned()
                    .unwrap_or_default();
                m.route_specifier = Some(RouteSpecifier::RouteConfig(rc));
                *any = pb::any(&m);
            }
        }
    }
    l
}
