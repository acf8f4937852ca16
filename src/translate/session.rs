//! Session persistence (Gateway API rules' `sessionPersistence`) as Envoy's stateful
//! session filter: in every outbound and gateway HTTP manager while some route asks for
//! it (with no session of its own, so it does nothing elsewhere), and per route the cookie
//! or header that names the endpoint the session sticks to.

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::extensions::filters::http::stateful_session::v3::{
    StatefulSession, StatefulSessionPerRoute, stateful_session_per_route::Override,
};
use envoy_types::pb::envoy::extensions::http::stateful_session::cookie::v3::CookieBasedSessionState;
use envoy_types::pb::envoy::extensions::http::stateful_session::header::v3::HeaderBasedSessionState;
use envoy_types::pb::envoy::r#type::http::v3::Cookie;
use envoy_types::pb::google::protobuf::Any;

use crate::envoy::pb;
use crate::model::gateway_api::session::Session;
use crate::model::snapshot::VirtualServiceConfig;

pub const FILTER: &str = "envoy.filters.http.stateful_session";

/// The manager's filter: no session unless a route gives one.
pub fn manager_filter() -> StatefulSession {
    StatefulSession::default()
}

/// The per-route configuration of rule `index` of `vs`, when it has session persistence.
pub fn route_config(vs: &VirtualServiceConfig, index: usize) -> Option<Any> {
    let state = match vs.sessions.get(index)?.as_ref()? {
        Session::Cookie { name, ttl } => TypedExtensionConfig {
            name: "envoy.http.stateful_session.cookie".into(),
            typed_config: Some(pb::any(&CookieBasedSessionState {
                cookie: Some(Cookie {
                    name: name.clone(),
                    // Zero: a session cookie, gone when the browser closes.
                    ttl: Some(pb::duration(ttl.unwrap_or_default())),
                    path: "/".into(),
                    ..Default::default()
                }),
            })),
        },
        Session::Header { name } => TypedExtensionConfig {
            name: "envoy.http.stateful_session.header".into(),
            typed_config: Some(pb::any(&HeaderBasedSessionState { name: name.clone() })),
        },
    };
    Some(pb::any(&StatefulSessionPerRoute {
        r#override: Some(Override::StatefulSession(StatefulSession {
            session_state: Some(state),
            ..Default::default()
        })),
    }))
}
