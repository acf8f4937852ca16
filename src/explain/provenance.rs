//! Which Istio objects produced each step of a walk, and, when a call matched nothing,
//! the nearest miss and why ("host header `reviews.prod` matches no virtual host …;
//! VirtualService prod/reviews is not exported to namespace default").

use envoy_types::pb::envoy::config::route::v3 as rt;

use super::Outcome;
use super::call::{Call, Mode, Tls};
use super::envoy::{Failure, Walk};
use crate::envoy::{naming, pb};
use crate::model::host;
use crate::model::istio::MtlsMode;
use crate::model::object::Spec;
use crate::model::proxy::{Proxy, ProxyKind};
use crate::model::snapshot::{Snapshot, VirtualServiceConfig};
use crate::translate::{ProxyContext, Resources};

/// Fills `out.steps` and `out.objects` from the walk.
pub fn describe(ctx: &ProxyContext, res: &Resources, call: &Call, walk: &Walk, out: &mut Outcome) {
    let mut d = Describer {
        snap: ctx.snap,
        proxy: ctx.proxy,
        ctx,
        call,
        out,
    };
    d.proxy_step();
    d.listener_step(res, walk);
    if walk.listener.is_none() {
        return;
    }
    d.gateway_step(walk);
    d.chain_step(walk);
    if walk.filter_chain.is_none() {
        return;
    }
    d.inbound_policy_step();
    d.http_steps(walk);
    d.authorization_step(walk);
    d.cluster_step(walk);
}

struct Describer<'a> {
    snap: &'a Snapshot,
    proxy: &'a Proxy,
    ctx: &'a ProxyContext<'a>,
    call: &'a Call,
    out: &'a mut Outcome,
}

impl Describer<'_> {
    fn step(&mut self, s: String) {
        self.out.steps.push(s);
    }

    fn object(&mut self, o: String) {
        if !self.out.objects.contains(&o) {
            self.out.objects.push(o);
        }
    }

    fn proxy_step(&mut self) {
        let kind = match self.proxy.kind {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Router => "gateway",
        };
        let c = self.call;
        let what = match (c.tls, c.protocol) {
            (Tls::Plaintext, p) => format!("{p:?}").to_lowercase(),
            (t, p) => format!(
                "{} over {}",
                format!("{p:?}").to_lowercase(),
                format!("{t:?}").to_lowercase()
            ),
        };
        self.step(format!(
            "{kind} {}.{}: {what} call to {}:{}{}{} ({:?})",
            self.proxy.pod,
            self.proxy.namespace,
            c.address,
            c.port,
            if c.host.is_empty() {
                String::new()
            } else {
                format!(" host {}", c.host)
            },
            if c.is_http() && c.tls == Tls::Plaintext {
                format!(" path {}", c.path)
            } else {
                String::new()
            },
            c.mode,
        ));
        if let Some(sc) = &self.ctx.scope.sidecar {
            let key = sc.key.to_string();
            self.step(format!("{key} shapes what this proxy sees"));
            self.object(key);
        }
    }

    fn listener_step(&mut self, res: &Resources, walk: &Walk) {
        let Some(l) = walk.listener else {
            let mut ports: Vec<String> = res
                .listeners
                .iter()
                .filter_map(|l| l.name.rsplit_once('_').map(|(_, p)| p.to_string()))
                .collect();
            ports.sort();
            ports.dedup();
            let hint = match self.call.mode {
                Mode::Gateway => format!(
                    "; the gateway listens on {} (a Gateway server must name port {})",
                    if ports.is_empty() {
                        "no port".into()
                    } else {
                        ports.join(", ")
                    },
                    self.call.port
                ),
                _ => String::new(),
            };
            self.step(format!(
                "no listener for {}:{}{hint}",
                self.call.address, self.call.port
            ));
            return;
        };
        let how = match self.call.mode {
            Mode::Inbound => "inbound capture (15006)".to_string(),
            Mode::Outbound if l.name == "virtualOutbound" => {
                "outbound capture (15001): no listener for the original destination".to_string()
            }
            Mode::Outbound => {
                "outbound capture (15001), handed over by original destination".into()
            }
            Mode::Gateway => "bound to the port".into(),
        };
        self.step(format!("listener {} ({how})", l.name));
    }

    /// For a gateway: the Gateway servers on the listener's port that select this proxy
    /// (an HTTPS route configuration names its one server).
    fn gateway_step(&mut self, walk: &Walk) {
        if self.proxy.kind != ProxyKind::Router {
            return;
        }
        let Some(port) = walk
            .listener
            .and_then(|l| l.name.rsplit_once('_'))
            .and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            return;
        };
        let named = walk
            .route_config_name
            .as_deref()
            .filter(|n| n.starts_with("https."));
        let mut found = Vec::new();
        for gw in &self.snap.gateways {
            if !gw.selects(&self.proxy.namespace, self.ctx.labels) {
                continue;
            }
            // A generated Gateway is named after what it comes from.
            let name = match gw
                .object
                .annotations
                .get(crate::model::gateway_api::convert::GENERATED_FROM)
            {
                Some(from) => format!(
                    "{from} listener {} (converted to {})",
                    gw.key.name.rsplit('~').next().unwrap_or_default(),
                    gw.key
                ),
                None => gw.key.to_string(),
            };
            for (i, srv) in gw.spec.servers.iter().enumerate() {
                if srv.port.number != port && srv.port.target_port != Some(port) {
                    continue;
                }
                if let Some(n) = named
                    && !n.ends_with(&format!(".{}.{}", gw.key.name, gw.key.namespace))
                {
                    continue;
                }
                let tls = srv
                    .tls
                    .as_ref()
                    .map(|t| format!(", tls {:?}", t.mode))
                    .unwrap_or_default();
                found.push((
                    gw.key.to_string(),
                    format!(
                        "{name} server[{i}] ({} {}, hosts {}{tls})",
                        srv.port.protocol,
                        srv.port.number,
                        srv.hosts.join(", ")
                    ),
                ));
            }
        }
        if found.is_empty() {
            self.step(format!(
                "no Gateway selecting this proxy has a server on port {port}"
            ));
        }
        for (key, text) in found {
            self.step(text);
            self.object(key);
        }
    }

    fn chain_step(&mut self, walk: &Walk) {
        let c = self.call;
        let Some(fc) = walk.filter_chain else {
            match walk.failure {
                Some(Failure::MultipleFilterChains) => self.step(
                    "several filter chains match equally: Envoy would refuse this listener".into(),
                ),
                _ => {
                    let why = if c.mode == Mode::Inbound {
                        let (mode, src) = self.snap.mtls_mode_source(
                            &self.proxy.namespace,
                            self.ctx.labels,
                            c.port,
                        );
                        let src = src.map(|k| k.to_string());
                        if let Some(k) = &src {
                            self.object(k.clone());
                        }
                        match (mode, c.tls) {
                            (MtlsMode::STRICT, t) if t != Tls::Mtls => format!(
                                "PeerAuthentication mode STRICT{} accepts only mTLS on port {}",
                                src.map(|k| format!(" ({k})")).unwrap_or_default(),
                                c.port
                            ),
                            _ => format!(
                                "no chain of the inbound listener takes {:?} on port {}",
                                c.tls, c.port
                            ),
                        }
                    } else {
                        format!(
                            "no filter chain takes {:?} {:?} to {}:{} (sni {:?}, alpn {:?})",
                            c.tls, c.protocol, c.address, c.port, c.sni, c.alpn
                        )
                    };
                    self.step(why);
                }
            }
            return;
        };
        let mut s = if fc.name.is_empty() {
            "filter chain (unnamed)".to_string()
        } else {
            format!("filter chain {}", fc.name)
        };
        if walk.default_chain {
            s.push_str(" (the listener's default chain: no other chain matched)");
        }
        if let Some(tls) = &walk.downstream_tls {
            let mtls = tls
                .require_client_certificate
                .as_ref()
                .is_some_and(|b| b.value);
            s.push_str(if mtls {
                ", terminates mTLS"
            } else {
                ", terminates TLS"
            });
        }
        self.step(s);
        match walk.failure {
            Some(Failure::TlsError) => {
                self.step("the chain expects TLS and the client sent plaintext".into())
            }
            Some(Failure::MtlsError) => self.step(format!(
                "the chain {} a client certificate; the client {} one",
                if c.tls == Tls::Mtls {
                    "does not ask for"
                } else {
                    "requires"
                },
                if c.tls == Tls::Mtls {
                    "sends"
                } else {
                    "has no"
                }
            )),
            Some(Failure::ProtocolError) => self.step(if c.tls != Tls::Plaintext {
                "the chain reads HTTP, the client sends TLS the chain does not terminate".into()
            } else {
                "the chain reads HTTP, the client sends raw TCP".into()
            }),
            _ => {}
        }
    }

    fn inbound_policy_step(&mut self) {
        if self.call.mode != Mode::Inbound || self.proxy.kind != ProxyKind::Sidecar {
            return;
        }
        let (mode, src) =
            self.snap
                .mtls_mode_source(&self.proxy.namespace, self.ctx.labels, self.call.port);
        match src {
            Some(k) => {
                let k = k.to_string();
                self.step(format!("{k}: mode {mode:?} on port {}", self.call.port));
                self.object(k);
            }
            None => self.step(format!(
                "no PeerAuthentication: mode {mode:?} (the default) on port {}",
                self.call.port
            )),
        }
        let policies = self
            .snap
            .authorization_policies_for(&self.proxy.namespace, self.ctx.labels);
        for p in policies {
            let action = match &p.spec {
                Spec::AuthorizationPolicy(a) => format!("{:?}", a.action),
                _ => continue,
            };
            let k = p.key.to_string();
            // Whether it lets this call through is the authorization step's answer.
            self.step(format!("{k} ({action}) applies to this workload"));
            self.object(k);
        }
    }

    /// What the chain's RBAC filters decide for the call.
    fn authorization_step(&mut self, walk: &Walk) {
        use super::rbac::Verdict;
        let Some(fc) = walk.filter_chain else {
            return;
        };
        if walk.failure.is_some() {
            return;
        }
        let http = walk.route_config.is_some();
        let (verdict, why) = match super::rbac::evaluate(fc, self.call, http) {
            Verdict::Unchecked => return,
            Verdict::Allowed(by) if by.is_empty() => {
                ("allowed", "no DENY rule matches".to_string())
            }
            Verdict::Allowed(by) => ("allowed", format!("allowed by {}", by.join(", "))),
            Verdict::Denied(why) => ("denied", why),
            Verdict::Depends(why) => ("depends", why),
        };
        self.step(match verdict {
            "denied" => format!(
                "authorization: DENIED ({why}): Envoy {}",
                if http {
                    "answers 403"
                } else {
                    "closes the connection"
                }
            ),
            _ => format!("authorization: {why}"),
        });
        self.out.authorization = Some((verdict.to_string(), why));
    }

    fn http_steps(&mut self, walk: &Walk) {
        let Some(rc) = &walk.route_config else {
            if walk.missing_route_config {
                self.step(format!(
                    "route configuration {:?} is named but was not generated",
                    walk.route_config_name.as_deref().unwrap_or_default()
                ));
            }
            return;
        };
        let rc = rc.get();
        let rc_name = walk
            .route_config_name
            .clone()
            .unwrap_or_else(|| format!("{} (inline)", rc.name));
        let Some(vh) = &walk.virtual_host else {
            let domains: Vec<&str> = rc
                .virtual_hosts
                .iter()
                .flat_map(|v| v.domains.iter().map(String::as_str))
                .take(6)
                .collect();
            self.step(format!(
                "host header `{}` matches no virtual host on route config {rc_name} ({} virtual hosts{})",
                self.call.host,
                rc.virtual_hosts.len(),
                if domains.is_empty() { String::new() } else { format!(", domains {} …", domains.join(", ")) }
            ));
            self.virtual_service_misses();
            return;
        };
        self.step(format!("route config {rc_name}, virtual host {}", vh.name));
        if matches!(vh.name.as_str(), "allow_any" | "block_all") {
            self.step(format!(
                "host `{}` is no service's: the catch-all of outboundTrafficPolicy {}",
                self.call.host,
                if vh.name == "allow_any" {
                    "ALLOW_ANY"
                } else {
                    "REGISTRY_ONLY"
                }
            ));
            self.virtual_service_misses();
        }
        if let Some((h, _)) = vh.name.rsplit_once(':')
            && let Some(svc) = self.snap.services.get(h)
        {
            self.object(svc.source.to_string());
        }
        if walk.failure == Some(Failure::TlsRedirect) {
            self.step("the virtual host requires TLS: Envoy answers 301 to https".into());
            return;
        }
        let Some(route) = &walk.route else {
            let matches: Vec<String> = vh
                .routes
                .iter()
                .take(5)
                .map(|r| describe_match(r.r#match.as_ref()))
                .collect();
            self.step(format!(
                "no route of {} matches path {} (routes: {})",
                vh.name,
                self.call.path,
                matches.join("; ")
            ));
            return;
        };
        let idx = walk.route_index.unwrap_or(0);
        let matched = describe_match(route.r#match.as_ref());
        match self.route_origin(route, &vh.name) {
            Some((vs, rule)) => {
                let key = vs.key.to_string();
                let rule = rule.map(|i| format!(" http[{i}]")).unwrap_or_default();
                match self.gateway_api_source(vs, &route.name) {
                    // Made from a Gateway API route: name it, the VirtualService after.
                    Some(source) => {
                        self.step(format!(
                            "route #{idx} {:?} ({matched}) from {source} (converted to {key}{rule})",
                            route.name
                        ));
                        self.object(source.split(" rules[").next().unwrap_or(&source).to_string());
                    }
                    None => self.step(format!(
                        "route #{idx} {:?} ({matched}) from {key}{rule}",
                        route.name
                    )),
                }
                self.object(key);
            }
            None => self.step(format!(
                "route #{idx} {:?} ({matched}): the default route (no VirtualService rule for this host)",
                route.name
            )),
        }
        if let Some(a) = &walk.action {
            self.step(format!("the route {a}"));
        }
    }

    /// The Gateway API route a generated VirtualService's route comes from: `HTTPRoute
    /// ns/name rules[n]` when the route keeps its generated name (`ns.name.n`), else the
    /// routes the VirtualService was merged from.
    fn gateway_api_source(&self, vs: &VirtualServiceConfig, route: &str) -> Option<String> {
        use crate::model::gateway_api::convert::PARENTS;
        use crate::model::object::{Kind, ObjectKey};
        if !vs.object.is_generated() {
            return None;
        }
        let mut parts = route.rsplitn(2, '.');
        if let (Some(n), Some(rest)) = (parts.next(), parts.next())
            && n.parse::<usize>().is_ok()
            && let Some((ns, name)) = rest.split_once('.')
        {
            for kind in [Kind::HTTPRoute, Kind::GRPCRoute] {
                let key = ObjectKey {
                    kind,
                    namespace: ns.to_string(),
                    name: name.to_string(),
                };
                if self.snap.objects.contains_key(&key) {
                    return Some(format!("{key} rules[{n}]"));
                }
            }
        }
        vs.object.annotations.get(PARENTS).cloned()
    }

    /// The VirtualService (from the route's `istio.config` metadata) and which of its
    /// http rules made the route.
    fn route_origin(
        &self,
        route: &rt::Route,
        vhost: &str,
    ) -> Option<(&VirtualServiceConfig, Option<usize>)> {
        let meta = route.metadata.as_ref()?.filter_metadata.get("istio")?;
        let path = pb::struct_to_json(meta)
            .get("config")?
            .as_str()?
            .to_string();
        let (ns, name) = path
            .strip_prefix("/apis/networking.istio.io/v1/namespaces/")?
            .split_once("/virtual-service/")?;
        let vs = self
            .snap
            .virtual_services
            .iter()
            .find(|v| v.key.namespace == ns && v.key.name == name)?;
        let port = vhost
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(self.call.port);
        let gateways: Vec<Option<&str>> = match self.proxy.kind {
            ProxyKind::Sidecar => vec![None],
            ProxyKind::Router => vs.gateways.iter().map(|g| Some(g.as_str())).collect(),
        };
        let rule = vs.spec.http.iter().position(|r| {
            gateways.iter().any(|g| {
                crate::translate::route::http_rule_routes(self.ctx, vs, r, port, *g, false)
                    .iter()
                    .any(|x| x.name == route.name && x.r#match == route.r#match)
            })
        });
        Some((vs, rule))
    }

    /// VirtualServices for the call's host that did not make it into the proxy's routes.
    fn virtual_service_misses(&mut self) {
        let h = self
            .call
            .host
            .rsplit_once(':')
            .map_or(self.call.host.as_str(), |(h, p)| {
                if p.parse::<u16>().is_ok() {
                    h
                } else {
                    self.call.host.as_str()
                }
            });
        let domain = &self.snap.mesh.domain_suffix;
        let fqdn = match h.matches('.').count() {
            0 => host::resolve(h, &self.proxy.namespace, domain),
            // `name.namespace`, as Kubernetes DNS completes it.
            1 => format!("{h}.svc.{domain}"),
            _ => h.to_string(),
        };
        let mut notes = Vec::new();
        for vs in &self.snap.virtual_services {
            if !vs
                .hosts
                .iter()
                // A `*` VirtualService (a gateway's catch-all) says nothing here.
                .any(|p| p != "*" && (host::matches(p, &fqdn) || host::matches(p, h)))
            {
                continue;
            }
            let key = vs.key.to_string();
            let why = if !vs.visibility.visible_to(&self.proxy.namespace) {
                format!("is not exported to namespace {}", self.proxy.namespace)
            } else if self.proxy.kind == ProxyKind::Sidecar && !vs.applies_to_mesh() {
                format!(
                    "binds only to gateways {} (add `mesh` to apply it to sidecars)",
                    vs.gateways.join(", ")
                )
            } else if !self.ctx.scope.hosts.contains(&fqdn) && self.ctx.scope.sidecar.is_some() {
                "names a host this proxy's Sidecar does not import".to_string()
            } else {
                format!("has no HTTP route for port {}", self.call.port)
            };
            notes.push(format!("{key} {why}"));
        }
        if notes.is_empty() && !self.snap.services.contains_key(&fqdn) {
            let hint = match fqdn.strip_suffix(&format!(".svc.{domain}")) {
                Some(name_ns) => match name_ns.split_once('.') {
                    Some((name, ns)) => format!("no Service {name} in namespace {ns}"),
                    None => format!("no service is named {fqdn}"),
                },
                None => format!("no service or VirtualService is named {fqdn}"),
            };
            self.step(format!("{hint} (hint: check the host and its namespace)"));
        }
        for n in notes {
            self.step(n);
        }
    }

    fn cluster_step(&mut self, walk: &Walk) {
        let mut clusters: Vec<String> = walk.cluster.iter().cloned().collect();
        clusters.extend(walk.weighted.iter().map(|(c, _)| c.clone()));
        for c in clusters {
            self.describe_cluster(&c);
        }
    }

    fn describe_cluster(&mut self, name: &str) {
        let Some((dir, port, subset, h)) = naming::parse_cluster(name) else {
            let what = match name {
                "PassthroughCluster" => {
                    "to the original destination (outbound traffic policy ALLOW_ANY)"
                }
                "BlackHoleCluster" => "dropped (outbound traffic policy REGISTRY_ONLY)",
                "InboundPassthroughCluster"
                | "InboundPassthroughClusterIpv4"
                | "InboundPassthroughClusterIpv6" => {
                    "to the application on the port it was sent to"
                }
                _ => "",
            };
            if !what.is_empty() {
                self.step(format!("cluster {name}: {what}"));
            }
            return;
        };
        if dir == naming::Direction::Inbound {
            self.step(format!("cluster {name}: the application on port {port}"));
            return;
        }
        let Some(svc) = self.snap.services.get(h) else {
            self.step(format!("cluster {name}"));
            return;
        };
        let src = svc.source.to_string();
        let dr = self
            .snap
            .destination_rule(&self.proxy.namespace, self.ctx.labels, svc);
        let mut s = format!("cluster {name}: {src} port {port}");
        if let Some(dr) = dr {
            let k = dr.key.to_string();
            s.push_str(&format!(", {k}"));
            if !subset.is_empty() {
                s.push_str(&format!(" subset {subset}"));
            }
            self.object(k);
        } else if !subset.is_empty() {
            s.push_str(&format!(
                " subset {subset} (no DestinationRule defines it: no endpoints)"
            ));
        }
        self.step(s);
        self.object(src);
    }
}

fn describe_match(m: Option<&rt::RouteMatch>) -> String {
    use rt::route_match::PathSpecifier as P;
    let Some(m) = m else {
        return "no match".into();
    };
    let mut parts = vec![match &m.path_specifier {
        Some(P::Prefix(p)) => format!("prefix {p}"),
        Some(P::Path(p)) => format!("path {p}"),
        Some(P::SafeRegex(r)) => format!("regex {}", r.regex),
        Some(P::PathSeparatedPrefix(p)) => format!("path prefix {p}"),
        _ => "any".into(),
    }];
    for h in &m.headers {
        parts.push(format!(
            "header {}{}{}",
            if h.invert_match { "not " } else { "" },
            h.name,
            header_value(h)
        ));
    }
    for q in &m.query_parameters {
        parts.push(format!("query {}", q.name));
    }
    parts.join(", ")
}

/// ` = value`, ` ~ prefix*`, … of a header matcher, for the explanation.
#[allow(deprecated)]
fn header_value(h: &rt::HeaderMatcher) -> String {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as P;
    use rt::header_matcher::HeaderMatchSpecifier as S;
    match &h.header_match_specifier {
        Some(S::StringMatch(m)) => match &m.match_pattern {
            Some(P::Exact(v)) => format!(" = {v}"),
            Some(P::Prefix(v)) => format!(" starts with {v}"),
            Some(P::Suffix(v)) => format!(" ends with {v}"),
            Some(P::Contains(v)) => format!(" contains {v}"),
            Some(P::SafeRegex(r)) => format!(" matches /{}/", r.regex),
            _ => String::new(),
        },
        Some(S::ExactMatch(v)) => format!(" = {v}"),
        Some(S::PresentMatch(true)) => " present".into(),
        Some(S::PresentMatch(false)) => " absent".into(),
        _ => String::new(),
    }
}
