//! `meshd explain`: which listener, filter chain, route and cluster a request reaches
//! through one proxy, and which Istio objects made each step — or, when nothing matched,
//! the nearest miss and why.
//!
//! It translates exactly as `serve` does ([`crate::translate::generate`]) and walks
//! Envoy's matching over the result ([`envoy`]); [`provenance`] maps each step back to
//! the objects in the snapshot. The debug endpoint `/debug/explain` uses the same engine.

pub mod call;
pub mod envoy;
pub mod provenance;
pub mod rbac;

use serde_json::{Value, json};

use crate::model::proxy::ProxyKind;
use crate::translate::{ProxyContext, Resources};

pub use call::{Call, CallSpec};
pub use envoy::Failure;

/// The calls of a `--calls` file: a YAML list of mappings with the flag names as keys
/// (`headers` as a mapping, `H` as a list of `Name: value`) and an optional `name`.
pub fn calls_from_yaml(text: &str) -> Result<Vec<(Option<String>, CallSpec)>, String> {
    let docs = crate::sources::yaml::parse_documents(text);
    let mut out = Vec::new();
    for doc in docs {
        let doc = doc.map_err(|e| format!("line {}: {}", e.line, e.message))?;
        let Value::Array(items) = doc.value else {
            return Err("the calls file must be a YAML list of calls".into());
        };
        for (i, mut item) in items.into_iter().enumerate() {
            let name = item
                .as_object_mut()
                .and_then(|m| m.remove("name"))
                .and_then(|n| n.as_str().map(str::to_string));
            let spec: CallSpec = serde_json::from_value(item).map_err(|e| {
                format!(
                    "call {} ({}): {e}",
                    i + 1,
                    name.as_deref().unwrap_or("unnamed")
                )
            })?;
            out.push((name, spec));
        }
    }
    Ok(out)
}

/// The answer for one call.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub name: Option<String>,
    pub error: Option<Failure>,
    /// A call that could not be made as written (bad flags), not a routing answer.
    pub invalid: Option<String>,
    pub listener: Option<String>,
    pub filter_chain: Option<String>,
    pub route_config: Option<String>,
    pub virtual_host: Option<String>,
    pub route: Option<String>,
    pub cluster: Option<String>,
    pub weighted: Vec<(String, u32)>,
    /// Redirect or direct response instead of a cluster.
    pub action: Option<String>,
    /// `Kind namespace/name` of every Istio object involved, with its part.
    pub objects: Vec<String>,
    /// The human explanation, one step per line.
    pub steps: Vec<String>,
    /// What the chain's authorization decides: `allowed`, `denied` or `depends`, and why.
    pub authorization: Option<(String, String)>,
}

/// Answers `spec` for `proxy`, whose generated resources are `res`.
/// Answers `spec` for the proxy of `ctx`, whose generated resources are `res`
/// (`translate::generate_for(ctx)`: one context and one translation serve many calls).
pub fn explain(
    ctx: &ProxyContext,
    res: &Resources,
    name: Option<String>,
    spec: &CallSpec,
) -> Outcome {
    let call = match spec.resolve(ctx.proxy.kind == ProxyKind::Router) {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                name,
                invalid: Some(e),
                ..Default::default()
            };
        }
    };
    let walk = envoy::walk(res, &call);
    let mut out = Outcome {
        name,
        error: walk.failure,
        listener: walk.listener.map(|l| l.name.clone()),
        filter_chain: walk.filter_chain.map(|f| f.name.clone()),
        route_config: walk.route_config_name.clone(),
        virtual_host: walk.virtual_host.as_ref().map(|v| v.name.clone()),
        route: walk
            .route
            .as_ref()
            .map(|r| envoy::route_name(r).to_string()),
        cluster: walk.cluster.clone(),
        weighted: walk.weighted.clone(),
        action: walk.action.clone(),
        ..Default::default()
    };
    provenance::describe(ctx, res, &call, &walk, &mut out);
    out
}

impl Outcome {
    /// The `--json` object: istiod's simulator result fields plus the objects involved.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "error": self.invalid.clone().or_else(|| self.error.map(|e| e.text().to_string())),
            "listener": self.listener,
            "filterChain": self.filter_chain,
            "routeConfig": self.route_config,
            "virtualHost": self.virtual_host,
            "route": self.route,
            "cluster": self.cluster,
            "objects": self.objects,
        });
        if let Some(n) = &self.name {
            v["name"] = json!(n);
        }
        if !self.weighted.is_empty() {
            v["weightedClusters"] = self
                .weighted
                .iter()
                .map(|(c, w)| json!({"cluster": c, "weight": w}))
                .collect();
        }
        if let Some(a) = &self.action {
            v["action"] = json!(a);
        }
        if let Some((verdict, why)) = &self.authorization {
            v["authorization"] = json!({"verdict": verdict, "reason": why});
        }
        v["explanation"] = json!(self.steps);
        v
    }

    /// The short human explanation.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if let Some(n) = &self.name {
            s.push_str(&format!("{n}:\n"));
        }
        if let Some(e) = &self.invalid {
            s.push_str(&format!("  invalid call: {e}\n"));
            return s;
        }
        for step in &self.steps {
            s.push_str(&format!("  {step}\n"));
        }
        if let Some((verdict, _)) = &self.authorization
            && verdict == "denied"
        {
            s.push_str("  => denied by authorization (403)");
            if let Some(c) = &self.cluster {
                s.push_str(&format!("; the route's cluster is {c}"));
            }
            s.push('\n');
            return s;
        }
        match (&self.error, &self.cluster) {
            (Some(e), _) => s.push_str(&format!("  => {e}\n")),
            (None, Some(c)) => s.push_str(&format!("  => cluster {c}\n")),
            (None, None) if !self.weighted.is_empty() => {
                let parts: Vec<String> = self
                    .weighted
                    .iter()
                    .map(|(c, w)| format!("{c} ({w})"))
                    .collect();
                s.push_str(&format!("  => clusters {}\n", parts.join(", ")));
            }
            (None, None) => s.push_str(&format!(
                "  => {}\n",
                self.action.as_deref().unwrap_or("no cluster")
            )),
        }
        s
    }
}
