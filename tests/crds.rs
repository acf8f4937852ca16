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
        for x in against_crds(&ours, obj, file) {
            errs.push(format!(
                "{file}: {} {}: {x}",
                obj["kind"], obj["metadata"]["name"]
            ));
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

/// `obj` checked against the schema of its kind and version among `crds` (panics when
/// none serves it): what the API server would refuse or prune.
fn against_crds(crds: &[Value], obj: &Value, file: &str) -> Vec<String> {
    let api = obj["apiVersion"].as_str().unwrap_or("");
    let (group, version) = api.split_once('/').expect("group/version");
    let kind = obj["kind"].as_str().unwrap_or("");
    let crd = crds
        .iter()
        .find(|c| c["spec"]["group"] == group && c["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("{file}: no CRD for {kind}.{group}"));
    let ver = crd["spec"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("{file}: {kind} version {version} not served"));
    let mut body = obj.clone();
    if let Some(m) = body.as_object_mut() {
        for k in ["apiVersion", "kind", "metadata"] {
            m.remove(k);
        }
    }
    let mut errs = Vec::new();
    validate(&ver["schema"]["openAPIV3Schema"], &body, "", &mut errs);
    errs
}

/// The Gateway API's own CRDs (v1.5.1, experimental channel): `MESHD_GATEWAY_API_CRDS`,
/// else the Go module cache (scripts/test downloads the module), else None after a
/// SKIPPED line (a failure under MESHD_REQUIRE_ENVOY=1, where the test command has
/// installed them).
fn upstream_gateway_crds() -> Option<Vec<Value>> {
    let dir = std::env::var_os("MESHD_GATEWAY_API_CRDS")
        .map(PathBuf::from)
        .or_else(|| {
            let out = std::process::Command::new("go")
                .args(["env", "GOMODCACHE"])
                .output()
                .ok()?;
            let cache = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Some(PathBuf::from(cache).join(format!(
                "sigs.k8s.io/gateway-api@{}/config/crd/experimental",
                meshd::crds::gateway_api::BUNDLE_VERSION
            )))
        })
        .filter(|d| d.exists());
    let Some(dir) = dir else {
        let why = "the Gateway API's CRDs are not here (go mod download sigs.k8s.io/gateway-api@v1.5.1, or set MESHD_GATEWAY_API_CRDS)";
        assert!(
            std::env::var("MESHD_REQUIRE_ENVOY").as_deref() != Ok("1"),
            "{why}"
        );
        eprintln!("SKIPPED: comparing with upstream Gateway API CRDs: {why}");
        return None;
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("CRD folder").flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("gateway.networking.k8s.io_") && name.ends_with(".yaml") {
            let text = std::fs::read_to_string(e.path()).expect("read");
            out.extend(
                docs(&text)
                    .into_iter()
                    .filter(|d| d["kind"] == "CustomResourceDefinition"),
            );
        }
    }
    Some(out)
}

#[test]
fn gateway_api_crds_file_is_what_meshd_prints() {
    let file = std::fs::read_to_string(repo().join("crds/gateway-api.gen.yaml"))
        .expect("crds/gateway-api.gen.yaml");
    assert!(
        file == meshd::crds::gateway_api::yaml(),
        "crds/gateway-api.gen.yaml is stale: run `cargo run --bin meshd -- crds --gateway-api > crds/gateway-api.gen.yaml`"
    );
}

/// Same names, scopes, versions (served, storage), printer columns and subresources as
/// upstream's, and no field of upstream's schemas that ours would prune.
#[test]
fn gateway_api_crds_stand_in_for_upstreams() {
    let Some(theirs) = upstream_gateway_crds() else {
        return;
    };
    let ours = meshd::crds::gateway_api::all();
    let names = |c: &[Value]| -> BTreeSet<String> {
        c.iter()
            .filter_map(|c| c["metadata"]["name"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(names(&ours), names(&theirs));
    let mut missing = Vec::new();
    for t in &theirs {
        let name = t["metadata"]["name"].as_str().expect("name");
        let o = by_name(&ours, name).expect("ours");
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
        let (tv, ov) = (
            t["spec"]["versions"].as_array().expect("versions"),
            o["spec"]["versions"].as_array().expect("versions"),
        );
        assert_eq!(tv.len(), ov.len(), "{name} versions");
        for (tv, ov) in tv.iter().zip(ov) {
            for f in ["name", "served", "storage", "subresources", "deprecated"] {
                assert_eq!(ov[f], tv[f], "{name} {}: {f}", tv["name"]);
            }
            let cols = |v: &Value| -> Vec<(Value, Value)> {
                v["additionalPrinterColumns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| (c["name"].clone(), c["jsonPath"].clone()))
                    .collect()
            };
            assert_eq!(cols(ov), cols(tv), "{name} {} columns", tv["name"]);
            let mut all = Vec::new();
            paths(
                &tv["schema"]["openAPIV3Schema"]["properties"]["spec"],
                "",
                &mut all,
            );
            let os = &ov["schema"]["openAPIV3Schema"]["properties"]["spec"];
            for p in all {
                if !keeps(os, &p) {
                    missing.push(format!(
                        "{name} {}: spec{p}",
                        tv["name"].as_str().unwrap_or("")
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} fields of the Gateway API's CRDs would be pruned by ours:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// Bookinfo's Gateway API samples validate against meshd's CRDs.
#[test]
fn bookinfo_gateway_api_samples_validate() {
    let Some(dir) = shared_or_skip("validating Bookinfo's Gateway API samples") else {
        return;
    };
    let ours = meshd::crds::gateway_api::all();
    let mut n = 0;
    let mut errs = Vec::new();
    for e in std::fs::read_dir(dir.join("bookinfo/gateway-api"))
        .expect("bookinfo/gateway-api")
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).expect("read");
        let file = e.path().display().to_string();
        for obj in docs(&text) {
            errs.extend(against_crds(&ours, &obj, &file));
            n += 1;
        }
    }
    assert!(n >= 6, "found only {n} objects");
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}

#[test]
fn meshd_crds_file_is_what_meshd_prints() {
    let file =
        std::fs::read_to_string(repo().join("crds/meshd.gen.yaml")).expect("crds/meshd.gen.yaml");
    assert!(
        file == meshd::crds::meshd_yaml(),
        "crds/meshd.gen.yaml is stale: run `cargo run --bin meshd -- crds --meshd > crds/meshd.gen.yaml`"
    );
}

/// The RateLimitPolicy examples validate against meshd's own CRD, and a field the CRD
/// does not know is refused there as meshd refuses it.
#[test]
fn rate_limit_examples_validate_against_the_crd() {
    let ours = meshd::crds::meshd_all();
    let dir = repo().join("examples/ratelimit");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("examples/ratelimit") {
        let path = e.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        for obj in docs(&text) {
            let errs = against_crds(&ours, &obj, &path.display().to_string());
            assert!(errs.is_empty(), "{}: {errs:?}", path.display());
            n += 1;
        }
    }
    assert!(n >= 2, "examples found: {n}");
    let bad = serde_json::json!({
        "apiVersion": "policy.meshd.io/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "x"},
        "spec": {"local": {"requests": 1, "perSecond": 3}},
    });
    assert!(!against_crds(&ours, &bad, "inline").is_empty());
}
