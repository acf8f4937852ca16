//! YAML output the way Kubernetes tools write it (Go's `sigs.k8s.io/yaml`: JSON values
//! encoded by yaml.v2/libyaml), so that `meshd kube-inject` and `meshd crds` print what
//! `istioctl` and Istio's generators print, byte for byte: block style, two-space indent,
//! sequences level with their key, keys in yaml.v2's order, and libyaml's choice of plain,
//! single-quoted, double-quoted or literal scalars, folded at 80 columns.

use std::cmp::Ordering;

use serde_json::Value;

/// Lines longer than this are folded at a space (libyaml's best width).
const WIDTH: usize = 80;

/// One YAML document (no `---`), ending with a newline.
pub fn to_string(v: &Value) -> String {
    let mut w = Writer::default();
    match v {
        Value::Object(m) if !m.is_empty() => w.mapping(m, 0),
        Value::Array(a) if !a.is_empty() => w.sequence(a, 0),
        other => {
            w.scalar_value(other, 0);
            w.newline();
        }
    }
    w.out
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)`, as yaml.v2 and `fmt` print float64.
pub fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-tripping digits, like Go's.
    let e = format!("{:e}", f.abs());
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    // Shortest 'g': exponent form below 1e-4 and from 1e6 (Go decides with precision 6).
    if !(-4..6).contains(&exp) {
        return format!("{sign}{}", exp_form(&digits, exp));
    }
    let dp = exp + 1;
    // %f with the shortest digits.
    let s = if dp <= 0 {
        format!("0.{}{}", "0".repeat((-dp) as usize), digits)
    } else if dp as usize >= digits.len() {
        format!("{}{}", digits, "0".repeat(dp as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..dp as usize], &digits[dp as usize..])
    };
    format!("{sign}{s}")
}

fn exp_form(digits: &str, exp: i32) -> String {
    let mant = if digits.len() > 1 {
        format!("{}.{}", &digits[..1], &digits[1..])
    } else {
        digits.to_string()
    };
    let (es, ev) = if exp < 0 { ('-', -exp) } else { ('+', exp) };
    format!("{mant}e{es}{ev:02}")
}

/// yaml.v2's key order: letters by code point, a non-letter before a letter, digit runs
/// by numeric value.
pub fn key_cmp(a: &str, b: &str) -> Ordering {
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let mut i = 0;
    while i < ar.len() && i < br.len() {
        if ar[i] == br[i] {
            i += 1;
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i].cmp(&br[i]);
        }
        if al || bl {
            return if bl {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let (mut an, mut bn): (i64, i64) = (0, 0);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an.wrapping_mul(10).wrapping_add(ar[ai] as i64 - '0' as i64);
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn.wrapping_mul(10).wrapping_add(br[bi] as i64 - '0' as i64);
            bi += 1;
        }
        if an != bn {
            return an.cmp(&bn);
        }
        if ai != bi {
            return ai.cmp(&bi);
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

/// Would yaml.v2 read this plain text as something other than a string?
pub fn resolves_to_non_string(s: &str) -> bool {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return true,
        "y" | "Y" | "yes" | "Yes" | "YES" | "n" | "N" | "no" | "No" | "NO" | "true" | "True"
        | "TRUE" | "false" | "False" | "FALSE" | "on" | "On" | "ON" | "off" | "Off" | "OFF" => {
            return true;
        }
        ".nan" | ".NaN" | ".NAN" | ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF"
        | "-.inf" | "-.Inf" | "-.INF" | "<<" => return true,
        _ => {}
    }
    let first = s.chars().next().unwrap_or(' ');
    if first == '.' {
        return s[1..].parse::<f64>().is_ok() && s[1..].chars().all(|c| c.is_ascii_digit());
    }
    if !(first.is_ascii_digit() || first == '-' || first == '+') {
        return false;
    }
    if is_timestamp(s) {
        return true;
    }
    let plain: String = s.chars().filter(|c| *c != '_').collect();
    if parse_go_int(&plain) {
        return true;
    }
    if is_float(&plain) {
        return true;
    }
    if let Some(rest) = s.strip_prefix("0b").or_else(|| s.strip_prefix("-0b"))
        && !rest.is_empty()
        && rest.chars().all(|c| c == '0' || c == '1')
    {
        return true;
    }
    is_base60_float(s)
}

/// `strconv.ParseInt(s, 0, 64)` or ParseUint: decimal, 0x, 0o, 0b, leading-0 octal.
fn parse_go_int(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    if body.is_empty() {
        return false;
    }
    let (digits, radix) =
        if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (h, 16)
        } else if let Some(o) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
            (o, 8)
        } else if let Some(b) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
            (b, 2)
        } else if body.len() > 1 && body.starts_with('0') {
            (&body[1..], 8)
        } else {
            (body, 10)
        };
    !digits.is_empty() && u128::from_str_radix(digits, radix).is_ok_and(|v| v <= u64::MAX as u128)
}

fn is_float(s: &str) -> bool {
    // ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let start = i;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let d = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == d {
            return false;
        }
    } else {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let d = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == d {
            return false;
        }
    }
    i == b.len()
}

fn is_base60_float(s: &str) -> bool {
    // ^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (main, _frac) = match body.split_once('.') {
        Some((m, f)) if f.chars().all(|c| c.is_ascii_digit() || c == '_') => (m, Some(f)),
        Some(_) => return false,
        None => (body, None),
    };
    let mut parts = main.split(':');
    let Some(head) = parts.next() else {
        return false;
    };
    if !head.starts_with(|c: char| c.is_ascii_digit())
        || !head.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return false;
    }
    let mut n = 0;
    for p in parts {
        n += 1;
        let ok = match p.len() {
            1 => p.chars().all(|c| c.is_ascii_digit()),
            2 => {
                let c: Vec<char> = p.chars().collect();
                ('0'..='5').contains(&c[0]) && c[1].is_ascii_digit()
            }
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    n > 0
}

/// yaml.v2's timestamp forms: a date, or a date and time.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    // YYYY-M?M-D?D at least.
    let digits = |from: usize, n: usize| {
        b.len() >= from + n && b[from..from + n].iter().all(u8::is_ascii_digit)
    };
    if !(digits(0, 4) && b.get(4) == Some(&b'-')) {
        return false;
    }
    // Try the layouts Go's yaml.v2 tries via time.Parse; a light check suffices here.
    let rest = &s[5..];
    let mut it = rest.splitn(2, '-');
    let (Some(m), Some(tail)) = (it.next(), it.next()) else {
        return false;
    };
    if m.is_empty() || m.len() > 2 || !m.chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let day: String = tail.chars().take_while(|c| c.is_ascii_digit()).collect();
    if day.is_empty() || day.len() > 2 {
        return false;
    }
    let after = &tail[day.len()..];
    after.is_empty() || after.starts_with(['T', 't', ' ', '\t'])
}

#[derive(Default)]
struct Writer {
    out: String,
    column: usize,
}

/// libyaml's analysis of a scalar.
struct Analysis {
    multiline: bool,
    plain_allowed: bool,
    single_allowed: bool,
    block_allowed: bool,
}

fn is_printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{85}')
        || (' '..='~').contains(&c)
        || ('\u{A0}'..='\u{D7FF}').contains(&c)
        || (('\u{E000}'..='\u{FFFD}').contains(&c) && c != '\u{FEFF}')
        || ('\u{10000}'..='\u{10FFFF}').contains(&c)
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn analyze(s: &str) -> Analysis {
    if s.is_empty() {
        return Analysis {
            multiline: false,
            plain_allowed: false,
            single_allowed: true,
            block_allowed: false,
        };
    }
    let chars: Vec<char> = s.chars().collect();
    let mut block_indicators = s.starts_with("---") || s.starts_with("...");
    let mut flow_indicators = block_indicators;
    let (mut line_breaks, mut special) = (false, false);
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
        (false, false, false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut prev_space, mut prev_break) = (false, false);
    let mut preceded_by_ws = true;
    let n = chars.len();
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied();
        let followed_by_ws = next.is_none_or(|c| c == ' ' || c == '\t' || is_break(c));
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => {
                    flow_indicators = true;
                    block_indicators = true;
                }
                '?' | ':' => {
                    flow_indicators = true;
                    if followed_by_ws {
                        block_indicators = true;
                    }
                }
                '-' if followed_by_ws => {
                    flow_indicators = true;
                    block_indicators = true;
                }
                _ => {}
            }
        } else {
            match c {
                ',' | '?' | '[' | ']' | '{' | '}' => flow_indicators = true,
                ':' => {
                    flow_indicators = true;
                    if followed_by_ws {
                        block_indicators = true;
                    }
                }
                '#' if preceded_by_ws => {
                    flow_indicators = true;
                    block_indicators = true;
                }
                _ => {}
            }
        }
        if !is_printable(c) {
            special = true;
        }
        if is_break(c) {
            line_breaks = true;
        }
        if c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i == n - 1 {
                trailing_space = true;
            }
            if prev_break {
                break_space = true;
            }
            prev_space = true;
            prev_break = false;
        } else if is_break(c) {
            if i == 0 {
                leading_break = true;
            }
            if i == n - 1 {
                trailing_break = true;
            }
            if prev_space {
                space_break = true;
            }
            prev_break = true;
            prev_space = false;
        } else {
            prev_space = false;
            prev_break = false;
        }
        preceded_by_ws = c == ' ' || c == '\t' || is_break(c);
    }
    let mut plain = true;
    let mut single = true;
    let mut block = true;
    if leading_space || leading_break || trailing_space || trailing_break {
        plain = false;
    }
    if trailing_space {
        block = false;
    }
    if break_space {
        plain = false;
        single = false;
    }
    if space_break || special {
        plain = false;
        single = false;
        block = false;
    }
    if line_breaks {
        plain = false;
    }
    if block_indicators {
        plain = false;
    }
    let _ = flow_indicators;
    Analysis {
        multiline: line_breaks,
        plain_allowed: plain,
        single_allowed: single,
        block_allowed: block,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

impl Writer {
    fn write(&mut self, s: &str) {
        self.out.push_str(s);
        self.column += s.chars().count();
    }

    fn newline(&mut self) {
        self.out.push('\n');
        self.column = 0;
    }

    fn indent_to(&mut self, indent: usize) {
        if self.column > 0 {
            self.newline();
        }
        for _ in 0..indent {
            self.out.push(' ');
        }
        self.column = indent;
    }

    /// A block mapping whose keys start at `indent` (the first key where the cursor is,
    /// when it is already at `indent`, e.g. after "- ").
    fn mapping(&mut self, m: &serde_json::Map<String, Value>, indent: usize) {
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort_by(|a, b| key_cmp(a, b));
        for (i, k) in keys.into_iter().enumerate() {
            if i > 0 || self.column != indent {
                self.indent_to(indent);
            }
            self.string(k, indent + 2, true);
            self.write(":");
            let v = &m[k];
            match v {
                Value::Object(o) if !o.is_empty() => {
                    self.newline();
                    self.mapping(o, indent + 2);
                }
                Value::Array(a) if !a.is_empty() => {
                    self.newline();
                    // Sequences in a mapping are not indented (libyaml's indentless).
                    self.sequence(a, indent);
                }
                _ => {
                    self.write(" ");
                    self.scalar_value(v, indent + 2);
                }
            }
        }
        self.newline_if_needed();
    }

    fn newline_if_needed(&mut self) {
        if self.column > 0 {
            self.newline();
        }
    }

    fn sequence(&mut self, a: &[Value], indent: usize) {
        for v in a {
            self.indent_to(indent);
            self.write("- ");
            match v {
                Value::Object(o) if !o.is_empty() => self.mapping(o, indent + 2),
                Value::Array(x) if !x.is_empty() => self.sequence_inline(x, indent + 2),
                _ => {
                    self.scalar_value(v, indent + 2);
                }
            }
        }
        self.newline_if_needed();
    }

    /// A sequence whose first item continues the current line ("- - a").
    fn sequence_inline(&mut self, a: &[Value], indent: usize) {
        for (i, v) in a.iter().enumerate() {
            if i > 0 {
                self.indent_to(indent);
            }
            self.write("- ");
            match v {
                Value::Object(o) if !o.is_empty() => self.mapping(o, indent + 2),
                Value::Array(x) if !x.is_empty() => self.sequence_inline(x, indent + 2),
                _ => self.scalar_value(v, indent + 2),
            }
        }
        self.newline_if_needed();
    }

    fn scalar_value(&mut self, v: &Value, indent: usize) {
        match v {
            Value::Null => self.write("null"),
            Value::Bool(b) => self.write(if *b { "true" } else { "false" }),
            Value::Number(n) => {
                let s = if n.is_f64() {
                    match n.as_f64().unwrap_or(0.0) {
                        f if f.is_nan() => ".nan".into(),
                        f if f.is_infinite() && f > 0.0 => ".inf".into(),
                        f if f.is_infinite() => "-.inf".into(),
                        f => go_float(f),
                    }
                } else {
                    n.to_string()
                };
                self.write(&s);
            }
            Value::String(s) => self.string(s, indent, false),
            Value::Object(_) => self.write("{}"),
            Value::Array(_) => self.write("[]"),
        }
    }

    /// A string scalar; `indent` is where continuation lines start.
    fn string(&mut self, s: &str, indent: usize, key: bool) {
        let requested = if resolves_to_non_string(s) {
            Style::Double
        } else if s.contains('\n') {
            Style::Literal
        } else {
            Style::Plain
        };
        let a = analyze(s);
        let mut style = requested;
        if style == Style::Plain {
            if key && a.multiline {
                style = Style::Double;
            } else if !a.plain_allowed || (s.is_empty() && key) {
                style = Style::Single;
            }
        }
        if style == Style::Single && !a.single_allowed {
            style = Style::Double;
        }
        if style == Style::Literal && (!a.block_allowed || key) {
            style = Style::Double;
        }
        let allow_breaks = !key;
        match style {
            Style::Plain => self.plain(s, indent, allow_breaks),
            Style::Single => self.single(s, indent, allow_breaks),
            Style::Double => self.double(s, indent, allow_breaks),
            Style::Literal => self.literal(s, indent),
        }
    }

    fn plain(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        let chars: Vec<char> = s.chars().collect();
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                let next_space = chars.get(i + 1).is_some_and(|n| *n == ' ');
                if allow_breaks && !spaces && self.column > WIDTH && !next_space {
                    self.indent_to(indent);
                } else {
                    self.write(" ");
                }
                spaces = true;
            } else {
                self.write(c.encode_utf8(&mut [0; 4]));
                spaces = false;
            }
        }
    }

    fn single(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        self.write("'");
        let chars: Vec<char> = s.chars().collect();
        let n = chars.len();
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                let next_space = chars.get(i + 1).is_some_and(|n| *n == ' ');
                if allow_breaks
                    && !spaces
                    && self.column > WIDTH
                    && i != 0
                    && i != n - 1
                    && !next_space
                {
                    self.indent_to(indent);
                } else {
                    self.write(" ");
                }
                spaces = true;
            } else {
                if c == '\'' {
                    self.write("''");
                } else {
                    self.write(c.encode_utf8(&mut [0; 4]));
                }
                spaces = false;
            }
        }
        self.write("'");
    }

    fn double(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        self.write("\"");
        let chars: Vec<char> = s.chars().collect();
        let n = chars.len();
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if !is_printable(c) || c == '\u{FEFF}' || is_break(c) || c == '"' || c == '\\' {
                let esc = match c {
                    '\0' => "\\0".to_string(),
                    '\u{7}' => "\\a".into(),
                    '\u{8}' => "\\b".into(),
                    '\t' => "\\t".into(),
                    '\n' => "\\n".into(),
                    '\u{B}' => "\\v".into(),
                    '\u{C}' => "\\f".into(),
                    '\r' => "\\r".into(),
                    '\u{1B}' => "\\e".into(),
                    '"' => "\\\"".into(),
                    '\\' => "\\\\".into(),
                    '\u{85}' => "\\N".into(),
                    '\u{A0}' => "\\_".into(),
                    '\u{2028}' => "\\L".into(),
                    '\u{2029}' => "\\P".into(),
                    c if (c as u32) <= 0xFF => format!("\\x{:02X}", c as u32),
                    c if (c as u32) <= 0xFFFF => format!("\\u{:04X}", c as u32),
                    c => format!("\\U{:08X}", c as u32),
                };
                self.write(&esc);
                spaces = false;
            } else if c == ' ' {
                if allow_breaks && !spaces && self.column > WIDTH && i != 0 && i != n - 1 {
                    self.indent_to(indent);
                    if chars.get(i + 1) == Some(&' ') {
                        self.write("\\");
                    }
                } else {
                    self.write(" ");
                }
                spaces = true;
            } else {
                self.write(c.encode_utf8(&mut [0; 4]));
                spaces = false;
            }
        }
        self.write("\"");
    }

    fn literal(&mut self, s: &str, indent: usize) {
        self.write("|");
        let first = s.chars().next().unwrap_or('x');
        if first == ' ' || is_break(first) {
            self.write("2");
        }
        let trailing_breaks = s.chars().rev().take_while(|c| is_break(*c)).count();
        if trailing_breaks == 0 {
            self.write("-");
        } else if trailing_breaks >= 2 || s.chars().count() == 1 {
            self.write("+");
        }
        self.newline();
        let mut at_line_start = true;
        for c in s.chars() {
            if is_break(c) {
                self.newline();
                at_line_start = true;
            } else {
                if at_line_start {
                    for _ in 0..indent {
                        self.out.push(' ');
                    }
                    self.column = indent;
                    at_line_start = false;
                }
                self.write(c.encode_utf8(&mut [0; 4]));
            }
        }
        // The value's own final break was written; the caller's newline is not needed.
        if s.ends_with('\n') {
            self.column = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layout_and_quoting_like_kubectl() {
        let v = json!({
            "spec": {
                "containers": [{"name": "istio-proxy", "args": ["-p", "15001", "*", "", "--x=y"],
                                "resources": {}, "env": [{"name": "A", "value": "{}\n"}, {"name": "B", "value": "[\n]"}]}],
                "replicas": 7,
                "empty": [],
            },
            "status": {},
            "annotations": {"prometheus.io/port": "15020", "s": "{\"a\":1}", "t": "true", "k": "a: b"},
        });
        let want = "annotations:\n  k: 'a: b'\n  prometheus.io/port: \"15020\"\n  s: '{\"a\":1}'\n  t: \"true\"\nspec:\n  containers:\n  - args:\n    - -p\n    - \"15001\"\n    - '*'\n    - \"\"\n    - --x=y\n    env:\n    - name: A\n      value: |\n        {}\n    - name: B\n      value: |-\n        [\n        ]\n    name: istio-proxy\n    resources: {}\n  empty: []\n  replicas: 7\nstatus: {}\n";
        assert_eq!(to_string(&v), want);
    }

    #[test]
    fn key_order_is_yaml_v2s() {
        let mut keys = vec!["b", "a_b", "aZb", "x10", "x2", "A", "a", "1", "_"];
        keys.sort_by(|a, b| key_cmp(a, b));
        assert_eq!(
            keys,
            vec!["_", "1", "A", "a", "a_b", "aZb", "b", "x2", "x10"]
        );
    }

    #[test]
    fn floats_like_go() {
        assert_eq!(go_float(15020.0), "15020");
        assert_eq!(go_float(0.5), "0.5");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1e-5), "1e-05");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
    }

    #[test]
    fn long_plain_strings_fold_at_80_columns() {
        let words = vec!["word"; 30].join(" ");
        let out = to_string(&json!({"k": words}));
        assert!(out.lines().count() > 1, "{out}");
        assert!(
            out.lines().nth(1).is_some_and(|l| l.starts_with("  word")),
            "{out}"
        );
    }
}
