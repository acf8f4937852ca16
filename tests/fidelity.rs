//! Differential fidelity: the same Kubernetes objects and Istio configuration through
//! istiod (tests/istiod-oracle: Istio's own discovery server in-process, built by the test
//! command from Istio's Go module) and through meshd (`meshd translate`), compared
//! resource name by resource name for every proxy — clusters, listeners, route
//! configurations, virtual hosts (with their domains) — and then field by field: each
//! resource both name, normalised (tests/support/config_diff.rs says how: defaults
//! written or left out, key style, order Envoy ignores, istio-proxy-only parts set
//! aside), must be equal. The counts of equal resources per kind are printed; a
//! difference fails unless it is listed in [`KNOWN`] (names) or [`STRUCTURE_KNOWN`]
//! (fields) with its reason (each also recorded in docs/COMPATIBILITY.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

#[path = "support/config_diff.rs"]
mod config_diff;
#[path = "support/istio_data.rs"]
mod istio_data;
#[path = "support/istiod_oracle.rs"]
mod istiod_oracle;
use istiod_oracle::{Proxy, inputs, istiod_dump, oracle, yaml_docs};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Differences meshd makes on purpose: (kind, a part of the differing entry, why); each
/// is also in docs/COMPATIBILITY.md ("Differences on purpose").
const KNOWN: &[(&str, &str, &str)] = &[
    (
        "filter chain names",
        "virtualInbound-catchall-http",
        "istiod's HTTP variant of the inbound passthrough chains is not built yet: \
         undeclared ports are TCP chains (with the workload's authorization)",
    ),
    (
        "route actions",
        "||api.default.svc.cluster.local",
        "a route to a single-port service without a port, on another port's route \
     configuration: meshd sends it to the service's port; istiod uses the route's own port \
     when the service lacks it (a cluster that does not exist: 503)",
    ),
];

/// Field-level differences meshd makes on purpose, after the normalisation of
/// tests/support/config_diff.rs: (parts of the difference's pattern, in order, separated
/// by `…`; a part of istiod's value or "" for any; why). Each is also in docs/COMPATIBILITY.md ("Structure, field by
/// field").
const STRUCTURE_KNOWN: &[(&str, &str, &str)] = &[
    (
        "cluster[*].…transportSocket.typedConfig.commonTlsContext.alpnProtocols",
        "istio",
        "mesh mTLS ALPN: upstream Envoy has no istio.alpn filter to choose per request, so \
         meshd's client offers the port's protocol (istio-http/1.1, istio-h2) where istiod \
         offers istio-peer-exchange and istio",
    ),
    (
        "listener[*].filterChains[virtualInbound",
        "",
        "undeclared inbound ports: one TCP chain (no virtualInbound-catchall-http, no split \
         by transport)",
    ),
    (
        "listener[*].listenerFilters[envoy.filters.listener.http_inspector]",
        "",
        "undeclared inbound ports: the HTTP inspector runs only on declared sniffed ports",
    ),
    (
        "listener[*].listenerFilters[envoy.filters.listener.tls_inspector].filterDisabled",
        "",
        "the TLS inspector also looks at connections addressed to 15006 itself (istiod skips \
         them; the same chains are chosen)",
    ),
    (
        "listener[*].listenerFilters[envoy.filters.listener.tls_inspector] (istiod-only)",
        "",
        "a port-level DISABLE under PERMISSIVE: meshd's chain for the port matches any \
         transport, so no TLS inspector is needed (TLS to that port fails either way)",
    ),
    (
        "listener[*].filterChains[IP_N{destinationPort=N",
        "",
        "a port-level DISABLE under PERMISSIVE: meshd's chain for the port matches any \
         transport, istiod's raw_buffer only (TLS to that port fails either way)",
    ),
    (
        "listener[*].defaultFilterChain (istiod-only)",
        "",
        "a listener's catch-all: istiod's default_filter_chain, meshd's a chain matching \
         anything (Envoy chooses the same)",
    ),
    (
        "listener[*].filterChains[{}] (meshd-only)",
        "",
        "a listener's catch-all: istiod's default_filter_chain, meshd's a chain matching \
         anything (Envoy chooses the same)",
    ),
    (
        "route[*].virtualHosts[*].routes[*].route.cluster (value)",
        "||api.default.svc.cluster.local",
        "a single-port destination without a port, on another port's route (see KNOWN)",
    ),
    (
        "route[*].virtualHosts[*].routes[*].decorator.operation (value)",
        "api.default.svc.cluster.local",
        "the span name follows the route's cluster (the difference above)",
    ),
    (
        "cluster[*].transportSocket.typedConfig.commonTlsContext.combinedValidationContext (istiod-only)",
        "file-root:",
        "TLS origination trusting the proxy's own roots: meshd names the file for Envoy \
         to read, istiod an SDS secret istio-agent serves from it",
    ),
    (
        "cluster[*].transportSocket.typedConfig.commonTlsContext.validationContext (meshd-only)",
        "",
        "TLS origination trusting the proxy's own roots: meshd names the file for Envoy \
         to read, istiod an SDS secret istio-agent serves from it",
    ),
    (
        "cluster[*].transportSocket.typedConfig.sni (meshd-only)",
        "",
        "TLS origination without an explicit SNI: meshd also sends the service's host \
         when the cluster carries TCP (HTTP requests name the server by their Host, \
         auto_sni, as with istiod, which sends no SNI over TCP)",
    ),
    (
        "tracing.customTags[4].literal.value (value)",
        "latest",
        "istio.canonical_revision: meshd falls back to the `version` labels where the pod \
         has no service.istio.io/canonical-revision (the injector adds it); istiod says latest",
    ),
    (
        "tracing.customTags[5].literal.value (value)",
        "unknown",
        "istio.canonical_service: meshd falls back to the `app` labels where the pod has no \
         service.istio.io/canonical-name (the injector adds it); istiod says unknown",
    ),
];

/// The names of each kind in a config dump (istiod's camelCase or meshd's).
fn names(dump: &Value) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let get = |v: &Value, a: &str, b: &str| -> Vec<Value> {
        v.get(a)
            .or_else(|| v.get(b))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for c in dump["configs"].as_array().into_iter().flatten() {
        for x in get(c, "dynamicActiveClusters", "dynamic_active_clusters") {
            if let Some(n) = x["cluster"]["name"].as_str() {
                out.entry("clusters").or_default().insert(n.to_string());
                // How it finds and picks endpoints (enum defaults may be left out).
                let cl = &x["cluster"];
                let kind = cl["type"].as_str().unwrap_or("STATIC");
                let lb = cl
                    .get("lbPolicy")
                    .or_else(|| cl.get("lb_policy"))
                    .and_then(Value::as_str)
                    .unwrap_or("ROUND_ROBIN");
                out.entry("cluster types")
                    .or_default()
                    .insert(format!("{n} {kind} {lb}"));
            }
        }
        for x in get(c, "dynamicEndpointConfigs", "dynamic_endpoint_configs") {
            let cla = x
                .get("endpointConfig")
                .or_else(|| x.get("endpoint_config"))
                .cloned()
                .unwrap_or_default();
            let cname = cla
                .get("clusterName")
                .or_else(|| cla.get("cluster_name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            for loc in cla["endpoints"].as_array().into_iter().flatten() {
                for ep in get(loc, "lbEndpoints", "lb_endpoints") {
                    let sa = &ep["endpoint"]["address"];
                    let sa = sa.get("socketAddress").or_else(|| sa.get("socket_address"));
                    if let Some(sa) = sa {
                        let port = sa.get("portValue").or_else(|| sa.get("port_value"));
                        out.entry("endpoints").or_default().insert(format!(
                            "{cname} {}:{}",
                            sa["address"].as_str().unwrap_or_default(),
                            port.cloned().unwrap_or_default()
                        ));
                    }
                }
            }
        }
        for x in get(c, "dynamicListeners", "dynamic_listeners") {
            if let Some(n) = x["name"].as_str() {
                out.entry("listeners").or_default().insert(n.to_string());
                let l = x
                    .get("activeState")
                    .or_else(|| x.get("active_state"))
                    .map(|a| a["listener"].clone())
                    .unwrap_or_default();
                for fc in get(&l, "filterChains", "filter_chains") {
                    let fname = fc["name"].as_str().unwrap_or_default();
                    if !fname.is_empty() {
                        out.entry("filter chain names")
                            .or_default()
                            .insert(format!("{n} {fname}"));
                    }
                }
            }
        }
        for x in get(c, "dynamicRouteConfigs", "dynamic_route_configs") {
            let rc = x
                .get("routeConfig")
                .or_else(|| x.get("route_config"))
                .cloned()
                .unwrap_or_default();
            let rname = rc["name"].as_str().unwrap_or_default().to_string();
            out.entry("routes").or_default().insert(rname.clone());
            for vh in get(&rc, "virtualHosts", "virtual_hosts") {
                let vname = vh["name"].as_str().unwrap_or_default();
                out.entry("virtual hosts")
                    .or_default()
                    .insert(format!("{rname} {vname}"));
                for (i, r) in get(&vh, "routes", "routes").iter().enumerate() {
                    out.entry("route actions")
                        .or_default()
                        .insert(format!("{rname} {vname} #{i} {}", route_action(r)));
                }
                for d in vh["domains"].as_array().into_iter().flatten() {
                    out.entry("domains").or_default().insert(format!(
                        "{rname} {vname} {}",
                        d.as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    out
}

/// What a route does, in a form both dumps share: where it sends traffic (cluster, or
/// clusters and weights), its timeout, its retry condition and count, or its direct
/// answer or redirect.
fn route_action(r: &Value) -> String {
    let f = |v: &Value, a: &str, b: &str| {
        v.get(a)
            .or_else(|| v.get(b))
            .cloned()
            .unwrap_or(Value::Null)
    };
    if let Some(a) = r.get("route") {
        let target = match a.get("cluster") {
            Some(c) => c.as_str().unwrap_or_default().to_string(),
            None => f(a, "weightedClusters", "weighted_clusters")["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| format!("{}={}", c["name"].as_str().unwrap_or_default(), c["weight"]))
                .collect::<Vec<_>>()
                .join(","),
        };
        let retry = f(a, "retryPolicy", "retry_policy");
        format!(
            "route {target} timeout={} retry_on={} retries={}",
            a["timeout"],
            f(&retry, "retryOn", "retry_on"),
            f(&retry, "numRetries", "num_retries"),
        )
    } else if let Some(d) = r.get("directResponse").or_else(|| r.get("direct_response")) {
        format!("direct {}", d["status"])
    } else if let Some(d) = r.get("redirect") {
        format!("redirect {d}")
    } else {
        "other".into()
    }
}

/// Whether `text` holds the `…`-separated pieces of `parts`, in that order.
fn contains_in_order(text: &str, parts: &str) -> bool {
    let mut rest = text;
    for piece in parts.split('…') {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    true
}

/// The field-by-field comparison of every resource both dumps name.
#[derive(Default)]
struct Structure {
    /// Per kind: resources paired, equal after normalisation, differing only as listed.
    counts: BTreeMap<&'static str, (usize, usize, usize)>,
    /// Differences nobody accounted for: group → (count, one example).
    unknown: BTreeMap<String, (usize, String)>,
    /// istio-proxy-only parts set aside (istiod's, meshd's).
    aside: (usize, usize),
}

impl Structure {
    fn compare(&mut self, theirs: &Value, ours: &Value) {
        let (theirs, ours) = (config_diff::resources(theirs), config_diff::resources(ours));
        for (kind, of_kind) in &theirs {
            let Some(our_kind) = ours.get(kind) else {
                continue;
            };
            // (Resources one side lacks are the name comparison's.)
            for (name, t) in of_kind {
                let Some(o) = our_kind.get(name) else {
                    continue;
                };
                let (tn, ta) = config_diff::normalise(t);
                let (on, oa) = config_diff::normalise(o);
                self.aside.0 += ta;
                self.aside.1 += oa;
                let mut found = Vec::new();
                config_diff::diff(&tn, &on, &format!("{kind}[{name}]"), &mut found);
                let counts = self.counts.entry(kind).or_default();
                counts.0 += 1;
                if found.is_empty() {
                    counts.1 += 1;
                    continue;
                }
                let mut all_known = true;
                for d in found {
                    let shape = match (&d.istiod, &d.meshd) {
                        (None, _) => "meshd-only",
                        (_, None) => "istiod-only",
                        _ => "value",
                    };
                    let group = format!("{} ({shape})", config_diff::pattern(&d.path));
                    let theirs_text = d.istiod.as_ref().map(Value::to_string).unwrap_or_default();
                    let known = STRUCTURE_KNOWN.iter().any(|(parts, value, _)| {
                        contains_in_order(&group, parts) && theirs_text.contains(value)
                    });
                    if !known {
                        all_known = false;
                        let show = |v: &Option<Value>| {
                            let t = v
                                .as_ref()
                                .map(Value::to_string)
                                .unwrap_or_else(|| "<absent>".into());
                            t.chars().take(300).collect::<String>()
                        };
                        let e = self.unknown.entry(group).or_insert_with(|| {
                            (
                                0,
                                format!(
                                    "{}: istiod {} meshd {}",
                                    d.path,
                                    show(&d.istiod),
                                    show(&d.meshd)
                                ),
                            )
                        });
                        e.0 += 1;
                    }
                }
                if all_known {
                    counts.2 += 1;
                }
            }
        }
    }
}

/// meshd's dump for `proxy`.
fn meshd_dump(dir: &Path, proxy: &Proxy) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshd"));
    cmd.arg("translate")
        .arg("--config-dir")
        .arg(dir.join("config"))
        .args(["--proxy", &proxy.id, "--format", "config-dump"])
        .args([
            "--meta",
            "ISTIO_VERSION=1.31.0",
            "--meta",
            "CLUSTER_ID=Kubernetes",
        ])
        .args([
            "--meta",
            &format!("SERVICE_ACCOUNT={}", proxy.service_account),
        ]);
    for (k, v) in &proxy.labels {
        cmd.args(["--label", &format!("{k}={v}")]);
    }
    let out = cmd.output().expect("run meshd translate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("meshd's dump")
}

/// Compares every Pod's sidecar of the scenario made of `files`.
fn compare(scenario: &str, files: &[PathBuf]) {
    compare_pods(scenario, files, &[]);
}

/// [`compare`], for the proxies of the pods named in `only` (all when empty).
fn compare_pods(scenario: &str, files: &[PathBuf], only: &[&str]) {
    let Some(oracle) = oracle() else {
        if std::env::var("MESHD_REQUIRE_ENVOY").is_ok_and(|v| v == "1") {
            panic!(
                "the istiod oracle is not built (tests/istiod-oracle; ./scripts/test builds it)"
            );
        }
        eprintln!("SKIPPED: the istiod oracle is not built (./scripts/test builds it)");
        return;
    };
    let (kube, istio) = inputs(files);
    let dir =
        std::env::temp_dir().join(format!("meshd-fidelity-{scenario}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("config")).expect("dir");
    istiod_oracle::write_inputs(&dir, &kube, &istio);
    std::fs::write(
        dir.join("config/all.yaml"),
        yaml_docs(&[kube.clone(), istio.clone()].concat()),
    )
    .expect("write");
    let mut proxies = Vec::new();
    for pod in kube.iter().filter(|o| o["kind"] == "Pod") {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
        // A gateway's pod (Istio's chart, or a Gateway API Gateway's generated
        // Deployment) runs a router; every other pod a sidecar.
        let labels = &pod["metadata"]["labels"];
        let kind = if labels["istio"]
            .as_str()
            .is_some_and(|v| v.ends_with("gateway"))
            || labels["gateway.networking.k8s.io/gateway-name"].is_string()
        {
            "router"
        } else {
            "sidecar"
        };
        proxies.push(Proxy {
            id: format!("{kind}~{ip}~{name}.{ns}~{ns}.svc.cluster.local"),
            labels: pod["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            service_account: pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
        });
    }
    let mut equal: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut differences = Vec::new();
    let mut structure = Structure::default();
    for proxy in &proxies {
        let (theirs, ours) = (istiod_dump(&oracle, &dir, proxy), meshd_dump(&dir, proxy));
        // Both dumps, whole, for a person comparing them (MESHD_FIDELITY_KEEP=DIR).
        if let Some(keep) = std::env::var_os("MESHD_FIDELITY_KEEP") {
            let keep = PathBuf::from(keep).join(scenario);
            std::fs::create_dir_all(&keep).expect("keep dir");
            for (side, dump) in [("istiod", &theirs), ("meshd", &ours)] {
                let text = serde_json::to_string_pretty(dump).unwrap_or_default();
                std::fs::write(keep.join(format!("{}.{side}.json", proxy.id)), text)
                    .expect("keep dump");
            }
        }
        structure.compare(&theirs, &ours);
        let (theirs, ours) = (names(&theirs), names(&ours));
        let kinds: BTreeSet<&str> = theirs.keys().chain(ours.keys()).copied().collect();
        for kind in kinds {
            let a = theirs.get(kind).cloned().unwrap_or_default();
            let b = ours.get(kind).cloned().unwrap_or_default();
            let e = equal.entry(kind).or_default();
            e.0 += a.intersection(&b).count();
            e.1 += a.union(&b).count();
            for n in a.symmetric_difference(&b) {
                let side = if a.contains(n) {
                    "istiod only"
                } else {
                    "meshd only"
                };
                if !KNOWN
                    .iter()
                    .any(|(k, part, _)| *k == kind && n.contains(part))
                {
                    differences.push(format!("{} {kind} {side}: {n}", proxy.id));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The counts CI prints.
    for (kind, (same, all)) in &equal {
        println!("fidelity: {scenario} {kind}: {same} of {all} equal to istiod's");
    }
    for (kind, (paired, same, known)) in &structure.counts {
        println!(
            "fidelity: {scenario} {kind} fields: {same} of {paired} equal to istiod's after \
             normalisation, {known} more differ only as listed"
        );
    }
    println!(
        "fidelity: {scenario}: {} istio-proxy-only parts of istiod's set aside, {} of meshd's",
        structure.aside.0, structure.aside.1
    );
    for kind in ["clusters", "listeners"] {
        assert!(
            equal.get(kind).is_some_and(|(same, _)| *same > 0),
            "no {kind} compared: is the oracle working? {equal:?}"
        );
    }
    assert!(
        structure.unknown.is_empty(),
        "{scenario}: {} kinds of field differences from istiod (fix them, or list them in \
         STRUCTURE_KNOWN and docs/COMPATIBILITY.md):\n{}",
        structure.unknown.len(),
        structure
            .unknown
            .iter()
            .map(|(group, (n, example))| format!("{group}: {n}x, e.g. {example}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        differences.is_empty(),
        "{scenario}: {} differences from istiod:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[test]
fn bookinfo_matches_istiod_name_for_name() {
    let bookinfo = repo().join("examples/bookinfo");
    let files: Vec<PathBuf> = [
        "services.yaml",
        "pods.yaml",
        "destination-rules.yaml",
        "virtual-services.yaml",
        "reviews.yaml",
    ]
    .iter()
    .map(|f| bookinfo.join(f))
    .collect();
    compare("bookinfo", &files);
}

/// Istio's own Bookinfo rules (../shared/istio): every DestinationRule subset, a
/// header-based route and a fault.
#[test]
fn istio_bookinfo_rules_match_istiod() {
    let shared = istio_data::shared().join("bookinfo/networking");
    if !shared.exists() {
        istio_data::skipped("fidelity: Istio's Bookinfo rules");
        return;
    }
    let bookinfo = repo().join("examples/bookinfo");
    let mut files: Vec<PathBuf> = ["services.yaml", "pods.yaml"]
        .iter()
        .map(|f| bookinfo.join(f))
        .collect();
    files.extend(
        [
            "destination-rule-all.yaml",
            "virtual-service-reviews-jason-v2-v3.yaml",
            "virtual-service-ratings-test-delay.yaml",
            "virtual-service-details-v2.yaml",
        ]
        .iter()
        .map(|f| shared.join(f)),
    );
    compare("istio-bookinfo", &files);
}

/// The shapes issue 8 fixed: an unnamed port with a cluster IP (sniffed), a headless
/// service, a CIDR ServiceEntry, a wildcard VirtualService, two DestinationRules for one
/// host, a WorkloadEntry.
#[test]
fn service_shapes_match_istiod() {
    compare("shapes", &[repo().join("tests/data/fidelity/shapes.yaml")]);
}

/// An ingress gateway with Bookinfo's Gateway and its VirtualService.
#[test]
fn bookinfo_gateway_matches_istiod() {
    let bookinfo = repo().join("examples/bookinfo");
    let mut files: Vec<PathBuf> = [
        "services.yaml",
        "pods.yaml",
        "destination-rules.yaml",
        "gateway.yaml",
    ]
    .iter()
    .map(|f| bookinfo.join(f))
    .collect();
    files.push(repo().join("tests/data/fidelity/ingressgateway.yaml"));
    compare("bookinfo-gateway", &files);
}

/// A Gateway API Gateway with HTTPRoutes (precedence across routes, header matches,
/// rewrite, redirect, a missing backend, weights, a timeout) and a mesh route with
/// Bookinfo's sidecars.
#[test]
fn gateway_api_matches_istiod() {
    let bookinfo = repo().join("examples/bookinfo");
    let mut files: Vec<PathBuf> = ["services.yaml", "pods.yaml"]
        .iter()
        .map(|f| bookinfo.join(f))
        .collect();
    files.push(repo().join("tests/data/fidelity/gateway-api.yaml"));
    compare("gateway-api", &files);
}

/// Egress: external ServiceEntries (DNS; TLS and HTTP ports), a VirtualService with a
/// timeout and retries for one of them, a Sidecar limiting another namespace's view,
/// REGISTRY_ONLY.
#[test]
fn egress_matches_istiod() {
    compare("egress", &[repo().join("tests/data/fidelity/egress.yaml")]);
}

/// Bookinfo under STRICT mTLS, with a workload's port-level exception and an
/// AuthorizationPolicy.
#[test]
fn security_matches_istiod() {
    let bookinfo = repo().join("examples/bookinfo");
    let mut files: Vec<PathBuf> = ["services.yaml", "pods.yaml", "destination-rules.yaml"]
        .iter()
        .map(|f| bookinfo.join(f))
        .collect();
    files.push(repo().join("tests/data/fidelity/security.yaml"));
    compare("security", &files);
}

/// Telemetry metrics with istio-proxy: the stats filters (where, which side, which
/// overrides) and the metadata exchange beside them, against istiod's.
#[test]
fn telemetry_metrics_match_istiod() {
    let bookinfo = repo().join("examples/bookinfo");
    let mut files: Vec<PathBuf> = ["services.yaml", "pods.yaml"]
        .iter()
        .map(|f| bookinfo.join(f))
        .collect();
    files.push(repo().join("tests/data/fidelity/telemetry.yaml"));
    compare("telemetry", &files);
}

/// Tracing from the mesh's defaultConfig alone (no Telemetry), against istiod's.
#[test]
fn tracing_defaults_match_istiod() {
    let bookinfo = repo().join("examples/bookinfo");
    let mut files: Vec<PathBuf> = ["services.yaml", "pods.yaml"]
        .iter()
        .map(|f| bookinfo.join(f))
        .collect();
    files.push(repo().join("tests/data/fidelity/tracing-defaults.yaml"));
    compare("tracing-defaults", &files);
}

/// An east-west gateway (AUTO_PASSTHROUGH) in front of Bookinfo with its
/// DestinationRules: SNI-DNAT clusters and one chain per cluster, against istiod's.
#[test]
fn eastwest_gateway_matches_istiod() {
    let bookinfo = repo().join("examples/bookinfo");
    let mut files: Vec<PathBuf> = ["services.yaml", "pods.yaml", "destination-rules.yaml"]
        .iter()
        .map(|f| bookinfo.join(f))
        .collect();
    files.push(repo().join("tests/data/fidelity/eastwest.yaml"));
    compare_pods("eastwest", &files, &["istio-eastwestgateway-1"]);
}

/// The files of one of ../shared/istio's folders with their names (no extension), in
/// name order; None after a SKIPPED line when ../shared/istio is not there.
fn samples(dir: &Path) -> Option<Vec<(PathBuf, String)>> {
    let Ok(list) = std::fs::read_dir(dir) else {
        istio_data::skipped(&format!("fidelity: Istio's samples in {}", dir.display()));
        return None;
    };
    let mut out: Vec<(PathBuf, String)> = list
        .filter_map(|f| f.ok().map(|f| f.path()))
        .map(|p| {
            let stem = p
                .file_stem()
                .and_then(|f| f.to_str())
                .unwrap_or_default()
                .to_string();
            (p, stem)
        })
        .collect();
    out.sort();
    Some(out)
}

/// Bookinfo's Services and Pods (examples/bookinfo).
fn bookinfo_workloads() -> Vec<PathBuf> {
    let bookinfo = repo().join("examples/bookinfo");
    vec![bookinfo.join("services.yaml"), bookinfo.join("pods.yaml")]
}

/// Every one of Istio's Bookinfo networking samples (../shared/istio), each beside
/// Bookinfo and its DestinationRules, through the proxies it changes: the client of
/// every service (productpage), the client of ratings (reviews-v2), and the ingress
/// gateway for the Gateway samples.
#[test]
fn every_istio_networking_sample_matches_istiod() {
    let shared = istio_data::shared().join("bookinfo/networking");
    let Some(samples) = samples(&shared) else {
        return;
    };
    assert!(samples.len() > 15, "{samples:?}");
    for (sample, file) in samples {
        let mut files = bookinfo_workloads();
        // The subsets the VirtualServices name (unless the sample brings its own rules).
        let text = std::fs::read_to_string(&sample).unwrap_or_default();
        if !text.contains("kind: DestinationRule") {
            files.push(shared.join("destination-rule-all.yaml"));
        }
        let gateway = file.contains("gateway");
        if gateway {
            files.push(repo().join("tests/data/fidelity/ingressgateway.yaml"));
        }
        files.push(sample.clone());
        let mut pods = vec!["productpage-v1", "reviews-v2"];
        if gateway {
            pods.push("istio-ingressgateway-1");
        }
        compare_pods(&format!("istio-{file}"), &files, &pods);
    }
}

/// Istio's Bookinfo Gateway API samples (../shared/istio), each beside its Gateway and
/// HTTPRoute: the gateway's proxy and the mesh's (GAMMA) routes in productpage's.
#[test]
fn every_istio_gateway_api_sample_matches_istiod() {
    let shared = istio_data::shared().join("bookinfo/gateway-api");
    let Some(mut samples) = samples(&shared) else {
        return;
    };
    samples.retain(|(_, file)| file != "bookinfo-gateway");
    assert!(samples.len() >= 5, "{samples:?}");
    for (sample, file) in samples {
        let mut files = bookinfo_workloads();
        files.push(repo().join("tests/data/fidelity/shared-gateway-api.yaml"));
        files.push(shared.join("bookinfo-gateway.yaml"));
        files.push(sample.clone());
        compare_pods(
            &format!("istio-gateway-api-{file}"),
            &files,
            &["productpage-v1", "bookinfo-gateway-istio-1"],
        );
    }
}
