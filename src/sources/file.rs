//! The file source (meshd's embedded default): a directory of Kubernetes manifests as
//! `kubectl apply -f DIR --recursive` reads them, watched for changes.
//!
//! Each file is parsed on its own and cached by fingerprint, so an edit re-reads one
//! file. A document whose new version is refused keeps its last good version in force,
//! and a file with a YAML syntax error keeps the objects it had.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::model::diagnostic::{Diagnostic, Origin};
use crate::model::object::{Object, ObjectKey, key_of};
use crate::model::snapshot::ConfigSet;
use crate::sources::yaml::parse_documents;

/// Errors that stop the file source (not bad configuration, which is a Diagnostic).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config directory {0} does not exist or is not a directory")]
    NotADirectory(PathBuf),
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug, Default)]
struct FileState {
    fingerprint: Option<Fingerprint>,
    content_hash: u64,
    objects: Vec<Arc<Object>>,
    diagnostics: Vec<Diagnostic>,
}

/// Reads and re-reads one or more configuration directories.
#[derive(Debug)]
pub struct FileSource {
    dirs: Vec<PathBuf>,
    default_namespace: String,
    files: BTreeMap<PathBuf, FileState>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Files under `dir`, sorted; hidden entries (`.git`, ConfigMap volumes' `..data`) skipped.
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => list_files(&path, out),
            Ok(m) if m.is_file() && is_manifest(&path) => out.push(path),
            _ => {}
        }
    }
}

impl FileSource {
    pub fn new(dirs: Vec<PathBuf>, default_namespace: impl Into<String>) -> Result<Self, Error> {
        for d in &dirs {
            if !d.is_dir() {
                return Err(Error::NotADirectory(d.clone()));
            }
        }
        Ok(FileSource {
            dirs,
            default_namespace: default_namespace.into(),
            files: BTreeMap::new(),
        })
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Re-reads what changed and returns the whole configuration.
    pub fn load(&mut self) -> ConfigSet {
        let mut paths = Vec::new();
        for d in &self.dirs {
            list_files(d, &mut paths);
        }
        let present: BTreeSet<PathBuf> = paths.iter().cloned().collect();
        self.files.retain(|p, _| present.contains(p));
        for path in paths {
            self.refresh(path);
        }
        let mut set = ConfigSet::default();
        let mut owners: BTreeMap<ObjectKey, Origin> = BTreeMap::new();
        for state in self.files.values() {
            set.diagnostics.extend(state.diagnostics.iter().cloned());
            for obj in &state.objects {
                if let Some(first) = owners.get(&obj.key) {
                    set.diagnostics.push(
                        Diagnostic::error(
                            obj.origin.clone(),
                            format!(
                                "{} is defined twice; the definition at {first} is used",
                                obj.key
                            ),
                        )
                        .object(obj.key.to_string())
                        .hint("delete one of the two definitions"),
                    );
                    continue;
                }
                owners.insert(obj.key.clone(), obj.origin.clone());
                set.objects.insert(obj.key.clone(), obj.clone());
            }
        }
        set
    }

    fn refresh(&mut self, path: PathBuf) {
        let fingerprint = std::fs::metadata(&path).ok().map(|m| Fingerprint {
            modified: m.modified().ok(),
            len: m.len(),
        });
        let previous = self.files.remove(&path).unwrap_or_default();
        if fingerprint.is_some() && previous.fingerprint == fingerprint {
            self.files.insert(path, previous);
            return;
        }
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Vanished between listing and reading: the next scan drops it.
                let mut state = previous;
                state.diagnostics = vec![Diagnostic::error(
                    Origin::file(Arc::new(path.clone()), 1),
                    format!("cannot read file: {e}"),
                )];
                self.files.insert(path, state);
                return;
            }
        };
        let content_hash = xxhash_rust::xxh3::xxh3_64(&text);
        if content_hash == previous.content_hash && previous.fingerprint.is_some() {
            self.files.insert(
                path,
                FileState {
                    fingerprint,
                    ..previous
                },
            );
            return;
        }
        let state = self.parse_file(&path, &text, &previous);
        self.files.insert(
            path,
            FileState {
                fingerprint,
                content_hash,
                ..state
            },
        );
    }

    fn parse_file(&self, path: &Path, bytes: &[u8], previous: &FileState) -> FileState {
        let file = Arc::new(path.to_path_buf());
        let mut objects: Vec<Arc<Object>> = Vec::new();
        let mut diagnostics = Vec::new();
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                diagnostics.push(
                    Diagnostic::error(Origin::file(file, 1), format!("file is not UTF-8: {e}"))
                        .hint("manifests must be UTF-8 text"),
                );
                return FileState {
                    objects: previous.objects.clone(),
                    diagnostics,
                    ..Default::default()
                };
            }
        };
        let mut unreadable_document = false;
        let mut refused: Vec<ObjectKey> = Vec::new();
        for doc in parse_documents(text) {
            match doc {
                Err(e) => {
                    unreadable_document = true;
                    diagnostics.push(
                        Diagnostic::error(
                            Origin::file(file.clone(), e.line),
                            format!("YAML syntax error: {}", e.message),
                        )
                        .hint("check the indentation and quoting around this line"),
                    );
                }
                Ok(doc) => {
                    let key = key_of(&doc.value, &self.default_namespace);
                    let origin = Origin::file(file.clone(), doc.start_line);
                    let (objs, diags) =
                        Object::from_value(doc.value, doc.lines, origin, &self.default_namespace);
                    if diags.iter().any(Diagnostic::is_error)
                        && let Some(key) = key
                    {
                        refused.push(key);
                    }
                    objects.extend(objs);
                    diagnostics.extend(diags);
                }
            }
        }
        // Keep the last good version of what the new text failed to define.
        let defined: BTreeSet<ObjectKey> = objects.iter().map(|o| o.key.clone()).collect();
        for old in &previous.objects {
            let keep =
                !defined.contains(&old.key) && (refused.contains(&old.key) || unreadable_document);
            if keep {
                diagnostics.push(
                    Diagnostic::warning(
                        old.origin.clone(),
                        format!(
                            "{} keeps its last good version until the file is fixed",
                            old.key
                        ),
                    )
                    .object(old.key.to_string()),
                );
                objects.push(old.clone());
            }
        }
        FileState {
            objects,
            diagnostics,
            ..Default::default()
        }
    }

    /// Watches the directories and sends a fresh [`ConfigSet`] after each burst of changes
    /// (`quiet` without further events). Runs until the receiver is dropped.
    pub async fn watch(
        mut self,
        quiet: Duration,
        tx: mpsc::Sender<ConfigSet>,
    ) -> Result<(), Error> {
        use notify::{RecursiveMode, Watcher};
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reading the files ourselves raises access events: only changes count, or
            // every reload would trigger the next one.
            if let Ok(ev) = res
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = ev_tx.send(());
            }
        })
        .map_err(|source| Error::Watch {
            path: PathBuf::new(),
            source,
        })?;
        for d in &self.dirs {
            watcher
                .watch(d, RecursiveMode::Recursive)
                .map_err(|source| Error::Watch {
                    path: d.clone(),
                    source,
                })?;
        }
        while ev_rx.recv().await.is_some() {
            // Debounce: editors write a file in several steps (truncate, write, rename).
            // A folder written to without pause (a log file beside the YAML) still gets
            // loaded every few quiet times.
            let deadline = tokio::time::Instant::now() + quiet * 4;
            loop {
                let wait =
                    quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                match tokio::time::timeout(wait, ev_rx.recv()).await {
                    Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                    Ok(Some(())) => break,
                    Ok(None) => return Ok(()),
                    Err(_) => break,
                }
            }
            let set = self.load();
            if tx.send(set).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("meshd-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";

    #[test]
    fn nested_folders_and_duplicates() {
        let d = tempdir("dup");
        write(&d, "a.yaml", VS);
        write(&d, "sub/b.yml", VS);
        write(&d, "sub/.hidden.yaml", "not: [valid");
        write(&d, "notes.txt", "ignored");
        let mut src = FileSource::new(vec![d.clone()], "default").expect("dir");
        let set = src.load();
        assert_eq!(set.objects.len(), 1);
        assert_eq!(set.diagnostics.len(), 1, "{:?}", set.diagnostics);
        assert!(set.diagnostics[0].reason.contains("defined twice"));
        assert!(
            set.diagnostics[0]
                .origin
                .to_string()
                .contains("sub/b.yml:1")
        );
    }

    #[test]
    fn refused_new_version_keeps_last_good() {
        let d = tempdir("lastgood");
        write(&d, "vs.yaml", VS);
        let mut src = FileSource::new(vec![d.clone()], "default").expect("dir");
        let first = src.load();
        let good = first.objects.values().next().expect("one").clone();

        // A type error in the new version: the old one stays.
        write(
            &d,
            "vs.yaml",
            &VS.replace("hosts: [reviews]", "hosts: reviews"),
        );
        let set = src.load();
        assert_eq!(set.objects.len(), 1);
        assert_eq!(set.objects.values().next().map(|o| o.hash), Some(good.hash));
        assert!(set.diagnostics.iter().any(|d| d.is_error()));
        assert!(
            set.diagnostics
                .iter()
                .any(|d| d.reason.contains("last good"))
        );

        // A YAML syntax error: the file's objects stay.
        write(&d, "vs.yaml", "apiVersion: [broken\n");
        let set = src.load();
        assert_eq!(set.objects.len(), 1);

        // Deleting the file removes the object.
        std::fs::remove_file(d.join("vs.yaml")).expect("rm");
        assert!(src.load().objects.is_empty());
    }
}
