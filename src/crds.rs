//! `meshd crds`: Istio's CustomResourceDefinitions, with schemas generated (schemars) from
//! the same typed model meshd parses objects with.
//!
//! Names, groups, versions and their served/storage flags, short names, categories and
//! printer columns are Istio's, so these CRDs can replace Istio's over an existing install
//! without making stored objects unreadable. Schemas are structural (what the API server
//! requires): every `$ref` inlined, no `additionalProperties: false` (the API server
//! prunes unknown fields instead), no defaults (the API server would write them into
//! stored objects), free-form fields marked `x-kubernetes-preserve-unknown-fields`.
//! Kinds meshd does not model yet keep their whole `spec` (preserve-unknown-fields).

pub mod gateway_api;

use schemars::JsonSchema;
use serde_json::{Map, Value, json};

use crate::model::istio;

/// One CustomResourceDefinition.
struct Def {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    /// (version, storage); every version is served.
    versions: &'static [(&'static str, bool)],
    /// (name, jsonPath, type) before the Age column, which every kind has.
    columns: &'static [(&'static str, &'static str, &'static str)],
    /// Age first (some of Istio's kinds list it before their own columns).
    age_first: bool,
    spec_required: bool,
    /// The Helm label `istio` Istio's security and telemetry CRDs carry.
    istio_label: Option<&'static str>,
    spec: fn() -> Value,
}

const NET: &[(&str, bool)] = &[("v1", true), ("v1alpha3", false), ("v1beta1", false)];
const SEC: &[(&str, bool)] = &[("v1", true), ("v1beta1", false)];

fn schema_of<T: JsonSchema>() -> Value {
    let mut settings = schemars::generate::SchemaSettings::openapi3();
    settings.inline_subschemas = true;
    let generator = settings.into_generator();
    let schema = generator.into_root_schema_for::<T>();
    structural(schema.to_value())
}

/// A spec meshd does not model yet: kept whole.
fn free_form() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

const DEFS: &[Def] = &[
    Def {
        group: "extensions.istio.io",
        kind: "TrafficExtension",
        plural: "trafficextensions",
        short_names: &[],
        versions: &[("v1alpha1", true)],
        columns: &[],
        age_first: false,
        spec_required: true,
        istio_label: None,
        spec: free_form,
    },
    Def {
        group: "extensions.istio.io",
        kind: "WasmPlugin",
        plural: "wasmplugins",
        short_names: &[],
        versions: &[("v1alpha1", true)],
        columns: &[],
        age_first: false,
        spec_required: true,
        istio_label: None,
        spec: free_form,
    },
    Def {
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        short_names: &["dr"],
        versions: NET,
        columns: &[("Host", ".spec.host", "string")],
        age_first: false,
        spec_required: false,
        istio_label: None,
        spec: schema_of::<istio::DestinationRule>,
    },
    Def {
        group: "networking.istio.io",
        kind: "EnvoyFilter",
        plural: "envoyfilters",
        short_names: &[],
        versions: &[("v1alpha3", true)],
        columns: &[],
        age_first: false,
        spec_required: false,
        istio_label: None,
        spec: free_form,
    },
    Def {
        group: "networking.istio.io",
        kind: "Gateway",
        plural: "gateways",
        short_names: &["gw"],
        versions: NET,
        columns: &[],
        age_first: false,
        spec_required: false,
        istio_label: None,
        spec: schema_of::<istio::Gateway>,
    },
    Def {
        group: "networking.istio.io",
        kind: "ProxyConfig",
        plural: "proxyconfigs",
        short_names: &[],
        versions: &[("v1beta1", true)],
        columns: &[],
        age_first: false,
        spec_required: false,
        istio_label: None,
        spec: free_form,
    },
    Def {
        group: "networking.istio.io",
        kind: "ServiceEntry",
        plural: "serviceentries",
        short_names: &["se"],
        versions: NET,
        columns: &[
            ("Hosts", ".spec.hosts", "string"),
            ("Location", ".spec.location", "string"),
            ("Resolution", ".spec.resolution", "string"),
        ],
        age_first: false,
        spec_required: true,
        istio_label: None,
        spec: schema_of::<istio::ServiceEntry>,
    },
    Def {
        group: "networking.istio.io",
        kind: "Sidecar",
        plural: "sidecars",
        short_names: &[],
        versions: NET,
        columns: &[],
        age_first: false,
        spec_required: false,
        istio_label: None,
        spec: schema_of::<istio::Sidecar>,
    },
    Def {
        group: "networking.istio.io",
        kind: "VirtualService",
        plural: "virtualservices",
        short_names: &["vs"],
        versions: NET,
        columns: &[
            ("Gateways", ".spec.gateways", "string"),
            ("Hosts", ".spec.hosts", "string"),
        ],
        age_first: false,
        spec_required: false,
        istio_label: None,
        spec: schema_of::<istio::VirtualService>,
    },
    Def {
        group: "networking.istio.io",
        kind: "WorkloadEntry",
        plural: "workloadentries",
        short_names: &["we"],
        versions: NET,
        columns: &[("Address", ".spec.address", "string")],
        age_first: true,
        spec_required: true,
        istio_label: None,
        spec: schema_of::<istio::WorkloadEntry>,
    },
    Def {
        group: "networking.istio.io",
        kind: "WorkloadGroup",
        plural: "workloadgroups",
        short_names: &["wg"],
        versions: NET,
        columns: &[],
        age_first: false,
        spec_required: true,
        istio_label: None,
        spec: free_form,
    },
    Def {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short_names: &["ap"],
        versions: SEC,
        columns: &[("Action", ".spec.action", "string")],
        age_first: false,
        spec_required: false,
        istio_label: Some("security"),
        spec: schema_of::<istio::AuthorizationPolicy>,
    },
    Def {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        short_names: &["pa"],
        versions: SEC,
        columns: &[("Mode", ".spec.mtls.mode", "string")],
        age_first: false,
        spec_required: false,
        istio_label: Some("security"),
        spec: schema_of::<istio::PeerAuthentication>,
    },
    Def {
        group: "security.istio.io",
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        short_names: &["ra"],
        versions: SEC,
        columns: &[],
        age_first: false,
        spec_required: false,
        istio_label: Some("security"),
        spec: schema_of::<istio::RequestAuthentication>,
    },
    Def {
        group: "telemetry.istio.io",
        kind: "Telemetry",
        plural: "telemetries",
        short_names: &["telemetry"],
        versions: &[("v1", false), ("v1alpha1", true)],
        columns: &[],
        age_first: false,
        spec_required: false,
        istio_label: Some("telemetry"),
        spec: free_form,
    },
];

/// Kinds whose columns list Age though their own columns are empty.
fn has_age(d: &Def) -> bool {
    !matches!(
        d.kind,
        "EnvoyFilter" | "Gateway" | "ProxyConfig" | "Sidecar" | "RequestAuthentication"
    )
}

fn columns(d: &Def) -> Vec<Value> {
    let age = json!({
        "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
        "description": "When the object was created.",
    });
    let mut out: Vec<Value> = d
        .columns
        .iter()
        .map(|(name, path, ty)| {
            json!({"name": name, "type": ty, "jsonPath": path,
                   "description": format!("The object's {}.", &path[1..])})
        })
        .collect();
    if has_age(d) {
        if d.age_first {
            out.insert(0, age);
        } else {
            out.push(age);
        }
    }
    out
}

/// The status Istio writes (conditions, analysis messages), open to more.
fn status_schema() -> Value {
    json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "conditions": {"type": "array", "items": {"type": "object", "properties": {
                "lastProbeTime": {"type": "string", "format": "date-time"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "message": {"type": "string"},
                "observedGeneration": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "reason": {"type": "string"},
                "status": {"type": "string"},
                "type": {"type": "string"},
            }}},
            "observedGeneration": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "validationMessages": {"type": "array", "items": {"type": "object", "properties": {
                "documentationUrl": {"type": "string"},
                "level": {"type": "string", "enum": ["UNKNOWN", "ERROR", "WARNING", "INFO"]},
                "type": {"type": "object", "properties": {
                    "code": {"type": "string"},
                    "name": {"type": "string"},
                }},
            }}},
        },
    })
}

fn crd(d: &Def) -> Value {
    let spec = (d.spec)();
    let mut root = json!({
        "type": "object",
        "properties": {"spec": spec, "status": status_schema()},
    });
    if d.spec_required {
        root["required"] = json!(["spec"]);
    }
    let versions: Vec<Value> = d
        .versions
        .iter()
        .map(|(v, storage)| {
            let mut ver = json!({
                "name": v, "served": true, "storage": storage,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": root.clone()},
            });
            let cols = columns(d);
            if !cols.is_empty() {
                ver["additionalPrinterColumns"] = Value::Array(cols);
            }
            ver
        })
        .collect();
    let group_category = d.group.replace('.', "-");
    let mut labels =
        json!({"app": "istio-pilot", "chart": "istio", "heritage": "Tiller", "release": "istio"});
    if let Some(l) = d.istio_label {
        labels["istio"] = json!(l);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", d.plural, d.group),
            "labels": labels,
            "annotations": {"helm.sh/resource-policy": "keep"},
        },
        "spec": {
            "group": d.group,
            "names": {
                "categories": ["istio-io", group_category],
                "kind": d.kind,
                "listKind": format!("{}List", d.kind),
                "plural": d.plural,
                "singular": d.kind.to_ascii_lowercase(),
                "shortNames": d.short_names,
            },
            "scope": "Namespaced",
            "versions": versions,
        },
    })
}

/// Every CRD, in the order Istio's chart lists them.
pub fn all() -> Vec<Value> {
    DEFS.iter()
        .map(|d| {
            let mut c = crd(d);
            if d.short_names.is_empty()
                && let Some(names) = c["spec"]["names"].as_object_mut()
            {
                names.remove("shortNames");
            }
            c
        })
        .collect()
}

/// The CRDs as one multi-document YAML text (what `meshd crds` prints).
pub fn yaml() -> String {
    let mut out =
        String::from("# Generated by `meshd crds` from meshd's typed Istio model; do not edit.\n");
    for c in all() {
        out.push_str("---\n");
        out.push_str(&crate::yaml_out::to_string(&c));
    }
    out
}

/// meshd's own kinds' CRDs (RateLimitPolicy, group policy.meshd.io).
pub fn meshd_all() -> Vec<Value> {
    let d = Def {
        group: crate::model::ratelimit::GROUP,
        kind: "RateLimitPolicy",
        plural: "ratelimitpolicies",
        short_names: &["rlp"],
        versions: &[("v1alpha1", true)],
        columns: &[],
        age_first: false,
        spec_required: true,
        istio_label: None,
        spec: schema_of::<crate::model::ratelimit::RateLimitPolicySpec>,
    };
    let mut c = crd(&d);
    // Not an Istio chart's: no Helm labels, its own category.
    c["metadata"]["labels"] = json!({"app.kubernetes.io/part-of": "meshd"});
    if let Some(m) = c["metadata"].as_object_mut() {
        m.remove("annotations");
    }
    c["spec"]["names"]["categories"] = json!(["meshd"]);
    vec![c]
}

/// [`meshd_all`] as YAML (what `meshd crds --meshd` prints, crds/meshd.gen.yaml).
pub fn meshd_yaml() -> String {
    let mut out = String::from(
        "# Generated by `meshd crds --meshd` from meshd's typed model; do not edit.\n",
    );
    for c in meshd_all() {
        out.push_str("---\n");
        out.push_str(&crate::yaml_out::to_string(&c));
    }
    out
}

/// Makes a schemars schema structural, as the API server requires.
fn structural(v: Value) -> Value {
    match v {
        Value::Bool(true) => json!({"x-kubernetes-preserve-unknown-fields": true}),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match k.as_str() {
                    "$schema" | "title" | "default" | "examples" | "$defs" | "definitions" => {}
                    "additionalProperties" if v == Value::Bool(false) => {}
                    "properties" => {
                        let props: Map<String, Value> = match v {
                            Value::Object(p) => {
                                p.into_iter().map(|(k, v)| (k, structural(v))).collect()
                            }
                            other => return other,
                        };
                        out.insert(k, Value::Object(props));
                    }
                    "items" | "additionalProperties" => {
                        out.insert(k, structural(v));
                    }
                    // Maps with numeric keys (portLevelMtls): the API server has no
                    // patternProperties; the webhook checks the keys.
                    "patternProperties" => {
                        if let Some(first) = v.as_object().and_then(|m| m.values().next()) {
                            out.insert("additionalProperties".into(), structural(first.clone()));
                        }
                    }
                    // `null` is expressed by `nullable`, not as an enum value.
                    "enum" => {
                        let values: Vec<Value> = match v {
                            Value::Array(a) => a.into_iter().filter(|x| !x.is_null()).collect(),
                            other => vec![other],
                        };
                        out.insert(k, Value::Array(values));
                    }
                    "format" => {
                        // Only formats the API server knows; uint32 and friends are
                        // expressed by minimum/maximum.
                        if matches!(v.as_str(), Some("int32" | "int64" | "double" | "float")) {
                            out.insert(k, v);
                        }
                    }
                    _ => {
                        out.insert(k, v);
                    }
                }
            }
            // A schema with nothing to say about its value: arbitrary JSON.
            if !out.contains_key("type")
                && !out.contains_key("x-kubernetes-preserve-unknown-fields")
                && !out.contains_key("x-kubernetes-int-or-string")
                && !out.contains_key("anyOf")
            {
                out.insert(
                    "x-kubernetes-preserve-unknown-fields".into(),
                    Value::Bool(true),
                );
            }
            Value::Object(out)
        }
        other => other,
    }
}
