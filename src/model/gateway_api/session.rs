//! Session persistence of HTTPRoute and GRPCRoute rules (GEP-1619; istiod does not act on
//! it). The conversion records each generated route's setting in an annotation of the
//! generated VirtualService, a list parallel to its `http` routes; translation turns each
//! into Envoy's stateful session for that route.

use super::SessionPersistence;
use crate::model::diagnostic::Diagnostic;
use crate::model::istio::Duration;
use crate::model::object::{Object, Spec};

/// The annotation: a JSON list, one entry (or null) per `http` route.
pub const ANNOTATION: &str = "internal.meshd.io/session-persistence";
/// The cookie's name when the rule names none.
pub const DEFAULT_COOKIE: &str = "meshd-session";

/// Each rule of an HTTPRoute or GRPCRoute: its name and session persistence.
pub fn rules(route: &Object) -> Vec<(Option<&str>, Option<&SessionPersistence>)> {
    match &route.spec {
        Spec::HTTPRoute(s) => s
            .rules
            .iter()
            .map(|r| (r.name.as_deref(), r.session_persistence.as_ref()))
            .collect(),
        Spec::GRPCRoute(s) => s
            .rules
            .iter()
            .map(|r| (r.name.as_deref(), r.session_persistence.as_ref()))
            .collect(),
        _ => Vec::new(),
    }
}

/// The session persistence of rule `rule` (its name, else its index) of `route`.
pub fn of_rule<'a>(route: &'a Object, rule: &str) -> Option<&'a SessionPersistence> {
    let rules = rules(route);
    match rule.parse::<usize>() {
        Ok(i) => rules.get(i).and_then(|(_, sp)| *sp),
        Err(_) => rules
            .iter()
            .find(|(n, _)| *n == Some(rule))
            .and_then(|(_, sp)| *sp),
    }
}

/// The sessions of a generated VirtualService's `http` routes, from its annotation (empty
/// when it has none; a setting meshd cannot apply is None, and was warned about).
pub fn of_virtual_service(vs: &Object) -> Vec<Option<Session>> {
    vs.annotations
        .get(ANNOTATION)
        .and_then(|a| serde_json::from_str::<Vec<Option<SessionPersistence>>>(a).ok())
        .map(|list| {
            list.iter()
                .map(|sp| sp.as_ref().and_then(|sp| session(sp).ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// What Envoy is to do: a cookie (name, lifetime: None for a session cookie) or a header.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Session {
    Cookie {
        name: String,
        ttl: Option<std::time::Duration>,
    },
    Header {
        name: String,
    },
}

/// The session of a setting, or why it cannot be had.
pub fn session(sp: &SessionPersistence) -> Result<Session, String> {
    let timeout =
        |t: &Option<String>, field: &str| -> Result<Option<std::time::Duration>, String> {
            t.as_deref()
                .map(|v| {
                    Duration::parse(v)
                        .map(|d| d.as_std())
                        .map_err(|e| format!("{field}: {e}"))
                })
                .transpose()
        };
    let absolute = timeout(&sp.absolute_timeout, "absoluteTimeout")?;
    match sp.kind.as_deref().unwrap_or("Cookie") {
        "Cookie" => {
            let permanent = sp
                .cookie_config
                .as_ref()
                .and_then(|c| c.lifetime_type.as_deref())
                == Some("Permanent");
            if permanent && absolute.is_none() {
                return Err("a Permanent cookie needs absoluteTimeout".into());
            }
            Ok(Session::Cookie {
                name: sp
                    .session_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_COOKIE.to_string()),
                ttl: if permanent { absolute } else { None },
            })
        }
        "Header" => match &sp.session_name {
            Some(name) if !name.is_empty() => Ok(Session::Header { name: name.clone() }),
            _ => Err("a Header session needs sessionName, the header's name".into()),
        },
        other => Err(format!(
            "unknown session persistence type {other:?} (Cookie or Header)"
        )),
    }
}

/// Diagnostics for the session persistence of every rule of a route (what meshd cannot do
/// is said, the rest applied).
pub fn check(route: &Object, field: &str, sp: &SessionPersistence) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if let Err(e) = session(sp) {
        out.push(route.diag_warning(field, format!("session persistence not applied: {e}")));
    }
    if sp.idle_timeout.is_some() {
        out.push(route.diag_warning(
            &format!("{field}.idleTimeout"),
            "idleTimeout is not supported (Envoy's sessions have no idle expiry); absoluteTimeout applies",
        ));
    }
    out
}
