//! Go `text/template`, as far as Istio's injection templates (and users' custom ones) use
//! it: text and actions with `{{-`/`-}}` trimming, comments, pipelines, variables
//! (declaration and assignment), `if`/`else if`/`else`, `range` (maps in key order),
//! `with`, `define`/`template`, `break`/`continue`, the builtins (`and`, `or` short-circuit
//! and return the deciding value, `not`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `len`, `index`,
//! `print`, `printf`, `println`), and any functions the caller registers (sprig and Istio's).
//!
//! Data is JSON underneath: Go structs (the Pod's metadata and spec, ProxyConfig, MeshConfig)
//! are JSON objects read by Go field name (`.Spec.Containers` → `spec.containers`); Go maps
//! (Helm values, labels, annotations) by key, where a missing key is "no value".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::Value;

/// A value during evaluation.
#[derive(Debug, Clone)]
pub enum TVal {
    /// Go's invalid reflect.Value / nil interface: a missing map key, `nil`.
    Nil,
    /// The zero value of a struct field that is absent in the JSON.
    Zero,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Rc<Vec<TVal>>),
    /// A Go map: keys in sorted order, missing key → Nil.
    Map(Rc<BTreeMap<String, TVal>>),
    /// JSON read with Go semantics: a struct (Go field names) or a map (keys).
    Json(JsonRef, Shape),
    /// Go-typed struct built by the caller: field name → value.
    Struct(Rc<BTreeMap<String, TVal>>),
}

/// How a JSON object is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A Kubernetes or protobuf Go struct: fields by Go name; absent fields are zero.
    Struct,
    /// map[string]string or map[string]any: keys as written; absent keys are no value;
    /// nested objects are maps too; numbers are float64 (`Values` from JSON).
    Map,
}

/// A JSON value inside a shared document: the document and the way down to it. Reading
/// `.Values.global.proxy` walks three keys instead of copying `Values`, then `global`,
/// then `proxy` (copying subtrees per field access was most of an injection's time). The
/// document is behind an `Arc` so the injector's settings can hand theirs over without a
/// copy per pod.
#[derive(Debug, Clone)]
pub struct JsonRef {
    root: Arc<Value>,
    path: Rc<[Seg]>,
}

#[derive(Debug, Clone)]
enum Seg {
    Key(Rc<str>),
    Index(usize),
}

impl JsonRef {
    pub fn new(root: Arc<Value>) -> JsonRef {
        JsonRef {
            root,
            path: Rc::from(Vec::new()),
        }
    }

    fn child(&self, seg: Seg) -> JsonRef {
        let mut path = Vec::with_capacity(self.path.len() + 1);
        path.extend(self.path.iter().cloned());
        path.push(seg);
        JsonRef {
            root: self.root.clone(),
            path: Rc::from(path),
        }
    }
}

impl std::ops::Deref for JsonRef {
    type Target = Value;

    fn deref(&self) -> &Value {
        let mut v = &*self.root;
        for seg in self.path.iter() {
            // Paths are only made from keys and indexes that were there; the document
            // never changes under them.
            v = match seg {
                Seg::Key(k) => &v[&**k],
                Seg::Index(i) => &v[*i],
            };
        }
        v
    }
}

/// JSON object keys that are Go maps inside Kubernetes structs.
const MAP_FIELDS: &[&str] = &[
    "annotations",
    "labels",
    "nodeSelector",
    "matchLabels",
    "proxyMetadata",
    "limits",
    "requests",
    "data",
    "binaryData",
    "proxyStatsMatcher",
];

impl TVal {
    pub fn str(s: impl Into<String>) -> TVal {
        TVal::Str(s.into())
    }

    /// JSON as Go struct data.
    pub fn structure(v: Value) -> TVal {
        TVal::Json(JsonRef::new(Arc::new(v)), Shape::Struct)
    }

    /// JSON as a Go map[string]any (numbers become float64, as Go's JSON decoding does).
    pub fn map(v: Value) -> TVal {
        TVal::shared_map(Arc::new(v))
    }

    /// [`TVal::map`] of a document the caller keeps (no copy).
    pub fn shared_map(v: Arc<Value>) -> TVal {
        TVal::Json(JsonRef::new(v), Shape::Map)
    }

    /// [`TVal::structure`] of a document the caller keeps (no copy).
    pub fn shared_structure(v: Arc<Value>) -> TVal {
        TVal::Json(JsonRef::new(v), Shape::Struct)
    }

    /// Key `key` of the object at `parent` (whose value is `v`), read with `shape`.
    pub(super) fn json_key(parent: &JsonRef, v: &Value, shape: Shape, key: &str) -> TVal {
        TVal::from_json(v, shape, key, || parent.child(Seg::Key(Rc::from(key))))
    }

    /// Item `i` of the array at `parent` (whose value is `v`), read with `shape`.
    fn json_item(parent: &JsonRef, v: &Value, shape: Shape, i: usize) -> TVal {
        TVal::from_json(v, shape, "", || parent.child(Seg::Index(i)))
    }

    fn from_json(v: &Value, shape: Shape, key: &str, at: impl FnOnce() -> JsonRef) -> TVal {
        match v {
            Value::Null => match shape {
                Shape::Struct => TVal::Zero,
                Shape::Map => TVal::Nil,
            },
            Value::Bool(b) => TVal::Bool(*b),
            Value::Number(n) => match shape {
                Shape::Map => TVal::Float(n.as_f64().unwrap_or(0.0)),
                Shape::Struct => match n.as_i64() {
                    Some(i) => TVal::Int(i),
                    None => TVal::Float(n.as_f64().unwrap_or(0.0)),
                },
            },
            Value::String(s) => TVal::Str(s.clone()),
            Value::Array(_) | Value::Object(_) => {
                let shape = if shape == Shape::Struct && MAP_FIELDS.contains(&key) {
                    Shape::Map
                } else {
                    shape
                };
                TVal::Json(at(), shape)
            }
        }
    }

    /// Go's truth: false, 0, nil, "", and empty collections are false; structs are true.
    pub fn truthy(&self) -> bool {
        match self {
            TVal::Nil | TVal::Zero => false,
            TVal::Bool(b) => *b,
            TVal::Int(i) => *i != 0,
            TVal::Float(f) => *f != 0.0,
            TVal::Str(s) => !s.is_empty(),
            TVal::List(l) => !l.is_empty(),
            TVal::Map(m) => !m.is_empty(),
            TVal::Struct(_) => true,
            TVal::Json(v, shape) => match &**v {
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => *shape == Shape::Struct || !o.is_empty(),
                _ => true,
            },
        }
    }

    /// sprig's `empty`: like not-truthy, but a struct with nothing in it is empty too.
    pub fn is_empty(&self) -> bool {
        match self {
            TVal::Json(v, _) => match &**v {
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            },
            TVal::Struct(_) => false,
            other => !other.truthy(),
        }
    }

    /// A list's items (a JSON array, a Go slice), or None.
    pub fn items(&self) -> Option<Vec<TVal>> {
        match self {
            TVal::List(l) => Some((**l).clone()),
            TVal::Json(v, shape) => match &**v {
                Value::Array(a) => Some(
                    a.iter()
                        .enumerate()
                        .map(|(i, x)| TVal::json_item(v, x, *shape, i))
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        }
    }

    /// A map's entries in key order, or None.
    pub fn entries(&self) -> Option<Vec<(String, TVal)>> {
        match self {
            TVal::Map(m) => Some(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            TVal::Json(v, shape) => match &**v {
                Value::Object(o) => Some(
                    o.iter()
                        .map(|(k, x)| (k.clone(), TVal::json_key(v, x, *shape, k)))
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        }
    }

    /// A map's value under `key` (a JSON object, a Go map), or None.
    pub fn key(&self, key: &str) -> Option<TVal> {
        match self {
            TVal::Map(m) => m.get(key).cloned(),
            TVal::Json(v, shape) => v
                .as_object()?
                .get(key)
                .map(|x| TVal::json_key(v, x, *shape, key)),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            TVal::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Converts to JSON (for toJson/toYaml and the caller).
    pub fn to_json(&self) -> Value {
        match self {
            TVal::Nil | TVal::Zero => Value::Null,
            TVal::Bool(b) => Value::Bool(*b),
            TVal::Int(i) => Value::from(*i),
            TVal::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            TVal::Str(s) => Value::String(s.clone()),
            TVal::List(l) => Value::Array(l.iter().map(TVal::to_json).collect()),
            TVal::Map(m) | TVal::Struct(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            TVal::Json(v, _) => (**v).clone(),
        }
    }

    /// Go's `fmt.Sprint` of the value.
    pub fn print(&self) -> String {
        match self {
            TVal::Nil => "<no value>".into(),
            TVal::Zero => String::new(),
            TVal::Bool(b) => b.to_string(),
            TVal::Int(i) => i.to_string(),
            TVal::Float(f) => crate::yaml_out::go_float(*f),
            TVal::Str(s) => s.clone(),
            TVal::List(_) | TVal::Json(..) if self.items().is_some() => {
                let items = self.items().unwrap_or_default();
                let parts: Vec<String> = items.iter().map(TVal::print_nested).collect();
                format!("[{}]", parts.join(" "))
            }
            TVal::Map(_) | TVal::Json(..) | TVal::List(_) => {
                let parts: Vec<String> = self
                    .entries()
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", v.print_nested()))
                    .collect();
                format!("map[{}]", parts.join(" "))
            }
            TVal::Struct(m) => {
                let parts: Vec<String> = m.values().map(TVal::print_nested).collect();
                format!("{{{}}}", parts.join(" "))
            }
        }
    }

    fn print_nested(&self) -> String {
        match self {
            TVal::Nil => "<nil>".into(),
            other => other.print(),
        }
    }

    /// Field or key `name` (Go name for structs).
    fn field(&self, name: &str) -> Result<TVal, String> {
        match self {
            TVal::Map(m) => Ok(m.get(name).cloned().unwrap_or(TVal::Nil)),
            TVal::Struct(m) => match m.get(name) {
                Some(v) => Ok(v.clone()),
                None => method(self, name),
            },
            TVal::Json(v, shape) => match (&**v, shape) {
                (Value::Object(o), Shape::Map) => Ok(o
                    .get(name)
                    .map(|x| TVal::json_key(v, x, Shape::Map, name))
                    .unwrap_or(TVal::Nil)),
                (Value::Object(o), Shape::Struct) => {
                    let key = json_name(name);
                    match o.get(&key) {
                        Some(x) => Ok(TVal::json_key(v, x, Shape::Struct, &key)),
                        None => method(self, name).or(Ok(TVal::Zero)),
                    }
                }
                _ => Err(format!("can't evaluate field {name} in a non-object")),
            },
            TVal::Nil | TVal::Zero => method(self, name).or(Ok(TVal::Nil)),
            _ => method(self, name),
        }
    }
}

/// Methods the templates call on protobuf values: `GetX` getters, `GetValue` on wrappers,
/// `String` on enums.
fn method(v: &TVal, name: &str) -> Result<TVal, String> {
    match name {
        "String" => Ok(TVal::Str(match v {
            TVal::Nil | TVal::Zero => String::new(),
            other => other.print(),
        })),
        "GetValue" => Ok(match v {
            TVal::Nil | TVal::Zero => TVal::Bool(false),
            other => other.clone(),
        }),
        _ if name.starts_with("Get") && name.len() > 3 => match v {
            TVal::Nil | TVal::Zero => Ok(TVal::Nil),
            other => other.field(&name[3..]),
        },
        _ => Err(format!("can't evaluate field {name}")),
    }
}

/// The JSON name of a Go field: lower-case first letter, and Kubernetes' acronyms.
fn json_name(go: &str) -> String {
    match go {
        "APIVersion" => "apiVersion".into(),
        "UID" => "uid".into(),
        "TTY" => "tty".into(),
        "DNSPolicy" => "dnsPolicy".into(),
        "DNSConfig" => "dnsConfig".into(),
        "IP" => "ip".into(),
        "IPs" => "ips".into(),
        "HostIPC" => "hostIPC".into(),
        "HostPID" => "hostPID".into(),
        _ => {
            let mut c = go.chars();
            match c.next() {
                Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipeline),
    If(Vec<(Pipeline, Vec<Node>)>, Option<Vec<Node>>),
    Range(Pipeline, Vec<Node>, Option<Vec<Node>>),
    With(Vec<(Pipeline, Vec<Node>)>, Option<Vec<Node>>),
    Template(String, Option<Pipeline>),
    Break,
    Continue,
}

#[derive(Debug, Clone, Default)]
struct Pipeline {
    decl: Vec<String>,
    assign: bool,
    cmds: Vec<Vec<Operand>>,
}

#[derive(Debug, Clone)]
enum Term {
    Dot,
    Var(String),
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    Paren(Box<Pipeline>),
}

#[derive(Debug, Clone)]
struct Operand {
    term: Term,
    fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Dot,
    /// A field name; `true` when it follows the previous token without a space
    /// (`$x.Name`, `(…).Name`, `.A.B`).
    Field(String, bool),
    Var(String),
    Ident(String),
    Str(String),
    Num(String),
    LParen,
    RParen,
    Pipe,
    Declare,
    Assign,
    Comma,
}

/// A parsed template set: the main body and its `define`d templates.
#[derive(Debug, Clone, Default)]
pub struct Template {
    main: Vec<Node>,
    defines: BTreeMap<String, Vec<Node>>,
}

/// One `{{ … }}` with the text before it.
struct Chunk {
    text: String,
    action: Option<String>,
    line: usize,
}

fn split_chunks(src: &str) -> Result<Vec<Chunk>, String> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut pending_trim = false;
    let mut line = 1;
    loop {
        let Some(open) = rest.find("{{") else {
            let mut text = rest.to_string();
            if pending_trim {
                text = text.trim_start().to_string();
            }
            out.push(Chunk {
                text,
                action: None,
                line,
            });
            return Ok(out);
        };
        let mut text = rest[..open].to_string();
        if pending_trim {
            text = text.trim_start().to_string();
        }
        let after = &rest[open + 2..];
        let trim_left = after.starts_with("- ")
            || after.starts_with("-\t")
            || after.starts_with("-\n")
            || after.starts_with("-\r");
        if trim_left {
            text = text.trim_end().to_string();
        }
        line += rest[..open].matches('\n').count();
        let body_start = if trim_left { &after[1..] } else { after };
        // Comments may contain "}}"-free text only up to "*/".
        let trimmed = body_start.trim_start();
        let (body, close_len, end_trim) = if trimmed.starts_with("/*") {
            let Some(end) = trimmed.find("*/") else {
                return Err(format!("line {line}: unclosed comment"));
            };
            let after_comment = &trimmed[end + 2..];
            let t = after_comment.trim_start();
            let (end_trim, t2) = match t.strip_prefix("-") {
                Some(x) => (true, x),
                None => (false, t),
            };
            if !t2.starts_with("}}") {
                return Err(format!("line {line}: comment ends without }}}}"));
            }
            let consumed = body_start.len() - t2.len() + 2;
            (String::new(), consumed, end_trim)
        } else {
            let Some(close) = find_close(body_start) else {
                return Err(format!("line {line}: unclosed action"));
            };
            let mut b = &body_start[..close];
            let mut end_trim = false;
            if b.ends_with(" -") || b.ends_with("\t-") || b.ends_with("\n-") || b.ends_with("\r-") {
                b = &b[..b.len() - 1];
                end_trim = true;
            }
            (b.to_string(), close + 2, end_trim)
        };
        let is_comment = body.trim().is_empty() && trimmed.starts_with("/*");
        out.push(Chunk {
            text,
            action: if is_comment {
                Some(String::new())
            } else {
                Some(body)
            },
            line,
        });
        let consumed_total = (body_start.as_ptr() as usize - rest.as_ptr() as usize) + close_len;
        line += rest[open..consumed_total].matches('\n').count();
        rest = &rest[consumed_total..];
        pending_trim = end_trim;
    }
}

/// The index of the "}}" closing an action, skipping string literals.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'\'' => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'}' if b[i + 1] == b'}' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            '|' => {
                out.push(Tok::Pipe);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Declare);
                i += 2;
            }
            '=' => {
                out.push(Tok::Assign);
                i += 1;
            }
            '.' => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && ident(chars[j]) {
                    j += 1;
                }
                if j == start {
                    if chars.get(j).is_some_and(|c| c.is_ascii_digit()) {
                        // A number like .5
                        let mut k = j;
                        while k < chars.len() && (chars[k].is_ascii_digit() || chars[k] == 'e') {
                            k += 1;
                        }
                        out.push(Tok::Num(chars[i..k].iter().collect()));
                        i = k;
                        continue;
                    }
                    out.push(Tok::Dot);
                } else {
                    let attached = i > 0 && !chars[i - 1].is_whitespace() && chars[i - 1] != '(';
                    out.push(Tok::Field(chars[start..j].iter().collect(), attached));
                }
                i = j;
            }
            '$' => {
                let mut j = i + 1;
                while j < chars.len() && ident(chars[j]) {
                    j += 1;
                }
                out.push(Tok::Var(chars[i..j].iter().collect()));
                i = j;
            }
            '"' => {
                let mut j = i + 1;
                let mut sval = String::new();
                while j < chars.len() && chars[j] != '"' {
                    if chars[j] == '\\' && j + 1 < chars.len() {
                        j += 1;
                        match chars[j] {
                            'n' => sval.push('\n'),
                            't' => sval.push('\t'),
                            'r' => sval.push('\r'),
                            '\\' => sval.push('\\'),
                            '"' => sval.push('"'),
                            '\'' => sval.push('\''),
                            '0' => sval.push('\0'),
                            'x' if j + 2 < chars.len() => {
                                let hex: String = chars[j + 1..j + 3].iter().collect();
                                if let Ok(v) = u8::from_str_radix(&hex, 16) {
                                    sval.push(v as char);
                                }
                                j += 2;
                            }
                            'u' if j + 4 < chars.len() => {
                                let hex: String = chars[j + 1..j + 5].iter().collect();
                                if let Some(ch) =
                                    u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
                                {
                                    sval.push(ch);
                                }
                                j += 4;
                            }
                            other => {
                                sval.push('\\');
                                sval.push(other);
                            }
                        }
                    } else {
                        sval.push(chars[j]);
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err("unterminated string".into());
                }
                out.push(Tok::Str(sval));
                i = j + 1;
            }
            '`' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '`' {
                    j += 1;
                }
                if j >= chars.len() {
                    return Err("unterminated raw string".into());
                }
                out.push(Tok::Str(chars[i + 1..j].iter().collect()));
                i = j + 1;
            }
            '\'' => {
                // A character constant is an integer in Go.
                let ch = chars.get(i + 1).copied().unwrap_or('\0');
                out.push(Tok::Num((ch as u32).to_string()));
                i += 3;
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+')
                    && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric()
                        || chars[j] == '.'
                        || chars[j] == '_'
                        || ((chars[j] == '-' || chars[j] == '+')
                            && matches!(chars[j - 1], 'e' | 'E')))
                {
                    j += 1;
                }
                out.push(Tok::Num(chars[i..j].iter().collect()));
                i = j;
            }
            c if ident(c) => {
                let mut j = i;
                while j < chars.len() && ident(chars[j]) {
                    j += 1;
                }
                out.push(Tok::Ident(chars[i..j].iter().collect()));
                i = j;
            }
            other => return Err(format!("unexpected {other:?} in action")),
        }
    }
    Ok(out)
}

struct TokStream {
    toks: Vec<Tok>,
    pos: usize,
}

impl TokStream {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
}

fn parse_pipeline(ts: &mut TokStream, in_range: bool) -> Result<Pipeline, String> {
    let mut p = Pipeline::default();
    // Declarations: `$x :=`, `$x =`, `$i, $v :=` (range).
    let save = ts.pos;
    let mut vars = Vec::new();
    while let Some(Tok::Var(v)) = ts.peek().cloned() {
        ts.next();
        vars.push(v);
        match ts.peek() {
            Some(Tok::Comma) if in_range && vars.len() == 1 => {
                ts.next();
            }
            _ => break,
        }
    }
    match (vars.is_empty(), ts.peek()) {
        (false, Some(Tok::Declare)) => {
            ts.next();
            p.decl = vars;
        }
        (false, Some(Tok::Assign)) => {
            ts.next();
            p.decl = vars;
            p.assign = true;
        }
        _ => ts.pos = save,
    }
    loop {
        let mut cmd = Vec::new();
        while let Some(t) = ts.peek() {
            if matches!(t, Tok::Pipe | Tok::RParen) {
                break;
            }
            cmd.push(parse_operand(ts)?);
        }
        if cmd.is_empty() {
            return Err("missing command in pipeline".into());
        }
        p.cmds.push(cmd);
        if ts.peek() == Some(&Tok::Pipe) {
            ts.next();
            continue;
        }
        break;
    }
    Ok(p)
}

fn parse_operand(ts: &mut TokStream) -> Result<Operand, String> {
    let tok = ts.next().ok_or("unexpected end of action")?;
    let mut fields = Vec::new();
    let term = match tok {
        Tok::Dot => Term::Dot,
        Tok::Field(f, _) => {
            fields.push(f);
            Term::Dot
        }
        Tok::Var(v) => Term::Var(v),
        Tok::Ident(i) => match i.as_str() {
            "true" => Term::Bool(true),
            "false" => Term::Bool(false),
            "nil" => Term::Nil,
            _ => Term::Ident(i),
        },
        Tok::Str(s) => Term::Str(s),
        Tok::Num(n) => parse_number(&n)?,
        Tok::LParen => {
            let p = parse_pipeline(ts, false)?;
            if ts.next() != Some(Tok::RParen) {
                return Err("missing )".into());
            }
            Term::Paren(Box::new(p))
        }
        other => return Err(format!("unexpected {other:?}")),
    };
    while let Some(Tok::Field(f, true)) = ts.peek().cloned() {
        ts.next();
        fields.push(f);
    }
    Ok(Operand { term, fields })
}

fn parse_number(n: &str) -> Result<Term, String> {
    let clean = n.replace('_', "");
    let (neg, body) = match clean.strip_prefix('-') {
        Some(b) => (true, b.to_string()),
        None => (false, clean.trim_start_matches('+').to_string()),
    };
    let int = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = body.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(b) = body.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()
    } else if body.len() > 1 && body.starts_with('0') && body.chars().all(|c| c.is_ascii_digit()) {
        i64::from_str_radix(&body[1..], 8).ok()
    } else {
        body.parse::<i64>().ok()
    };
    if let Some(i) = int {
        return Ok(Term::Int(if neg { -i } else { i }));
    }
    body.parse::<f64>()
        .map(|f| Term::Float(if neg { -f } else { f }))
        .map_err(|_| format!("bad number {n}"))
}

/// What ended a list of nodes.
enum Stop {
    Eof,
    End,
    Else(Option<String>),
}

struct Parser {
    chunks: Vec<Chunk>,
    pos: usize,
    defines: BTreeMap<String, Vec<Node>>,
}

impl Parser {
    fn list(&mut self) -> Result<(Vec<Node>, Stop), String> {
        let mut nodes = Vec::new();
        while self.pos < self.chunks.len() {
            let i = self.pos;
            self.pos += 1;
            let text = std::mem::take(&mut self.chunks[i].text);
            if !text.is_empty() {
                nodes.push(Node::Text(text));
            }
            let Some(action) = self.chunks[i].action.clone() else {
                continue;
            };
            let line = self.chunks[i].line;
            let at = |e: String| format!("line {line}: {e}");
            let toks = lex(&action).map_err(at)?;
            if toks.is_empty() {
                continue; // a comment
            }
            let mut ts = TokStream { toks, pos: 0 };
            let keyword = match ts.peek() {
                Some(Tok::Ident(k)) => k.clone(),
                _ => String::new(),
            };
            match keyword.as_str() {
                "end" => return Ok((nodes, Stop::End)),
                "else" => {
                    ts.next();
                    let rest = if ts.pos < ts.toks.len() {
                        Some(action.trim_start().trim_start_matches("else").to_string())
                    } else {
                        None
                    };
                    return Ok((nodes, Stop::Else(rest)));
                }
                "if" | "with" => {
                    ts.next();
                    let pipe = parse_pipeline(&mut ts, false).map_err(at)?;
                    let (branches, else_) = self.conditional(pipe, &keyword)?;
                    nodes.push(if keyword == "if" {
                        Node::If(branches, else_)
                    } else {
                        Node::With(branches, else_)
                    });
                }
                "range" => {
                    ts.next();
                    let pipe = parse_pipeline(&mut ts, true).map_err(at)?;
                    let (body, end) = self.list()?;
                    let else_ = match end {
                        Stop::End => None,
                        Stop::Else(None) => {
                            let (e, end2) = self.list()?;
                            if !matches!(end2, Stop::End) {
                                return Err(at("range else without end".into()));
                            }
                            Some(e)
                        }
                        _ => return Err(at("range without end".into())),
                    };
                    nodes.push(Node::Range(pipe, body, else_));
                }
                "define" | "block" => {
                    ts.next();
                    let Some(Tok::Str(name)) = ts.next() else {
                        return Err(at("define needs a name".into()));
                    };
                    let block_pipe = if keyword == "block" {
                        Some(parse_pipeline(&mut ts, false).map_err(at)?)
                    } else {
                        None
                    };
                    let (body, end) = self.list()?;
                    if !matches!(end, Stop::End) {
                        return Err(at(format!("define {name:?} without end")));
                    }
                    self.defines.insert(name.clone(), body);
                    if keyword == "block" {
                        nodes.push(Node::Template(name, block_pipe));
                    }
                }
                "template" => {
                    ts.next();
                    let Some(Tok::Str(name)) = ts.next() else {
                        return Err(at("template needs a name".into()));
                    };
                    let pipe = if ts.pos < ts.toks.len() {
                        Some(parse_pipeline(&mut ts, false).map_err(at)?)
                    } else {
                        None
                    };
                    nodes.push(Node::Template(name, pipe));
                }
                "break" => nodes.push(Node::Break),
                "continue" => nodes.push(Node::Continue),
                _ => {
                    let pipe = parse_pipeline(&mut ts, false).map_err(at)?;
                    if ts.pos < ts.toks.len() {
                        return Err(at(format!("unexpected {:?}", ts.toks[ts.pos])));
                    }
                    nodes.push(Node::Action(pipe));
                }
            }
        }
        Ok((nodes, Stop::Eof))
    }

    /// The branches of an if/with, following `else if` / `else with` chains.
    #[allow(clippy::type_complexity)]
    fn conditional(
        &mut self,
        first: Pipeline,
        keyword: &str,
    ) -> Result<(Vec<(Pipeline, Vec<Node>)>, Option<Vec<Node>>), String> {
        let mut branches = Vec::new();
        let mut pipe = first;
        loop {
            let (body, end) = self.list()?;
            branches.push((pipe, body));
            match end {
                Stop::End => return Ok((branches, None)),
                Stop::Else(None) => {
                    let (e, end2) = self.list()?;
                    if !matches!(end2, Stop::End) {
                        return Err(format!("{keyword} else without end"));
                    }
                    return Ok((branches, Some(e)));
                }
                Stop::Else(Some(rest)) => {
                    let rest = rest.trim();
                    let inner = rest
                        .strip_prefix(keyword)
                        .ok_or_else(|| format!("unexpected else {rest}"))?;
                    let toks = lex(inner)?;
                    let mut ts = TokStream { toks, pos: 0 };
                    pipe = parse_pipeline(&mut ts, false)?;
                }
                Stop::Eof => return Err(format!("{keyword} without end")),
            }
        }
    }
}

impl Template {
    pub fn parse(src: &str) -> Result<Template, String> {
        let chunks = split_chunks(src)?;
        let mut p = Parser {
            chunks,
            pos: 0,
            defines: BTreeMap::new(),
        };
        let (main, end) = p.list()?;
        match end {
            Stop::Eof => Ok(Template {
                main,
                defines: p.defines,
            }),
            Stop::End => Err("unexpected {{end}}".into()),
            Stop::Else(_) => Err("unexpected {{else}}".into()),
        }
    }

    pub fn render(&self, data: &TVal, funcs: &Funcs) -> Result<String, String> {
        let mut ev = Eval {
            t: self,
            funcs,
            vars: vec![("$".to_string(), data.clone())],
            out: String::new(),
            depth: 0,
        };
        ev.nodes(&self.main, data)?;
        Ok(ev.out)
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

/// A template function: its (already evaluated) arguments → value.
pub type Func = fn(&[TVal]) -> Result<TVal, String>;
pub type Funcs = BTreeMap<&'static str, Func>;

struct Eval<'a> {
    t: &'a Template,
    funcs: &'a Funcs,
    vars: Vec<(String, TVal)>,
    out: String,
    depth: usize,
}

enum Flow {
    Normal,
    Break,
    Continue,
}

impl Eval<'_> {
    fn nodes(&mut self, nodes: &[Node], dot: &TVal) -> Result<Flow, String> {
        for n in nodes {
            match self.node(n, dot)? {
                Flow::Normal => {}
                other => return Ok(other),
            }
        }
        Ok(Flow::Normal)
    }

    fn scoped(&mut self, nodes: &[Node], dot: &TVal) -> Result<Flow, String> {
        let mark = self.vars.len();
        let r = self.nodes(nodes, dot);
        self.vars.truncate(mark);
        r
    }

    fn node(&mut self, n: &Node, dot: &TVal) -> Result<Flow, String> {
        match n {
            Node::Text(t) => self.out.push_str(t),
            Node::Action(p) => {
                let v = self.pipeline(p, dot)?;
                if p.decl.is_empty() {
                    let s = v.print();
                    self.out.push_str(&s);
                }
            }
            Node::If(branches, else_) => {
                for (p, body) in branches {
                    let mark = self.vars.len();
                    let v = self.pipeline(p, dot)?;
                    if v.truthy() {
                        let r = self.nodes(body, dot);
                        self.vars.truncate(mark);
                        return r;
                    }
                    self.vars.truncate(mark);
                }
                if let Some(e) = else_ {
                    return self.scoped(e, dot);
                }
            }
            Node::With(branches, else_) => {
                for (p, body) in branches {
                    let mark = self.vars.len();
                    let v = self.pipeline(p, dot)?;
                    if v.truthy() {
                        let r = self.nodes(body, &v);
                        self.vars.truncate(mark);
                        return r;
                    }
                    self.vars.truncate(mark);
                }
                if let Some(e) = else_ {
                    return self.scoped(e, dot);
                }
            }
            Node::Range(p, body, else_) => {
                let mark = self.vars.len();
                let mut plain = p.clone();
                plain.decl.clear();
                let v = self.pipeline(&plain, dot)?;
                let pairs: Vec<(TVal, TVal)> = if let Some(items) = v.items() {
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, x)| (TVal::Int(i as i64), x))
                        .collect()
                } else if let Some(entries) = v.entries() {
                    entries
                        .into_iter()
                        .map(|(k, x)| (TVal::Str(k), x))
                        .collect()
                } else if let TVal::Int(n) = v {
                    (0..n.max(0))
                        .map(|i| (TVal::Int(i), TVal::Int(i)))
                        .collect()
                } else if matches!(v, TVal::Nil | TVal::Zero) {
                    Vec::new()
                } else {
                    return Err(format!("range can't iterate over {}", v.print()));
                };
                if pairs.is_empty() {
                    self.vars.truncate(mark);
                    if let Some(e) = else_ {
                        return self.scoped(e, dot);
                    }
                    return Ok(Flow::Normal);
                }
                for (k, x) in pairs {
                    let inner = self.vars.len();
                    match p.decl.as_slice() {
                        [v1] => self.vars.push((v1.clone(), x.clone())),
                        [k1, v1] => {
                            self.vars.push((k1.clone(), k));
                            self.vars.push((v1.clone(), x.clone()));
                        }
                        _ => {}
                    }
                    let flow = self.nodes(body, &x)?;
                    self.vars.truncate(inner);
                    if matches!(flow, Flow::Break) {
                        break;
                    }
                }
                self.vars.truncate(mark);
            }
            Node::Template(name, p) => {
                let body = self
                    .t
                    .defines
                    .get(name)
                    .ok_or_else(|| format!("no such template {name:?}"))?;
                let v = match p {
                    Some(p) => self.pipeline(p, dot)?,
                    None => TVal::Nil,
                };
                self.depth += 1;
                if self.depth > 100 {
                    return Err("template recursion too deep".into());
                }
                let saved = std::mem::replace(&mut self.vars, vec![("$".to_string(), v.clone())]);
                let r = self.nodes(body, &v);
                self.vars = saved;
                self.depth -= 1;
                r?;
            }
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
        }
        Ok(Flow::Normal)
    }

    fn var(&self, name: &str) -> Result<TVal, String> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("undefined variable {name}"))
    }

    fn pipeline(&mut self, p: &Pipeline, dot: &TVal) -> Result<TVal, String> {
        let mut prev: Option<TVal> = None;
        for cmd in &p.cmds {
            prev = Some(self.command(cmd, dot, prev)?);
        }
        let v = prev.unwrap_or(TVal::Nil);
        if let Some(name) = p.decl.first() {
            if p.assign {
                match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = v.clone(),
                    None => return Err(format!("undefined variable {name}")),
                }
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn command(
        &mut self,
        cmd: &[Operand],
        dot: &TVal,
        piped: Option<TVal>,
    ) -> Result<TVal, String> {
        let first = &cmd[0];
        if let Term::Ident(name) = &first.term
            && first.fields.is_empty()
        {
            return self.call(name, &cmd[1..], dot, piped);
        }
        if cmd.len() > 1 || piped.is_some() {
            // Arguments to a method: none of the methods meshd offers takes any.
            return Err(format!("can't give arguments to {first:?}"));
        }
        self.operand(first, dot)
    }

    fn operand(&mut self, o: &Operand, dot: &TVal) -> Result<TVal, String> {
        let mut v = match &o.term {
            Term::Dot => dot.clone(),
            Term::Var(name) => self.var(name)?,
            Term::Ident(name) => self.call(name, &[], dot, None)?,
            Term::Str(s) => TVal::Str(s.clone()),
            Term::Int(i) => TVal::Int(*i),
            Term::Float(f) => TVal::Float(*f),
            Term::Bool(b) => TVal::Bool(*b),
            Term::Nil => TVal::Nil,
            Term::Paren(p) => self.pipeline(p, dot)?,
        };
        for f in &o.fields {
            v = v.field(f)?;
        }
        Ok(v)
    }

    fn call(
        &mut self,
        name: &str,
        args: &[Operand],
        dot: &TVal,
        piped: Option<TVal>,
    ) -> Result<TVal, String> {
        // and/or evaluate lazily and return the deciding argument.
        if name == "and" || name == "or" {
            let mut last = TVal::Bool(name == "and");
            let n = args.len() + usize::from(piped.is_some());
            if n == 0 {
                return Err(format!("{name}: missing arguments"));
            }
            for a in args {
                last = self.operand(a, dot)?;
                if (name == "and") != last.truthy() {
                    return Ok(last);
                }
            }
            if let Some(p) = piped {
                last = p;
            }
            return Ok(last);
        }
        let mut vals = Vec::with_capacity(args.len() + 1);
        for a in args {
            vals.push(self.operand(a, dot)?);
        }
        if let Some(p) = piped {
            vals.push(p);
        }
        match builtin(name, &vals) {
            Some(r) => r.map_err(|e| format!("error calling {name}: {e}")),
            None => match self.funcs.get(name) {
                Some(f) => f(&vals).map_err(|e| format!("error calling {name}: {e}")),
                None => Err(format!("function {name:?} not defined")),
            },
        }
    }
}

fn num(v: &TVal) -> Option<f64> {
    match v {
        TVal::Int(i) => Some(*i as f64),
        TVal::Float(f) => Some(*f),
        _ => None,
    }
}

/// Go's `eq` for basic values.
pub fn equal(a: &TVal, b: &TVal) -> bool {
    match (a, b) {
        (TVal::Nil, TVal::Nil) => true,
        (TVal::Nil, _) | (_, TVal::Nil) => false,
        (TVal::Zero, x) | (x, TVal::Zero) => x.is_empty(),
        (TVal::Str(x), TVal::Str(y)) => x == y,
        (TVal::Bool(x), TVal::Bool(y)) => x == y,
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

fn compare(a: &TVal, b: &TVal) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (TVal::Str(x), TVal::Str(y)) => Ok(x.cmp(y)),
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y).ok_or_else(|| "NaN".to_string()),
            _ => Err("incompatible types for comparison".into()),
        },
    }
}

fn builtin(name: &str, a: &[TVal]) -> Option<Result<TVal, String>> {
    use std::cmp::Ordering;
    let r = match name {
        "not" => Ok(TVal::Bool(!a.first().is_some_and(TVal::truthy))),
        "eq" => match a.split_first() {
            Some((x, rest)) if !rest.is_empty() => Ok(TVal::Bool(rest.iter().any(|y| equal(x, y)))),
            _ => Err("eq needs two arguments".into()),
        },
        "ne" => match a {
            [x, y] => Ok(TVal::Bool(!equal(x, y))),
            _ => Err("ne needs two arguments".into()),
        },
        "lt" | "le" | "gt" | "ge" => match a {
            [x, y] => compare(x, y).map(|o| {
                TVal::Bool(match name {
                    "lt" => o == Ordering::Less,
                    "le" => o != Ordering::Greater,
                    "gt" => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                })
            }),
            _ => Err(format!("{name} needs two arguments")),
        },
        "len" => match a.first() {
            Some(TVal::Str(s)) => Ok(TVal::Int(s.len() as i64)),
            Some(v) => match (v.items(), v.entries()) {
                (Some(i), _) => Ok(TVal::Int(i.len() as i64)),
                (_, Some(e)) => Ok(TVal::Int(e.len() as i64)),
                _ => match v {
                    TVal::Nil | TVal::Zero => Ok(TVal::Int(0)),
                    _ => Err("len of a non-collection".into()),
                },
            },
            None => Err("len needs an argument".into()),
        },
        "index" => {
            let Some((first, keys)) = a.split_first() else {
                return Some(Err("index needs arguments".into()));
            };
            let mut v = first.clone();
            for k in keys {
                v = match (&v, k) {
                    (TVal::Nil | TVal::Zero, _) => TVal::Str(String::new()),
                    (_, TVal::Int(i)) => match v.items() {
                        Some(items) => match items.get(*i as usize) {
                            Some(x) => x.clone(),
                            None => return Some(Err(format!("index {i} out of range"))),
                        },
                        None => return Some(Err("can't index a non-list with a number".into())),
                    },
                    (_, key) => {
                        let key = key.print();
                        match &v {
                            // A missing key of map[string]string is "".
                            TVal::Json(_, Shape::Map) | TVal::Map(_) => match v.key(&key) {
                                Some(x) => x,
                                None => match &v {
                                    TVal::Json(j, _)
                                        if j.as_object()
                                            .is_some_and(|o| o.values().all(Value::is_string)) =>
                                    {
                                        TVal::Str(String::new())
                                    }
                                    _ => TVal::Nil,
                                },
                            },
                            other => match other.field(&key) {
                                Ok(x) => x,
                                Err(e) => return Some(Err(e)),
                            },
                        }
                    }
                };
            }
            Ok(v)
        }
        "print" => Ok(TVal::Str(go_sprint(a))),
        "println" => Ok(TVal::Str(
            a.iter().map(TVal::print).collect::<Vec<_>>().join(" ") + "\n",
        )),
        "printf" => match a.split_first() {
            Some((TVal::Str(f), rest)) => Ok(TVal::Str(sprintf(f, rest))),
            _ => Err("printf needs a format".into()),
        },
        "html" | "js" | "urlquery" => Ok(TVal::Str(go_sprint(a))),
        "call" => Err("call is not supported".into()),
        _ => return None,
    };
    Some(r)
}

/// Go's `fmt.Sprint`: spaces between operands when neither is a string.
pub fn go_sprint(a: &[TVal]) -> String {
    let mut out = String::new();
    for (i, v) in a.iter().enumerate() {
        if i > 0 && !matches!(v, TVal::Str(_)) && !matches!(a[i - 1], TVal::Str(_)) {
            out.push(' ');
        }
        out.push_str(&v.print());
    }
    out
}

/// Go's `fmt.Sprintf` for the verbs templates use: %s %v %d %t %q %f %x %%.
pub fn sprintf(f: &str, args: &[TVal]) -> String {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = f.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // Flags and width, kept simple.
        let mut spec = String::new();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_digit() || n == '.' || n == '-' || n == '+' || n == '#' || n == ' ' {
                spec.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(v) = it.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        match verb {
            'q' => out.push_str(&go_quote(&v.print())),
            'd' => match v {
                TVal::Int(i) => out.push_str(&i.to_string()),
                TVal::Float(x) => {
                    let _ = write!(out, "%!d(float64={})", crate::yaml_out::go_float(*x));
                }
                other => out.push_str(&other.print()),
            },
            'f' => {
                let prec: usize = spec
                    .split_once('.')
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap_or(6);
                match num(v) {
                    Some(x) => {
                        let _ = write!(out, "{x:.prec$}");
                    }
                    None => out.push_str(&v.print()),
                }
            }
            'x' => match v {
                TVal::Int(i) => {
                    let _ = write!(out, "{i:x}");
                }
                other => {
                    for b in other.print().bytes() {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            },
            _ => out.push_str(&v.print()),
        }
    }
    out
}

/// Go's `%q` / strconv.Quote.
pub fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, data: TVal) -> String {
        let mut f: Funcs = BTreeMap::new();
        f.insert("upper", |a| Ok(TVal::Str(a[0].print().to_uppercase())));
        Template::parse(src)
            .and_then(|t| t.render(&data, &f))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn trimming_variables_and_control_flow() {
        let data = TVal::structure(json!({
            "spec": {"containers": [{"name": "a"}, {"name": "istio-proxy"}, {"name": "b"}]},
            "metadata": {"annotations": {"x": "1"}},
        }));
        let src = "{{- $names := \"\" }}\n{{- range $i, $c := .Spec.Containers }}\n  {{- if ne $c.Name \"istio-proxy\" }}{{ $names = printf \"%s%s,\" $names $c.Name }}{{ end }}\n{{- end }}\nnames={{ $names }} x={{ index .Metadata.Annotations \"x\" }} y={{ index .Metadata.Annotations \"y\" | printf \"%q\" }}";
        assert_eq!(render(src, data), "\nnames=a,b, x=1 y=\"\"");
    }

    #[test]
    fn and_or_return_the_deciding_value_and_short_circuit() {
        let data = TVal::map(json!({"a": "", "b": "bee", "n": 15020}));
        assert_eq!(
            render(
                "{{ or .a .b }}|{{ and .b .a }}|{{ .n }}|{{ or .missing.deep .b }}",
                data
            ),
            "bee||15020|bee"
        );
    }

    #[test]
    fn else_if_with_define_template_and_comments() {
        let src = "{{- define \"x\" }}[{{ . }}]{{ end -}}\n{{/* comment */}}{{ if eq .v 1 }}one{{ else if eq .v 2 }}two{{ else }}other{{ end }} {{ template \"x\" .v }} {{ with .w }}w={{ . | upper }}{{ else }}no w{{ end }}";
        assert_eq!(
            render(src, TVal::map(json!({"v": 2, "w": "hi"}))),
            "two [2] w=HI"
        );
        assert_eq!(render(src, TVal::map(json!({"v": 3}))), "other [3] no w");
    }

    #[test]
    fn ranges_maps_in_key_order() {
        let src = "{{ range $k, $v := .m }}{{ $k }}={{ $v }};{{ end }}{{ range .empty }}x{{ else }}none{{ end }}";
        assert_eq!(
            render(src, TVal::map(json!({"m": {"b": 2, "a": 1}, "empty": []}))),
            "a=1;b=2;none"
        );
    }

    #[test]
    fn multi_line_actions() {
        let src = "{{ $x := and\n  (eq .a \"1\")\n  (not .b) }}{{ $x }}";
        assert_eq!(
            render(src, TVal::map(json!({"a": "1", "b": false}))),
            "true"
        );
    }
}
