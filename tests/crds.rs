//! The CRDs: crds/ holds exactly what `meshd crds` prints; they are drop-in for Istio's
//! (same names, versions and flags; no field of Istio's schema that the API server would
//! prune); every Istio object in ../shared/istio validates against them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[path = "support/istio_data.rs"]
mod istio_data;
use istio_data::{shared, shared_or_skip};

fn docs(text: &str) -> Vec<Value> {
    meshd::sources::yaml::parse_documents(text)
        .into_iter()
        .map(|d| d.expect("YAML").value)
        .filter(|v| !v.is_null())
        .collect()
}

fn istio_crds() -> Vec<Value> {
    let text = std::fs::read_to_string(shared().join("crds/crd-all.gen.yaml"))
        .expect("../shared/istio/crds/crd-all.gen.yaml");
    docs(&text)
}

fn by_name(crds: &[Value], name: &str) -> Option<Value> {
    crds.iter().find(|c| c["metadata"]["name"] == name).cloned()
}

#[test]
fn crds_folder_is_what_meshd_crds_prints() {
    let file = std::fs::read_to_string(repo().join("crds/crd-all.gen.yaml"))
        .expect("crds/crd-all.gen.yaml");
    assert!(
        file == meshd::crds::yaml(),
        "crds/crd-all.gen.yaml is stale: run `cargo run --bin meshd -- crds > crds/crd-all.gen.yaml`"
    );
}

#[test]
fn same_names_versions_and_flags_as_istio() {
    let Some(_) = shared_or_skip("CRD names, versions and flags against Istio's") else {
        return;
    };
    let ours = meshd::crds::all();
    let theirs = istio_crds();
    let names = |c: &[Value]| -> BTreeSet<String> {
        c.iter()
            .filter_map(|c| c["metadata"]["name"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(names(&ours), names(&theirs));
    for t in &theirs {
        let name = t["metadata"]["name"].as_str().expect("name");
        let o = by_name(&ours, name).expect("ours");
        assert_eq!(o["spec"]["group"], t["spec"]["group"], "{name}");
        assert_eq!(o["spec"]["scope"], t["spec"]["scope"], "{name}");
        for f in [
            "kind",
            "listKind",
            "plural",
            "singular",
            "shortNames",
            "categories",
        ] {
            assert_eq!(
                o["spec"]["names"][f], t["spec"]["names"][f],
                "{name} names.{f}"
            );
        }
        let flags = |c: &Value| -> Vec<(String, bool, bool)> {
            c["spec"]["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap_or_default().to_string(),
                        v["served"].as_bool().unwrap_or(false),
                        v["storage"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        };
        assert_eq!(flags(&o), flags(t), "{name} versions");
        let columns = |c: &Value| -> Vec<Vec<(String, String)>> {
            c["spec"]["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .map(|v| {
                    v["additionalPrinterColumns"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|c| {
                            (
                                c["name"].as_str().unwrap_or_default().into(),
                                c["jsonPath"].as_str().unwrap_or_default().into(),
                            )
                        })
                        .collect()
                })
                .collect()
        };
        assert_eq!(columns(&o), columns(t), "{name} printer columns");
        for v in o["spec"]["versions"].as_array().expect("versions") {
            assert!(
                v["subresources"]["status"].is_object(),
                "{name}: status subresource"
            );
        }
    }
}

/// Every property path Istio's schema has (`spec.http[].route[].destination.host`).
fn paths(schema: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(props) = schema["properties"].as_object() {
        for (k, v) in props {
            let p = format!("{at}.{k}");
            out.push(p.clone());
            paths(v, &p, out);
        }
    }
    if schema["items"].is_object() {
        paths(&schema["items"], &format!("{at}[]"), out);
    }
    if schema["additionalProperties"].is_object() {
        paths(&schema["additionalProperties"], &format!("{at}{{}}"), out);
    }
}

/// Does our schema keep `path` (has it, or preserves unknown fields above it)?
fn keeps(schema: &Value, path: &str) -> bool {
    let mut s = schema;
    let mut rest = path.trim_start_matches('.');
    loop {
        if s["x-kubernetes-preserve-unknown-fields"] == true {
            return true;
        }
        if rest.is_empty() {
            return true;
        }
        if let Some(r) = rest.strip_prefix("[]") {
            s = &s["items"];
            rest = r.trim_start_matches('.');
            continue;
        }
        if let Some(r) = rest.strip_prefix("{}") {
            s = &s["additionalProperties"];
            rest = r.trim_start_matches('.');
            continue;
        }
        let end = rest.find(['.', '[', '{']).unwrap_or(rest.len());
        let (field, r) = rest.split_at(end);
        match s["properties"].get(field) {
            Some(next) => s = next,
            None => return false,
        }
        rest = r.trim_start_matches('.');
    }
}

#[test]
fn no_istio_field_would_be_pruned() {
    let Some(_) = shared_or_skip("pruning check against Istio's CRDs") else {
        return;
    };
    let ours = meshd::crds::all();
    let mut missing = Vec::new();
    for t in istio_crds() {
        let name = t["metadata"]["name"].as_str().expect("name").to_string();
        let o = by_name(&ours, &name).expect("ours");
        for (tv, ov) in t["spec"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .zip(o["spec"]["versions"].as_array().expect("versions"))
        {
            let ts = &tv["schema"]["openAPIV3Schema"];
            let os = &ov["schema"]["openAPIV3Schema"];
            let mut all = Vec::new();
            paths(ts, "", &mut all);
            for p in all {
                if !keeps(os, &p) {
                    missing.push(format!("{name} {}: {p}", tv["name"].as_str().unwrap_or("")));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} fields of Istio's CRDs would be pruned by ours:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// A structural-schema validator with the API server's rules for what it checks, plus
/// pruning (an unknown field is reported, since the API server would drop it).
fn validate(schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == true && schema.get("type").is_none() {
        return;
    }
    if v.is_null() {
        if schema["nullable"] != true && schema.get("type").is_some() {
            errs.push(format!("{at}: null"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            errs.push(format!("{at}: not an int or a string"));
        }
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errs.push(format!("{at}: expected {ty}, got {v}"));
        return;
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(v)
    {
        errs.push(format!("{at}: {v} not one of {e:?}"));
    }
    match v {
        Value::Object(m) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && !m.contains_key(r)
                {
                    errs.push(format!("{at}.{r}: required"));
                }
            }
            for (k, x) in m {
                let p = format!("{at}.{k}");
                if let Some(s) = schema["properties"].get(k) {
                    validate(s, x, &p, errs);
                } else if schema["additionalProperties"].is_object() {
                    validate(&schema["additionalProperties"], x, &p, errs);
                } else if schema["x-kubernetes-preserve-unknown-fields"] != true {
                    errs.push(format!("{p}: unknown field (would be pruned)"));
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                validate(&schema["items"], x, &format!("{at}[{i}]"), errs);
            }
        }
        _ => {}
    }
}

fn istio_objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["bookinfo/networking", "authz/http", "authz/tcp"] {
        for e in std::fs::read_dir(shared().join(dir)).expect(dir).flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Builder inputs only, not the Envoy outputs.
            if name.ends_with(".yaml") && !name.ends_with("-out.yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for v in docs(&text) {
            let api = v["apiVersion"].as_str().unwrap_or("");
            if api.contains("istio.io") {
                out.push((f.display().to_string(), v));
            }
        }
    }
    out
}

#[test]
fn every_istio_object_in_shared_validates() {
    let Some(_) = shared_or_skip("validating Istio's sample objects") else {
        return;
    };
    let ours = meshd::crds::all();
    let objects = istio_objects();
    assert!(objects.len() > 40, "found only {} objects", objects.len());
    let mut errs = Vec::new();
    for (file, obj) in &objects {
        let api = obj["apiVersion"].as_str().unwrap_or("");
        let (group, version) = api.split_once('/').expect("group/version");
        let kind = obj["kind"].as_str().unwrap_or("");
        let crd = ours
            .iter()
            .find(|c| c["spec"]["group"] == group && c["spec"]["names"]["kind"] == kind)
            .unwrap_or_else(|| panic!("{file}: no CRD for {kind}.{group}"));
        let ver = crd["spec"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .find(|v| v["name"] == version)
            .unwrap_or_else(|| panic!("{file}: {kind} version {version} not served"));
        let mut e = Vec::new();
        let mut body = obj.clone();
        if let Some(m) = body.as_object_mut() {
            for k in ["apiVersion", "kind", "metadata"] {
                m.remove(k);
            }
        }
        validate(&ver["schema"]["openAPIV3Schema"], &body, "", &mut e);
        for x in e {
            errs.push(format!("{file}: {kind} {}: {x}", obj["metadata"]["name"]));
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
