//! Diagnostics: what meshd says about configuration it could not use as written.
//!
//! Bad user configuration is never an error that stops meshd: the object is skipped (or its
//! last good version kept), everything else keeps being served, and a `Diagnostic` says
//! where, what and how to fix it. Diagnostics are shown by `meshd validate`, in
//! `/debug/configz`, in the log, and counted in metrics.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Accepted as written, but probably not what the user meant, or partly unsupported.
    Warning,
    /// The object (or the part named) was not used.
    Error,
}

/// Where an object came from: a file and line, or a Kubernetes resourceVersion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
pub struct Origin {
    /// File the object was read from (file source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<Arc<PathBuf>>,
    /// 1-based line of the start of the object's YAML document in `file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Kubernetes resourceVersion (cluster source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl Origin {
    /// An origin in a file at a line.
    pub fn file(file: Arc<PathBuf>, line: u32) -> Self {
        Origin {
            file: Some(file),
            line: Some(line),
            resource_version: None,
        }
    }

    /// The same origin with another line (a field inside the object).
    pub fn at_line(&self, line: u32) -> Self {
        Origin {
            line: Some(line),
            ..self.clone()
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line, &self.resource_version) {
            (Some(file), Some(line), _) => write!(f, "{}:{}", file.display(), line),
            (Some(file), None, _) => write!(f, "{}", file.display()),
            (None, _, Some(rv)) => write!(f, "cluster, resourceVersion {rv}"),
            _ => write!(f, "<unknown>"),
        }
    }
}

/// One finding about user configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// `Kind namespace/name` of the object, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub origin: Origin,
    /// Dotted path of the field at fault (`spec.http[0].route[1].destination.subset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The Istio analysis message this finding is (`IST0101`, …), for tools that read
    /// `status.validationMessages` as istiod writes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
}

/// Istio analysis messages meshd reports: (code, name, level), as in Istio's
/// `pkg/config/analysis/msg` catalogue.
pub const ANALYSIS_MESSAGES: [(&str, &str, &str); 4] = [
    ("IST0101", "ReferencedResourceNotFound", "ERROR"),
    ("IST0106", "SchemaValidationError", "ERROR"),
    (
        "IST0111",
        "MultipleSidecarsWithoutWorkloadSelectors",
        "ERROR",
    ),
    ("IST0133", "SchemaWarning", "WARNING"),
];

/// ReferencedResourceNotFound: a host, subset or gateway that does not exist.
pub const REFERENCED_RESOURCE_NOT_FOUND: &str = "IST0101";
/// MultipleSidecarsWithoutWorkloadSelectors.
pub const MULTIPLE_SIDECARS_WITHOUT_SELECTORS: &str = "IST0111";

impl Diagnostic {
    pub fn error(origin: Origin, reason: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            object: None,
            origin,
            field: None,
            reason: reason.into(),
            hint: None,
            code: None,
        }
    }

    pub fn warning(origin: Origin, reason: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(origin, reason)
        }
    }

    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        if !field.is_empty() && field != "." {
            self.field = Some(field);
        }
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The analysis code status shows: the specific one, else a schema error or warning.
    pub fn analysis_code(&self) -> &'static str {
        self.code.unwrap_or(match self.severity {
            Severity::Error => "IST0106",
            Severity::Warning => "IST0133",
        })
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{}: {sev}", self.origin)?;
        if let Some(obj) = &self.object {
            write!(f, ": {obj}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to `word` by edit distance, if it is close enough to be a
/// likely typo. Used for "did you mean" hints.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let limit = (word.len() / 3).max(2);
    best.filter(|(d, _)| *d <= limit).map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos_only() {
        let fields = ["hosts", "gateways", "http", "tls", "tcp", "exportTo"];
        assert_eq!(closest("host", fields), Some("hosts"));
        assert_eq!(closest("gateway", fields), Some("gateways"));
        assert_eq!(closest("exportto", fields), Some("exportTo"));
        assert_eq!(closest("completelydifferent", fields), None);
    }

    #[test]
    fn display_has_location_object_field_reason_hint() {
        let d = Diagnostic::error(
            Origin::file(Arc::new("a/b.yaml".into()), 7),
            "no such subset",
        )
        .object("VirtualService default/reviews")
        .field("spec.http[0].route[0].destination.subset")
        .hint("add it to the DestinationRule");
        assert_eq!(
            d.to_string(),
            "a/b.yaml:7: error: VirtualService default/reviews: \
             spec.http[0].route[0].destination.subset: no such subset \
             (hint: add it to the DestinationRule)"
        );
    }
}
