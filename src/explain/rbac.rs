//! Would the workload's AuthorizationPolicies allow the call? Evaluates the RBAC filters
//! Envoy has on the matched chain (network filters for TCP, HTTP filters inside the
//! connection manager) against what the call says, in Envoy's order: every DENY filter,
//! then the ALLOW filter. What a call cannot know — the caller's address, a JWT's claims,
//! the caller's identity unless given — makes a rule *maybe* match, and the answer says
//! which policy it depends on.

use envoy_types::pb::envoy::config::listener::v3 as ls;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use prost::Message;

use super::call::{Call, Tls};
use super::envoy;

const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
const HTTP_RBAC: &str = "envoy.filters.http.rbac";

/// Three-valued: a rule holds, does not, or depends on what the call cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    fn of(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }
    fn not(self) -> Tri {
        match self {
            Tri::Yes => Tri::No,
            Tri::No => Tri::Yes,
            Tri::Maybe => Tri::Maybe,
        }
    }
    fn all(it: impl Iterator<Item = Tri>) -> Tri {
        let mut out = Tri::Yes;
        for t in it {
            match t {
                Tri::No => return Tri::No,
                Tri::Maybe => out = Tri::Maybe,
                Tri::Yes => {}
            }
        }
        out
    }
    fn any(it: impl Iterator<Item = Tri>) -> Tri {
        let mut out = Tri::No;
        for t in it {
            match t {
                Tri::Yes => return Tri::Yes,
                Tri::Maybe => out = Tri::Maybe,
                Tri::No => {}
            }
        }
        out
    }
}

/// The verdict of the chain's authorization on the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No RBAC filter on the chain.
    Unchecked,
    Allowed(Vec<String>),
    Denied(String),
    /// Allowed or denied depending on what the call does not say.
    Depends(String),
}

fn path_only(call: &Call) -> &str {
    call.path.split(['?', '#']).next().unwrap_or("/")
}

fn in_cidr(r: &envoy_types::pb::envoy::config::core::v3::CidrRange, addr: &str) -> Tri {
    match addr.parse::<std::net::IpAddr>() {
        Ok(ip) => Tri::of(envoy::cidr_contains(r, ip)),
        Err(_) => Tri::Maybe,
    }
}

fn permission(p: &rbac::Permission, call: &Call) -> Tri {
    use rbac::permission::Rule as R;
    match &p.rule {
        Some(R::Any(b)) => Tri::of(*b),
        Some(R::AndRules(s)) => Tri::all(s.rules.iter().map(|r| permission(r, call))),
        Some(R::OrRules(s)) => Tri::any(s.rules.iter().map(|r| permission(r, call))),
        Some(R::NotRule(r)) => permission(r, call).not(),
        Some(R::Header(h)) => Tri::of(envoy::header_matches(h, call)),
        Some(R::UrlPath(m)) => match &m.rule {
            Some(envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule::Path(s)) => {
                Tri::of(envoy::string_matches(s, path_only(call)))
            }
            None => Tri::Maybe,
        },
        Some(R::DestinationPort(port)) => Tri::of(*port == u32::from(call.port)),
        Some(R::DestinationPortRange(r)) => {
            let p = i32::from(call.port);
            Tri::of(r.start <= p && p < r.end)
        }
        Some(R::DestinationIp(r)) => in_cidr(r, &call.address),
        Some(R::RequestedServerName(s)) => Tri::of(envoy::string_matches(s, &call.sni)),
        _ => Tri::Maybe,
    }
}

fn principal(p: &rbac::Principal, call: &Call) -> Tri {
    use rbac::principal::Identifier as I;
    match &p.identifier {
        Some(I::Any(b)) => Tri::of(*b),
        Some(I::AndIds(s)) => Tri::all(s.ids.iter().map(|r| principal(r, call))),
        Some(I::OrIds(s)) => Tri::any(s.ids.iter().map(|r| principal(r, call))),
        Some(I::NotId(r)) => principal(r, call).not(),
        Some(I::Authenticated(a)) => {
            if call.tls != Tls::Mtls {
                // No client certificate: no peer identity.
                return Tri::No;
            }
            match (&a.principal_name, &call.principal) {
                (None, _) => Tri::Yes,
                (Some(m), Some(id)) => Tri::of(envoy::string_matches(m, id)),
                (Some(_), None) => Tri::Maybe,
            }
        }
        Some(I::Header(h)) => Tri::of(envoy::header_matches(h, call)),
        Some(I::UrlPath(m)) => match &m.rule {
            Some(envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule::Path(s)) => {
                Tri::of(envoy::string_matches(s, path_only(call)))
            }
            None => Tri::Maybe,
        },
        // The caller's address, JWT claims, filter state: not part of a call.
        _ => Tri::Maybe,
    }
}

/// `ns[NS]-policy[NAME]-rule[N]` → `AuthorizationPolicy NS/NAME rule N`.
pub fn policy_label(name: &str) -> String {
    let field = |key: &str| {
        let start = name.find(&format!("{key}["))? + key.len() + 1;
        let end = name[start..].find(']')? + start;
        Some(&name[start..end])
    };
    match (field("ns"), field("policy"), field("rule")) {
        (Some(ns), Some(p), Some(r)) => format!("AuthorizationPolicy {ns}/{p} rule {r}"),
        _ => name.to_string(),
    }
}

/// The RBAC rule sets on a chain, in the order Envoy applies them.
fn rule_sets(fc: &ls::FilterChain, http: bool) -> Vec<rbac::Rbac> {
    let mut out = Vec::new();
    for f in &fc.filters {
        let Some(ls::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if f.name == NETWORK_RBAC {
            if let Some(r) = net_rbac::Rbac::decode(any.value.as_slice())
                .ok()
                .and_then(|r| r.rules)
            {
                out.push(r);
            }
        } else if f.name == envoy::HCM && http {
            let Ok(cm) = hcm::HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            for hf in cm.http_filters.iter().filter(|h| h.name == HTTP_RBAC) {
                if let Some(hcm::http_filter::ConfigType::TypedConfig(a)) = &hf.config_type
                    && let Some(r) = http_rbac::Rbac::decode(a.value.as_slice())
                        .ok()
                        .and_then(|r| r.rules)
                {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// Evaluates the chain's authorization for the call.
pub fn evaluate(fc: &ls::FilterChain, call: &Call, http: bool) -> Verdict {
    let sets = rule_sets(fc, http);
    if sets.is_empty() {
        return Verdict::Unchecked;
    }
    let mut allowed_by = Vec::new();
    // Envoy runs the filters in order; istiod puts DENY before ALLOW.
    for set in &sets {
        let mut names: Vec<&String> = set.policies.keys().collect();
        names.sort();
        let matches: Vec<(&String, Tri)> = names
            .iter()
            .map(|n| {
                let p = &set.policies[*n];
                let t = Tri::all(
                    [
                        Tri::any(p.permissions.iter().map(|x| permission(x, call))),
                        Tri::any(p.principals.iter().map(|x| principal(x, call))),
                    ]
                    .into_iter(),
                );
                (*n, t)
            })
            .collect();
        let hit = matches.iter().find(|(_, t)| *t == Tri::Yes);
        let maybe = matches.iter().find(|(_, t)| *t == Tri::Maybe);
        let deny = set.action == rbac::rbac::Action::Deny as i32;
        let allow = set.action == rbac::rbac::Action::Allow as i32;
        match (deny, allow, hit, maybe) {
            (true, _, Some((n, _)), _) => return Verdict::Denied(policy_label(n)),
            (true, _, None, Some((n, _))) => {
                return Verdict::Depends(format!(
                    "{} denies it if the caller matches (its identity or address)",
                    policy_label(n)
                ));
            }
            (_, true, Some((n, _)), _) => allowed_by.push(policy_label(n)),
            (_, true, None, Some((n, _))) => {
                return Verdict::Depends(format!(
                    "allowed only if the caller matches {}",
                    policy_label(n)
                ));
            }
            (_, true, None, None) => {
                return Verdict::Denied(if set.policies.is_empty() {
                    "an ALLOW policy with no rules (allow nothing)".into()
                } else {
                    "no ALLOW rule matches".into()
                });
            }
            _ => {}
        }
    }
    Verdict::Allowed(allowed_by)
}
