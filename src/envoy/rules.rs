//! Envoy's own validation rules — the protoc-gen-validate (`validate.rules`) annotations
//! in its protos, read from the descriptor pool — checked by meshd before a resource
//! leaves, so that what Envoy would reject is refused here, with the field and the rule
//! named, instead of being pushed and NACKed.
//!
//! Envoy validates every resource against these rules when it loads it (and every typed
//! config when its extension parses it); one violation rejects the whole update. Besides
//! the annotations, a `RegexMatcher` must compile (Envoy compiles it with RE2; meshd
//! checks it with the `regex` crate, which accepts the same syntax but for RE2-only
//! features such as `\C`).
//!
//! Not checked: the string formats `email`, `hostname`, `ip`, `uri` and `address`
//! (Envoy's protos use them on a handful of fields), `timestamp` rules, and rules Envoy
//! enforces in C++ rather than in annotations.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use prost_reflect::{
    DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MapKey, ReflectMessage, Value,
};

use super::pb::pool;

/// One rule a value breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where, in protobuf field names: `load_assignment.endpoints[0].priority`.
    pub field: String,
    /// What the rule says, as written in Envoy's protos: `duration.gt: 0s`.
    pub rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} breaks Envoy's rule ({})", self.field, self.rule)
    }
}

/// How much of a message is there to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A whole resource or element: every rule, required fields included.
    Whole,
    /// A value to be merged into another: only the fields it sets (a required field it
    /// leaves out comes from what it is merged into).
    Partial,
}

/// Nesting deeper than this is not followed (Envoy's own limit on JSON depth is lower).
const MAX_DEPTH: usize = 100;

/// Violations of the message `type_name` encoded as `bytes`; none when the type is not
/// in the pool or the bytes do not decode (other checks report those).
pub fn check_bytes(type_name: &str, bytes: &[u8], scope: Scope) -> Vec<Violation> {
    let Some(desc) = pool().get_message_by_name(type_name) else {
        return Vec::new();
    };
    match DynamicMessage::decode(desc, bytes) {
        Ok(msg) => check_message(&msg, scope),
        Err(_) => Vec::new(),
    }
}

/// Violations of `v`, given in Envoy's JSON form as the message `type_name`.
pub fn check_json(type_name: &str, v: &serde_json::Value, scope: Scope) -> Vec<Violation> {
    match super::pb::json_to_bytes(type_name, v) {
        Ok(bytes) => check_bytes(type_name, &bytes, scope),
        Err(_) => Vec::new(),
    }
}

/// Violations of a typed message (a whole resource).
pub fn check<M: prost::Message + prost::Name>(m: &M) -> Vec<Violation> {
    check_bytes(&M::full_name(), &m.encode_to_vec(), Scope::Whole)
}

/// Violations of a decoded message.
pub fn check_message(msg: &DynamicMessage, scope: Scope) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(ext) = extensions() {
        walk(ext, msg, "", scope, 0, &mut out);
    }
    out
}

/// The validate.proto extensions, when the pool has them.
struct Extensions {
    field: ExtensionDescriptor,
    oneof_required: Option<ExtensionDescriptor>,
    disabled: Option<ExtensionDescriptor>,
    ignored: Option<ExtensionDescriptor>,
}

fn extensions() -> Option<&'static Extensions> {
    static EXT: OnceLock<Option<Extensions>> = OnceLock::new();
    EXT.get_or_init(|| {
        let p = pool();
        Some(Extensions {
            field: p.get_extension_by_name("validate.rules")?,
            oneof_required: p.get_extension_by_name("validate.required"),
            disabled: p.get_extension_by_name("validate.disabled"),
            ignored: p.get_extension_by_name("validate.ignored"),
        })
    })
    .as_ref()
}

/// A field's `FieldRules`, read once per field.
fn rules_of(ext: &Extensions, field: &FieldDescriptor) -> Option<Arc<DynamicMessage>> {
    static CACHE: OnceLock<RwLock<HashMap<String, Option<Arc<DynamicMessage>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let name = field.full_name();
    if let Ok(c) = cache.read()
        && let Some(r) = c.get(name)
    {
        return r.clone();
    }
    let opts = field.options();
    let rules = match opts.has_extension(&ext.field) {
        true => match opts.get_extension(&ext.field).as_ref() {
            Value::Message(m) => Some(Arc::new(m.clone())),
            _ => None,
        },
        false => None,
    };
    if let Ok(mut c) = cache.write() {
        c.insert(name.to_string(), rules.clone());
    }
    rules
}

fn flag(opts: &DynamicMessage, ext: Option<&ExtensionDescriptor>) -> bool {
    ext.is_some_and(|e| {
        opts.has_extension(e) && matches!(opts.get_extension(e).as_ref(), Value::Bool(true))
    })
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn walk(
    ext: &Extensions,
    msg: &DynamicMessage,
    path: &str,
    scope: Scope,
    depth: usize,
    out: &mut Vec<Violation>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let desc = msg.descriptor();
    let opts = desc.options();
    if flag(&opts, ext.disabled.as_ref()) || flag(&opts, ext.ignored.as_ref()) {
        return;
    }
    match desc.full_name() {
        "google.protobuf.Any" => return any_payload(ext, msg, path, scope, depth, out),
        "envoy.type.matcher.v3.RegexMatcher" => regex_matcher(msg, path, out),
        _ => {}
    }
    if scope == Scope::Whole {
        for oneof in desc.oneofs().filter(|o| !o.is_synthetic()) {
            if flag(&oneof.options(), ext.oneof_required.as_ref())
                && !oneof.fields().any(|f| msg.has_field(&f))
            {
                let names: Vec<String> = oneof.fields().map(|f| f.name().to_string()).collect();
                out.push(Violation {
                    field: join(path, oneof.name()),
                    rule: format!("one of {} is required", names.join(", ")),
                });
            }
        }
    }
    for field in desc.fields() {
        let set = msg.has_field(&field);
        // A oneof member's rules (and a proto3 `optional` field's) hold only when it is
        // the one set; other fields' rules hold for their default value too.
        if !set && (scope == Scope::Partial || field.containing_oneof().is_some()) {
            continue;
        }
        let fpath = join(path, field.name());
        let value = msg.get_field(&field);
        let rules = rules_of(ext, &field);
        let mut skip = false;
        if let Some(r) = &rules {
            skip = field_rules(r, &field, &value, set, scope, &fpath, out);
        }
        if skip || !set {
            continue;
        }
        // A merge appends list items and replaces map entries: those are whole elements.
        match value.as_ref() {
            Value::Message(m) => walk(ext, m, &fpath, scope, depth + 1, out),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(m) = item {
                        let p = format!("{fpath}[{i}]");
                        walk(ext, m, &p, Scope::Whole, depth + 1, out);
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    if let Value::Message(m) = v {
                        let p = format!("{fpath}[{}]", key_text(k));
                        walk(ext, m, &p, Scope::Whole, depth + 1, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// An `Any`'s payload is checked as its own type (Envoy checks a typed config when the
/// extension named by its type parses it).
fn any_payload(
    ext: &Extensions,
    msg: &DynamicMessage,
    path: &str,
    scope: Scope,
    depth: usize,
    out: &mut Vec<Violation>,
) {
    let (Some(url), Some(value)) = (
        msg.get_field_by_name("type_url"),
        msg.get_field_by_name("value"),
    ) else {
        return;
    };
    let (Value::String(url), Value::Bytes(bytes)) = (url.as_ref(), value.as_ref()) else {
        return;
    };
    let name = url.rsplit('/').next().unwrap_or_default();
    let Some(desc) = pool().get_message_by_name(name) else {
        return;
    };
    if let Ok(inner) = DynamicMessage::decode(desc, bytes.as_ref()) {
        walk(ext, &inner, path, scope, depth + 1, out);
    }
}

fn regex_matcher(msg: &DynamicMessage, path: &str, out: &mut Vec<Violation>) {
    if let Some(v) = msg.get_field_by_name("regex")
        && let Value::String(re) = v.as_ref()
        && let Some(why) = re2_syntax_error(re)
    {
        out.push(Violation {
            field: join(path, "regex"),
            rule: format!("a valid RE2 regular expression ({why})"),
        });
    }
}

/// A syntax error RE2 raises as well, or None. The regex crate refuses more than RE2
/// does (`\Q…\E`, a `{` that starts no count, deep nesting, large Unicode classes), so
/// only errors of structure both share are reported: refusing what Envoy accepts would be
/// worse than letting Envoy refuse.
fn re2_syntax_error(re: &str) -> Option<&'static str> {
    use regex_syntax::ast::ErrorKind as K;
    let err = regex_syntax::ast::parse::Parser::new().parse(re).err()?;
    Some(match err.kind() {
        K::GroupUnclosed => "missing )",
        K::GroupUnopened => "unexpected )",
        K::ClassUnclosed => "missing ]",
        K::ClassRangeInvalid => "invalid character class range",
        K::EscapeUnexpectedEof => "trailing \\",
        K::RepetitionMissing => "missing argument to repetition operator",
        K::RepetitionCountInvalid => "bad repetition operator",
        _ => return None,
    })
}

fn key_text(k: &MapKey) -> String {
    match k {
        MapKey::String(s) => format!("{s:?}"),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

/// The set field of a rules message, by name, when it is set.
fn get<'a>(r: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, Value>> {
    let f = r.descriptor().get_field_by_name(name)?;
    r.has_field(&f).then(|| r.get_field(&f))
}

/// Applies a field's `FieldRules`; true when its message rules say to skip the field's
/// own message (`message.skip`).
fn field_rules(
    r: &DynamicMessage,
    field: &FieldDescriptor,
    value: &Value,
    set: bool,
    scope: Scope,
    path: &str,
    out: &mut Vec<Violation>,
) -> bool {
    let mut skip = false;
    if let Some(m) = get(r, "message")
        && let Value::Message(m) = m.as_ref()
    {
        if is_true(get(m, "required")) && !set {
            out.push(Violation {
                field: path.to_string(),
                rule: "message.required".into(),
            });
        }
        skip = is_true(get(m, "skip"));
    }
    // The `type` oneof: at most one kind of rules.
    for (f, v) in r.fields() {
        let Value::Message(kind) = v else { continue };
        let name = f.name();
        if name == "message" {
            continue;
        }
        typed_rules(name, kind, field, value, set, scope, path, out);
    }
    skip
}

fn is_true(v: Option<std::borrow::Cow<'_, Value>>) -> bool {
    matches!(v.as_deref(), Some(Value::Bool(true)))
}

/// A number as the rules compare it.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(v: &Value) -> Option<Num> {
        Some(match v {
            Value::I32(n) => Num::Int(i128::from(*n)),
            Value::I64(n) => Num::Int(i128::from(*n)),
            Value::U32(n) => Num::Int(i128::from(*n)),
            Value::U64(n) => Num::Int(i128::from(*n)),
            Value::EnumNumber(n) => Num::Int(i128::from(*n)),
            Value::F32(f) => Num::Float(f64::from(*f)),
            Value::F64(f) => Num::Float(*f),
            _ => return None,
        })
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(n) => n as f64,
            Num::Float(f) => f,
        }
    }

    fn cmp(self, other: Num) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }

    fn is_zero(self) -> bool {
        match self {
            Num::Int(n) => n == 0,
            Num::Float(f) => f == 0.0,
        }
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Int(n) => write!(f, "{n}"),
            Num::Float(x) => write!(f, "{x}"),
        }
    }
}

/// A Duration (or the value inside a wrapper type) as nanoseconds.
fn duration_nanos(m: &DynamicMessage) -> i128 {
    let part = |name: &str| {
        m.get_field_by_name(name)
            .and_then(|v| Num::of(&v))
            .map_or(0, |n| match n {
                Num::Int(i) => i,
                Num::Float(f) => f as i128,
            })
    };
    part("seconds") * 1_000_000_000 + part("nanos")
}

fn duration_text(nanos: i128) -> String {
    if nanos % 1_000_000_000 == 0 {
        format!("{}s", nanos / 1_000_000_000)
    } else {
        format!("{}s", nanos as f64 / 1e9)
    }
}

/// The scalar a field holds: itself, or a wrapper's `value` (`UInt32Value`, …).
fn scalar(value: &Value) -> Option<Value> {
    match value {
        Value::Message(m) => m.get_field_by_name("value").map(|v| v.into_owned()),
        other => Some(other.clone()),
    }
}

#[allow(clippy::too_many_arguments)]
fn typed_rules(
    kind_name: &str,
    r: &DynamicMessage,
    field: &FieldDescriptor,
    value: &Value,
    set: bool,
    scope: Scope,
    path: &str,
    out: &mut Vec<Violation>,
) {
    let mut fail = |rule: String| {
        out.push(Violation {
            field: path.to_string(),
            rule: format!("{kind_name}.{rule}"),
        })
    };
    let wrapper = matches!(field.kind(), Kind::Message(_)) && !field.is_list() && !field.is_map();
    match kind_name {
        "repeated" => {
            let Value::List(items) = value else { return };
            if is_true(get(r, "ignore_empty")) && items.is_empty() {
                return;
            }
            // A merge value's list is appended to what is there: its own length proves
            // nothing about a minimum.
            let min = (scope == Scope::Whole).then_some("min_items");
            count_rules(r, min, "max_items", items.len(), &mut fail);
            if is_true(get(r, "unique")) {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        fail("unique".into());
                        break;
                    }
                }
            }
            if let Some(item_rules) = get(r, "items")
                && let Value::Message(ir) = item_rules.as_ref()
            {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    for (f, v) in ir.fields() {
                        if let Value::Message(k) = v
                            && f.name() != "message"
                        {
                            typed_rules(f.name(), k, field, item, true, Scope::Whole, &p, out);
                        }
                    }
                }
            }
        }
        "map" => {
            let Value::Map(entries) = value else { return };
            if is_true(get(r, "ignore_empty")) && entries.is_empty() {
                return;
            }
            let min = (scope == Scope::Whole).then_some("min_pairs");
            count_rules(r, min, "max_pairs", entries.len(), &mut fail);
            let (Kind::Message(entry), Some(kr)) = (field.kind(), get(r, "keys")) else {
                return;
            };
            let Value::Message(kr) = kr.as_ref() else {
                return;
            };
            let kf = entry.map_entry_key_field();
            for k in entries.keys() {
                let kv = match k {
                    MapKey::String(s) => Value::String(s.clone()),
                    MapKey::Bool(b) => Value::Bool(*b),
                    MapKey::I32(n) => Value::I32(*n),
                    MapKey::I64(n) => Value::I64(*n),
                    MapKey::U32(n) => Value::U32(*n),
                    MapKey::U64(n) => Value::U64(*n),
                };
                let p = format!("{path}[{}]", key_text(k));
                for (f, v) in kr.fields() {
                    if let Value::Message(rk) = v {
                        typed_rules(f.name(), rk, &kf, &kv, true, Scope::Whole, &p, out);
                    }
                }
            }
        }
        "duration" => {
            let Value::Message(d) = value else { return };
            if !set {
                if is_true(get(r, "required")) {
                    fail("required".into());
                }
                return;
            }
            let n = duration_nanos(d);
            let bound = |name: &str| {
                get(r, name).and_then(|v| match v.as_ref() {
                    Value::Message(m) => Some(Num::Int(duration_nanos(m))),
                    _ => None,
                })
            };
            bounds(
                Num::Int(n),
                &bound,
                &|b: Num| match b {
                    Num::Int(i) => duration_text(i),
                    Num::Float(f) => f.to_string(),
                },
                &mut fail,
            );
            let listed = |name: &str| -> Option<Vec<i128>> {
                let v = get(r, name)?;
                let Value::List(items) = v.as_ref() else {
                    return None;
                };
                Some(
                    items
                        .iter()
                        .filter_map(|i| match i {
                            Value::Message(m) => Some(duration_nanos(m)),
                            _ => None,
                        })
                        .collect(),
                )
            };
            if let Some(allowed) = listed("in")
                && !allowed.is_empty()
                && !allowed.contains(&n)
            {
                fail("in".into());
            }
            if let Some(denied) = listed("not_in")
                && denied.contains(&n)
            {
                fail("not_in".into());
            }
        }
        "any" => {
            if !set {
                if is_true(get(r, "required")) {
                    fail("required".into());
                }
                return;
            }
            let Value::Message(m) = value else { return };
            let url = m
                .get_field_by_name("type_url")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if let Some(v) = get(r, "in")
                && let Value::List(allowed) = v.as_ref()
                && !allowed.is_empty()
                && !allowed.iter().any(|a| a.as_str() == Some(url.as_str()))
            {
                fail(format!(
                    "in: the type must be one of {}",
                    list_text(allowed)
                ));
            }
            if let Some(v) = get(r, "not_in")
                && let Value::List(denied) = v.as_ref()
                && denied.iter().any(|a| a.as_str() == Some(url.as_str()))
            {
                fail(format!("not_in: {}", list_text(denied)));
            }
        }
        "timestamp" | "message" => {}
        "string" => {
            let Some(Value::String(s)) = scalar(value) else {
                return;
            };
            if wrapper && !set {
                return;
            }
            string_rules(r, &s, &mut fail);
        }
        "bytes" => {
            let Some(Value::Bytes(b)) = scalar(value) else {
                return;
            };
            if (wrapper && !set) || (is_true(get(r, "ignore_empty")) && b.is_empty()) {
                return;
            }
            count_rules(r, Some("min_len"), "max_len", b.len(), &mut fail);
            if let Some(v) = get(r, "len")
                && let Some(Num::Int(n)) = Num::of(&v)
                && b.len() as i128 != n
            {
                fail(format!("len: {n}"));
            }
        }
        "enum" => {
            let Value::EnumNumber(n) = value else { return };
            if is_true(get(r, "defined_only"))
                && let Kind::Enum(e) = field.kind()
                && e.get_value(*n).is_none()
            {
                fail(format!("defined_only ({n} is not a value of {})", e.name()));
            }
            if let Some(c) = get(r, "const")
                && let Some(c) = Num::of(&c)
                && c != Num::Int(i128::from(*n))
            {
                fail(format!("const: {c}"));
            }
            in_rules(r, Num::Int(i128::from(*n)), &mut fail);
        }
        "bool" => {
            let Some(Value::Bool(b)) = scalar(value) else {
                return;
            };
            if let Some(c) = get(r, "const")
                && c.as_bool() != Some(b)
            {
                fail(format!("const: {}", !b));
            }
        }
        // Every numeric kind: float, double, (s|u)int(32|64), (s)fixed(32|64).
        _ => {
            if wrapper && !set {
                return;
            }
            let Some(n) = scalar(value).as_ref().and_then(Num::of) else {
                return;
            };
            if is_true(get(r, "ignore_empty")) && n.is_zero() {
                return;
            }
            let bound = |name: &str| get(r, name).and_then(|v| Num::of(&v));
            bounds(n, &bound, &|b: Num| b.to_string(), &mut fail);
            in_rules(r, n, &mut fail);
        }
    }
}

fn list_text(items: &[Value]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => Num::of(other).map(|n| n.to_string()).unwrap_or_default(),
        })
        .collect();
    parts.join(", ")
}

/// `const`, `gt`, `gte`, `lt`, `lte` (an upper bound below the lower one means "outside").
fn bounds(
    n: Num,
    bound: &dyn Fn(&str) -> Option<Num>,
    text: &dyn Fn(Num) -> String,
    fail: &mut dyn FnMut(String),
) {
    use std::cmp::Ordering::*;
    if let Some(c) = bound("const")
        && n.cmp(c) != Some(Equal)
    {
        fail(format!("const: {}", text(c)));
    }
    let lower = bound("gt")
        .map(|b| (b, "gt", matches!(n.cmp(b), Some(Greater))))
        .or_else(|| bound("gte").map(|b| (b, "gte", matches!(n.cmp(b), Some(Greater | Equal)))));
    let upper = bound("lt")
        .map(|b| (b, "lt", matches!(n.cmp(b), Some(Less))))
        .or_else(|| bound("lte").map(|b| (b, "lte", matches!(n.cmp(b), Some(Less | Equal)))));
    match (lower, upper) {
        (Some((lb, ln, lok)), Some((ub, un, uok))) if matches!(ub.cmp(lb), Some(Less)) => {
            // An exclusive range: outside [ub, lb].
            if !lok && !uok {
                fail(format!("{ln}: {} or {un}: {}", text(lb), text(ub)));
            }
        }
        (lower, upper) => {
            if let Some((b, name, false)) = lower {
                fail(format!("{name}: {}", text(b)));
            }
            if let Some((b, name, false)) = upper {
                fail(format!("{name}: {}", text(b)));
            }
        }
    }
}

fn in_rules(r: &DynamicMessage, n: Num, fail: &mut dyn FnMut(String)) {
    if let Some(v) = get(r, "in")
        && let Value::List(allowed) = v.as_ref()
        && !allowed.is_empty()
        && !allowed
            .iter()
            .any(|a| Num::of(a).is_some_and(|a| n.cmp(a) == Some(std::cmp::Ordering::Equal)))
    {
        fail(format!("in: [{}]", list_text(allowed)));
    }
    if let Some(v) = get(r, "not_in")
        && let Value::List(denied) = v.as_ref()
        && denied
            .iter()
            .any(|a| Num::of(a).is_some_and(|a| n.cmp(a) == Some(std::cmp::Ordering::Equal)))
    {
        fail(format!("not_in: [{}]", list_text(denied)));
    }
}

/// `min`/`max` count rules; `min` is None where a minimum cannot be judged yet.
fn count_rules(
    r: &DynamicMessage,
    min: Option<&str>,
    max: &str,
    n: usize,
    fail: &mut dyn FnMut(String),
) {
    if let Some(min) = min
        && let Some(v) = get(r, min)
        && let Some(Num::Int(m)) = Num::of(&v)
        && (n as i128) < m
    {
        fail(format!("{min}: {m}"));
    }
    if let Some(v) = get(r, max)
        && let Some(Num::Int(m)) = Num::of(&v)
        && (n as i128) > m
    {
        fail(format!("{max}: {m}"));
    }
}

fn string_rules(r: &DynamicMessage, s: &str, fail: &mut dyn FnMut(String)) {
    if is_true(get(r, "ignore_empty")) && s.is_empty() {
        return;
    }
    let chars = s.chars().count();
    count_rules(r, Some("min_len"), "max_len", chars, fail);
    count_rules(r, Some("min_bytes"), "max_bytes", s.len(), fail);
    if let Some(v) = get(r, "len")
        && let Some(Num::Int(n)) = Num::of(&v)
        && chars as i128 != n
    {
        fail(format!("len: {n}"));
    }
    if let Some(v) = get(r, "len_bytes")
        && let Some(Num::Int(n)) = Num::of(&v)
        && s.len() as i128 != n
    {
        fail(format!("len_bytes: {n}"));
    }
    let text = |name: &str| get(r, name).and_then(|v| v.as_str().map(str::to_string));
    if let Some(c) = text("const")
        && c != s
    {
        fail(format!("const: {c:?}"));
    }
    if let Some(p) = text("prefix")
        && !s.starts_with(&p)
    {
        fail(format!("prefix: {p:?}"));
    }
    if let Some(p) = text("suffix")
        && !s.ends_with(&p)
    {
        fail(format!("suffix: {p:?}"));
    }
    if let Some(p) = text("contains")
        && !s.contains(&p)
    {
        fail(format!("contains: {p:?}"));
    }
    if let Some(p) = text("not_contains")
        && s.contains(&p)
    {
        fail(format!("not_contains: {p:?}"));
    }
    if let Some(p) = text("pattern")
        && let Some(re) = compiled(&p)
        && !re.is_match(s)
    {
        fail(format!("pattern: {p:?}"));
    }
    if let Some(v) = get(r, "in")
        && let Value::List(allowed) = v.as_ref()
        && !allowed.is_empty()
        && !allowed.iter().any(|a| a.as_str() == Some(s))
    {
        fail(format!("in: [{}]", list_text(allowed)));
    }
    if let Some(v) = get(r, "not_in")
        && let Value::List(denied) = v.as_ref()
        && denied.iter().any(|a| a.as_str() == Some(s))
    {
        fail(format!("not_in: [{}]", list_text(denied)));
    }
    if let Some(v) = get(r, "well_known_regex")
        && let Value::EnumNumber(which) = v.as_ref()
    {
        // PGV's strict mode is the default.
        let strict = !matches!(get(r, "strict").as_deref(), Some(Value::Bool(false)));
        let ok = match (*which, strict) {
            // HTTP_HEADER_NAME (RFC 7230 token, `:` pseudo-headers allowed).
            (1, true) => {
                let body = s.strip_prefix(':').unwrap_or(s);
                !body.is_empty()
                    && body
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+,-.^_|~`".contains(&b))
            }
            // HTTP_HEADER_VALUE: no NUL, CR or LF (strict: visible characters, space, tab).
            (2, true) => s
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80),
            // Not strict, for names and values alike: `^[^\0\n\r]*$` (empty allowed;
            // a required name says so with min_len).
            (1 | 2, false) => !s.bytes().any(|b| matches!(b, 0 | b'\n' | b'\r')),
            _ => true,
        };
        if !ok {
            let name = match which {
                1 => "HTTP_HEADER_NAME",
                2 => "HTTP_HEADER_VALUE",
                _ => "UNKNOWN",
            };
            fail(format!("well_known_regex: {name}"));
        }
    }
}

/// Patterns from Envoy's protos, compiled once each.
fn compiled(p: &str) -> Option<regex::Regex> {
    static CACHE: OnceLock<RwLock<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Ok(c) = cache.read()
        && let Some(re) = c.get(p)
    {
        return re.clone();
    }
    let re = regex::Regex::new(p).ok();
    if let Ok(mut c) = cache.write() {
        c.insert(p.to_string(), re.clone());
    }
    re
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";

    fn rules(v: serde_json::Value, scope: Scope) -> Vec<String> {
        check_json(CLUSTER, &v, scope)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn negative_and_zero_durations_break_gt_zero() {
        let v = rules(
            json!({"name": "c", "connect_timeout": "-5s"}),
            Scope::Partial,
        );
        assert_eq!(v, ["connect_timeout breaks Envoy's rule (duration.gt: 0s)"]);
        assert!(
            rules(
                json!({"name": "c", "connect_timeout": "1s"}),
                Scope::Partial
            )
            .is_empty()
        );
    }

    #[test]
    fn a_whole_cluster_needs_its_name_a_merge_value_does_not() {
        let whole = rules(json!({"connect_timeout": "1s"}), Scope::Whole);
        assert!(whole.iter().any(|v| v.starts_with("name ")), "{whole:?}");
        assert!(rules(json!({"connect_timeout": "1s"}), Scope::Partial).is_empty());
    }

    #[test]
    fn numbers_enums_lists_and_nested_messages() {
        // Port above 65535, a priority above 128 and an empty endpoint list entry.
        let v = rules(
            json!({"name": "c", "load_assignment": {"cluster_name": "c", "endpoints": [
                {"priority": 200, "lb_endpoints": [{"endpoint": {"address": {"socket_address":
                    {"address": "1.2.3.4", "port_value": 70000}}}}]}]}}),
            Scope::Whole,
        );
        assert!(
            v.iter()
                .any(|s| s.contains("port_value breaks Envoy's rule (uint32.lte: 65535)")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|s| s.contains("endpoints[0].priority breaks Envoy's rule (uint32.lte: 128)")),
            "{v:?}"
        );
    }

    #[test]
    fn typed_configs_inside_any_are_checked_too() {
        let v = check_json(
            "envoy.config.listener.v3.Filter",
            &json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "cluster": "x"}}),
            Scope::Whole,
        );
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|s| s.contains("typed_config.stat_prefix")),
            "{text:?}"
        );
    }

    #[test]
    fn only_regex_errors_re2_shares_are_refused() {
        assert!(re2_syntax_error("(unclosed").is_some());
        assert!(re2_syntax_error("[a-").is_some());
        // RE2 reads these as literals or accepts them; the regex crate alone refuses.
        assert_eq!(re2_syntax_error("^/api/{id}$"), None);
        assert_eq!(re2_syntax_error(r"\Qa.b\E"), None);
        assert_eq!(re2_syntax_error(r"\w{500}"), None);
    }

    #[test]
    fn items_merged_into_a_list_are_whole_and_minimums_wait_for_the_merge() {
        // A cluster's health check appended by a MERGE must be whole (timeout required).
        let v = rules(
            json!({"health_checks": [{"interval": "1s"}]}),
            Scope::Partial,
        );
        assert!(
            v.iter().any(|s| s.starts_with("health_checks[0].timeout")),
            "{v:?}"
        );
    }

    #[test]
    fn unset_header_fields_outside_oneofs_pass() {
        let v = check_json(
            "envoy.config.route.v3.Route",
            &json!({"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 90}, {"name": "b", "weight": 10}]}}}),
            Scope::Whole,
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn bad_regexes_and_header_names() {
        let v = check_json(
            "envoy.config.route.v3.Route",
            &json!({"match": {"safe_regex": {"regex": "[unclosed"}},
                    "direct_response": {"status": 200},
                    "request_headers_to_add": [{"header": {"key": "a\nb", "value": "v"}}]}),
            Scope::Whole,
        );
        let text: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|s| s.starts_with("match.safe_regex.regex breaks")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|s| s.contains(
                "header.key breaks Envoy's rule (string.well_known_regex: HTTP_HEADER_NAME)"
            )),
            "{text:?}"
        );
    }
}
