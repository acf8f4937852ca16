//! Structural validation of Istio objects, with Istio's rules and clearer messages.
//! Used when building snapshots and by the validation webhook. References between
//! objects (does this subset exist?) are checked in `snapshot`, which sees them all.

use super::diagnostic::Diagnostic;
use super::istio::{self, StringMatch};
use super::object::Object;

fn check_string_match(obj: &Object, m: &StringMatch, path: &str, out: &mut Vec<Diagnostic>) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set != 1 {
        out.push(
            obj.diag_error(
                path,
                "a string match needs exactly one of exact, prefix or regex",
            )
            .hint("e.g. `exact: /login` or `prefix: /api`"),
        );
    }
    if let Some(re) = &m.regex {
        check_regex(obj, re, &format!("{path}.regex"), out);
    }
}

fn check_regex(obj: &Object, re: &str, path: &str, out: &mut Vec<Diagnostic>) {
    // Envoy uses RE2; the regex crate accepts the same syntax (no backreferences or
    // lookaround), so what compiles here is what Envoy will accept.
    if let Err(e) = regex::Regex::new(re) {
        let first = e.to_string().lines().last().unwrap_or_default().to_string();
        out.push(
            obj.diag_error(path, format!("invalid regular expression {re:?}: {first}"))
                .hint("Envoy uses RE2 syntax: no lookaround or backreferences"),
        );
    }
}

fn check_header_name(obj: &Object, name: &str, path: &str, out: &mut Vec<Diagnostic>) {
    if name.is_empty() || name.chars().any(|c| c.is_ascii_uppercase()) {
        out.push(
            obj.diag_error(
                path,
                format!("header name {name:?} must be non-empty lower case"),
            )
            .hint("HTTP/2 header names are lower case; Istio requires them so"),
        );
    }
}

fn not_yet(obj: &Object, field: &str, what: &str, out: &mut Vec<Diagnostic>) {
    out.push(
        obj.diag_warning(
            field,
            format!("{what} is not supported by meshd yet; it is ignored"),
        )
        .hint("see docs/COMPATIBILITY.md"),
    );
}

/// VirtualService rules from istio's `ValidateVirtualService`.
/// Whether a VirtualService's weights are relative: one made from a Gateway API route (or a
/// route's rules checked before conversion), where 10 and 10 mean half and half.
fn relative_weights(obj: &Object) -> bool {
    obj.is_generated() || obj.key.kind.is_gateway_api()
}

pub fn virtual_service(obj: &Object, vs: &istio::VirtualService) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, r) in vs.tcp.iter().enumerate() {
        for (j, m) in r.matches.iter().enumerate() {
            if !m.destination_subnets.is_empty() || !m.source_subnet.is_empty() {
                not_yet(
                    obj,
                    &format!("spec.tcp[{i}].match[{j}]"),
                    "matching TCP routes by destinationSubnets or sourceSubnet",
                    &mut out,
                );
            }
        }
    }
    for (i, r) in vs.tls.iter().enumerate() {
        for (j, m) in r.matches.iter().enumerate() {
            let p = format!("spec.tls[{i}].match[{j}]");
            if m.sni_hosts.is_empty() {
                out.push(
                    obj.diag_error(&format!("{p}.sniHosts"), "a TLS match needs sniHosts")
                        .hint(
                            "list the server names (SNI) this route takes, e.g. [api.example.com]",
                        ),
                );
            }
            if !m.destination_subnets.is_empty() {
                not_yet(
                    obj,
                    &format!("{p}.destinationSubnets"),
                    "matching TLS routes by destinationSubnets",
                    &mut out,
                );
            }
        }
    }
    if vs.hosts.is_empty() {
        // Without hosts it is a delegate: only HTTP routes, no gateways, no delegation.
        if !vs.gateways.is_empty() {
            out.push(
                obj.diag_error("spec.gateways", "a delegate VirtualService (no hosts) cannot name gateways")
                    .hint("bind the root VirtualService to the gateways; give this one no hosts and no gateways, or hosts if it is not a delegate"),
            );
        }
        if !vs.tcp.is_empty() || !vs.tls.is_empty() {
            out.push(obj.diag_error(
                "spec",
                "a delegate VirtualService (no hosts) has only http routes",
            ));
        }
        for (i, r) in vs.http.iter().enumerate() {
            if r.delegate.is_some() {
                out.push(obj.diag_error(
                    &format!("spec.http[{i}].delegate"),
                    "a delegate VirtualService cannot delegate again (one level only)",
                ));
            }
        }
    }
    for (i, h) in vs.hosts.iter().enumerate() {
        if h.is_empty() || (h.contains('*') && !h.starts_with('*')) || h.contains('/') {
            out.push(obj.diag_error(
                &format!("spec.hosts[{i}]"),
                format!("host {h:?} is not a valid host name"),
            ));
        }
        if h == "*" && vs.gateways.is_empty() {
            out.push(obj.diag_error(
                &format!("spec.hosts[{i}]"),
                "host \"*\" is only allowed on VirtualServices bound to gateways",
            ));
        }
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        out.push(obj.diag_error(
            "spec",
            "a VirtualService needs at least one of http, tcp or tls routes",
        ));
    }
    for (i, r) in vs.http.iter().enumerate() {
        let p = format!("spec.http[{i}]");
        let actions = [
            !r.route.is_empty(),
            r.redirect.is_some(),
            r.direct_response.is_some(),
            r.delegate.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if actions == 0 {
            out.push(
                obj.diag_error(
                    &p,
                    "an HTTP route needs a route, redirect, directResponse or delegate",
                )
                .hint("add `route: [{destination: {host: ...}}]`"),
            );
        }
        if !r.route.is_empty() && (r.redirect.is_some() || r.direct_response.is_some()) {
            out.push(obj.diag_error(
                &p,
                "route cannot be combined with redirect or directResponse",
            ));
        }
        if let Some(d) = &r.delegate {
            if d.name.is_empty() {
                out.push(obj.diag_error(&format!("{p}.delegate.name"), "a delegate needs a name"));
            }
            if !r.route.is_empty() || r.redirect.is_some() || r.direct_response.is_some() {
                out.push(obj.diag_error(
                    &format!("{p}.delegate"),
                    "a route that delegates cannot also route, redirect or respond",
                ));
            }
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{p}.match[{j}]");
            for (field, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    check_string_match(obj, sm, &format!("{mp}.{field}"), &mut out);
                }
            }
            for (name, sm) in &m.headers {
                check_header_name(obj, name, &format!("{mp}.headers.{name}"), &mut out);
                // An empty match (`{}`) means "header present", as istio allows.
                if sm.exact.is_some() || sm.prefix.is_some() || sm.regex.is_some() {
                    check_string_match(obj, sm, &format!("{mp}.headers.{name}"), &mut out);
                }
            }
            for (name, sm) in &m.without_headers {
                check_header_name(obj, name, &format!("{mp}.withoutHeaders.{name}"), &mut out);
                if sm.exact.is_some() || sm.prefix.is_some() || sm.regex.is_some() {
                    check_string_match(obj, sm, &format!("{mp}.withoutHeaders.{name}"), &mut out);
                }
            }
            for (name, sm) in &m.query_params {
                if sm.exact.is_some() || sm.prefix.is_some() || sm.regex.is_some() {
                    check_string_match(obj, sm, &format!("{mp}.queryParams.{name}"), &mut out);
                }
            }
            if let Some(port) = m.port
                && (port == 0 || port > 65535)
            {
                out.push(obj.diag_error(
                    &format!("{mp}.port"),
                    format!("port {port} is out of range"),
                ));
            }
        }
        let mut total: i64 = 0;
        for (j, d) in r.route.iter().enumerate() {
            let dp = format!("{p}.route[{j}]");
            if d.destination.host.is_empty() {
                out.push(
                    obj.diag_error(
                        &format!("{dp}.destination.host"),
                        "destination host is empty",
                    )
                    .hint("every route destination names a host"),
                );
            }
            let w = d.weight.unwrap_or(0);
            if w < 0 {
                out.push(obj.diag_error(&format!("{dp}.weight"), "weight must not be negative"));
            }
            total += i64::from(w.max(0));
        }
        if r.route.len() > 1 && total == 0 {
            out.push(
                obj.diag_error(
                    &format!("{p}.route"),
                    "several destinations but no weights: traffic would have nowhere to go",
                )
                .hint("give each destination a weight, e.g. 50 and 50"),
            );
        } else if r.route.len() > 1 && total != 100 && !relative_weights(obj) {
            // istiod refuses these at admission; meshd does the same everywhere — except
            // for VirtualServices made from Gateway API routes, whose weights are relative
            // (10 and 10 is half and half; Envoy's weighted clusters take any total).
            out.push(
                obj.diag_error(
                    &format!("{p}.route"),
                    format!("total destination weight {total} != 100"),
                )
                .hint("make the weights of the destinations add up to 100"),
            );
        }
        if let Some(redirect) = &r.redirect
            && let Some(code) = redirect.redirect_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            out.push(obj.diag_error(
                &format!("{p}.redirect.redirectCode"),
                format!("redirect code {code} is not one of 301, 302, 303, 307, 308"),
            ));
        }
        if let Some(dr) = &r.direct_response
            && !(200..=599).contains(&dr.status)
        {
            out.push(obj.diag_error(
                &format!("{p}.directResponse.status"),
                format!("status {} is not an HTTP status (200-599)", dr.status),
            ));
        }
        if let Some(rw) = &r.rewrite
            && let Some(rr) = &rw.uri_regex_rewrite
        {
            check_regex(
                obj,
                &rr.matches,
                &format!("{p}.rewrite.uriRegexRewrite.match"),
                &mut out,
            );
            if !rw.uri.is_empty() {
                out.push(obj.diag_error(
                    &format!("{p}.rewrite"),
                    "uri and uriRegexRewrite cannot both be set",
                ));
            }
        }
        if let Some(f) = &r.fault {
            if let Some(a) = &f.abort
                && a.http_status.is_none()
                && a.grpc_status.is_none()
                && a.http2_error.is_none()
            {
                out.push(obj.diag_error(
                    &format!("{p}.fault.abort"),
                    "an abort needs httpStatus, grpcStatus or http2Error",
                ));
            }
            if let Some(a) = &f.abort
                && let Some(s) = a.http_status
                && !(200..=599).contains(&s)
            {
                out.push(obj.diag_error(
                    &format!("{p}.fault.abort.httpStatus"),
                    format!("httpStatus {s} is not an HTTP status (200-599)"),
                ));
            }
            if let Some(d) = &f.delay
                && d.fixed_delay.is_none()
                && d.exponential_delay.is_none()
            {
                out.push(obj.diag_error(&format!("{p}.fault.delay"), "a delay needs fixedDelay"));
            }
        }
        if let Some(retries) = &r.retries
            && retries.attempts < 0
        {
            out.push(obj.diag_error(
                &format!("{p}.retries.attempts"),
                "attempts must not be negative",
            ));
        }
        for (field, pct) in [
            ("mirrorPercentage", r.mirror_percentage.as_ref()),
            (
                "fault.delay.percentage",
                r.fault
                    .as_ref()
                    .and_then(|f| f.delay.as_ref())
                    .and_then(|d| d.percentage.as_ref()),
            ),
            (
                "fault.abort.percentage",
                r.fault
                    .as_ref()
                    .and_then(|f| f.abort.as_ref())
                    .and_then(|d| d.percentage.as_ref()),
            ),
        ] {
            if let Some(pct) = pct
                && !(0.0..=100.0).contains(&pct.value)
            {
                out.push(obj.diag_error(
                    &format!("{p}.{field}.value"),
                    format!("percentage {} is not between 0 and 100", pct.value),
                ));
            }
        }
    }
    let weights = |route: &[istio::RouteDestination], path: String, out: &mut Vec<Diagnostic>| {
        let total: i64 = route
            .iter()
            .map(|d| i64::from(d.weight.unwrap_or(0).max(0)))
            .sum();
        if route.len() > 1 && total != 100 && !relative_weights(obj) {
            out.push(
                obj.diag_error(&path, format!("total destination weight {total} != 100"))
                    .hint("make the weights of the destinations add up to 100"),
            );
        }
    };
    for (i, r) in vs.tcp.iter().enumerate() {
        if r.route.is_empty() {
            out.push(obj.diag_error(
                &format!("spec.tcp[{i}].route"),
                "a TCP route needs a destination",
            ));
        }
        weights(&r.route, format!("spec.tcp[{i}].route"), &mut out);
    }
    for (i, r) in vs.tls.iter().enumerate() {
        if r.matches.is_empty() {
            out.push(obj.diag_error(
                &format!("spec.tls[{i}].match"),
                "a TLS route needs a match with sniHosts",
            ));
        }
        if r.route.is_empty() {
            out.push(obj.diag_error(
                &format!("spec.tls[{i}].route"),
                "a TLS route needs a destination",
            ));
        }
        weights(&r.route, format!("spec.tls[{i}].route"), &mut out);
    }
    out
}

/// EnvoyFilter rules: istiod's per-target operations, a value where the operation needs
/// one, and values that are Envoy configuration of the right type.
pub fn envoy_filter(obj: &Object, ef: &istio::EnvoyFilter) -> Vec<Diagnostic> {
    use istio::{ApplyTo, PatchOperation as Op};
    let mut out = Vec::new();
    if !ef.target_refs.is_empty() {
        not_yet(obj, "spec.targetRefs", "targetRefs", &mut out);
    }
    for (i, p) in ef.config_patches.iter().enumerate() {
        let path = format!("spec.configPatches[{i}]");
        match p.apply_to {
            ApplyTo::INVALID => {
                out.push(
                    obj.diag_error(&format!("{path}.applyTo"), "applyTo is required")
                        .hint("LISTENER, FILTER_CHAIN, NETWORK_FILTER, HTTP_FILTER, ROUTE_CONFIGURATION, VIRTUAL_HOST, HTTP_ROUTE or CLUSTER"),
                );
                continue;
            }
            ApplyTo::EXTENSION_CONFIG | ApplyTo::BOOTSTRAP | ApplyTo::LISTENER_FILTER => {
                not_yet(
                    obj,
                    &format!("{path}.applyTo"),
                    &format!("applyTo {:?}", p.apply_to),
                    &mut out,
                );
                continue;
            }
            _ => {}
        }
        let Some(patch) = &p.patch else {
            out.push(obj.diag_error(&format!("{path}.patch"), "a patch is required"));
            continue;
        };
        if patch.operation == Op::INVALID {
            out.push(
                obj.diag_error(&format!("{path}.patch.operation"), "operation is required")
                    .hint(
                        "MERGE, ADD, REMOVE, INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST or REPLACE",
                    ),
            );
            continue;
        }
        if !p.apply_to.allows(patch.operation) {
            out.push(obj.diag_error(
                &format!("{path}.patch.operation"),
                format!(
                    "operation {:?} is not supported for applyTo {:?}",
                    patch.operation, p.apply_to
                ),
            ));
            continue;
        }
        match &patch.value {
            None if patch.operation != Op::REMOVE => out.push(obj.diag_error(
                &format!("{path}.patch.value"),
                format!("operation {:?} needs a value", patch.operation),
            )),
            Some(v) => match envoy_filter_value(p.apply_to, v) {
                Err(e) => out.push(
                    obj.diag_error(
                        &format!("{path}.patch.value"),
                        format!("not valid Envoy configuration for {:?}: {e}", p.apply_to),
                    )
                    .hint("check field names and the @type of typed_config against Envoy's API"),
                ),
                Ok(normal) => {
                    out.extend(envoy_rules(
                        obj,
                        &path,
                        p.apply_to,
                        patch.operation,
                        &normal,
                    ));
                }
            },
            None => {}
        }
        if let Some(pv) = p
            .matches
            .as_ref()
            .and_then(|m| m.proxy.as_ref())
            .map(|pm| &pm.proxy_version)
            .filter(|v| !v.is_empty())
            && regex::Regex::new(pv).is_err()
        {
            out.push(obj.diag_error(
                &format!("{path}.match.proxy.proxyVersion"),
                format!("proxyVersion {pv:?} is not a valid regular expression"),
            ));
        }
    }
    out
}

/// Telemetry: access logging, tracing and metrics are translated (metrics: istio-proxy's
/// stats filters; meshd's own series for upstream Envoy); targetRefs are not yet. What
/// meshd's own series cannot do is said: other providers, custom metrics, and tag values
/// it cannot compute (istio-proxy evaluates those itself).
pub fn telemetry(
    obj: &Object,
    t: &istio::Telemetry,
    mesh: &super::mesh::MeshConfig,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if !t.target_refs.is_empty() || t.target_ref.is_some() {
        not_yet(obj, "spec.targetRefs", "targetRefs", &mut out);
    }
    for (i, m) in t.metrics.iter().enumerate() {
        for (j, p) in m["providers"].as_array().into_iter().flatten().enumerate() {
            let name = p["name"].as_str().unwrap_or_default();
            if !mesh.is_prometheus_provider(name) {
                out.push(
                    obj.diag_warning(
                        &format!("spec.metrics[{i}].providers[{j}].name"),
                        format!("metrics provider {name:?}: meshd configures Istio's metrics for Prometheus only; this provider gets nothing"),
                    )
                    .hint("name the `prometheus` provider (or a mesh extensionProviders entry with `prometheus: {}`)"),
                );
            }
        }
        for (j, o) in m["overrides"].as_array().into_iter().flatten().enumerate() {
            if let Some(custom) = o["match"]["customMetric"].as_str() {
                out.push(
                    obj.diag_warning(
                        &format!("spec.metrics[{i}].overrides[{j}].match.customMetric"),
                        format!("custom metric {custom:?}: istio-proxy defines it; meshd's own series (upstream Envoy) have no custom metrics"),
                    ),
                );
            }
            for (tag, v) in o["tagOverrides"].as_object().into_iter().flatten() {
                if !super::metric_tags::valid_label_name(tag) {
                    out.push(
                        obj.diag_warning(
                            &format!("spec.metrics[{i}].overrides[{j}].tagOverrides.{tag}"),
                            format!("{tag:?} is not a Prometheus label name: meshd adds no such label to its series"),
                        )
                        .hint("letters, digits and underscores, not starting with a digit or `__`, and not `le`"),
                    );
                    continue;
                }
                if v["operation"] == "REMOVE" {
                    continue;
                }
                let value = v["value"].as_str().unwrap_or_default();
                if super::metric_tags::TagValue::parse(value).is_none() {
                    out.push(
                        obj.diag_warning(
                            &format!("spec.metrics[{i}].overrides[{j}].tagOverrides.{tag}.value"),
                            format!("{value:?}: istio-proxy evaluates this expression; meshd's own series (upstream Envoy) compute only literals ('text'), request.host/method/path/url_path/scheme/useragent/protocol, request.headers['name'], response.code and response.headers['name'], and leave this label as it is"),
                        ),
                    );
                }
            }
        }
    }
    for (i, tr) in t.tracing.iter().enumerate() {
        for (j, p) in tr.providers.iter().enumerate() {
            let known = mesh
                .extension_providers
                .iter()
                .any(|e| e.name == p.name && e.is_tracer());
            if !known {
                out.push(
                    obj.diag_warning(
                        &format!("spec.tracing[{i}].providers[{j}].name"),
                        format!("no tracing provider {:?} meshd can configure in mesh config; no spans are reported", p.name),
                    )
                    .hint("define it under meshConfig.extensionProviders as `zipkin`, `opentelemetry`, `datadog` or `skywalking` with `{service, port}`"),
                );
            }
        }
        for (j, p) in tr.providers.iter().enumerate() {
            let sampler = mesh.extension_providers.iter().any(|e| {
                e.name == p.name
                    && e.opentelemetry
                        .as_ref()
                        .is_some_and(|o| o.dynatrace_sampler.is_some())
            });
            if sampler {
                out.push(obj.diag_warning(
                    &format!("spec.tracing[{i}].providers[{j}].name"),
                    format!("provider {:?} has a Dynatrace sampler: meshd does not configure it; spans are sampled by randomSamplingPercentage", p.name),
                ));
            }
        }
        if tr
            .random_sampling_percentage
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            out.push(obj.diag_error(
                &format!("spec.tracing[{i}].randomSamplingPercentage"),
                "a percentage between 0 and 100",
            ));
        }
        for (name, tag) in &tr.custom_tags {
            let kinds = [
                tag.literal.is_some(),
                tag.environment.is_some(),
                tag.header.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if kinds != 1 {
                out.push(obj.diag_error(
                    &format!("spec.tracing[{i}].customTags.{name}"),
                    "a custom tag is exactly one of literal, environment, header",
                ));
            }
        }
    }
    for (i, a) in t.access_logging.iter().enumerate() {
        for (j, p) in a.providers.iter().enumerate() {
            if mesh.access_log_provider(&p.name).is_none() {
                out.push(
                    obj.diag_warning(
                        &format!("spec.accessLogging[{i}].providers[{j}].name"),
                        format!("no access log provider {:?} in mesh config; it is ignored", p.name),
                    )
                    .hint("define it under meshConfig.extensionProviders (envoyFileAccessLog), or use the built-in `envoy`"),
                );
            }
        }
    }
    out
}

/// Every per-object check for one object (what the validation webhook runs).
pub fn object(obj: &Object, mesh: &super::mesh::MeshConfig) -> Vec<Diagnostic> {
    use super::object::Spec;
    match &obj.spec {
        Spec::VirtualService(s) => virtual_service(obj, s),
        Spec::DestinationRule(s) => destination_rule(obj, s),
        Spec::Gateway(s) => gateway(obj, s),
        Spec::ServiceEntry(s) => service_entry(obj, s),
        Spec::AuthorizationPolicy(s) => authorization_policy(obj, s, mesh),
        Spec::RequestAuthentication(s) => request_authentication(obj, s),
        Spec::EnvoyFilter(s) => envoy_filter(obj, s),
        Spec::Telemetry(s) => telemetry(obj, s, mesh),
        Spec::RateLimitPolicy(s) => super::ratelimit::validate(obj, s, mesh),
        _ => Vec::new(),
    }
}

/// DestinationRule rules from istio's `ValidateDestinationRule`.
pub fn destination_rule(obj: &Object, dr: &istio::DestinationRule) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if dr.host.is_empty() {
        out.push(
            obj.diag_error("spec.host", "a DestinationRule needs a host")
                .hint("name the service, e.g. `host: reviews`"),
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        if s.name.is_empty() {
            out.push(obj.diag_error(&format!("spec.subsets[{i}].name"), "a subset needs a name"));
        } else if !names.insert(s.name.as_str()) {
            out.push(obj.diag_error(
                &format!("spec.subsets[{i}].name"),
                format!("subset {:?} is defined twice", s.name),
            ));
        }
    }
    let mut policies = vec![("spec.trafficPolicy".to_string(), dr.traffic_policy.as_ref())];
    for (i, s) in dr.subsets.iter().enumerate() {
        policies.push((
            format!("spec.subsets[{i}].trafficPolicy"),
            s.traffic_policy.as_ref(),
        ));
    }
    for (path, tp) in policies {
        let Some(tp) = tp else { continue };
        for (field, set) in [("tunnel", tp.tunnel.is_some())] {
            if set {
                not_yet(obj, &format!("{path}.{field}"), field, &mut out);
            }
        }
        if let Some(lb) = &tp.load_balancer {
            for (field, set) in [
                (
                    "localityLbSetting.failoverPriority",
                    lb.locality_lb_setting
                        .as_ref()
                        .is_some_and(|l| !l.failover_priority.is_empty()),
                ),
                ("zoneAwareLbSetting", lb.zone_aware_lb_setting.is_some()),
                ("backendUtilization", lb.backend_utilization.is_some()),
            ] {
                if set {
                    not_yet(
                        obj,
                        &format!("{path}.loadBalancer.{field}"),
                        field,
                        &mut out,
                    );
                }
            }
        }
        if let Some(t) = &tp.tls
            && t.mode == istio::ClientTlsMode::MUTUAL
            && t.credential_name.is_empty()
            && (t.client_certificate.is_empty() || t.private_key.is_empty())
        {
            out.push(
                obj.diag_error(
                    &format!("{path}.tls"),
                    "MUTUAL needs clientCertificate and privateKey, or credentialName",
                )
                .hint("credentialName names a Secret with tls.crt, tls.key and ca.crt in the client's namespace"),
            );
        }
        if let Some(lb) = &tp.load_balancer
            && lb.simple.is_some()
            && lb.consistent_hash.is_some()
        {
            out.push(obj.diag_error(
                &format!("{path}.loadBalancer"),
                "simple and consistentHash are mutually exclusive",
            ));
        }
        if let Some(od) = &tp.outlier_detection
            && let Some(p) = od.max_ejection_percent
            && !(0..=100).contains(&p)
        {
            out.push(obj.diag_error(
                &format!("{path}.outlierDetection.maxEjectionPercent"),
                format!("{p} is not a percentage"),
            ));
        }
    }
    out
}

/// Gateway rules from istio's `ValidateGateway`.
pub fn gateway(obj: &Object, gw: &istio::Gateway) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if gw.servers.is_empty() {
        out.push(obj.diag_error("spec.servers", "a Gateway needs at least one server"));
    }
    for (i, s) in gw.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        let proto = s.port.protocol.to_ascii_uppercase();
        let tls_proto = matches!(proto.as_str(), "HTTPS" | "TLS");
        if !matches!(
            proto.as_str(),
            "HTTP"
                | "HTTP2"
                | "GRPC"
                | "GRPC-WEB"
                | "HTTPS"
                | "TLS"
                | "TCP"
                | "MONGO"
                | "REDIS"
                | "MYSQL"
                | ""
        ) {
            not_yet(obj, &p, &format!("a {proto} gateway server"), &mut out);
        }
        match &s.tls {
            None if tls_proto => out.push(
                obj.diag_error(
                    &format!("{p}.tls"),
                    format!("a server with protocol {proto} needs TLS settings"),
                )
                .hint("add `tls: {mode: SIMPLE, credentialName: NAME}` (or PASSTHROUGH)"),
            ),
            None => {}
            Some(t) => gateway_tls(obj, &format!("{p}.tls"), t, tls_proto, &mut out),
        }
        if s.port.number == 0 || s.port.number > 65535 {
            out.push(obj.diag_error(
                &format!("{p}.port.number"),
                "server port is missing or out of range",
            ));
        }
        if !s.bind.is_empty() && s.bind.parse::<std::net::IpAddr>().is_err() {
            match s.bind.strip_prefix("unix://") {
                Some(path) if path.starts_with('/') || path.starts_with('@') => {}
                _ => out.push(
                    obj.diag_error(
                        &format!("{p}.bind"),
                        format!("bind {:?} is neither an IP address nor a Unix domain socket", s.bind),
                    )
                    .hint("an IP of the gateway's pod, or unix:///absolute/path (unix://@name for an abstract socket)"),
                ),
            }
        }
        if s.port.protocol.is_empty() {
            out.push(
                obj.diag_error(
                    &format!("{p}.port.protocol"),
                    "server port needs a protocol",
                )
                .hint("HTTP, HTTPS, GRPC, HTTP2, TCP or TLS"),
            );
        }
        if s.hosts.is_empty() {
            out.push(
                obj.diag_error(&format!("{p}.hosts"), "a server needs at least one host")
                    .hint("use \"*\" for any host"),
            );
        }
    }
    out
}

/// A Gateway server's `tls`, with istiod's rules for each mode.
fn gateway_tls(
    obj: &Object,
    p: &str,
    t: &istio::ServerTlsSettings,
    tls_proto: bool,
    out: &mut Vec<Diagnostic>,
) {
    use istio::ServerTlsMode as M;
    if !tls_proto {
        // Only httpsRedirect means anything on a plain-text server.
        let only_redirect = t.mode == M::PASSTHROUGH
            && t.credential_name.is_empty()
            && t.server_certificate.is_empty();
        if !only_redirect {
            out.push(
                obj.diag_error(p, "a plain-text server cannot have TLS settings")
                    .hint("use protocol HTTPS (or TLS) for a server that terminates TLS"),
            );
        }
        return;
    }
    let has_creds = !t.credential_name.is_empty() || !t.credential_names.is_empty();
    if !t.credential_name.is_empty() && !t.credential_names.is_empty() {
        out.push(obj.diag_error(
            &format!("{p}.credentialNames"),
            "set credentialName or credentialNames, not both",
        ));
    }
    if t.credential_names.len() > 2 {
        out.push(obj.diag_error(
            &format!("{p}.credentialNames"),
            "at most two credentials (one RSA, one ECDSA)",
        ));
    }
    let files = !t.server_certificate.is_empty() || !t.tls_certificates.is_empty();
    match t.mode {
        M::SIMPLE | M::MUTUAL | M::OPTIONAL_MUTUAL => {
            if !has_creds && t.tls_certificates.is_empty() {
                if t.server_certificate.is_empty() {
                    out.push(
                        obj.diag_error(
                            &format!("{p}.serverCertificate"),
                            format!("{:?} TLS needs a server certificate", t.mode),
                        )
                        .hint("set credentialName to a Secret with tls.crt and tls.key in the gateway's namespace"),
                    );
                }
                if t.private_key.is_empty() {
                    out.push(obj.diag_error(
                        &format!("{p}.privateKey"),
                        format!("{:?} TLS needs a private key", t.mode),
                    ));
                }
                if t.mode != M::SIMPLE && t.ca_certificates.is_empty() {
                    out.push(obj.diag_error(
                        &format!("{p}.caCertificates"),
                        format!("{:?} TLS needs caCertificates to verify clients", t.mode),
                    ));
                }
            }
        }
        M::ISTIO_MUTUAL => {
            if has_creds || files || !t.ca_certificates.is_empty() {
                out.push(
                    obj.diag_error(
                        p,
                        "ISTIO_MUTUAL uses the gateway's mesh certificate; it cannot have credentials",
                    )
                    .hint("remove credentialName, serverCertificate, privateKey and caCertificates"),
                );
            }
        }
        M::PASSTHROUGH | M::AUTO_PASSTHROUGH => {}
    }
}

/// ServiceEntry rules from istio's `ValidateServiceEntry`.
pub fn service_entry(obj: &Object, se: &istio::ServiceEntry) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if se.hosts.is_empty() {
        out.push(obj.diag_error("spec.hosts", "a ServiceEntry needs at least one host"));
    }
    for (i, p) in se.ports.iter().enumerate() {
        if p.number == 0 || p.number > 65535 {
            out.push(obj.diag_error(
                &format!("spec.ports[{i}].number"),
                "port is missing or out of range",
            ));
        }
    }
    for (i, a) in se.addresses.iter().enumerate() {
        let (ip, len) = match a.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (a.as_str(), None),
        };
        let max = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => 32,
            Ok(std::net::IpAddr::V6(_)) => 128,
            Err(_) => {
                out.push(
                    obj.diag_error(
                        &format!("spec.addresses[{i}]"),
                        format!("{a:?} is not an IP address or CIDR range"),
                    )
                    .hint(
                        "addresses are IPs (10.0.0.5) or ranges (10.0.0.0/16); names go in hosts",
                    ),
                );
                continue;
            }
        };
        if let Some(len) = len
            && len.parse::<u32>().map_or(true, |l| l > max)
        {
            out.push(obj.diag_error(
                &format!("spec.addresses[{i}]"),
                format!("{a:?} has an invalid prefix length (0 to {max})"),
            ));
        }
    }
    let dns = matches!(
        se.resolution,
        istio::Resolution::DNS | istio::Resolution::DNS_ROUND_ROBIN
    );
    for (i, h) in se.hosts.iter().enumerate() {
        if dns && h.starts_with('*') && se.endpoints.is_empty() {
            out.push(
                obj.diag_error(
                    &format!("spec.hosts[{i}]"),
                    format!("wildcard host {h} cannot be resolved with DNS"),
                )
                .hint("use resolution: NONE for wildcard hosts"),
            );
        }
    }
    if se.resolution == istio::Resolution::STATIC
        && se.endpoints.is_empty()
        && se.workload_selector.is_none()
    {
        out.push(obj.diag_warning(
            "spec.endpoints",
            "resolution STATIC without endpoints or workloadSelector: the service has no endpoints",
        ));
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        if e.address.is_empty() {
            out.push(obj.diag_error(
                &format!("spec.endpoints[{i}].address"),
                "endpoint needs an address",
            ));
        }
    }
    out
}

/// AuthorizationPolicy rules from istio's `ValidateAuthorizationPolicy`.
pub fn authorization_policy(
    obj: &Object,
    p: &istio::AuthorizationPolicy,
    mesh: &super::mesh::MeshConfig,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if p.target_ref.is_some() || !p.target_refs.is_empty() {
        not_yet(
            obj,
            "spec.targetRef",
            "targetRef (Gateway API attachment)",
            &mut out,
        );
    }
    match (&p.action, &p.provider) {
        (istio::AuthorizationAction::CUSTOM, None) => out.push(
            obj.diag_error("spec.provider", "a CUSTOM policy needs a provider")
                .hint("name one of meshConfig.extensionProviders"),
        ),
        (istio::AuthorizationAction::CUSTOM, Some(pr))
            if !mesh.extension_providers.iter().any(|e| e.name == pr.name) =>
        {
            out.push(
                obj.diag_warning(
                    "spec.provider.name",
                    format!(
                        "extension provider {:?} is not in meshConfig.extensionProviders",
                        pr.name
                    ),
                )
                .hint("requests this policy selects are denied until the provider exists"),
            )
        }
        (a, Some(_)) if *a != istio::AuthorizationAction::CUSTOM => out.push(obj.diag_error(
            "spec.provider",
            "provider is only allowed with action CUSTOM",
        )),
        _ => {}
    }
    const KEYS: [&str; 10] = [
        "destination.ip",
        "destination.port",
        "connection.sni",
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
    ];
    for (i, r) in p.rules.iter().flatten().enumerate() {
        for (j, c) in r.when.iter().enumerate() {
            let k = c.key.as_str();
            let known = KEYS.contains(&k)
                || k.starts_with("request.headers[")
                || k.starts_with("request.auth.claims[")
                || k.starts_with("experimental.envoy.filters.");
            if !known {
                out.push(
                    obj.diag_error(
                        &format!("spec.rules[{i}].when[{j}].key"),
                        format!("unknown condition key {k:?}"),
                    )
                    .hint(
                        "see Istio's authorization conditions: source.ip, request.headers[NAME], …",
                    ),
                );
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                out.push(obj.diag_error(
                    &format!("spec.rules[{i}].when[{j}]"),
                    "a condition needs values or notValues",
                ));
            }
        }
        for (j, t) in r.to.iter().enumerate() {
            if let Some(o) = &t.operation {
                for port in o.ports.iter().chain(o.not_ports.iter()) {
                    if port.parse::<u16>().is_err() {
                        out.push(obj.diag_error(
                            &format!("spec.rules[{i}].to[{j}].operation.ports"),
                            format!("{port:?} is not a port number"),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// RequestAuthentication rules from istio's `ValidateRequestAuthentication`.
pub fn request_authentication(obj: &Object, r: &istio::RequestAuthentication) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if r.target_ref.is_some() || !r.target_refs.is_empty() {
        not_yet(
            obj,
            "spec.targetRef",
            "targetRef (Gateway API attachment)",
            &mut out,
        );
    }
    for (i, j) in r.jwt_rules.iter().enumerate() {
        let p = format!("spec.jwtRules[{i}]");
        if j.issuer.is_empty() {
            out.push(obj.diag_error(&format!("{p}.issuer"), "a JWT rule needs an issuer"));
        }
        let uri = if j.jwks_uri.is_empty() {
            &j.jwks_uri_snake
        } else {
            &j.jwks_uri
        };
        if !j.jwks.is_empty() && !uri.is_empty() {
            out.push(obj.diag_error(&p, "set jwks or jwksUri, not both"));
        }
        if j.jwks.is_empty() && uri.is_empty() {
            out.push(
                obj.diag_error(&p, "a JWT rule needs jwks or jwksUri")
                    .hint("istiod would discover the JWKS from the issuer; meshd needs it named"),
            );
        }
        if !(uri.is_empty() || uri.starts_with("http://") || uri.starts_with("https://")) {
            out.push(obj.diag_error(
                &format!("{p}.jwksUri"),
                format!("{uri:?} is not an http(s) URL"),
            ));
        }
        if !j.jwks.is_empty() && serde_json::from_str::<serde_json::Value>(&j.jwks).is_err() {
            out.push(obj.diag_error(&format!("{p}.jwks"), "jwks is not JSON"));
        }
        for (k, h) in j.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                out.push(obj.diag_error(
                    &format!("{p}.fromHeaders[{k}].name"),
                    "header name is empty",
                ));
            }
        }
    }
    out
}

/// Envoy's own validation rules (its protos' `validate.rules`) on a patch value: a MERGE
/// value is checked for the fields it sets, any other value as a whole element. Envoy
/// would reject the whole update that carried a value breaking one, so the EnvoyFilter
/// is refused here instead (its last good version stays in force).
fn envoy_rules(
    obj: &Object,
    path: &str,
    apply_to: super::istio::ApplyTo,
    op: super::istio::PatchOperation,
    value: &serde_json::Value,
) -> Vec<Diagnostic> {
    use crate::envoy::rules::{Scope, check_json};
    let Some(ty) = apply_to.envoy_type() else {
        return Vec::new();
    };
    let scope = match op {
        super::istio::PatchOperation::MERGE => Scope::Partial,
        _ => Scope::Whole,
    };
    check_json(ty, value, scope)
        .into_iter()
        .take(5)
        .map(|v| {
            obj.diag_error(
                &format!("{path}.patch.value"),
                format!(
                    "Envoy would reject this {:?} value: {} breaks its rule {}",
                    apply_to, v.field, v.rule
                ),
            )
            .hint(
                "Envoy checks these rules on every update and rejects the whole update on one \
                 broken rule; fix the value (the rule is in Envoy's API reference for the field)",
            )
        })
        .collect()
}

/// An EnvoyFilter patch value in Envoy's normal JSON form, or why it is not valid for
/// `apply_to` (checked against Envoy's own schema).
pub fn envoy_filter_value(
    apply_to: super::istio::ApplyTo,
    value: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let ty = apply_to
        .envoy_type()
        .ok_or("this applyTo has no value type")?;
    crate::envoy::pb::normalize_typed_json(ty, value)
}
