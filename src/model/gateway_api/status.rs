//! The status of Gateway API objects, as istiod writes it: conditions with the API's
//! types, reasons and messages, per listener and per route parent.
//! `meshd status` prints them; in Kubernetes mode the leader writes them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{ISTIO_CONTROLLER, ParentRef};
use crate::model::object::{Object, ObjectKey};

/// Each Gateway API object's `status`, by key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Statuses(pub BTreeMap<ObjectKey, Value>);

impl Statuses {
    pub fn set(&mut self, key: &ObjectKey, status: Value) {
        self.0.insert(key.clone(), status);
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.0.get(key)
    }
}

/// One condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub kind: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn ok(kind: &'static str, reason: &str, message: &str) -> Condition {
        Condition {
            kind,
            ok: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn fail(kind: &'static str, reason: &str, message: &str) -> Condition {
        Condition {
            kind,
            ok: false,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// The condition as the API writes it. `lastTransitionTime` is the object's creation
    /// time when known (meshd keeps no history of transitions), `observedGeneration` the
    /// object's generation (1 for files, which have none).
    pub fn json(&self, of: &Object) -> Value {
        // A "Conflicted" condition that holds is a problem; its absence is good news.
        let status = if self.kind == "Conflicted" {
            !self.ok
        } else {
            self.ok
        };
        json!({
            "type": self.kind,
            "status": if status { "True" } else { "False" },
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": of.generation.unwrap_or(1),
            "lastTransitionTime": of.created.clone().unwrap_or("1970-01-01T00:00:00Z".into()),
        })
    }
}

/// The status of one Gateway listener.
#[derive(Debug, Clone)]
pub struct ListenerStatus {
    pub name: String,
    pub accepted: Condition,
    pub resolved: Condition,
    pub programmed: bool,
    /// Route kinds the listener takes.
    pub kinds: Vec<&'static str>,
    /// Why it conflicts with an earlier listener on its port (ProtocolConflict,
    /// HostnameConflict): then it is neither accepted nor programmed.
    pub conflict: Option<&'static str>,
    /// It asks for client certificates without requiring valid ones
    /// (frontend validation AllowInsecureFallback).
    pub insecure_frontend: bool,
}

impl ListenerStatus {
    pub fn new(name: &str) -> ListenerStatus {
        ListenerStatus {
            name: name.into(),
            accepted: Condition::ok("Accepted", "Accepted", "No errors found"),
            resolved: Condition::ok("ResolvedRefs", "ResolvedRefs", "No errors found"),
            programmed: true,
            kinds: Vec::new(),
            conflict: None,
            insecure_frontend: false,
        }
    }

    pub fn conflicts(&mut self, reason: &'static str) {
        self.conflict = Some(reason);
        self.accepted = Condition::fail("Accepted", reason, CONFLICT);
        self.programmed = false;
    }

    pub fn fail_accepted(&mut self, reason: &str, message: &str) {
        self.accepted = Condition::fail("Accepted", reason, message);
        self.programmed = false;
    }

    pub fn fail_resolved(&mut self, reason: &str, message: &str) {
        self.resolved = Condition::fail("ResolvedRefs", reason, message);
    }

    pub fn json(&self, gw: &Object, attached: u32) -> Value {
        let programmed = match (self.programmed, self.conflict) {
            (true, _) => Condition::ok("Programmed", "Programmed", "No errors found"),
            (false, Some(reason)) => Condition::fail("Programmed", reason, CONFLICT),
            (false, None) => Condition::fail("Programmed", "Invalid", "Bad configuration"),
        };
        // `Conflicted` reads "False / NoConflicts" when all is well (see Condition::json).
        let conflicted = match self.conflict {
            Some(reason) => Condition::fail("Conflicted", reason, CONFLICT),
            None => Condition::ok("Conflicted", "NoConflicts", "No errors found"),
        };
        json!({
            "name": self.name,
            "attachedRoutes": attached,
            "supportedKinds": self.kinds.iter().map(|k| json!({"group": super::GROUP, "kind": k})).collect::<Vec<_>>(),
            "conditions": [
                self.accepted.json(gw),
                programmed.json(gw),
                conflicted.json(gw),
                self.resolved.json(gw),
            ],
        })
    }
}

const CONFLICT: &str =
    "the listener conflicts with an earlier listener of the Gateway on the same port";

/// A route's status for one of its parents.
#[derive(Debug, Clone)]
pub struct ParentStatus {
    pub parent: Value,
    pub controller: String,
    pub accepted: Option<Condition>,
    pub resolved: Option<Condition>,
}

impl ParentStatus {
    pub fn new(p: &ParentRef, _index: usize) -> ParentStatus {
        let mut parent = serde_json::Map::new();
        parent.insert("group".into(), json!(p.group()));
        parent.insert("kind".into(), json!(p.kind()));
        parent.insert("name".into(), json!(p.name));
        if let Some(ns) = &p.namespace {
            parent.insert("namespace".into(), json!(ns));
        }
        if let Some(s) = &p.section_name {
            parent.insert("sectionName".into(), json!(s));
        }
        if let Some(port) = p.port {
            parent.insert("port".into(), json!(port));
        }
        ParentStatus {
            parent: Value::Object(parent),
            controller: ISTIO_CONTROLLER.into(),
            accepted: None,
            resolved: None,
        }
    }

    pub fn json(&self, route: &Object) -> Value {
        let conditions: Vec<Value> = [&self.accepted, &self.resolved]
            .into_iter()
            .flatten()
            .map(|c| c.json(route))
            .collect();
        json!({
            "parentRef": self.parent,
            "controllerName": self.controller,
            "conditions": conditions,
        })
    }
}
