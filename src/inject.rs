//! Sidecar injection, as istiod's webhook and `istioctl kube-inject` do it, rendering
//! Istio's own templates (Go text/template with sprig and Istio's functions).

pub mod funcs;
pub mod gotmpl;
pub mod kubeinject;
pub mod merge;
pub mod pipeline;

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Settings for kube-inject from files: the injector ConfigMap (whole, or its `config`
/// alone, or a bare template), mesh config (ConfigMap or bare), values.
pub fn settings_from_files(
    inject_config: Option<&Path>,
    mesh_config: Option<&Path>,
    values: Option<&Path>,
) -> Result<pipeline::Settings> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let (mut config, mut values_text) = match inject_config {
        Some(p) => {
            let text = read(p)?;
            let v = pipeline::yaml_value(&text).map_err(anyhow::Error::msg)?;
            if v["kind"] == "ConfigMap" {
                (
                    v["data"]["config"].as_str().unwrap_or_default().to_string(),
                    v["data"]["values"].as_str().unwrap_or_default().to_string(),
                )
            } else if v.get("templates").is_some() || v.get("policy").is_some() {
                (text, String::new())
            } else {
                // A bare template: it becomes `sidecar`.
                let cfg = serde_json::json!({"templates": {"sidecar": text}});
                (cfg.to_string(), String::new())
            }
        }
        None => (defaults::CONFIG.to_string(), defaults::VALUES.to_string()),
    };
    if let Some(p) = values {
        values_text = read(p)?;
    }
    if values_text.is_empty() && inject_config.is_none() {
        values_text = defaults::VALUES.to_string();
    }
    let mesh = match mesh_config {
        Some(p) => {
            let text = read(p)?;
            let v = pipeline::yaml_value(&text).map_err(anyhow::Error::msg)?;
            if v["kind"] == "ConfigMap" {
                v["data"]["mesh"].as_str().unwrap_or_default().to_string()
            } else {
                text
            }
        }
        None => defaults::MESH.to_string(),
    };
    if config.trim().is_empty() {
        config = defaults::CONFIG.to_string();
    }
    let _: Option<Value> = None;
    pipeline::Settings::new(&config, &values_text, &mesh).map_err(anyhow::Error::msg)
}

pub mod defaults;
