//! YAML → JSON values with line numbers.
//!
//! Manifests are read the way `kubectl apply -f` reads them: a file holds documents
//! separated by `---`; each document becomes a `serde_json::Value` (what Kubernetes itself
//! converts YAML into) plus a [`FieldLines`] map from field path to source line, so a
//! diagnostic about `spec.http[0].route[0].destination.subset` can name its exact line.
//!
//! Documents are split before parsing so that a syntax error in one document costs only
//! that document, not the whole file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML document of a file.
#[derive(Debug)]
pub struct Document {
    /// 1-based line where the document's content starts.
    pub start_line: u32,
    pub value: Value,
    pub lines: FieldLines,
}

/// A document that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line of the fault in the file.
    pub line: u32,
    pub message: String,
}

/// Field path → 1-based source line, for one document (or a part of one, see [`FieldLines::child`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldLines {
    map: Arc<BTreeMap<String, u32>>,
    prefix: String,
}

impl FieldLines {
    /// A hash of every path and line (what [`crate::model::Object`]'s print reads: an
    /// edit that moves fields changes where diagnostics point).
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(self.prefix.len() as u64).to_le_bytes());
        h.update(self.prefix.as_bytes());
        for (path, line) in self.map.iter() {
            h.update(&(path.len() as u64).to_le_bytes());
            h.update(path.as_bytes());
            h.update(&line.to_le_bytes());
        }
        h.digest()
    }

    /// Line of `path` (relative to this part), or of its nearest parent that has one.
    pub fn line_of(&self, path: &str) -> Option<u32> {
        let mut full = join_path(&self.prefix, path);
        loop {
            if let Some(line) = self.map.get(&full) {
                return Some(*line);
            }
            if full.is_empty() {
                return None;
            }
            match full.rfind(['.', '[']) {
                Some(i) => full.truncate(i),
                None => full.clear(),
            }
        }
    }

    /// The lines of a sub-tree (`items[3]` of a `kind: List`), with paths relative to it.
    pub fn child(&self, path: &str) -> FieldLines {
        FieldLines {
            map: self.map.clone(),
            prefix: join_path(&self.prefix, path),
        }
    }
}

fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// Splits `text` into documents and parses each. Empty documents are dropped.
pub fn parse_documents(text: &str) -> Vec<Result<Document, YamlError>> {
    split_documents(text)
        .into_iter()
        .filter_map(|(start, body)| parse_document(body, start, true).transpose())
        .collect()
}

/// The first non-empty document's value, without the field-line map: for YAML that no
/// diagnostic will point into (the injection template's output, rendered per pod).
pub fn parse_first_value(text: &str) -> Option<Result<Value, YamlError>> {
    split_documents(text)
        .into_iter()
        .find_map(|(start, body)| parse_document(body, start, false).transpose())
        .map(|r| r.map(|d| d.value))
}

/// (1-based start line, text) of each document. A document starts after a line that is
/// `---` (optionally followed by a space and a comment or content) and ends at the next such
/// line or at `...`.
fn split_documents(text: &str) -> Vec<(u32, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0usize;
    let mut start_line = 1u32;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end_matches(['\n', '\r']);
        let marker = trimmed == "---"
            || trimmed.starts_with("--- ")
            || trimmed.starts_with("---\t")
            || trimmed == "...";
        if marker {
            docs.push((start_line, &text[start_byte..offset]));
            // Content after `--- ` on the same line (`--- # comment`, rarely `--- {}`)
            // stays with the next document.
            let rest = if trimmed.starts_with("---") {
                3
            } else {
                trimmed.len()
            };
            start_byte = offset + rest;
            start_line = i as u32 + 1;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

fn parse_document(
    body: &str,
    start_line: u32,
    track_lines: bool,
) -> Result<Option<Document>, YamlError> {
    if body.trim().is_empty() {
        return Ok(None);
    }
    let mut builder = Builder {
        skip_lines: !track_lines,
        ..Default::default()
    };
    let mut parser = Parser::new_from_str(body);
    let line_base = start_line.saturating_sub(1);
    // Events one by one rather than `Parser::load`, which recurses once per level of
    // nesting (a deeply nested document would overflow the stack before the builder
    // could refuse it).
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| YamlError {
            line: line_base + e.marker().line() as u32,
            message: e.info().to_string(),
        })?;
        let end = matches!(ev, Event::StreamEnd);
        builder.on_event(ev, mark);
        if end || builder.error.is_some() {
            break;
        }
    }
    if let Some((mark, message)) = builder.error {
        return Err(YamlError {
            line: line_base + mark.line() as u32,
            message,
        });
    }
    let Some(value) = builder.root else {
        return Ok(None);
    };
    if value.is_null() {
        return Ok(None);
    }
    let map = builder
        .lines
        .into_iter()
        .map(|(k, v)| (k, v + line_base))
        .collect();
    let first_line = builder.first_line.map_or(start_line, |l| l + line_base);
    Ok(Some(Document {
        start_line: first_line,
        value,
        lines: FieldLines {
            map: Arc::new(map),
            prefix: String::new(),
        },
    }))
}

enum Frame {
    Map {
        map: Map<String, Value>,
        /// Keys written explicitly (not merged in with `<<`), to find duplicates.
        seen: std::collections::HashSet<String>,
        key: Option<String>,
        path: String,
        anchor: usize,
    },
    Seq {
        items: Vec<Value>,
        path: String,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Anchored values with their size in nodes.
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes that aliases have added to the document so far.
    alias_nodes: usize,
    lines: BTreeMap<String, u32>,
    root: Option<Value>,
    first_line: Option<u32>,
    error: Option<(Marker, String)>,
    /// No field-line map (paths are not even built).
    skip_lines: bool,
}

impl Builder {
    /// Path of the node that starts now (the key or index it will be stored under).
    fn child_path(&self) -> String {
        if self.skip_lines {
            return String::new();
        }
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { key, path, .. }) => join_path(path, key.as_deref().unwrap_or("")),
            Some(Frame::Seq { items, path, .. }) => format!("{path}[{}]", items.len()),
        }
    }

    fn fail(&mut self, mark: Marker, msg: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some((mark, msg.into()));
        }
    }

    /// Stores a finished value in its parent (or as the root).
    fn attach(&mut self, value: Value, mark: Marker) {
        if let Err(msg) = self.attach_inner(value) {
            self.fail(mark, msg);
        }
    }

    fn attach_inner(&mut self, value: Value) -> Result<(), String> {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, seen, .. }) => match key.take() {
                None => {
                    // A value in key position: only scalars make sense as Kubernetes keys.
                    match value {
                        Value::String(s) => *key = Some(s),
                        Value::Number(n) => *key = Some(n.to_string()),
                        Value::Bool(b) => *key = Some(b.to_string()),
                        Value::Null => *key = Some("null".into()),
                        _ => return Err("a mapping key must be a plain value".into()),
                    }
                    if let Some(k) = key.as_ref()
                        && k != "<<"
                        && !seen.insert(k.clone())
                    {
                        return Err(format!("key {k:?} appears twice in the same mapping"));
                    }
                }
                Some(k) if k == "<<" => {
                    // YAML merge key, as Kubernetes' YAML reader honours it.
                    let sources = match value {
                        Value::Array(items) => items,
                        other => vec![other],
                    };
                    for source in sources {
                        if let Value::Object(src) = source {
                            for (k, v) in src {
                                map.entry(k).or_insert(v);
                            }
                        }
                    }
                }
                Some(k) => {
                    map.insert(k, value);
                }
            },
        }
        Ok(())
    }

    fn is_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line() as u32;
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let key_position = self.is_key_position();
                if !key_position {
                    if !self.skip_lines {
                        let path = self.child_path();
                        self.lines.entry(path).or_insert(line);
                    }
                    self.first_line.get_or_insert(line);
                }
                let explicit_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if style != TScalarStyle::Plain || explicit_str || key_position {
                    Value::String(text)
                } else {
                    plain_scalar(text)
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, (value.clone(), 1));
                }
                if key_position {
                    // Record the key's own line for the value path too: for `key:` followed
                    // by a nested block, the key line is where a reader looks.
                    if let (false, Value::String(k), Some(Frame::Map { path, .. })) =
                        (self.skip_lines, &value, self.stack.last())
                    {
                        let p = join_path(path, k);
                        self.lines.entry(p).or_insert(line);
                    }
                    self.first_line.get_or_insert(line);
                }
                self.attach(value, mark);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) if self.stack.len() >= MAX_DEPTH => {
                // Everything after the parser (building objects, JSON, dropping values)
                // walks values recursively: a document nested thousands deep would
                // overflow the stack and take meshd down.
                self.fail(
                    mark,
                    format!(
                        "values nest deeper than {MAX_DEPTH} levels; refused (no Kubernetes or \
                         Envoy configuration needs that many)"
                    ),
                );
            }
            Event::MappingStart(anchor, _) => {
                let path = self.child_path();
                if !self.skip_lines {
                    self.lines.entry(path.clone()).or_insert(line);
                }
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    seen: Default::default(),
                    key: None,
                    path,
                    anchor,
                });
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.child_path();
                if !self.skip_lines {
                    self.lines.entry(path.clone()).or_insert(line);
                }
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    path,
                    anchor,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Frame::Map { map, anchor, .. }) => (Value::Object(map), anchor),
                    Some(Frame::Seq { items, anchor, .. }) => (Value::Array(items), anchor),
                    None => return,
                };
                if anchor > 0 {
                    let size = node_count(&value);
                    self.anchors.insert(anchor, (value.clone(), size));
                }
                self.attach(value, mark);
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((v, size)) => {
                    // Every alias copies its anchor's value: nested aliases grow a small
                    // document exponentially ("billion laughs"). Count what they add
                    // before copying, and refuse the document past the limit.
                    self.alias_nodes = self.alias_nodes.saturating_add(*size);
                    if self.alias_nodes > MAX_ALIAS_NODES {
                        self.fail(
                            mark,
                            format!(
                                "aliases expand this document by more than {MAX_ALIAS_NODES} values; \
                                 refused (a document that expands exponentially would exhaust memory); \
                                 write the repeated values out or use fewer nested aliases"
                            ),
                        );
                        return;
                    }
                    let v = v.clone();
                    self.attach(v, mark);
                }
                None => self.fail(mark, "alias refers to an unknown anchor"),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// The deepest nesting of mappings and sequences a document may have. An Envoy
/// configuration inside an EnvoyFilter reaches about 30 levels.
const MAX_DEPTH: usize = 100;

/// The most values aliases may add to one document. Real manifests use a handful of
/// aliases (shared labels, ports); this allows thousands of them while a document that
/// expands exponentially stops long before it costs real memory.
const MAX_ALIAS_NODES: usize = 100_000;

/// Values in a tree (each scalar, sequence and mapping counts one).
fn node_count(v: &Value) -> usize {
    match v {
        Value::Array(items) => items.iter().map(node_count).fold(1, usize::saturating_add),
        Value::Object(map) => map.values().map(node_count).fold(1, usize::saturating_add),
        _ => 1,
    }
}

/// Resolves a plain scalar as YAML 1.2's core schema does (what sigs.k8s.io/yaml gives for
/// everything Kubernetes manifests use).
fn plain_scalar(text: String) -> Value {
    use yaml_rust2::Yaml;
    match Yaml::from_str(&text) {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(r) => match r.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(text),
        },
        _ => Value::String(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exponential_aliases_are_refused_and_the_next_document_survives() {
        // Nine levels of nine aliases each: 9^9 (387 million) strings once expanded.
        let mut text = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n  a: &a [\"lol\"]\n",
        );
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        for w in names.windows(2) {
            let refs = vec![format!("*{}", w[0]); 9].join(",");
            text.push_str(&format!("  {}: &{} [{refs}]\n", w[1], w[1]));
        }
        text.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: fine}\n");
        let docs = parse_documents(&text);
        let err = docs[0].as_ref().expect_err("refused");
        assert!(err.message.contains("aliases expand"), "{}", err.message);
        assert!(
            err.line >= 5 && err.line <= 14,
            "line of the alias: {}",
            err.line
        );
        assert_eq!(
            docs[1].as_ref().expect("the next document parses").value["metadata"]["name"],
            json!("fine")
        );
    }

    #[test]
    fn deep_nesting_is_refused_and_the_limit_itself_is_fine_on_a_small_stack() {
        let nested = |depth: usize| {
            let mut t = String::from("a:\n");
            for i in 1..depth {
                t.push_str(&"  ".repeat(i));
                t.push_str(&format!("k{i}:\n"));
            }
            t.push_str(&"  ".repeat(depth));
            t.push_str("v\n");
            t
        };
        let deep = nested(5000);
        let docs = parse_documents(&deep);
        let err = docs[0].as_ref().expect_err("refused");
        assert!(
            err.message.contains("nest deeper than 100"),
            "{}",
            err.message
        );
        // At the limit, building and dropping works on a 256 KiB stack.
        let ok = nested(MAX_DEPTH - 1);
        let t = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let docs = parse_documents(&ok);
                let doc = docs
                    .into_iter()
                    .next()
                    .expect("a document")
                    .expect("parsed");
                serde_json::to_string(&doc.value)
                    .map(|s| s.len())
                    .unwrap_or(0)
            })
            .expect("thread");
        assert!(t.join().expect("no overflow") > 0);
    }

    #[test]
    fn ordinary_aliases_still_work() {
        let docs = parse_documents("a: &l {app: x, version: v1}\nb: *l\nc: [*l, *l]\n");
        let v = &docs[0].as_ref().expect("parses").value;
        assert_eq!(v["c"][1]["version"], json!("v1"));
        assert_eq!(v["b"], v["a"]);
    }

    #[test]
    fn splits_documents_and_keeps_lines() {
        let text = "# comment\napiVersion: v1\nkind: Service\nmetadata:\n  name: a\n---\n\n---\nkind: Pod\nspec:\n  containers:\n  - name: x\n    image: y\n";
        let docs: Vec<_> = parse_documents(text)
            .into_iter()
            .map(|d| d.expect("parses"))
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].start_line, 2);
        assert_eq!(docs[0].value["metadata"]["name"], json!("a"));
        assert_eq!(docs[0].lines.line_of("metadata.name"), Some(5));
        assert_eq!(docs[1].start_line, 9);
        assert_eq!(docs[1].lines.line_of("spec.containers[0].image"), Some(13));
        // Unknown paths fall back to the nearest parent.
        assert_eq!(
            docs[1].lines.line_of("spec.containers[0].ports[2]"),
            Some(12)
        );
    }

    #[test]
    fn scalars_resolve_like_kubernetes() {
        let docs =
            parse_documents("a: 9080\nb: \"9080\"\nc: true\nd: ~\ne: 1.5\nf: v1\ng: !!str 10\n");
        let v = &docs[0].as_ref().expect("parses").value;
        assert_eq!(
            v,
            &json!({"a": 9080, "b": "9080", "c": true, "d": null, "e": 1.5, "f": "v1", "g": "10"})
        );
    }

    #[test]
    fn one_bad_document_does_not_spoil_the_others() {
        let docs = parse_documents("a: 1\n---\nb: [unclosed\n---\nc: 3\n");
        assert_eq!(docs.len(), 3);
        assert!(docs[0].is_ok());
        let err = docs[1].as_ref().expect_err("syntax error");
        assert!(err.line >= 3, "{err:?}");
        assert!(docs[2].is_ok());
    }

    #[test]
    fn duplicate_keys_are_errors_and_merge_keys_work() {
        let docs = parse_documents("a: 1\nb: 2\na: 3\n");
        let err = docs[0].as_ref().expect_err("duplicate");
        assert_eq!(err.line, 3);
        assert!(err.message.contains("\"a\""), "{err:?}");

        let docs = parse_documents("base: &b\n  x: 1\n  y: 2\nderived:\n  <<: *b\n  y: 3\n");
        let v = &docs[0].as_ref().expect("parses").value;
        assert_eq!(v["derived"], json!({"x": 1, "y": 3}));
    }

    #[test]
    fn child_lines_are_relative() {
        let docs =
            parse_documents("kind: List\nitems:\n- kind: Service\n  metadata:\n    name: a\n");
        let d = docs[0].as_ref().expect("parses");
        let item = d.lines.child("items[0]");
        assert_eq!(item.line_of("metadata.name"), Some(5));
        assert_eq!(item.line_of(""), Some(3));
    }
}
