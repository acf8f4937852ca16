//! The per-type subscription state of one ADS stream, and the pure function that decides
//! what a request means: ACK, NACK, a new subscription, or a stale message to ignore.
//! Kept free of I/O so that it can be table-tested (see the tests below).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use serde::Serialize;

use super::cache::Generated;
use super::names::{self, Names};
use crate::envoy::type_url;

/// A rejected response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    pub version: String,
    pub nonce: String,
    pub error: String,
}

/// Subscription and ACK state for one resource type on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WatchState {
    pub type_url: Cow<'static, str>,
    /// Subscribed to everything of this type (CDS/LDS with no names, or `*`).
    pub wildcard: bool,
    /// Explicitly subscribed names (shared with other streams that subscribed to the
    /// same; see [`super::names`]).
    pub names: Names,
    /// What the client has (or was last sent).
    #[serde(skip)]
    pub held: Held,
    /// Shared with the sync status the stream publishes (and, once ACKed, with the
    /// acked version and nonce): a copy of the status copies no string.
    pub sent_version: Option<Arc<str>>,
    pub sent_nonce: Option<Arc<str>>,
    pub acked_version: Option<Arc<str>>,
    pub acked_nonce: Option<Arc<str>>,
    /// Boxed: rare, and three strings wide in every watch and its summary.
    pub last_nack: Option<Box<Nack>>,
    pub requests: u64,
    pub acks: u64,
    pub nacks: u64,
}

/// What the client holds of one type, as far as meshd knows: the set last sent to it —
/// the very `Arc` the resource cache shares between the proxies of a class, so a stream
/// holds one pointer, not a name → version map per resource — and, until the first
/// response, what a reconnecting Delta client said it kept.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Sorted by name.
    set: Arc<Vec<Arc<Generated>>>,
    declared: BTreeMap<String, String>,
}

impl Held {
    /// The version the client has of `name`.
    pub fn version(&self, name: &str) -> Option<&str> {
        match self.set.binary_search_by(|r| r.name.as_str().cmp(name)) {
            Ok(i) => Some(self.set[i].version.as_str()),
            Err(_) => self.declared.get(name).map(String::as_str),
        }
    }

    /// What differs between what the client holds and `res` (sorted by name): the
    /// resources to send (new, changed, or named in `force`) and the names the client
    /// holds that `res` no longer has. One pass over both sorted sets; a resource shared
    /// with the set last sent is recognised by its pointer, without comparing versions.
    pub fn diff(
        &self,
        res: &[Arc<Generated>],
        force: Option<&BTreeSet<String>>,
    ) -> (Vec<Arc<Generated>>, Vec<String>) {
        let forced = |r: &Generated| force.is_some_and(|f| f.contains(&r.name));
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        if !self.declared.is_empty() {
            // A reconnecting Delta client's own list: looked up by name.
            for r in res {
                if forced(r) || self.version(&r.name) != Some(r.version.as_str()) {
                    changed.push(r.clone());
                }
            }
            let has = |n: &str| res.binary_search_by(|r| r.name.as_str().cmp(n)).is_ok();
            removed.extend(self.names().filter(|n| !has(n)).map(str::to_string));
            return (changed, removed);
        }
        let (held, mut i, mut j) = (&self.set[..], 0, 0);
        loop {
            match (held.get(i), res.get(j)) {
                (None, None) => break,
                (Some(h), None) => {
                    removed.push(h.name.clone());
                    i += 1;
                }
                (None, Some(r)) => {
                    changed.push(r.clone());
                    j += 1;
                }
                (Some(h), Some(r)) => match h.name.cmp(&r.name) {
                    std::cmp::Ordering::Less => {
                        removed.push(h.name.clone());
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        changed.push(r.clone());
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if (!Arc::ptr_eq(h, r) && h.version != r.version) || forced(r) {
                            changed.push(r.clone());
                        }
                        i += 1;
                        j += 1;
                    }
                },
            }
        }
        (changed, removed)
    }

    /// A version a Delta client declared (`initial_resource_versions`).
    pub fn declare(&mut self, name: String, version: String) {
        self.declared.insert(name, version);
    }

    /// Forgets what the client no longer has (unsubscribed names), so that a
    /// re-subscription sends them again.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.declared.retain(|k, _| keep(k));
        if !self.set.iter().all(|r| keep(&r.name)) {
            self.set = Arc::new(self.set.iter().filter(|r| keep(&r.name)).cloned().collect());
        }
    }

    /// The client now has exactly `set` (sorted by name).
    pub fn replace(&mut self, set: Arc<Vec<Arc<Generated>>>) {
        self.set = set;
        self.declared.clear();
    }

    /// Names the client has.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.set.iter().map(|r| r.name.as_str()).chain(
            self.declared.keys().map(String::as_str).filter(|n| {
                self.set
                    .binary_search_by(|r| r.name.as_str().cmp(n))
                    .is_err()
            }),
        )
    }

    pub fn len(&self) -> usize {
        self.names().count()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.declared.is_empty()
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.declared == other.declared
            && self.set.len() == other.set.len()
            && self
                .set
                .iter()
                .zip(other.set.iter())
                .all(|(a, b)| a.name == b.name && a.version == b.version)
    }
}

impl Eq for Held {}

/// What /debug/syncz shows of a watch: its state without the per-resource maps, which
/// can hold thousands of names per proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WatchSummary {
    pub wildcard: bool,
    /// Number of explicitly subscribed names.
    pub subscribed: usize,
    /// Number of resources the client holds (as far as meshd knows).
    pub resources: usize,
    pub sent_version: Option<Arc<str>>,
    pub sent_nonce: Option<Arc<str>>,
    pub acked_version: Option<Arc<str>>,
    pub acked_nonce: Option<Arc<str>>,
    pub last_nack: Option<Box<Nack>>,
    pub requests: u64,
    pub acks: u64,
    pub nacks: u64,
}

/// What the stream should do about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this type's resources (new or changed subscription).
    Respond,
    /// The client applied our last response.
    Ack,
    /// The client rejected our last response; do not resend the same version.
    Nack,
    /// A response to an older nonce: a newer response is on its way.
    Ignore,
}

/// CDS and LDS are wildcard types: no names means "everything".
pub fn is_wildcard_type(url: &str) -> bool {
    url == type_url::CLUSTER || url == type_url::LISTENER
}

impl WatchState {
    /// What generating this watch's resources reads — the type and the subscription —
    /// without what the client holds (a reconnecting Delta client's declared versions
    /// may be many), for a job on the CPU pool.
    pub fn job(&self) -> WatchState {
        WatchState {
            type_url: self.type_url.clone(),
            wildcard: self.wildcard,
            names: self.names.clone(),
            ..WatchState::default()
        }
    }

    pub fn new(type_url: &str) -> Self {
        WatchState {
            type_url: type_url::shared(type_url),
            ..Default::default()
        }
    }

    /// Does the subscription include `name`?
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Replaces a SotW subscription; true if it changed.
    fn set_sotw_names(&mut self, names: &[String]) -> bool {
        let wildcard = (names.is_empty() && is_wildcard_type(&self.type_url))
            || names.iter().any(|n| n == "*");
        let set: BTreeSet<String> = names.iter().filter(|n| *n != "*").cloned().collect();
        let changed = wildcard != self.wildcard || set != *self.names;
        self.wildcard = wildcard;
        // Forget versions of resources no longer subscribed, so that a re-subscription
        // gets them again.
        if !wildcard {
            self.held.retain(|k| set.contains(k));
        }
        if changed {
            self.names = names::intern(Arc::new(set));
        }
        changed
    }

    fn record_nack(&mut self, nonce: &str, message: &str) {
        self.nacks += 1;
        self.last_nack = Some(Box::new(Nack {
            version: self.sent_version.as_deref().unwrap_or_default().to_string(),
            nonce: nonce.to_string(),
            error: message.to_string(),
        }));
    }

    /// (`nonce` is the one last sent: only that one is ACKed.)
    fn record_ack(&mut self, version: &str, nonce: &str) {
        self.acks += 1;
        self.acked_version = match &self.sent_version {
            Some(v) if &**v == version => Some(v.clone()),
            _ => Some(version.into()),
        };
        self.acked_nonce = match &self.sent_nonce {
            Some(n) if &**n == nonce => Some(n.clone()),
            _ => Some(nonce.into()),
        };
    }

    /// State-of-the-World request handling.
    pub fn on_sotw_request(&mut self, req: &DiscoveryRequest) -> Action {
        self.requests += 1;
        let nonce = req.response_nonce.as_str();
        if nonce.is_empty() || self.sent_nonce.is_none() {
            // First request on this stream. A non-empty nonce here comes from before a
            // reconnect (another meshd): answer it like a fresh subscription.
            self.set_sotw_names(&req.resource_names);
            return Action::Respond;
        }
        if Some(nonce) != self.sent_nonce.as_deref() {
            return Action::Ignore;
        }
        if let Some(err) = &req.error_detail {
            self.record_nack(nonce, &err.message);
            // A NACK may carry a new subscription (names still change); answer that, but
            // never with the same rejected content (the caller compares versions).
            return if self.set_sotw_names(&req.resource_names) {
                Action::Respond
            } else {
                Action::Nack
            };
        }
        self.record_ack(&req.version_info, nonce);
        if self.set_sotw_names(&req.resource_names) {
            Action::Respond
        } else {
            Action::Ack
        }
    }

    /// Incremental (Delta) request handling.
    pub fn on_delta_request(&mut self, req: &DeltaDiscoveryRequest) -> Action {
        self.requests += 1;
        let nonce = req.response_nonce.as_str();
        let initial = nonce.is_empty() && self.sent_nonce.is_none() && self.requests == 1;
        let mut changed = false;
        if initial {
            if req.resource_names_subscribe.is_empty() && is_wildcard_type(&self.type_url) {
                self.wildcard = true;
            }
            // What the client kept from an earlier stream: only send what differs.
            for (name, version) in &req.initial_resource_versions {
                self.held.declare(name.clone(), version.clone());
            }
            changed = true;
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                changed |= !self.wildcard;
                self.wildcard = true;
            } else {
                if !self.names.contains(name) {
                    Arc::make_mut(&mut self.names).insert(name.clone());
                    changed = true;
                }
            }
        }
        let mut dropped: BTreeSet<&str> = BTreeSet::new();
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                changed |= self.wildcard;
                self.wildcard = false;
            } else {
                if self.names.contains(name) {
                    Arc::make_mut(&mut self.names).remove(name);
                    changed = true;
                }
                dropped.insert(name);
            }
        }
        if !dropped.is_empty() {
            self.held.retain(|k| !dropped.contains(k));
        }
        // Interned when the request reshaped the set (Envoy subscribes a cluster's worth
        // of names at once); a client adding names one request at a time keeps its own
        // copy rather than rehashing the whole set on every request.
        let touched = req.resource_names_subscribe.len() + req.resource_names_unsubscribe.len();
        if changed && touched * 8 >= self.names.len() {
            self.names = names::intern(std::mem::take(&mut self.names));
        }
        if nonce.is_empty() {
            return if changed || initial {
                Action::Respond
            } else {
                Action::Ignore
            };
        }
        if Some(nonce) != self.sent_nonce.as_deref() {
            // Subscription changes count even on a stale nonce.
            return if changed {
                Action::Respond
            } else {
                Action::Ignore
            };
        }
        if let Some(err) = &req.error_detail {
            self.record_nack(nonce, &err.message);
            return if changed {
                Action::Respond
            } else {
                Action::Nack
            };
        }
        let version = self.sent_version.clone().unwrap_or_else(|| "".into());
        self.record_ack(&version, nonce);
        if changed {
            Action::Respond
        } else {
            Action::Ack
        }
    }

    pub fn summary(&self) -> WatchSummary {
        WatchSummary {
            wildcard: self.wildcard,
            subscribed: self.names.len(),
            resources: self.held.len(),
            sent_version: self.sent_version.clone(),
            sent_nonce: self.sent_nonce.clone(),
            acked_version: self.acked_version.clone(),
            acked_nonce: self.acked_nonce.clone(),
            last_nack: self.last_nack.clone(),
            requests: self.requests,
            acks: self.acks,
            nacks: self.nacks,
        }
    }

    /// Records a response just sent.
    pub fn sent(&mut self, version: &str, nonce: &str) {
        self.sent_version = Some(version.into());
        self.sent_nonce = Some(nonce.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status;

    fn sotw(names: &[&str], version: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url::CLUSTER.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            error_detail: error.map(|e| Status {
                code: 3,
                message: e.into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sotw_table() {
        // (request, expected action, then: what was sent before the next request)
        let mut st = WatchState::new(type_url::CLUSTER);
        assert_eq!(
            st.on_sotw_request(&sotw(&[], "", "", None)),
            Action::Respond
        );
        assert!(st.wildcard, "CDS without names is a wildcard subscription");
        st.sent("v1", "n1");
        // ACK.
        assert_eq!(
            st.on_sotw_request(&sotw(&[], "v1", "n1", None)),
            Action::Ack
        );
        assert_eq!(st.acked_version.as_deref(), Some("v1"));
        st.sent("v2", "n2");
        // Stale nonce: ignored, ACK state untouched.
        assert_eq!(
            st.on_sotw_request(&sotw(&[], "v1", "n1", None)),
            Action::Ignore
        );
        assert_eq!(st.acked_version.as_deref(), Some("v1"));
        // NACK of v2: recorded with the rejected version, no response.
        assert_eq!(
            st.on_sotw_request(&sotw(&[], "v1", "n2", Some("bad cluster"))),
            Action::Nack
        );
        let nack = st.last_nack.clone().expect("nack recorded");
        assert_eq!(
            (nack.version.as_str(), nack.error.as_str()),
            ("v2", "bad cluster")
        );
        assert_eq!(
            st.acked_version.as_deref(),
            Some("v1"),
            "a NACK is not an ACK"
        );
        assert_eq!(st.nacks, 1);
    }

    #[test]
    fn sotw_names_change_in_ack_is_a_new_subscription() {
        let mut st = WatchState::new(type_url::ENDPOINT);
        let mut req = sotw(&["a", "b"], "", "", None);
        req.type_url = type_url::ENDPOINT.into();
        assert_eq!(st.on_sotw_request(&req), Action::Respond);
        assert!(!st.wildcard, "EDS is never wildcard");
        st.sent("v1", "n1");
        req.version_info = "v1".into();
        req.response_nonce = "n1".into();
        assert_eq!(st.on_sotw_request(&req), Action::Ack);
        req.resource_names = vec!["a".into(), "c".into()];
        assert_eq!(st.on_sotw_request(&req), Action::Respond);
        assert_eq!(
            st.names.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "c"]
        );
    }

    #[test]
    fn sotw_reconnect_with_old_nonce_gets_a_response() {
        let mut st = WatchState::new(type_url::LISTENER);
        assert_eq!(
            st.on_sotw_request(&sotw(&[], "old-version", "nonce-from-another-meshd", None)),
            Action::Respond
        );
    }

    fn delta(
        sub: &[&str],
        unsub: &[&str],
        nonce: &str,
        error: Option<&str>,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url::ROUTE.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            error_detail: error.map(|e| Status {
                code: 3,
                message: e.into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn delta_table() {
        let mut st = WatchState::new(type_url::ROUTE);
        let mut first = delta(&["9080"], &[], "", None);
        first.initial_resource_versions = [("9080".to_string(), "v0".to_string())].into();
        assert_eq!(st.on_delta_request(&first), Action::Respond);
        assert!(!st.wildcard);
        assert_eq!(st.held.version("9080"), Some("v0"));
        st.sent("v1", "n1");
        assert_eq!(
            st.on_delta_request(&delta(&[], &[], "n1", None)),
            Action::Ack
        );
        // Subscribe while ACKing: respond for the new name.
        assert_eq!(
            st.on_delta_request(&delta(&["8080"], &[], "n1", None)),
            Action::Respond
        );
        st.sent("v2", "n2");
        // A stale nonce with a subscription change still changes the subscription.
        assert_eq!(
            st.on_delta_request(&delta(&[], &["9080"], "n1", None)),
            Action::Respond
        );
        assert!(!st.names.contains("9080"));
        assert_eq!(
            st.on_delta_request(&delta(&[], &[], "n1", None)),
            Action::Ignore
        );
        // NACK.
        assert_eq!(
            st.on_delta_request(&delta(&[], &[], "n2", Some("route refused"))),
            Action::Nack
        );
        assert_eq!(
            st.last_nack.as_ref().map(|n| n.version.as_str()),
            Some("v2")
        );
    }

    fn res_of(name: &str, version: &str) -> Arc<Generated> {
        Arc::new(Generated {
            name: name.into(),
            version: version.into(),
            any: Default::default(),
        })
    }

    #[test]
    fn held_diff_finds_new_changed_forced_and_removed() {
        let c = res_of("c", "v1");
        let mut held = Held::default();
        held.replace(Arc::new(vec![
            res_of("a", "v1"),
            res_of("b", "v1"),
            c.clone(),
        ]));
        // b's content changed; c is the same resource; d is new; a went away.
        let res = vec![res_of("b", "v2"), c.clone(), res_of("d", "v1")];
        let names = |v: &[Arc<Generated>]| v.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        let (changed, removed) = held.diff(&res, None);
        assert_eq!(names(&changed), ["b", "d"]);
        assert_eq!(removed, ["a"]);
        // An equal version in another allocation is unchanged too.
        let (changed, _) = held.diff(&[res_of("c", "v1")], None);
        assert!(changed.is_empty());
        let force: BTreeSet<String> = ["c".to_string()].into();
        let (changed, _) = held.diff(&res, Some(&force));
        assert_eq!(names(&changed), ["b", "c", "d"]);
        // What a reconnecting client declared counts until the first response.
        let mut declared = Held::default();
        declared.declare("b".into(), "v2".into());
        declared.declare("x".into(), "v9".into());
        let (changed, removed) = declared.diff(&res, None);
        assert_eq!(names(&changed), ["c", "d"]);
        assert_eq!(removed, ["x"]);
    }

    #[test]
    fn delta_wildcard_rules() {
        let mut st = WatchState::new(type_url::CLUSTER);
        let mut req = delta(&[], &[], "", None);
        req.type_url = type_url::CLUSTER.into();
        assert_eq!(st.on_delta_request(&req), Action::Respond);
        assert!(st.wildcard, "first CDS request without names is wildcard");
        st.sent("v1", "n1");
        let mut unsub = delta(&[], &["*"], "n1", None);
        unsub.type_url = type_url::CLUSTER.into();
        assert_eq!(st.on_delta_request(&unsub), Action::Respond);
        assert!(!st.wildcard);
    }
}
