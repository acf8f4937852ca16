//! Gateway API Gateways get their proxies deployed, as istiod's deployment controller
//! does it: for a Gateway of class `istio` (or any class whose controller is istiod's),
//! a ServiceAccount, a Deployment running istio-proxy as a router, and a Service exposing
//! the listeners' ports, all named `<gateway>-<class>`, owned by the Gateway (Kubernetes
//! collects them with it) and applied server-side with istiod's field manager, while
//! leading. A "manual" Gateway — an address of type Hostname, or several addresses — is
//! its user's to deploy, as in istiod; so is one whose objects exist without the
//! `gateway.istio.io/managed` label.
//!
//! `render` is pure (what one Gateway needs); `run` applies what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::model::gateway_api::{GATEWAY_NAME_LABEL, GatewaySpec, ISTIO_CONTROLLER};
use crate::model::object::{Kind, Object, ObjectKey, Spec};
use crate::model::snapshot::Snapshot;

/// The field manager (and controller name) istiod applies with.
pub const FIELD_MANAGER: &str = "istio.io/gateway-controller";
/// Label on every object the controller manages (its controller name, `/` as `-`).
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
const MANAGED_VALUE: &str = "istio.io-gateway-controller";
const CLASS_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";
/// istiod's controller version: a Gateway claimed by a newer controller is left alone.
const CONTROLLER_VERSION: u32 = 5;
const VERSION_ANNOTATION: &str = "gateway.istio.io/controller-version";
const NAME_OVERRIDE: &str = "gateway.istio.io/name-override";
const SERVICE_ACCOUNT: &str = "gateway.istio.io/service-account";
const SERVICE_TYPE: &str = "networking.istio.io/service-type";

/// What the rendered objects take from meshd's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployOptions {
    /// `<hub>/<image>:<tag>` of istio-proxy (the injector's `global.hub`/`global.tag`).
    pub image: String,
    pub istio_namespace: String,
    /// The revision meshd serves ("" for the default).
    pub revision: String,
    pub domain_suffix: String,
    pub trust_domain: String,
    /// PROXY_CONFIG: the mesh's `defaultConfig` (JSON), with meshd as the discovery
    /// address unless it names one, as the injector gives sidecars.
    pub proxy_config: String,
}

/// Where proxies reach meshd (its certificate authority and secure xDS): the istiod
/// Service of its revision, as the injector names it.
fn istiod_address(istio_namespace: &str, revision: &str) -> String {
    let istiod = if revision.is_empty() || revision == "default" {
        "istiod".to_string()
    } else {
        format!("istiod-{revision}")
    };
    format!("{istiod}.{istio_namespace}.svc:15012")
}

/// The proxies' PROXY_CONFIG from the mesh config's `defaultConfig`.
pub fn proxy_config(
    mesh: &crate::model::mesh::MeshConfig,
    istio_namespace: &str,
    revision: &str,
) -> String {
    let mut pc = match &mesh.raw["defaultConfig"] {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    if pc
        .get("discoveryAddress")
        .is_none_or(|v| v.as_str().is_none_or(str::is_empty))
    {
        pc["discoveryAddress"] = json!(istiod_address(istio_namespace, revision));
    }
    pc.to_string()
}

/// The three objects one Gateway needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub service_account: Value,
    pub deployment: Value,
    pub service: Value,
}

/// Why a Gateway gets no deployment from meshd (None: it does).
pub fn skipped(
    gw: &Object,
    spec: &GatewaySpec,
    classes: &BTreeMap<String, String>,
    revision: &str,
) -> Option<String> {
    let class = spec.gateway_class_name.as_str();
    let controller = classes.get(class).map(String::as_str).or(match class {
        "istio" => Some(ISTIO_CONTROLLER),
        _ => None,
    });
    if controller != Some(ISTIO_CONTROLLER) {
        return Some(format!("class {class:?} is not istiod's"));
    }
    let manual = spec.addresses.len() > 1
        || spec
            .addresses
            .first()
            .is_some_and(|a| a.kind.as_deref().is_some_and(|k| k != "IPAddress"));
    if manual {
        return Some("manual: its addresses name the proxies".into());
    }
    let rev = gw
        .labels
        .get("istio.io/rev")
        .map(String::as_str)
        .unwrap_or("");
    let ours = if revision == "default" { "" } else { revision };
    if !(rev == ours || (rev == "default" && ours.is_empty())) {
        return Some(format!("revision {rev:?} is not meshd's"));
    }
    match gw
        .annotations
        .get(VERSION_ANNOTATION)
        .map(|v| v.parse::<u32>())
    {
        None => None,
        Some(Ok(v)) if v <= CONTROLLER_VERSION => None,
        Some(_) => Some("claimed by a newer controller".into()),
    }
}

/// Labels or annotations for the generated objects: `spec.infrastructure`'s when given,
/// else the Gateway's own, never the API's reserved keys or `drop`.
fn infrastructure(
    gw: &Object,
    spec: &GatewaySpec,
    field: &str,
    drop: &[&str],
) -> BTreeMap<String, String> {
    let given: Option<BTreeMap<String, String>> = spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.get(field))
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let from = given.unwrap_or_else(|| {
        if field == "labels" {
            gw.labels.clone()
        } else {
            gw.annotations.clone()
        }
    });
    from.into_iter()
        .filter(|(k, _)| {
            !k.starts_with("gateway.networking.k8s.io/") && !drop.contains(&k.as_str())
        })
        .collect()
}

/// Service port names from listener names: `.` → `-`, at most 63 characters, unique.
fn port_name(
    listener: &str,
    protocol: &str,
    index: usize,
    port: u32,
    taken: &mut BTreeSet<String>,
) -> String {
    // Kubernetes allows 63 characters: a suffix that makes a name unique is made room
    // for by shortening the name, never appended past the limit.
    let fit = |base: &str, suffix: &str| -> String {
        let keep = 63usize.saturating_sub(suffix.len());
        format!("{}{suffix}", base.chars().take(keep).collect::<String>())
    };
    let mut base = listener.replace('.', "-");
    if base.is_empty() {
        base = format!("{}-{index}", protocol.to_ascii_lowercase());
    }
    let mut name = fit(&base, "");
    if taken.contains(&name) {
        let mut suffix = format!("-{port}");
        name = fit(&base, &suffix);
        while taken.contains(&name) {
            suffix.push('x');
            name = fit(&base, &suffix);
        }
    }
    taken.insert(name.clone());
    name
}

/// What Gateway `gw` (with UID `uid`) needs applied.
pub fn render(gw: &Object, spec: &GatewaySpec, uid: &str, opts: &DeployOptions) -> Rendered {
    let ns = gw.key.namespace.as_str();
    let class = spec.gateway_class_name.as_str();
    let default_name = format!("{}-{class}", gw.key.name);
    let name = gw
        .annotations
        .get(NAME_OVERRIDE)
        .cloned()
        .unwrap_or_else(|| default_name.clone());
    let sa = gw
        .annotations
        .get(SERVICE_ACCOUNT)
        .cloned()
        .unwrap_or(default_name);
    let mut labels = infrastructure(gw, spec, "labels", &[]);
    labels.insert(GATEWAY_NAME_LABEL.into(), gw.key.name.clone());
    labels.insert(CLASS_LABEL.into(), class.into());
    labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
    let annotations = infrastructure(
        gw,
        spec,
        "annotations",
        &[
            "kubectl.kubernetes.io/last-applied-configuration",
            NAME_OVERRIDE,
            SERVICE_ACCOUNT,
            VERSION_ANNOTATION,
        ],
    );
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": gw.key.name,
        "uid": uid,
    }]);
    let meta = |n: &str| {
        json!({
            "name": n, "namespace": ns, "labels": labels,
            "annotations": annotations, "ownerReferences": owner,
        })
    };
    let selector = json!({ GATEWAY_NAME_LABEL: gw.key.name });

    let service_account = json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(&sa),
    });

    let mut pod_labels = labels.clone();
    pod_labels.insert("sidecar.istio.io/inject".into(), "false".into());
    pod_labels.insert("service.istio.io/canonical-name".into(), name.clone());
    pod_labels.insert(
        "service.istio.io/canonical-revision".into(),
        "latest".into(),
    );
    let mut pod_annotations = annotations.clone();
    pod_annotations.insert(
        "istio.io/rev".into(),
        if opts.revision.is_empty() {
            "default".into()
        } else {
            opts.revision.clone()
        },
    );
    pod_annotations.insert("prometheus.io/path".into(), "/stats/prometheus".into());
    pod_annotations.insert("prometheus.io/port".into(), "15020".into());
    pod_annotations.insert("prometheus.io/scrape".into(), "true".into());
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let env = |name: &str, v: Value| {
        let mut e = json!({"name": name});
        match v {
            Value::String(s) => e["value"] = json!(s),
            other => {
                if let Some(m) = other.as_object() {
                    for (k, x) in m {
                        e[k] = x.clone();
                    }
                }
            }
        }
        e
    };
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(&name),
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": {
                    "serviceAccountName": sa,
                    // Listeners on ports below 1024 without privileges.
                    "securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
                    "containers": [{
                        "name": "istio-proxy",
                        "image": opts.image,
                        "args": ["proxy", "router", "--domain",
                                 format!("$(POD_NAMESPACE).svc.{}", opts.domain_suffix),
                                 "--proxyLogLevel", "warning",
                                 "--proxyComponentLogLevel", "misc:error",
                                 "--log_output_level", "default:info"],
                        "env": [
                            env("PILOT_CERT_PROVIDER", json!("istiod")),
                            env("CA_ADDR", json!(istiod_address(&opts.istio_namespace, &opts.revision))),
                            env("POD_NAME", field("metadata.name")),
                            env("POD_NAMESPACE", field("metadata.namespace")),
                            env("INSTANCE_IP", field("status.podIP")),
                            env("SERVICE_ACCOUNT", field("spec.serviceAccountName")),
                            env("HOST_IP", field("status.hostIP")),
                            env("ISTIO_META_NODE_NAME", field("spec.nodeName")),
                            env("ISTIO_CPU_LIMIT", json!({"valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}})),
                            env("PROXY_CONFIG", json!(opts.proxy_config)),
                            env("ISTIO_META_POD_PORTS", json!("[]")),
                            env("ISTIO_META_CLUSTER_ID", json!("Kubernetes")),
                            env("ISTIO_META_INTERCEPTION_MODE", json!("REDIRECT")),
                            env("ISTIO_META_WORKLOAD_NAME", json!(name)),
                            env("ISTIO_META_OWNER", json!(format!("kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{name}"))),
                            env("ISTIO_META_MESH_ID", json!(opts.trust_domain)),
                            env("TRUST_DOMAIN", json!(opts.trust_domain)),
                        ],
                        "ports": [
                            {"containerPort": 15020, "name": "metrics", "protocol": "TCP"},
                            {"containerPort": 15021, "name": "status-port", "protocol": "TCP"},
                            {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"},
                        ],
                        "startupProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021},
                                         "failureThreshold": 30, "periodSeconds": 1, "timeoutSeconds": 1},
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021},
                                           "failureThreshold": 4, "periodSeconds": 15, "timeoutSeconds": 1},
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                            "privileged": false, "readOnlyRootFilesystem": true,
                            "runAsGroup": 1337, "runAsUser": 1337, "runAsNonRoot": true,
                        },
                        "volumeMounts": [
                            {"name": "workload-socket", "mountPath": "/var/run/secrets/workload-spiffe-uds"},
                            {"name": "credential-socket", "mountPath": "/var/run/secrets/credential-uds"},
                            {"name": "workload-certs", "mountPath": "/var/run/secrets/workload-spiffe-credentials"},
                            {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
                            {"name": "istio-data", "mountPath": "/var/lib/istio/data"},
                            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
                            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
                            {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"},
                        ],
                    }],
                    "volumes": [
                        {"name": "workload-socket", "emptyDir": {}},
                        {"name": "credential-socket", "emptyDir": {}},
                        {"name": "workload-certs", "emptyDir": {}},
                        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
                        {"name": "istio-data", "emptyDir": {}},
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
                        {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
                        {"name": "istio-podinfo", "downwardAPI": {"items": [
                            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                        ]}},
                    ],
                },
            },
        },
    });

    // The status port first, then each listener port once.
    let mut ports = vec![
        json!({"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"}),
    ];
    let mut taken: BTreeSet<String> = BTreeSet::from(["status-port".to_string()]);
    let mut seen: BTreeSet<u32> = BTreeSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        if !seen.insert(l.port) {
            continue;
        }
        ports.push(json!({
            "name": port_name(&l.name, &l.protocol, i, l.port, &mut taken),
            "port": l.port,
            "protocol": "TCP",
            "appProtocol": l.protocol.to_ascii_lowercase(),
        }));
    }
    let service_type = gw
        .annotations
        .get(SERVICE_TYPE)
        .cloned()
        .unwrap_or_else(|| "LoadBalancer".into());
    let mut service_spec = json!({
        "type": service_type,
        "ipFamilyPolicy": "PreferDualStack",
        "selector": selector,
        "ports": ports,
    });
    if service_type == "LoadBalancer"
        && let Some(a) = spec.addresses.first()
    {
        service_spec["loadBalancerIP"] = json!(a.value);
    }
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta(&name), "spec": service_spec,
    });
    Rendered {
        service_account,
        deployment,
        service,
    }
}

/// istio-proxy's image from the injector's values (`global.hub`, `global.tag`,
/// `global.proxy.image`), as the injection templates name it.
pub fn proxy_image(snap: &Snapshot, istio_namespace: &str) -> String {
    let key = ObjectKey {
        kind: Kind::ConfigMap,
        namespace: istio_namespace.to_string(),
        name: "istio-sidecar-injector".into(),
    };
    let values: Value = match snap.objects.get(&key).map(|o| &o.spec) {
        Some(Spec::ConfigMap(data)) => data
            .get("values")
            .and_then(|v| {
                crate::sources::yaml::parse_documents(v)
                    .into_iter()
                    .next()
                    .and_then(Result::ok)
            })
            .map(|d| d.value)
            .unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let text = |v: &Value, default: &str| match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => default.to_string(),
    };
    let g = &values["global"];
    let image = text(&g["proxy"]["image"], "proxyv2");
    if image.contains('/') {
        return image;
    }
    format!(
        "{}/{image}:{}",
        text(&g["hub"], "docker.io/istio"),
        text(&g["tag"], "1.28.0")
    )
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Applies `obj` server-side unless an object of that name exists that meshd (istiod)
/// does not manage (then nothing is done).
async fn apply(client: &Client, ar: &ApiResource, obj: &Value) -> Result<(), String> {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    match api.get_opt(name).await {
        Ok(Some(existing))
            if existing
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_LABEL))
                .is_none() =>
        {
            // Its owner's, as in istiod: left alone, quietly.
            tracing::debug!(kind = ar.kind, %ns, %name, "exists unmanaged: left alone");
            return Ok(());
        }
        Ok(_) => {}
        Err(e) => return Err(format!("reading {} {ns}/{name}: {e}", ar.kind)),
    }
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("applying {} {ns}/{name}: {e}", ar.kind))
}

/// Deploys, while leading, the proxies of every Gateway that needs them, again whenever
/// what a Gateway needs changes.
pub fn run(
    client: Client,
    leader: watch::Receiver<bool>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    opts: DeployOptions,
) {
    tokio::spawn(async move {
        let mut leader = leader;
        let mut snapshots = snapshots;
        let sa_ar = resource("", "v1", "ServiceAccount", "serviceaccounts");
        let deploy_ar = resource("apps", "v1", "Deployment", "deployments");
        let svc_ar = resource("", "v1", "Service", "services");
        let gw_ar = resource(
            crate::model::gateway_api::GROUP,
            "v1",
            "Gateway",
            "gateways",
        );
        // What was last applied for each Gateway (by content hash).
        let mut applied: BTreeMap<ObjectKey, u64> = BTreeMap::new();
        // Once a minute everything is applied again: objects someone deleted or
        // changed come back, and a failed apply is retried.
        let mut resync = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = resync.tick() => applied.clear(),
            }
            if !*leader.borrow() {
                applied.clear();
                continue;
            }
            let snap = snapshots.borrow().clone();
            let classes: BTreeMap<String, String> = snap
                .objects
                .values()
                .filter_map(|o| match &o.spec {
                    Spec::GatewayClass(c) => Some((o.key.name.clone(), c.controller_name.clone())),
                    _ => None,
                })
                .collect();
            let mut opts = opts.clone();
            opts.image = proxy_image(&snap, &opts.istio_namespace);
            opts.proxy_config = proxy_config(&snap.mesh, &opts.istio_namespace, &opts.revision);
            let mut present = BTreeSet::new();
            for gw in snap
                .objects
                .values()
                .filter(|o| o.key.kind == Kind::KubeGateway)
            {
                let Spec::KubeGateway(spec) = &gw.spec else {
                    continue;
                };
                if let Some(why) = skipped(gw, spec, &classes, &opts.revision) {
                    tracing::debug!(gateway = %gw.key, why, "no deployment");
                    continue;
                }
                present.insert(gw.key.clone());
                let hash = xxhash_rust::xxh3::xxh3_64(
                    &serde_json::to_vec(&(
                        &gw.labels,
                        &gw.annotations,
                        &gw.spec,
                        &opts.image,
                        &opts.proxy_config,
                    ))
                    .unwrap_or_default(),
                );
                if applied.get(&gw.key) == Some(&hash) {
                    continue;
                }
                // The owner reference needs the Gateway's UID, which the model does not keep.
                let gws: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &gw.key.namespace, &gw_ar);
                let uid = match gws.get_opt(&gw.key.name).await {
                    Ok(Some(o)) => o.metadata.uid.unwrap_or_default(),
                    Ok(None) => continue,
                    Err(e) => {
                        warn!(gateway = %gw.key, error = %e, "cannot read the Gateway");
                        continue;
                    }
                };
                let r = render(gw, spec, &uid, &opts);
                let mut ok = true;
                for (ar, obj) in [
                    (&sa_ar, &r.service_account),
                    (&deploy_ar, &r.deployment),
                    (&svc_ar, &r.service),
                ] {
                    if let Err(e) = apply(&client, ar, obj).await {
                        warn!(gateway = %gw.key, error = %e, "gateway deployment");
                        ok = false;
                    }
                }
                if ok {
                    info!(gateway = %gw.key, "gateway proxies deployed");
                    applied.insert(gw.key.clone(), hash);
                }
            }
            applied.retain(|k, _| present.contains(k));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::diagnostic::Origin;

    fn gateway(yaml: &str) -> (Arc<Object>, GatewaySpec) {
        let doc = crate::sources::yaml::parse_documents(yaml)
            .into_iter()
            .next()
            .expect("a document")
            .expect("yaml");
        let (objs, diags) = Object::from_value(doc.value, doc.lines, Origin::default(), "default");
        assert!(diags.is_empty(), "{diags:?}");
        let o = objs.into_iter().next().expect("an object");
        let Spec::KubeGateway(spec) = &o.spec else {
            panic!("not a Gateway")
        };
        let spec = spec.clone();
        (o, spec)
    }

    fn opts() -> DeployOptions {
        DeployOptions {
            proxy_config: "{}".into(),
            image: "docker.io/istio/proxyv2:1.28.0".into(),
            istio_namespace: "istio-system".into(),
            revision: String::new(),
            domain_suffix: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn objects_are_named_labelled_and_ported_as_istiods() {
        let (gw, spec) = gateway(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: web
  namespace: shop
  labels: {team: a, gateway.networking.k8s.io/reserved: x}
  annotations: {networking.istio.io/service-type: ClusterIP}
spec:
  gatewayClassName: istio
  infrastructure: {labels: {tier: edge}}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: http.alt, port: 80, protocol: HTTP}
  - {name: https.web, port: 443, protocol: HTTPS}
  - {name: http, port: 8080, protocol: HTTP}
"#,
        );
        assert_eq!(skipped(&gw, &spec, &BTreeMap::new(), ""), None);
        let r = render(&gw, &spec, "uid-1", &opts());
        let labels = &r.deployment["metadata"]["labels"];
        assert_eq!(labels["tier"], "edge", "infrastructure labels win");
        assert!(labels.get("team").is_none());
        assert_eq!(labels[GATEWAY_NAME_LABEL], "web");
        assert_eq!(labels[CLASS_LABEL], "istio");
        assert_eq!(labels[MANAGED_LABEL], MANAGED_VALUE);
        assert_eq!(r.deployment["metadata"]["name"], "web-istio");
        assert_eq!(r.service["spec"]["type"], "ClusterIP");
        assert!(r.service["spec"].get("loadBalancerIP").is_none());
        let ports: Vec<(&str, u64)> = r.service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or(""),
                    p["port"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        // One port per listener port; names from listener names, made unique.
        assert_eq!(
            ports,
            [
                ("status-port", 15021),
                ("http", 80),
                ("https-web", 443),
                ("http-8080", 8080)
            ]
        );
        assert_eq!(
            r.service_account["metadata"]["ownerReferences"][0]["uid"],
            "uid-1"
        );
        // Names stay within Kubernetes' 63 characters, suffix included.
        let mut taken = BTreeSet::new();
        let long = "l".repeat(70);
        let a = port_name(&long, "HTTP", 0, 80, &mut taken);
        let b = port_name(&long, "HTTP", 1, 81, &mut taken);
        assert_eq!(a.len(), 63);
        assert!(b.len() <= 63 && b.ends_with("-81") && a != b, "{b}");
    }

    #[test]
    fn manual_foreign_and_newer_gateways_are_skipped() {
        let base = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: default";
        let listeners = "listeners: [{name: http, port: 80, protocol: HTTP}]";
        let cases = [
            (
                format!(
                    "{base}}}\nspec: {{gatewayClassName: istio, addresses: [{{type: Hostname, value: a.example}}], {listeners}}}"
                ),
                true,
            ),
            (
                format!(
                    "{base}}}\nspec: {{gatewayClassName: istio, addresses: [{{value: 10.0.0.1}}, {{value: 10.0.0.2}}], {listeners}}}"
                ),
                true,
            ),
            (
                format!(
                    "{base}}}\nspec: {{gatewayClassName: istio, addresses: [{{value: 10.0.0.1}}], {listeners}}}"
                ),
                false,
            ),
            (
                format!("{base}}}\nspec: {{gatewayClassName: other, {listeners}}}"),
                true,
            ),
            (
                format!(
                    "{base}, annotations: {{gateway.istio.io/controller-version: \"6\"}}}}\nspec: {{gatewayClassName: istio, {listeners}}}"
                ),
                true,
            ),
            (
                format!(
                    "{base}, labels: {{istio.io/rev: canary}}}}\nspec: {{gatewayClassName: istio, {listeners}}}"
                ),
                true,
            ),
        ];
        for (yaml, skip) in cases {
            let (gw, spec) = gateway(&yaml);
            assert_eq!(
                skipped(&gw, &spec, &BTreeMap::new(), "").is_some(),
                skip,
                "{yaml}"
            );
        }
        // A class of another name whose controller is istiod's is deployed.
        let (gw, spec) = gateway(&format!(
            "{base}}}\nspec: {{gatewayClassName: mine, {listeners}}}"
        ));
        let classes = BTreeMap::from([("mine".to_string(), ISTIO_CONTROLLER.to_string())]);
        assert_eq!(skipped(&gw, &spec, &classes, ""), None);
        let r = render(&gw, &spec, "u", &opts());
        assert_eq!(r.service["metadata"]["name"], "g-mine");
        // One IP address: the LoadBalancer's.
        let (gw, spec) = gateway(&format!(
            "{base}}}\nspec: {{gatewayClassName: istio, addresses: [{{value: 10.0.0.1}}], {listeners}}}"
        ));
        assert_eq!(
            render(&gw, &spec, "u", &opts()).service["spec"]["loadBalancerIP"],
            "10.0.0.1"
        );
    }
}
