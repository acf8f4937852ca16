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
use crate::model::objects::ObjectMap;
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
    /// Every definition of each key, in file order (then order within the file): the
    /// first is the one in force, the others are errors.
    definitions: BTreeMap<ObjectKey, Vec<Arc<Object>>>,
    /// The keys defined more than once.
    twice: BTreeSet<ObjectKey>,
    /// The objects in force, kept between loads and patched with what changed.
    objects: ObjectMap,
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

/// The file an object was read from (the order definitions take effect in).
fn file_of(o: &Object) -> Option<&Path> {
    o.origin.file.as_deref().map(PathBuf::as_path)
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
            definitions: BTreeMap::new(),
            twice: BTreeSet::new(),
            objects: ObjectMap::new(),
        })
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Re-reads what changed and returns the whole configuration: the previous one
    /// patched with the objects of the files that changed, so an edit costs its file,
    /// not every object.
    pub fn load(&mut self) -> ConfigSet {
        let mut paths = Vec::new();
        for d in &self.dirs {
            list_files(d, &mut paths);
        }
        let present: BTreeSet<PathBuf> = paths.into_iter().collect();
        // What each changed file defined before: it leaves the definitions.
        let mut replaced: Vec<Arc<Object>> = Vec::new();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            if let Some(state) = self.files.remove(&p) {
                replaced.extend(state.objects);
            }
        }
        let mut changed = Vec::new();
        // Each file once, even where the folders overlap.
        for path in present {
            if let Some(old) = self.refresh(path.clone()) {
                replaced.extend(old);
                changed.push(path);
            }
        }
        let mut affected: BTreeSet<ObjectKey> = BTreeSet::new();
        for old in replaced {
            if let Some(defs) = self.definitions.get_mut(&old.key) {
                defs.retain(|o| !Arc::ptr_eq(o, &old));
            }
            affected.insert(old.key.clone());
        }
        for path in &changed {
            let Some(state) = self.files.get(path) else {
                continue;
            };
            for o in &state.objects {
                let defs = self.definitions.entry(o.key.clone()).or_default();
                // After every definition from this file or one before it.
                let at = defs.partition_point(|d| file_of(d) <= file_of(o));
                defs.insert(at, o.clone());
                affected.insert(o.key.clone());
            }
        }
        for key in affected {
            let defs = self.definitions.get(&key).filter(|d| !d.is_empty());
            match defs.and_then(|d| d.first()) {
                Some(first) => {
                    if !self
                        .objects
                        .get(&key)
                        .is_some_and(|o| Arc::ptr_eq(o, first))
                    {
                        self.objects.insert(key.clone(), first.clone());
                    }
                }
                None => {
                    self.objects.remove(&key);
                }
            }
            if defs.is_some_and(|d| d.len() > 1) {
                self.twice.insert(key);
            } else {
                if defs.is_none() {
                    self.definitions.remove(&key);
                }
                self.twice.remove(&key);
            }
        }
        ConfigSet {
            objects: self.objects.clone(),
            diagnostics: self.diagnostics(),
        }
    }

    /// Each file's diagnostics in file order, each followed by the file's definitions
    /// of a key another definition holds.
    fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for state in self.files.values() {
            out.extend(state.diagnostics.iter().cloned());
            if self.twice.is_empty() {
                continue;
            }
            for obj in &state.objects {
                if !self.twice.contains(&obj.key) {
                    continue;
                }
                let Some(first) = self.definitions.get(&obj.key).and_then(|d| d.first()) else {
                    continue;
                };
                if Arc::ptr_eq(first, obj) {
                    continue;
                }
                out.push(
                    Diagnostic::error(
                        obj.origin.clone(),
                        format!(
                            "{} is defined twice; the definition at {} is used",
                            obj.key, first.origin
                        ),
                    )
                    .object(obj.key.to_string())
                    .hint("delete one of the two definitions"),
                );
            }
        }
        out
    }

    /// Re-reads `path` if it changed; returns the objects it defined before when its
    /// objects may have changed.
    fn refresh(&mut self, path: PathBuf) -> Option<Vec<Arc<Object>>> {
        let fingerprint = std::fs::metadata(&path).ok().map(|m| Fingerprint {
            modified: m.modified().ok(),
            len: m.len(),
        });
        let previous = self.files.remove(&path).unwrap_or_default();
        if fingerprint.is_some() && previous.fingerprint == fingerprint {
            self.files.insert(path, previous);
            return None;
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
                return None;
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
            return None;
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
        Some(previous.objects)
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

    /// What a load gives, comparable between two sources: each object's key, content
    /// and origin, and the diagnostics as text.
    fn contents(set: &ConfigSet) -> (Vec<(String, u64, String)>, Vec<String>) {
        (
            set.objects
                .iter()
                .map(|(k, o)| (k.to_string(), o.hash, o.origin.to_string()))
                .collect(),
            set.diagnostics.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn patched_loads_equal_fresh_loads() {
        let d = tempdir("patched");
        let named = |name: &str| VS.replace("name: reviews", &format!("name: {name}"));
        write(
            &d,
            "a.yaml",
            &format!("{}---\n{}", named("one"), named("two")),
        );
        write(&d, "b.yaml", &named("three"));
        let mut src = FileSource::new(vec![d.clone()], "default").expect("dir");
        let check = |src: &mut FileSource| {
            let patched = src.load();
            let fresh = FileSource::new(vec![d.clone()], "default")
                .expect("dir")
                .load();
            assert_eq!(contents(&patched), contents(&fresh));
            patched
        };
        let first = check(&mut src);
        assert_eq!(first.objects.len(), 3);
        // Nothing changed: the same objects, not copies.
        let again = check(&mut src);
        assert_eq!(again.objects.unshared_kinds(&first.objects).count(), 0);
        // A second definition in an earlier file takes over; the later one is an error.
        write(
            &d,
            "0.yaml",
            &named("three").replace("[reviews]", "[ratings]"),
        );
        let set = check(&mut src);
        assert_eq!(set.diagnostics.len(), 1, "{:?}", set.diagnostics);
        // The earlier file goes: the later definition is in force again, alone.
        std::fs::remove_file(d.join("0.yaml")).expect("rm");
        let set = check(&mut src);
        assert!(set.diagnostics.is_empty());
        // A key defined twice in one file: the first stays in force.
        write(
            &d,
            "b.yaml",
            &format!(
                "{}---\n{}",
                named("three"),
                named("three").replace("[reviews]", "[x]")
            ),
        );
        check(&mut src);
        // An edit moves an object from one file to another.
        write(&d, "a.yaml", &named("one"));
        // (Each write below changes the file's length: a same-length rewrite within
        // the file system's timestamp tick would look unchanged.)
        write(&d, "c.yaml", &named("two").replace("[reviews]", "[moved]"));
        let set = check(&mut src);
        assert_eq!(set.objects.len(), 3);
        // A refused edit keeps the last good version (which a fresh source has not
        // seen, so this one is not compared).
        write(
            &d,
            "c.yaml",
            &named("two").replace("hosts: [reviews]", "hosts: nope"),
        );
        let set = src.load();
        assert_eq!(set.objects.len(), 3);
        assert!(
            set.diagnostics
                .iter()
                .any(|d| d.reason.contains("last good"))
        );
        // Fixed again.
        write(
            &d,
            "c.yaml",
            &named("two").replace("[reviews]", "[fixed-at-last]"),
        );
        check(&mut src);
    }
}
