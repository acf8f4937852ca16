//! EnvoyFilter: patches applied to the generated clusters, listeners (filter chains,
//! network and HTTP filters) and route configurations (virtual hosts, routes) of the
//! proxies an EnvoyFilter selects, in istiod's order (root namespace first, then
//! priority, then name).
//!
//! Patches work on Envoy's JSON form (through the descriptor pool, so field names and
//! `@type`s are Envoy's): MERGE has protobuf merge semantics (messages merged field by
//! field, repeated fields appended, an `Any` of another type replaced), values are
//! normalised first (snake_case or camelCase, `TypedStruct` unwrapped), and a patch whose
//! result Envoy's schema refuses is dropped for that resource and logged, never sent.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use serde_json::Value;
use tracing::warn;

use super::context::ProxyContext;
use crate::envoy::naming;
use crate::envoy::{pb, rules};
use crate::model::istio::{
    ApplyTo, EnvoyConfigObjectMatch, EnvoyConfigObjectPatch, PatchContext, PatchOperation,
};
use crate::model::object::Spec;
use crate::model::proxy::ProxyKind;
use crate::model::service::labels_match;

const HCM: &str = "envoy.filters.network.http_connection_manager";

/// A patch value in Envoy's normal JSON form, or why it is not a valid `apply_to` (the
/// model validates with the same function).
pub use crate::model::validate::envoy_filter_value as normalized_value;

/// Protobuf merge on JSON: messages field by field, lists appended, an `Any` of another
/// type (or any scalar) replaced.
fn merge(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            if let (Some(a), Some(b)) = (d.get("@type"), s.get("@type"))
                && a != b
            {
                *d = s.clone();
                return;
            }
            for (k, v) in s {
                match d.get_mut(k) {
                    Some(dv) => merge(dv, v),
                    None => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(d), Value::Array(s)) => d.extend(s.iter().cloned()),
        (d, s) => *d = s.clone(),
    }
}

/// One patch ready to apply: its match, operation and normalised value.
struct Patch<'a> {
    apply_to: ApplyTo,
    m: Option<&'a EnvoyConfigObjectMatch>,
    op: PatchOperation,
    value: Value,
    from: String,
}

fn context_of(m: Option<&EnvoyConfigObjectMatch>) -> PatchContext {
    m.map(|m| m.context).unwrap_or(PatchContext::ANY)
}

/// The patches of the EnvoyFilters that select this proxy, in order, with where they
/// come from (`Kind ns/name`, index).
fn selected<'a>(ctx: &'a ProxyContext) -> Vec<(String, usize, &'a EnvoyConfigObjectPatch)> {
    let root = &ctx.snap.mesh.root_namespace;
    let mut out = Vec::new();
    for obj in &ctx.snap.envoy_filters {
        let Spec::EnvoyFilter(ef) = &obj.spec else {
            continue;
        };
        if obj.key.namespace != *root && obj.key.namespace != ctx.proxy.namespace {
            continue;
        }
        if let Some(sel) = &ef.workload_selector
            && !labels_match(&sel.labels, ctx.labels)
        {
            continue;
        }
        let from = obj.key.to_string();
        for (i, p) in ef.config_patches.iter().enumerate() {
            if p.patch.is_some() && proxy_matches(ctx, &from, i, p) {
                out.push((from.clone(), i, p));
            }
        }
    }
    out
}

/// The selected patches of the given kinds, values normalised.
fn patches<'a>(ctx: &'a ProxyContext, kinds: &[ApplyTo]) -> Vec<Patch<'a>> {
    if ctx.snap.envoy_filters.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (from, i, p) in selected(ctx) {
        if !kinds.contains(&p.apply_to) {
            continue;
        }
        let Some(patch) = &p.patch else { continue };
        let value = match &patch.value {
            // Normalised when the snapshot was built; validation refuses values that
            // are not, so a missing one is never applied half-way.
            Some(_) => match ctx.snap.envoy_filter_values.get(&(from.clone(), i)) {
                Some(v) => v.clone(),
                None => continue,
            },
            None => Value::Null,
        };
        out.push(Patch {
            apply_to: p.apply_to,
            m: p.matches.as_ref(),
            op: patch.operation,
            value,
            from,
        });
    }
    out
}

/// `match.proxy` of patch `i` of EnvoyFilter `from` against this proxy; the version
/// regex was compiled with the snapshot (this runs for every push).
fn proxy_matches(ctx: &ProxyContext, from: &str, i: usize, p: &EnvoyConfigObjectPatch) -> bool {
    let Some(pm) = p.matches.as_ref().and_then(|m| m.proxy.as_ref()) else {
        return true;
    };
    if !pm.proxy_version.is_empty() {
        let (Some(v), Some(re)) = (
            &ctx.proxy.istio_version,
            ctx.snap.envoy_filter_versions.get(&(from.to_string(), i)),
        ) else {
            return false;
        };
        if !re.is_match(v) {
            return false;
        }
    }
    pm.metadata
        .iter()
        .all(|(k, want)| ctx.proxy.metadata.get(k).is_some_and(|got| got == want))
}

/// A key for the set of patches that apply to this proxy (resource caches must not
/// share results between proxies that get different patches).
pub fn selection_key(ctx: &ProxyContext) -> u64 {
    if ctx.snap.envoy_filters.is_empty() {
        return 0;
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (from, i, _) in selected(ctx) {
        h.update(from.as_bytes());
        h.update(&i.to_le_bytes());
    }
    h.digest()
}

fn to_json<T: prost::Message + prost::Name>(m: &T) -> Value {
    let mut v = pb::any_to_json(&pb::any(m));
    if let Value::Object(o) = &mut v {
        o.remove("@type");
    }
    v
}

/// The typed message of `v` and its encoding (which the rules check reads, rather
/// than encoding the message again).
fn decoded<T: prost::Message + prost::Name + Default>(v: &Value) -> Result<(T, Vec<u8>), String> {
    let bytes = pb::json_to_bytes(&T::full_name(), v)?;
    let t = T::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    Ok((t, bytes))
}

fn broken<T: prost::Name>(bytes: &[u8]) -> Vec<rules::Violation> {
    rules::check_bytes(&T::full_name(), bytes, rules::Scope::Whole)
}

/// A patched or added resource as Envoy would take it: it decodes, and it keeps
/// Envoy's validation rules (one broken rule would have Envoy reject the whole update,
/// every other resource of it included).
fn checked<T: prost::Message + prost::Name + Default>(v: &Value) -> Result<T, String> {
    let (t, bytes) = decoded::<T>(v)?;
    match broken::<T>(&bytes).into_iter().next() {
        None => Ok(t),
        Some(b) => Err(format!("Envoy would reject it: {b}")),
    }
}

/// Back to the typed resource; on a result Envoy would refuse, the unpatched one. Only a
/// resource the patches changed is checked against the rules (meshd's own output keeps
/// them; the fuzz target `yaml` checks that).
fn typed_or<T: prost::Message + prost::Name + Default + PartialEq>(
    v: &Value,
    original: T,
    what: &str,
    ps: &[Patch],
) -> T {
    let result = match decoded::<T>(v) {
        Ok((t, _)) if t == original => return original,
        Ok((t, bytes)) => {
            let now = broken::<T>(&bytes);
            if now.is_empty() {
                return t;
            }
            // Only what the patches broke counts against them (anything already in
            // meshd's own output is meshd's to answer for, and the fuzz target `yaml`
            // looks for it).
            let before = rules::check(&original);
            match now.into_iter().find(|b| !before.contains(b)) {
                None => return t,
                Some(b) => format!("Envoy would reject it: {b}"),
            }
        }
        Err(e) => e,
    };
    let from: Vec<&str> = ps.iter().map(|p| p.from.as_str()).collect();
    warn!(resource = what, error = %result, envoy_filters = ?from,
          "EnvoyFilter result is not valid Envoy configuration; not applied");
    original
}

fn context_ok(ctx: &ProxyContext, want: PatchContext, inbound: bool) -> bool {
    match want {
        PatchContext::ANY => true,
        PatchContext::GATEWAY => ctx.proxy.kind == ProxyKind::Router,
        PatchContext::SIDECAR_INBOUND => ctx.proxy.kind == ProxyKind::Sidecar && inbound,
        PatchContext::SIDECAR_OUTBOUND => ctx.proxy.kind == ProxyKind::Sidecar && !inbound,
    }
}

// ------------------------------------------------------------------------------------
// Clusters
// ------------------------------------------------------------------------------------

fn cluster_matches(ctx: &ProxyContext, p: &Patch, c: &Value) -> bool {
    let name = c["name"].as_str().unwrap_or_default();
    let parsed = naming::parse_cluster(name);
    let inbound = matches!(parsed, Some((naming::Direction::Inbound, ..)));
    if !context_ok(ctx, context_of(p.m), inbound) {
        return false;
    }
    let Some(cm) = p.m.and_then(|m| m.cluster.as_ref()) else {
        return true;
    };
    if !cm.name.is_empty() && cm.name != name {
        return false;
    }
    if cm.port_number != 0 || !cm.service.is_empty() || !cm.subset.is_empty() {
        let Some((_, port, subset, host)) = parsed else {
            return false;
        };
        if cm.port_number != 0 && u32::from(port) != cm.port_number {
            return false;
        }
        if !cm.service.is_empty() && !crate::model::host::matches(&cm.service, host) {
            return false;
        }
        if !cm.subset.is_empty() && cm.subset != subset {
            return false;
        }
    }
    true
}

pub fn clusters(ctx: &ProxyContext, clusters: &mut Vec<Box<Cluster>>) {
    let ps = patches(ctx, &[ApplyTo::CLUSTER]);
    if ps.is_empty() {
        return;
    }
    let originals = std::mem::take(clusters);
    let mut json: Vec<(Value, Option<Box<Cluster>>)> = originals
        .into_iter()
        .map(|c| (to_json(&*c), Some(c)))
        .collect();
    for p in &ps {
        match p.op {
            // A new cluster is for the kind of proxy the context names.
            PatchOperation::ADD
                if context_ok(
                    ctx,
                    context_of(p.m),
                    context_of(p.m) == PatchContext::SIDECAR_INBOUND,
                ) =>
            {
                json.push((p.value.clone(), None));
            }
            PatchOperation::REMOVE => json.retain(|(c, _)| !cluster_matches(ctx, p, c)),
            PatchOperation::MERGE => {
                for (c, _) in json.iter_mut() {
                    if cluster_matches(ctx, p, c) {
                        merge(c, &p.value);
                    }
                }
            }
            _ => {}
        }
    }
    for (v, original) in json {
        match original {
            Some(o) => clusters.push(Box::new(typed_or(&v, *o, "cluster", &ps))),
            None => match checked::<Cluster>(&v) {
                Ok(c) => clusters.push(Box::new(c)),
                Err(e) => warn!(error = %e, "EnvoyFilter cluster is not valid; not added"),
            },
        }
    }
}

// ------------------------------------------------------------------------------------
// Listeners
// ------------------------------------------------------------------------------------

fn listener_port(l: &Value) -> u32 {
    l["address"]["socketAddress"]["portValue"]
        .as_u64()
        .unwrap_or(0) as u32
}

fn is_inbound(l: &Value) -> bool {
    l["trafficDirection"].as_str() == Some("INBOUND")
}

fn listener_matches(ctx: &ProxyContext, p: &Patch, l: &Value) -> bool {
    if !context_ok(ctx, context_of(p.m), is_inbound(l)) {
        return false;
    }
    let Some(lm) = p.m.and_then(|m| m.listener.as_ref()) else {
        return true;
    };
    if !lm.name.is_empty() && l["name"].as_str() != Some(lm.name.as_str()) {
        return false;
    }
    if lm.port_number != 0 && listener_port(l) != lm.port_number {
        // virtualInbound: the port is the chains' destination port.
        let by_chain = l["filterChains"].as_array().into_iter().flatten().any(|c| {
            c["filterChainMatch"]["destinationPort"].as_u64() == Some(u64::from(lm.port_number))
        });
        if !by_chain {
            return false;
        }
    }
    true
}

fn hcm_filters(chain: &Value) -> Option<&Vec<Value>> {
    chain["filters"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == HCM)?["typedConfig"]["httpFilters"]
        .as_array()
}

fn chain_matches(p: &Patch, listener_port_value: u32, chain: &Value) -> bool {
    let Some(lm) = p.m.and_then(|m| m.listener.as_ref()) else {
        return true;
    };
    let cm = &chain["filterChainMatch"];
    if lm.port_number != 0 && listener_port_value != lm.port_number {
        // Inside a listener on another port only the chains for that port match.
        if cm["destinationPort"].as_u64() != Some(u64::from(lm.port_number)) {
            return false;
        }
    }
    let Some(fc) = &lm.filter_chain else {
        return true;
    };
    if !fc.name.is_empty() && chain["name"].as_str() != Some(fc.name.as_str()) {
        return false;
    }
    if !fc.sni.is_empty()
        && !cm["serverNames"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == fc.sni.as_str()))
    {
        return false;
    }
    if !fc.transport_protocol.is_empty()
        && cm["transportProtocol"].as_str().unwrap_or("") != fc.transport_protocol
    {
        return false;
    }
    if !fc.application_protocols.is_empty() {
        let have: Vec<&str> = cm["applicationProtocols"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !fc
            .application_protocols
            .split(',')
            .any(|a| have.contains(&a.trim()))
        {
            return false;
        }
    }
    if fc.destination_port != 0
        && cm["destinationPort"].as_u64() != Some(u64::from(fc.destination_port))
    {
        return false;
    }
    if let Some(f) = &fc.filter {
        let filters = chain["filters"].as_array();
        if !f.name.is_empty()
            && !filters.is_some_and(|fs| fs.iter().any(|x| x["name"] == f.name.as_str()))
        {
            return false;
        }
        if let Some(sub) = &f.sub_filter
            && !sub.name.is_empty()
            && !hcm_filters(chain)
                .is_some_and(|hs| hs.iter().any(|h| h["name"] == sub.name.as_str()))
        {
            return false;
        }
    }
    true
}

/// Applies a list operation relative to the element named `anchor`.
fn list_op(list: &mut Vec<Value>, op: PatchOperation, anchor: &str, value: &Value) {
    let pos = (!anchor.is_empty())
        .then(|| list.iter().position(|x| x["name"] == anchor))
        .flatten();
    match op {
        PatchOperation::ADD => list.push(value.clone()),
        PatchOperation::INSERT_FIRST => list.insert(0, value.clone()),
        PatchOperation::INSERT_BEFORE => match (anchor.is_empty(), pos) {
            (true, _) => list.insert(0, value.clone()),
            (false, Some(i)) => list.insert(i, value.clone()),
            (false, None) => {}
        },
        PatchOperation::INSERT_AFTER => match (anchor.is_empty(), pos) {
            (true, _) => list.push(value.clone()),
            (false, Some(i)) => list.insert(i + 1, value.clone()),
            (false, None) => {}
        },
        PatchOperation::REMOVE => {
            if let Some(i) = pos {
                list.remove(i);
            }
        }
        PatchOperation::REPLACE => {
            if let Some(i) = pos {
                list[i] = value.clone();
            }
        }
        PatchOperation::MERGE => {
            if let Some(i) = pos {
                merge(&mut list[i], value);
            }
        }
        PatchOperation::INVALID => {}
    }
}

fn patch_listener_json(ctx: &ProxyContext, p: &Patch, l: &mut Value) {
    if !listener_matches(ctx, p, l) {
        return;
    }
    let port = listener_port(l);
    match p.apply_to {
        ApplyTo::LISTENER if p.op == PatchOperation::MERGE => merge(l, &p.value),
        ApplyTo::FILTER_CHAIN => {
            let chains = l.as_object_mut().map(|o| {
                o.entry("filterChains")
                    .or_insert_with(|| Value::Array(vec![]))
            });
            let Some(Value::Array(chains)) = chains else {
                return;
            };
            match p.op {
                PatchOperation::ADD => chains.push(p.value.clone()),
                PatchOperation::INSERT_FIRST => chains.insert(0, p.value.clone()),
                PatchOperation::REMOVE => chains.retain(|c| !chain_matches(p, port, c)),
                PatchOperation::MERGE => {
                    for c in chains.iter_mut() {
                        if chain_matches(p, port, c) {
                            merge(c, &p.value);
                        }
                    }
                }
                _ => {}
            }
        }
        ApplyTo::NETWORK_FILTER | ApplyTo::HTTP_FILTER => {
            // The default filter chain (a sniffed or shared listener's TCP fallback) is
            // patched like the others, as istiod does.
            let default = l
                .as_object_mut()
                .and_then(|o| o.remove("defaultFilterChain"));
            let mut all: Vec<Value> = l["filterChains"].as_array().cloned().unwrap_or_default();
            let listed = all.len();
            all.extend(default);
            patch_chain_filters(p, port, &mut all);
            if all.len() > listed
                && let Some(d) = all.pop()
            {
                l["defaultFilterChain"] = d;
            }
            if listed > 0 {
                l["filterChains"] = Value::Array(all);
            }
        }
        _ => {}
    }
}

/// NETWORK_FILTER and HTTP_FILTER patches on the chains they match.
fn patch_chain_filters(p: &Patch, port: u32, chains: &mut [Value]) {
    let fm =
        p.m.and_then(|m| m.listener.as_ref())
            .and_then(|l| l.filter_chain.as_ref())
            .and_then(|c| c.filter.as_ref());
    for c in chains.iter_mut() {
        if !chain_matches(p, port, c) {
            continue;
        }
        if p.apply_to == ApplyTo::NETWORK_FILTER {
            let anchor = fm.map(|f| f.name.as_str()).unwrap_or("");
            if let Some(fs) = c["filters"].as_array_mut() {
                list_op(fs, p.op, anchor, &p.value);
            }
        } else {
            let anchor = fm
                .and_then(|f| f.sub_filter.as_ref())
                .map(|s| s.name.as_str())
                .unwrap_or("");
            let Some(fs) = c["filters"].as_array_mut() else {
                continue;
            };
            for f in fs.iter_mut().filter(|f| f["name"] == HCM) {
                if let Some(hs) = f["typedConfig"]["httpFilters"].as_array_mut() {
                    list_op(hs, p.op, anchor, &p.value);
                }
            }
        }
    }
}

pub fn listeners(ctx: &ProxyContext, listeners: &mut Vec<Listener>) {
    let ps = patches(
        ctx,
        &[
            ApplyTo::LISTENER,
            ApplyTo::FILTER_CHAIN,
            ApplyTo::NETWORK_FILTER,
            ApplyTo::HTTP_FILTER,
        ],
    );
    if ps.is_empty() {
        return;
    }
    let originals = std::mem::take(listeners);
    let mut json: Vec<(Value, Option<Listener>)> = originals
        .into_iter()
        .map(|l| (to_json(&l), Some(l)))
        .collect();
    for p in &ps {
        match (p.apply_to, p.op) {
            (ApplyTo::LISTENER, PatchOperation::ADD) => {
                let want = context_of(p.m);
                if context_ok(ctx, want, want == PatchContext::SIDECAR_INBOUND) {
                    json.push((p.value.clone(), None));
                }
            }
            (ApplyTo::LISTENER, PatchOperation::REMOVE) => {
                json.retain(|(l, _)| !listener_matches(ctx, p, l));
            }
            _ => {
                for (l, _) in json.iter_mut() {
                    patch_listener_json(ctx, p, l);
                }
            }
        }
    }
    for (v, original) in json {
        match original {
            Some(o) => listeners.push(typed_or(&v, o, "listener", &ps)),
            None => match checked::<Listener>(&v) {
                Ok(l) => listeners.push(l),
                Err(e) => warn!(error = %e, "EnvoyFilter listener is not valid; not added"),
            },
        }
    }
}

// ------------------------------------------------------------------------------------
// Route configurations
// ------------------------------------------------------------------------------------

fn route_config_matches(ctx: &ProxyContext, p: &Patch, rc: &Value) -> bool {
    // Route configurations served over RDS are outbound (sidecars) or the gateway's.
    if !context_ok(ctx, context_of(p.m), false) {
        return false;
    }
    let Some(rm) = p.m.and_then(|m| m.route_configuration.as_ref()) else {
        return true;
    };
    let name = rc["name"].as_str().unwrap_or_default();
    if !rm.name.is_empty() && rm.name != name {
        return false;
    }
    if rm.port_number != 0 {
        // `9080`, `http.8080`, `https.443.NAME.GW.NS`.
        let port = name
            .split('.')
            .find_map(|part| part.parse::<u32>().ok())
            .unwrap_or(0);
        if port != rm.port_number {
            return false;
        }
    }
    if !rm.port_name.is_empty() && !name.split('.').any(|x| x == rm.port_name) {
        return false;
    }
    if !rm.gateway.is_empty() {
        // `https.443.NAME.GW.NS` names its gateway; `ns/name` in the match.
        let (ns, gw) = rm
            .gateway
            .split_once('/')
            .unwrap_or(("", rm.gateway.as_str()));
        let parts: Vec<&str> = name.split('.').collect();
        if !(parts.len() == 5 && parts[3] == gw && (ns.is_empty() || parts[4] == ns)) {
            return false;
        }
    }
    true
}

fn vhost_matches(p: &Patch, vh: &Value) -> bool {
    let Some(vm) =
        p.m.and_then(|m| m.route_configuration.as_ref())
            .and_then(|r| r.vhost.as_ref())
    else {
        return true;
    };
    if !vm.name.is_empty() && vh["name"].as_str() != Some(vm.name.as_str()) {
        return false;
    }
    if !vm.domain_name.is_empty()
        && !vh["domains"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == vm.domain_name.as_str()))
    {
        return false;
    }
    true
}

fn route_matches(p: &Patch, r: &Value) -> bool {
    use crate::model::istio::RouteAction as A;
    let Some(rm) =
        p.m.and_then(|m| m.route_configuration.as_ref())
            .and_then(|r| r.vhost.as_ref())
            .and_then(|v| v.route.as_ref())
    else {
        return true;
    };
    if !rm.name.is_empty() && r["name"].as_str() != Some(rm.name.as_str()) {
        return false;
    }
    match rm.action {
        A::ANY => true,
        A::ROUTE => r.get("route").is_some(),
        A::REDIRECT => r.get("redirect").is_some(),
        A::DIRECT_RESPONSE => r.get("directResponse").is_some(),
    }
}

/// Whether some EnvoyFilter patch may change this proxy's route configurations.
pub fn patches_routes(ctx: &ProxyContext) -> bool {
    !patches(ctx, &ROUTE_PATCHES).is_empty()
}

const ROUTE_PATCHES: [ApplyTo; 3] = [
    ApplyTo::ROUTE_CONFIGURATION,
    ApplyTo::VIRTUAL_HOST,
    ApplyTo::HTTP_ROUTE,
];

pub fn route_config(ctx: &ProxyContext, rc: RouteConfiguration) -> RouteConfiguration {
    let ps = patches(ctx, &ROUTE_PATCHES);
    if ps.is_empty() {
        return rc;
    }
    let mut v = to_json(&rc);
    for p in &ps {
        if !route_config_matches(ctx, p, &v) {
            continue;
        }
        match p.apply_to {
            ApplyTo::ROUTE_CONFIGURATION => merge(&mut v, &p.value),
            ApplyTo::VIRTUAL_HOST => {
                let vhs = v.as_object_mut().map(|o| {
                    o.entry("virtualHosts")
                        .or_insert_with(|| Value::Array(vec![]))
                });
                let Some(Value::Array(vhs)) = vhs else {
                    continue;
                };
                match p.op {
                    PatchOperation::ADD => vhs.push(p.value.clone()),
                    PatchOperation::REMOVE => vhs.retain(|vh| !vhost_matches(p, vh)),
                    PatchOperation::MERGE => {
                        for vh in vhs.iter_mut().filter(|vh| vhost_matches(p, vh)) {
                            merge(vh, &p.value);
                        }
                    }
                    _ => {}
                }
            }
            ApplyTo::HTTP_ROUTE => {
                let Some(vhs) = v["virtualHosts"].as_array_mut() else {
                    continue;
                };
                let anchor =
                    p.m.and_then(|m| m.route_configuration.as_ref())
                        .and_then(|r| r.vhost.as_ref())
                        .and_then(|v| v.route.as_ref())
                        .map(|r| r.name.clone())
                        .unwrap_or_default();
                for vh in vhs.iter_mut().filter(|vh| vhost_matches(p, vh)) {
                    let Some(routes) = vh["routes"].as_array_mut() else {
                        continue;
                    };
                    match p.op {
                        PatchOperation::MERGE => {
                            for r in routes.iter_mut().filter(|r| route_matches(p, r)) {
                                merge(r, &p.value);
                            }
                        }
                        PatchOperation::REMOVE => routes.retain(|r| !route_matches(p, r)),
                        op => list_op(routes, op, &anchor, &p.value),
                    }
                }
            }
            _ => {}
        }
    }
    typed_or(&v, rc, "route configuration", &ps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proxy_version_selects_proxies() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{name: http, port: 80}]}\n---\n\
             apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f, namespace: istio-system}\nspec:\n  configPatches:\n  - applyTo: CLUSTER\n    match: {proxy: {proxyVersion: '1\\.2.*'}, cluster: {service: a.default.svc.cluster.local}}\n    patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 4242}}\n";
        let snap = crate::model::testing::snapshot(text, None);
        assert!(snap.diagnostics.is_empty(), "{:?}", snap.diagnostics);
        let patched = |version: Option<&str>| {
            let mut meta = std::collections::BTreeMap::new();
            if let Some(v) = version {
                meta.insert("ISTIO_VERSION".to_string(), json!(v));
            }
            let proxy = crate::model::Proxy::from_node(
                "sidecar~10.0.0.1~p.default~default.svc.cluster.local",
                meta,
            )
            .expect("node");
            let ctx = ProxyContext::new(&snap, &proxy);
            super::super::cluster::clusters(&ctx)
                .iter()
                .find(|c| c.name == "outbound|80||a.default.svc.cluster.local")
                .and_then(|c| c.per_connection_buffer_limit_bytes)
                .map(|v| v.value)
        };
        assert_eq!(patched(Some("1.28.0")), Some(4242), "1.28 matches 1\\.2.*");
        assert_eq!(patched(Some("1.30.0")), None, "1.30 does not");
        assert_eq!(patched(None), None, "plain Envoy has no version to match");
    }

    #[test]
    fn merge_is_protobuf_merge() {
        let mut a = json!({"name": "x", "list": [1], "m": {"a": 1, "b": 2},
                           "typedConfig": {"@type": "t1", "k": 1}});
        merge(
            &mut a,
            &json!({"list": [2], "m": {"b": 3}, "typedConfig": {"@type": "t2", "z": 1}}),
        );
        assert_eq!(
            a,
            json!({"name": "x", "list": [1, 2], "m": {"a": 1, "b": 3},
                   "typedConfig": {"@type": "t2", "z": 1}})
        );
    }

    #[test]
    fn list_operations_are_relative_to_the_named_element() {
        let base = || vec![json!({"name": "a"}), json!({"name": "router"})];
        let v = json!({"name": "new"});
        let names = |l: &[Value]| -> Vec<String> {
            l.iter()
                .map(|x| x["name"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        for (op, anchor, want) in [
            (
                PatchOperation::INSERT_BEFORE,
                "router",
                vec!["a", "new", "router"],
            ),
            (
                PatchOperation::INSERT_AFTER,
                "a",
                vec!["a", "new", "router"],
            ),
            (PatchOperation::INSERT_FIRST, "", vec!["new", "a", "router"]),
            (
                PatchOperation::INSERT_BEFORE,
                "",
                vec!["new", "a", "router"],
            ),
            (PatchOperation::INSERT_AFTER, "", vec!["a", "router", "new"]),
            (
                PatchOperation::INSERT_BEFORE,
                "missing",
                vec!["a", "router"],
            ),
            (PatchOperation::REMOVE, "a", vec!["router"]),
            (PatchOperation::REPLACE, "a", vec!["new", "router"]),
            (PatchOperation::ADD, "", vec!["a", "router", "new"]),
        ] {
            let mut l = base();
            list_op(&mut l, op, anchor, &v);
            assert_eq!(names(&l), want, "{op:?} {anchor}");
        }
    }

    #[test]
    fn typed_structs_become_typed_values() {
        let v = normalized_value(
            ApplyTo::HTTP_FILTER,
            &json!({"name": "rl", "typed_config": {
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "value": {"stat_prefix": "p"}}}),
        )
        .expect("valid");
        assert_eq!(
            v["typedConfig"]["@type"],
            "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
        );
        assert_eq!(v["typedConfig"]["statPrefix"], "p");
        assert!(
            normalized_value(ApplyTo::CLUSTER, &json!({"no_such_field": 1})).is_err(),
            "unknown fields are refused"
        );
    }
}
