//! istiod's own simulation cases (tests/simulation/**, transcribed from
//! ../shared/istio/simulation) through `meshd explain`'s engine: for every call, the
//! error must be istiod's and every field the case names must be equal. Cases meshd does
//! not pass yet are marked `knownFailing` in their file with the reason; they are counted
//! and listed, and a marked case that passes fails the test (remove the mark).
//! The format is in tests/simulation/README.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use meshd::explain::{self, CallSpec};
use meshd::model::diagnostic::Origin;
use meshd::model::object::Object;
use meshd::model::proxy::Proxy;
use meshd::model::snapshot::{ConfigSet, Snapshot};
use meshd::sources::yaml::{FieldLines, parse_documents};
use meshd::translate::{self, Resources};
use serde_json::{Value, json};

fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/simulation")
}

fn case_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            case_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

fn yaml(text: &str) -> Value {
    let mut docs = parse_documents(text);
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0).expect("valid YAML").value
}

fn str_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

/// The configuration of a case: its manifests and its mesh config as the `istio`
/// ConfigMap. Objects meshd refuses are reported (the case may be about them).
fn config_set(case: &Value) -> (ConfigSet, Vec<String>) {
    config_set_edited(case, |_| {})
}

/// A case's configuration, each document edited by `edit` before it is read.
fn config_set_edited(case: &Value, edit: impl Fn(&mut Value)) -> (ConfigSet, Vec<String>) {
    let mut set = ConfigSet::default();
    let mut notes = Vec::new();
    let mut add = |mut value: Value, lines: FieldLines, notes: &mut Vec<String>| {
        edit(&mut value);
        let (objs, diags) = Object::from_value(value, lines, Origin::default(), "default");
        notes.extend(diags.iter().map(|d| d.to_string()));
        for o in objs {
            set.objects.insert(o.key.clone(), o);
        }
    };
    for doc in parse_documents(case["config"].as_str().unwrap_or("")) {
        match doc {
            Ok(d) => add(d.value, d.lines, &mut notes),
            Err(e) => notes.push(format!("config line {}: {}", e.line, e.message)),
        }
    }
    if let Some(mesh) = case["mesh"].as_str() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": mesh}});
        add(cm, FieldLines::default(), &mut notes);
    }
    (set, notes)
}

/// The proxy of a case, with istiod's SetupProxy defaults (sidecar, 1.1.1.1, default).
fn proxy(case: &Value) -> Proxy {
    let p = &case["proxy"];
    let kind = str_of(p, "type").unwrap_or_else(|| "sidecar".into());
    let ips: Vec<String> = match p.get("ips").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        None => vec![str_of(p, "ip").unwrap_or_else(|| "1.1.1.1".into())],
    };
    let ns = str_of(p, "namespace").unwrap_or_else(|| "default".into());
    let name = str_of(p, "name").unwrap_or_else(|| "app".into());
    let id = format!("{kind}~{}~{name}.{ns}~{ns}.svc.cluster.local", ips[0]);
    let mut meta: BTreeMap<String, Value> = BTreeMap::new();
    meta.insert("ISTIO_VERSION".into(), json!("1.23.0"));
    meta.insert("NAMESPACE".into(), json!(ns));
    meta.insert("INSTANCE_IPS".into(), json!(ips.join(",")));
    if let Some(l) = p.get("labels").filter(|l| l.is_object()) {
        meta.insert("LABELS".into(), l.clone());
    }
    if let Some(m) = p.get("meta").and_then(Value::as_object) {
        for (k, v) in m {
            meta.insert(k.clone(), v.clone());
        }
    }
    let mut proxy = Proxy::from_node(&id, meta).expect("valid proxy");
    // An istio-proxy in the mesh has its certificate, as in istiod's cases.
    proxy.mtls_ready = true;
    proxy
}

const FIELDS: [&str; 7] = [
    "error",
    "listener",
    "filterChain",
    "routeConfig",
    "virtualHost",
    "route",
    "cluster",
];

/// Differences between what a case expects and what explain answered (istiod's
/// Result.Matches: named fields equal, or every field under `strict`).
fn compare(expect: &Value, strict: bool, got: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    for f in FIELDS {
        let want = expect.get(f).and_then(Value::as_str);
        let have = got.get(f).and_then(Value::as_str).unwrap_or("");
        let check = match want {
            Some(_) => true,
            // The error is always compared: none expected, none allowed.
            None => strict || f == "error",
        };
        if check && want.unwrap_or("") != have {
            diffs.push(format!("{f}: want {:?} got {have:?}", want.unwrap_or("")));
        }
    }
    diffs
}

struct Tally {
    passed: usize,
    failed: Vec<String>,
    known: Vec<String>,
    fixed: Vec<String>,
    /// Differences meshd makes on purpose (listed in docs/COMPATIBILITY.md).
    on_purpose: Vec<String>,
}

/// The marks a check carries: its call's own, or its file's.
#[derive(Clone, Default)]
struct Marks {
    known: Option<String>,
    on_purpose: Option<String>,
}

impl Tally {
    /// Records a check. A call's own mark must fail (else it is stale); a file's mark
    /// covers whichever of its checks fail (and is stale when none does, see run_case).
    fn record(&mut self, what: String, own: &Marks, file: &Marks, diffs: Vec<String>) -> bool {
        let ok = diffs.is_empty();
        let mark = |m: &Marks| {
            m.on_purpose
                .clone()
                .map(|r| (true, r))
                .or(m.known.clone().map(|r| (false, r)))
        };
        match (ok, mark(own), mark(file)) {
            (true, Some(_), _) => self.fixed.push(what),
            (true, None, _) => self.passed += 1,
            (false, Some((true, r)), _) | (false, None, Some((true, r))) => {
                self.on_purpose.push(format!("{what}: {r}"))
            }
            (false, Some((false, r)), _) | (false, None, Some((false, r))) => {
                self.known.push(format!("{what}: {r}"))
            }
            (false, None, None) => self.failed.push(format!("{what}: {}", diffs.join("; "))),
        }
        ok
    }
}

fn marks(v: &Value) -> Marks {
    Marks {
        known: str_of(v, "knownFailing"),
        on_purpose: str_of(v, "differsOnPurpose"),
    }
}

fn cluster_type(c: &envoy_types::pb::envoy::config::cluster::v3::Cluster) -> String {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t)
            .map(|t| t.as_str_name().to_string())
            .unwrap_or_default(),
        _ => "CUSTOM".into(),
    }
}

fn lb_address(e: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint) -> String {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    match &e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => {
            match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(Address::SocketAddress(s)) => s.address.clone(),
                Some(Address::Pipe(p)) => p.path.clone(),
                _ => String::new(),
            }
        }
        _ => String::new(),
    }
}

fn route_clusters(res: &Resources, rc: &str, domain: &str) -> Option<Vec<String>> {
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    let rc = res.routes.iter().find(|r| r.name == rc)?;
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == domain))?;
    let mut out: Vec<String> = vh
        .routes
        .iter()
        .filter_map(|r| match &r.action {
            Some(Action::Route(ra)) => match &ra.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => Some(c.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    out.sort();
    (!out.is_empty()).then_some(out)
}

fn run_case(path: &Path, tally: &mut Tally) {
    let rel = path
        .strip_prefix(cases_dir())
        .unwrap_or(path)
        .display()
        .to_string();
    let case = yaml(&std::fs::read_to_string(path).expect("read case"));
    let file = marks(&case);
    let none = Marks::default();
    let mut file_failures = 0;
    let (set, notes) = config_set(&case);
    let snap = Snapshot::build(&set, None, "cluster.local", "istio-system");
    let proxy = proxy(&case);
    let ctx = translate::ProxyContext::new(&snap, &proxy);
    let res = translate::generate_for(&ctx);

    for (index, c) in case["calls"].as_array().into_iter().flatten().enumerate() {
        let name = str_of(c, "name").unwrap_or_default();
        let mut call = c.get("call").cloned().unwrap_or(json!({}));
        if let Some(secret) = c.get("mtlsSecretConfigName") {
            call["mtlsSecretConfigName"] = secret.clone();
        }
        let spec: CallSpec =
            serde_json::from_value(call).unwrap_or_else(|e| panic!("{rel} {name}: call: {e}"));
        let out = explain::explain(&ctx, &res, Some(name.clone()), &spec);
        let got = out.to_json();
        let strict = c.get("strict").and_then(Value::as_bool).unwrap_or(false);
        let mut diffs = compare(&c["expect"], strict, &got);
        if !diffs.is_empty() {
            diffs.push(format!("explain: {}", out.steps.join(" | ")));
            if !notes.is_empty() {
                diffs.push(format!("config notes: {}", notes.join(" | ")));
            }
        }
        if !tally.record(format!("{rel} / #{index} {name}"), &marks(c), &file, diffs) {
            file_failures += 1;
        }
    }

    if let Some(want) = case.get("inboundClusters").and_then(Value::as_array) {
        let want: BTreeSet<&str> = want.iter().filter_map(Value::as_str).collect();
        let have: BTreeSet<&str> = res
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .filter(|n| n.starts_with("inbound|"))
            .collect();
        let diffs = if want == have {
            vec![]
        } else {
            vec![format!("inbound clusters: want {want:?} got {have:?}")]
        };
        if !tally.record(format!("{rel} / inboundClusters"), &none, &file, diffs) {
            file_failures += 1;
        }
    }

    for c in case["clusters"].as_array().into_iter().flatten() {
        let name = str_of(c, "name").unwrap_or_default();
        let mut diffs = Vec::new();
        match res.clusters.iter().find(|x| x.name == name) {
            None => diffs.push("no such cluster".to_string()),
            Some(cl) => {
                if let Some(t) = str_of(c, "type") {
                    let have = cluster_type(cl);
                    if have != t {
                        diffs.push(format!("type: want {t} got {have}"));
                    }
                }
                if let Some(pr) = c.get("priorities").and_then(Value::as_object) {
                    let cla = cl
                        .load_assignment
                        .clone()
                        .or_else(|| {
                            res.endpoints
                                .iter()
                                .find(|e| e.cluster_name == name)
                                .cloned()
                        })
                        .unwrap_or_default();
                    for (addr, want) in pr {
                        let have = cla.endpoints.iter().find_map(|g| {
                            g.lb_endpoints
                                .iter()
                                .any(|e| lb_address(e) == *addr)
                                .then_some(g.priority)
                        });
                        if have.map(u64::from) != want.as_u64() {
                            diffs.push(format!("priority of {addr}: want {want} got {have:?}"));
                        }
                    }
                }
            }
        }
        if !tally.record(format!("{rel} / cluster {name}"), &marks(c), &file, diffs) {
            file_failures += 1;
        }
    }

    if let Some(routes) = case.get("routes").and_then(Value::as_object) {
        for (rc, domains) in routes {
            let exists = res.routes.iter().any(|r| r.name == *rc);
            for (domain, want) in domains.as_object().into_iter().flatten() {
                let want: Option<Vec<String>> = want.as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                });
                let have = route_clusters(&res, rc, domain);
                let mut diffs = Vec::new();
                if !exists && want.is_some() {
                    diffs.push(format!("no route configuration {rc}"));
                } else if have != want {
                    diffs.push(format!("want {want:?} got {have:?}"));
                }
                if !tally.record(format!("{rel} / route {rc} {domain}"), &none, &file, diffs) {
                    file_failures += 1;
                }
            }
        }
    }
    if file_failures == 0 && (file.known.is_some() || file.on_purpose.is_some()) {
        tally.fixed.push(format!("{rel} (the whole file)"));
    }
}

#[test]
fn istiods_simulation_cases() {
    let mut files = Vec::new();
    case_files(&cases_dir(), &mut files);
    assert!(!files.is_empty(), "no cases under tests/simulation");
    let only = std::env::var("SIMULATION_ONLY").ok();
    let mut tally = Tally {
        passed: 0,
        failed: vec![],
        known: vec![],
        fixed: vec![],
        on_purpose: vec![],
    };
    for f in &files {
        if only
            .as_ref()
            .is_some_and(|o| !f.display().to_string().contains(o.as_str()))
        {
            continue;
        }
        run_case(f, &mut tally);
    }
    for k in &tally.on_purpose {
        println!("differs on purpose: {k}");
    }
    for k in &tally.known {
        println!("known-failing: {k}");
    }
    for f in &tally.failed {
        println!("FAIL: {f}");
    }
    for f in &tally.fixed {
        println!("now passing (remove its knownFailing mark): {f}");
    }
    let total = tally.passed
        + tally.failed.len()
        + tally.known.len()
        + tally.fixed.len()
        + tally.on_purpose.len();
    println!(
        "simulation: {} of {total} checks as istiod ({} files); {} differ on purpose, {} known-failing, {} failing",
        tally.passed + tally.fixed.len(),
        files.len(),
        tally.on_purpose.len(),
        tally.known.len(),
        tally.failed.len()
    );
    assert!(
        tally.failed.is_empty(),
        "{} checks differ from istiod",
        tally.failed.len()
    );
    assert!(
        tally.fixed.is_empty(),
        "known-failing checks now pass: remove their marks"
    );
}

/// The same files through istiod's own simulator (tests/istiod-oracle/simulate_test.go,
/// built by the test command into target/go/istiod-simulate): every transcribed
/// expectation must be what istiod answers, so a transcription error cannot pass for a
/// meshd difference.
#[test]
fn transcriptions_are_what_istiod_answers() {
    let bin = std::env::var_os("MESHD_ISTIOD_SIMULATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/go/istiod-simulate")
        });
    if !bin.exists() {
        let msg = format!(
            "istiod-simulate not built at {} (scripts/test builds it)",
            bin.display()
        );
        if std::env::var("MESHD_REQUIRE_ENVOY").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        println!("SKIPPED: {msg}");
        return;
    }
    let mut files = Vec::new();
    case_files(&cases_dir(), &mut files);
    let out = std::process::Command::new(&bin)
        .args(&files)
        .output()
        .expect("run istiod-simulate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines().filter(|l| !l.starts_with("PASS")) {
        println!("{line}");
    }
    assert!(
        out.status.success(),
        "istiod answers differently from the transcribed expectations:\n{}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Route configurations assembled from kept virtual hosts (what the xDS server sends)
/// are byte for byte the fresh translation's, for every case's proxy: cold, then from
/// the kept pieces, then again after a rebuild that changed nothing, then after an edit
/// of every VirtualService (its HTTP rules and their matches renamed: their hosts'
/// pieces are made again, and the last layout patched in place).
#[test]
fn kept_virtual_hosts_assemble_as_the_fresh_translation() {
    use meshd::model::snapshot::Changes;
    use meshd::translate::route::pieces::VhostStore;
    use prost::Message;
    let mut files = Vec::new();
    case_files(&cases_dir(), &mut files);
    let mut compared = 0;
    let mut patched_edits = 0;
    for f in &files {
        let case = yaml(&std::fs::read_to_string(f).expect("read case"));
        let (set, _) = config_set(&case);
        let snap = Snapshot::build(&set, None, "cluster.local", "istio-system");
        let again = Snapshot::build(&set, Some(&snap), "cluster.local", "istio-system");
        // Every VirtualService's HTTP rules renamed.
        let (edited_set, _) = config_set_edited(&case, |doc| {
            if doc["kind"] == "VirtualService"
                && let Some(rules) = doc["spec"]["http"].as_array_mut()
            {
                // A match's name names the route where it has one: both renamed.
                let rename = |v: &mut Value| {
                    let name = v["name"].as_str().unwrap_or("").to_string();
                    v["name"] = Value::from(name + "-edited");
                };
                for rule in rules {
                    rename(rule);
                    if let Some(matches) = rule.get_mut("match").and_then(Value::as_array_mut) {
                        matches.iter_mut().for_each(rename);
                    }
                }
            }
        });
        let edited = Snapshot::build(&edited_set, Some(&again), "cluster.local", "istio-system");
        assert_eq!(
            edited.error_count(),
            snap.error_count(),
            "{}: the edit is valid: {:?}",
            f.display(),
            edited.diagnostics
        );
        let proxy = proxy(&case);
        let store = VhostStore::default();
        store.advance(0, snap.generation, &Changes::default());
        // Each step's snapshot, and the one it follows when the store moves to it.
        let steps = [
            (&snap, None, "cold"),
            (&snap, None, "kept"),
            (&again, Some(&snap), "rebuilt"),
            (&edited, Some(&again), "edited"),
        ];
        for (s, from, step) in steps {
            if let Some(from) = from {
                store.advance(from.generation, s.generation, &s.changes_since(from));
            }
            let edited_step = step == "edited";
            let ctx = translate::ProxyContext::new(s, &proxy);
            let res = translate::generate_for(&ctx);
            for rc in &res.routes {
                let want = meshd::envoy::pb::resource(rc).encode_to_vec();
                let remade = store.remade_in_place();
                let got = translate::route_config_any(&ctx, &rc.name, &store, 7)
                    .unwrap_or_else(|| panic!("{}: {} {step}: none", f.display(), rc.name));
                // Patched in place with pieces made again: what the edit exercised.
                if edited_step && store.remade_in_place() > remade {
                    patched_edits += 1;
                }
                assert!(
                    got.to_vec() == want,
                    "{}: route configuration {} ({step}) differs from the fresh translation",
                    f.display(),
                    rc.name
                );
                compared += 1;
            }
        }
    }
    println!(
        "{compared} route configurations compared, {patched_edits} patched in place with \
         pieces made again after an edit"
    );
    assert!(
        compared > 100,
        "only {compared} route configurations compared"
    );
    assert!(
        patched_edits > 40,
        "only {patched_edits} route configurations patched in place after an edit"
    );
}
