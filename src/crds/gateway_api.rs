//! `meshd crds --gateway-api`: the Kubernetes Gateway API's CustomResourceDefinitions
//! (v1.5, every version its experimental channel serves), schemas generated from the same
//! typed model meshd reads these objects with.
//!
//! Names, versions with their served/storage flags, scopes, short names, categories and
//! printer columns are the API's, so these CRDs can stand in for upstream's. The schemas
//! are structural and keep every field upstream's have (nothing a user writes is pruned);
//! they do not carry upstream's defaults or CEL rules: meshd applies the defaults when it
//! reads an object, and reports what the rules would refuse as diagnostics and status.
//! Kinds meshd does not translate yet keep their whole `spec`.

use serde_json::{Value, json};

use super::{free_form, schema_of};
use crate::model::gateway_api as gw;

/// The Gateway API bundle the definitions follow.
pub const BUNDLE_VERSION: &str = "v1.5.1";

struct GwDef {
    kind: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    /// (version, storage); every version is served.
    versions: &'static [(&'static str, bool)],
    cluster: bool,
    status: bool,
    /// (name, jsonPath, type, priority) — Age is one of them, where upstream puts it.
    columns: &'static [(&'static str, &'static str, &'static str, u32)],
    /// Versions marked deprecated (a warning for who uses them), as upstream marks them.
    deprecated: &'static [&'static str],
    /// Versions without printer columns (upstream lists none for them).
    bare: &'static [&'static str],
    spec: fn() -> Value,
}

const AGE: (&str, &str, &str, u32) = ("Age", ".metadata.creationTimestamp", "date", 0);
const V1_BETA: &[(&str, bool)] = &[("v1", true), ("v1beta1", false)];

const DEFS: &[GwDef] = &[
    GwDef {
        kind: "BackendTLSPolicy",
        plural: "backendtlspolicies",
        short_names: &["btlspolicy"],
        versions: &[("v1", true), ("v1alpha3", false)],
        cluster: false,
        status: true,
        columns: &[AGE],
        deprecated: &["v1alpha3"],
        bare: &["v1alpha3"],
        spec: schema_of::<gw::BackendTlsPolicySpec>,
    },
    GwDef {
        kind: "GatewayClass",
        plural: "gatewayclasses",
        short_names: &["gc"],
        versions: V1_BETA,
        cluster: true,
        status: true,
        columns: &[
            ("Controller", ".spec.controllerName", "string", 0),
            (
                "Accepted",
                ".status.conditions[?(@.type==\"Accepted\")].status",
                "string",
                0,
            ),
            AGE,
            ("Description", ".spec.description", "string", 1),
        ],
        deprecated: &[],
        bare: &[],
        spec: schema_of::<gw::GatewayClassSpec>,
    },
    GwDef {
        kind: "Gateway",
        plural: "gateways",
        short_names: &["gtw"],
        versions: V1_BETA,
        cluster: false,
        status: true,
        columns: &[
            ("Class", ".spec.gatewayClassName", "string", 0),
            ("Address", ".status.addresses[*].value", "string", 0),
            (
                "Programmed",
                ".status.conditions[?(@.type==\"Programmed\")].status",
                "string",
                0,
            ),
            AGE,
        ],
        deprecated: &[],
        bare: &[],
        spec: schema_of::<gw::GatewaySpec>,
    },
    GwDef {
        kind: "GRPCRoute",
        plural: "grpcroutes",
        short_names: &[],
        versions: &[("v1", true)],
        cluster: false,
        status: true,
        columns: &[("Hostnames", ".spec.hostnames", "string", 0), AGE],
        deprecated: &[],
        bare: &[],
        spec: schema_of::<gw::GrpcRouteSpec>,
    },
    GwDef {
        kind: "HTTPRoute",
        plural: "httproutes",
        short_names: &[],
        versions: V1_BETA,
        cluster: false,
        status: true,
        columns: &[("Hostnames", ".spec.hostnames", "string", 0), AGE],
        deprecated: &[],
        bare: &[],
        spec: schema_of::<gw::HttpRouteSpec>,
    },
    GwDef {
        kind: "ListenerSet",
        plural: "listenersets",
        short_names: &["lset"],
        versions: &[("v1", true)],
        cluster: false,
        status: true,
        columns: &[
            (
                "Accepted",
                ".status.conditions[?(@.type==\"Accepted\")].status",
                "string",
                0,
            ),
            (
                "Programmed",
                ".status.conditions[?(@.type==\"Programmed\")].status",
                "string",
                0,
            ),
            AGE,
        ],
        deprecated: &[],
        bare: &[],
        spec: schema_of::<gw::ListenerSetSpec>,
    },
    GwDef {
        kind: "ReferenceGrant",
        plural: "referencegrants",
        short_names: &["refgrant"],
        versions: &[("v1", false), ("v1beta1", true)],
        cluster: false,
        status: false,
        columns: &[AGE],
        deprecated: &[],
        bare: &[],
        spec: schema_of::<gw::ReferenceGrantSpec>,
    },
    GwDef {
        kind: "TCPRoute",
        plural: "tcproutes",
        short_names: &[],
        versions: &[("v1alpha2", true)],
        cluster: false,
        status: true,
        columns: &[AGE],
        deprecated: &[],
        bare: &[],
        spec: schema_of::<gw::StreamRouteSpec>,
    },
    GwDef {
        kind: "TLSRoute",
        plural: "tlsroutes",
        short_names: &[],
        versions: &[("v1", true), ("v1alpha2", false), ("v1alpha3", false)],
        cluster: false,
        status: true,
        columns: &[AGE],
        deprecated: &["v1alpha2", "v1alpha3"],
        bare: &[],
        spec: schema_of::<gw::StreamRouteSpec>,
    },
    GwDef {
        kind: "UDPRoute",
        plural: "udproutes",
        short_names: &[],
        versions: &[("v1alpha2", true)],
        cluster: false,
        status: true,
        columns: &[AGE],
        deprecated: &[],
        bare: &[],
        spec: free_form,
    },
];

/// Conditions, parents, listeners, addresses: whatever a controller writes.
fn status_schema() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn crd(d: &GwDef) -> Value {
    let mut props = json!({"spec": (d.spec)()});
    if d.status {
        props["status"] = status_schema();
    }
    let root = json!({"type": "object", "properties": props, "required": ["spec"]});
    let columns: Vec<Value> = d
        .columns
        .iter()
        .map(|(name, path, ty, priority)| {
            let mut c = json!({"name": name, "jsonPath": path, "type": ty});
            if *priority > 0 {
                c["priority"] = json!(priority);
            }
            c
        })
        .collect();
    let versions: Vec<Value> = d
        .versions
        .iter()
        .map(|(v, storage)| {
            let mut ver = json!({
                "name": v, "served": true, "storage": storage,
                "schema": {"openAPIV3Schema": root.clone()},
            });
            if !d.bare.contains(v) {
                ver["additionalPrinterColumns"] = json!(columns);
            }
            if d.deprecated.contains(v) {
                ver["deprecated"] = json!(true);
                ver["deprecationWarning"] = json!(format!(
                    "{}/{v} {} is deprecated and will go away; use {}/v1",
                    gw::GROUP,
                    d.kind,
                    gw::GROUP
                ));
            }
            // (ReferenceGrant has no status, and an empty `subresources`, as upstream.)
            ver["subresources"] = if d.status {
                json!({"status": {}})
            } else {
                json!({})
            };
            ver
        })
        .collect();
    let mut names = json!({
        "categories": ["gateway-api"],
        "kind": d.kind,
        "listKind": format!("{}List", d.kind),
        "plural": d.plural,
        "singular": d.kind.to_ascii_lowercase(),
    });
    if !d.short_names.is_empty() {
        names["shortNames"] = json!(d.short_names);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", d.plural, gw::GROUP),
            "annotations": {
                // The API server asks CRDs of *.k8s.io groups to name their approval.
                "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/4530",
                "gateway.networking.k8s.io/bundle-version": BUNDLE_VERSION,
                "gateway.networking.k8s.io/channel": "experimental",
            },
        },
        "spec": {
            "group": gw::GROUP,
            "names": names,
            "scope": if d.cluster { "Cluster" } else { "Namespaced" },
            "versions": versions,
        },
    })
}

/// Every Gateway API CRD, in name order.
pub fn all() -> Vec<Value> {
    DEFS.iter().map(crd).collect()
}

/// The CRDs as one multi-document YAML text (what `meshd crds --gateway-api` prints).
pub fn yaml() -> String {
    let mut out = String::from(
        "# Generated by `meshd crds --gateway-api` from meshd's typed Gateway API model; do not edit.\n",
    );
    for c in all() {
        out.push_str("---\n");
        out.push_str(&crate::yaml_out::to_string(&c));
    }
    out
}
