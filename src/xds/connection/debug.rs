//! istiod's debug types over ADS (`istio.io/debug/syncz`, read by `istioctl proxy-status`
//! and `istioctl version`): each connection's state as a CSDS `ClientConfig`, and the
//! control plane as istiod names itself.

use super::*;

impl Stream {
    /// An answer to an `istio.io/debug/...` request, as istiod gives it: only to a caller
    /// authenticated on the TLS port; one outside the root namespace sees only the
    /// proxies of its own namespace.
    pub(super) fn debug_response(&mut self, url: &str) -> Result<DiscoveryResponse, Status> {
        // On the TLS port a caller sees its own namespace's proxies (all of them from the
        // root namespace). The plaintext port carries no secrets and is as open as the
        // HTTP debug port, which shows the same status: there, as at istiod (what
        // `istioctl proxy-status --plaintext` reads), everything.
        let namespace = match &self.auth {
            PeerAuth::Authenticated(id) => Some(id.namespace.clone()),
            PeerAuth::Plaintext => None,
            PeerAuth::Refused(_) => {
                return Err(Status::unauthenticated(
                    "debug requests need a valid token or certificate on the TLS port",
                ));
            }
        };
        if url != DEBUG_SYNCZ {
            return Err(Status::unimplemented(format!(
                "debug type {url} is not served (only {DEBUG_SYNCZ})"
            )));
        }
        let snap = self.state.snapshot();
        let all = namespace
            .as_deref()
            .is_none_or(|ns| ns == snap.mesh.root_namespace);
        let own = namespace.unwrap_or_default();
        let resources = self
            .state
            .connections()
            .iter()
            // Debug clients (istioctl) are not proxies.
            .filter(|c| c.proxy.metadata.get("GENERATOR") != Some("event"))
            .filter(|c| all || c.proxy.namespace == own)
            .filter_map(|c| client_config(c))
            .map(|cc| pb::any(&cc))
            .collect();
        Ok(DiscoveryResponse {
            type_url: url.to_string(),
            resources,
            nonce: self.next_nonce(),
            control_plane: Some(debug_control_plane(&self.state.instance)),
            ..Default::default()
        })
    }
}

/// The control plane as istiod names itself in debug responses, which istioctl reads as
/// JSON (component, instance, build info): the instance is the pod's name.
pub(super) fn debug_control_plane(id: &str) -> ControlPlane {
    ControlPlane {
        identifier: serde_json::json!({
            "Component": "istiod",
            "ID": id,
            "Info": {
                "version": format!("meshd-{}", env!("CARGO_PKG_VERSION")),
                "revision": "meshd",
                "status": "Clean",
                "tag": format!("meshd-{}", env!("CARGO_PKG_VERSION")),
            },
        })
        .to_string(),
    }
}

/// meshd's `ControlPlane` in every response, encoded once.
pub(super) fn control_plane_bytes() -> &'static [u8] {
    static CP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    CP.get_or_init(|| {
        ControlPlane {
            identifier: format!("meshd-{}", env!("CARGO_PKG_VERSION")),
        }
        .encode_to_vec()
    })
}

/// istiod's debug type over ADS (`istioctl proxy-status`, `istioctl version`).
pub const DEBUG_SYNCZ: &str = "istio.io/debug/syncz";

/// A connection's state as an Envoy CSDS `ClientConfig`, as istiod's `syncz` answers.
/// None for a connection that subscribed to nothing (not a proxy to report).
pub(super) fn client_config(
    c: &Connection,
) -> Option<envoy_types::pb::envoy::service::status::v3::ClientConfig> {
    use envoy_types::pb::envoy::service::status::v3::{
        ClientConfig, ConfigStatus, client_config::GenericXdsConfig,
    };
    let types = c.status().types;
    if types.is_empty() {
        return None;
    }
    let mut configs: Vec<GenericXdsConfig> = types
        .into_iter()
        .map(|(type_url, w)| GenericXdsConfig {
            config_status: match (&w.sent_nonce, &w.acked_nonce) {
                (None, _) => ConfigStatus::NotSent,
                (Some(s), Some(a)) if s == a => ConfigStatus::Synced,
                _ => ConfigStatus::Stale,
            } as i32,
            version_info: w
                .acked_version
                .as_deref()
                .or(w.sent_version.as_deref())
                .unwrap_or_default()
                .to_string(),
            error_state: w.last_nack.as_ref().map(|n| {
                envoy_types::pb::envoy::admin::v3::UpdateFailureState {
                    details: n.error.clone(),
                    version_info: n.version.clone(),
                    ..Default::default()
                }
            }),
            type_url,
            ..Default::default()
        })
        .collect();
    configs.sort_by(|a, b| a.type_url.cmp(&b.type_url));
    let p = &c.proxy;
    Some(ClientConfig {
        node: Some(Node {
            id: p.id.clone(),
            metadata: Some(pb::to_struct(&serde_json::json!({
                "CLUSTER_ID": p.cluster_id,
                "NAMESPACE": p.namespace,
                "ISTIO_VERSION": p.istio_version.clone().unwrap_or_default(),
            }))),
            ..Default::default()
        }),
        generic_xds_configs: configs,
        ..Default::default()
    })
}
