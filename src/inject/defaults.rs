//! Built-in injection settings: the same as deploy/'s ConfigMaps.

/// The `config` key of ConfigMap `istio-sidecar-injector`.
pub const CONFIG: &str = include_str!("defaults/config.yaml");
/// The `values` key.
pub const VALUES: &str = include_str!("defaults/values.json");
/// The `mesh` key of ConfigMap `istio`.
pub const MESH: &str = include_str!("defaults/mesh.yaml");
