//! Generated resources shared between proxies. Proxies of one class — same kind,
//! namespace, labels, locality, Sidecar, interception mode, served services — get byte-identical
//! resources, so each class is translated once per snapshot, however many proxies it has.
//! The cache is keyed by the snapshot generation and emptied when a new one is published.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::translate::ProxyContext;

/// A generated resource with its content-hash version, encoded once and shared by
/// every proxy that gets it.
#[derive(Debug)]
pub struct Generated {
    pub name: String,
    pub version: String,
    /// The resource as an encoded `google.protobuf.Any` (in parts: see
    /// [`crate::envoy::encoded`]).
    pub any: crate::envoy::encoded::Encoded,
}

/// An async cell: streams waiting for another stream's computation of the same set
/// wait without holding a thread.
type Cell = Arc<OnceCell<Arc<Vec<Arc<Generated>>>>>;

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    /// Each set with the names it was generated for: a key is a 64-bit hash, and a
    /// client chooses the names it subscribes to, so a hit is checked against them —
    /// names crafted to collide with another class's key never serve that class.
    sets: HashMap<(String, u64), (super::names::Names, Cell)>,
    /// Single resources shared across subscriptions (load assignments).
    one: HashMap<(u64, String), Option<Arc<Generated>>>,
    /// Resources by name and content, for sets made per proxy (listeners: their key
    /// holds the proxy's address, which few listeners depend on): proxies whose
    /// listeners come out the same hold one copy instead of one each.
    interned: HashMap<u64, Arc<Generated>>,
}

#[derive(Debug, Default)]
pub struct ResourceCache {
    inner: Mutex<Inner>,
}

/// At most this many shared sets per snapshot. Named subscriptions key sets by the
/// names asked for, and a client can ask for any names: past the bound, sets are
/// computed for the asker alone instead of kept.
const MAX_SETS: usize = 20_000;

/// At most this many single resources per snapshot (load assignments: one per cluster
/// and client rule, so large meshes need many).
const MAX_ONE: usize = 200_000;

/// At most this many interned resources per snapshot (past it, a set keeps its own).
const MAX_INTERNED: usize = 200_000;

/// Everything about a proxy that translation reads (the proxy's class). `with_address` adds the proxy's IPs
/// (listeners bound to the pod address depend on it; clusters and routes do not).
pub fn class_key(ctx: &ProxyContext, with_address: bool) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    ctx.proxy.kind.hash(&mut h);
    ctx.proxy.namespace.hash(&mut h);
    // Only the labels some configuration selects by: the others (pod-template-hash,
    // a StatefulSet's pod name) would make a class per pod.
    let keys = ctx.snap.selector_keys();
    for (k, v) in ctx.labels.iter().filter(|(k, _)| keys.contains(*k)) {
        k.hash(&mut h);
        v.hash(&mut h);
    }
    ctx.proxy.interception.hash(&mut h);
    // What output is gated on the version (Zipkin's collector as a service from 1.29,
    // its trace context option from 1.28), not the version itself: proxies of patch
    // releases share.
    ctx.proxy.istio_version.is_some().hash(&mut h);
    ctx.proxy.istio_version_at_least(1, 28).hash(&mut h);
    ctx.proxy.istio_version_at_least(1, 29).hash(&mut h);
    ctx.proxy.mtls_ready.hash(&mut h);
    // Locality load balancing shapes clusters (locality-weighted or not) by where the
    // client runs; the locality may come from the node or the workload's Node, neither
    // of which the labels show.
    ctx.locality.hash(&mut h);
    // Proxyless gRPC clients get other resources under the same names.
    ctx.proxy.proxyless.hash(&mut h);
    // Proxies the same EnvoyFilter patches select share; others do not.
    crate::translate::envoyfilter::selection_key(ctx).hash(&mut h);
    ctx.scope.sidecar.as_ref().map(|s| &s.key).hash(&mut h);
    for t in &ctx.targets {
        t.service.hostname.hash(&mut h);
        t.port.port.hash(&mut h);
        t.target_port.hash(&mut h);
    }
    if with_address {
        ctx.proxy.ips.hash(&mut h);
        // Listeners' tracers name the proxy: its service cluster, or OpenTelemetry's
        // service name from the pod (its name, workload, annotation and labels).
        ctx.proxy.service_cluster.hash(&mut h);
        ctx.proxy.pod.hash(&mut h);
        for k in ["app.kubernetes.io/instance", "app.kubernetes.io/name"] {
            ctx.labels.get(k).hash(&mut h);
        }
        // (Read in place: this runs for every push of every connection.)
        for k in ["WORKLOAD_NAME", "APP_CONTAINERS"] {
            ctx.proxy.metadata.get(k).hash(&mut h);
        }
        ctx.proxy.metadata.otel_service_name().hash(&mut h);
    }
    h.finish()
}

impl Inner {
    /// Moves the cache to `generation`; false for an older one (not cached).
    fn at(&mut self, generation: u64) -> bool {
        if generation < self.generation {
            return false;
        }
        if generation > self.generation {
            // Only ever serve the newest snapshot: older entries are dropped.
            self.generation = generation;
            self.sets.clear();
            self.one.clear();
            self.interned.clear();
        }
        true
    }
}

impl ResourceCache {
    /// The cached resources for (`type_url`, `key`) in snapshot `generation`, computing
    /// them with `f` once if needed. Concurrent callers for the same key wait for the
    /// first computation instead of repeating it (if the first caller goes away, the
    /// next one computes).
    pub async fn get_or_generate<F, Fut>(
        &self,
        generation: u64,
        type_url: &str,
        key: u64,
        names: &super::names::Names,
        f: F,
    ) -> Arc<Vec<Arc<Generated>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Vec<Arc<Generated>>>,
    {
        let cell: Option<Cell> = match self.inner.lock() {
            Err(_) => None,
            Ok(mut inner) => {
                let k = (type_url.to_string(), key);
                if !inner.at(generation) {
                    // An older snapshot: computed for the asker alone.
                    None
                } else {
                    match inner.sets.get(&k) {
                        Some((n, cell)) if Arc::ptr_eq(n, names) || **n == **names => {
                            Some(cell.clone())
                        }
                        // Same key, other names: computed for the asker alone.
                        Some(_) => None,
                        None if inner.sets.len() >= MAX_SETS => None,
                        None => Some(
                            inner
                                .sets
                                .entry(k)
                                .or_insert_with(|| (names.clone(), Cell::default()))
                                .1
                                .clone(),
                        ),
                    }
                }
            }
        };
        match cell {
            Some(cell) => cell
                .get_or_init(|| async { Arc::new(f().await) })
                .await
                .clone(),
            None => Arc::new(f().await),
        }
    }

    /// Moves the cache to a newly published snapshot. Sets are per snapshot and go;
    /// load assignments stay when the snapshot differs from the last only by endpoint
    /// churn (`churned`: the hosts whose endpoints moved), except those of the churned
    /// hosts — so a pod event costs the assignments of its service, not every cluster's
    /// again. Any other change (`None`) empties the cache.
    pub fn advance(&self, generation: u64, churned: Option<&std::collections::BTreeSet<String>>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if generation <= inner.generation {
            return;
        }
        inner.generation = generation;
        inner.sets.clear();
        inner.interned.clear();
        match churned {
            Some(hosts) => inner.one.retain(|(_, name), _| {
                crate::envoy::naming::parse_cluster(name)
                    .is_some_and(|(_, _, _, host)| !hosts.contains(host))
            }),
            None => inner.one.clear(),
        }
    }

    /// Drops the set under (`type_url`, `key`): for a named subscription whose names do
    /// not all exist, which only a confused or hostile client sends — its set is not
    /// worth keeping, and a client must not be able to fill the cache with names.
    pub fn forget(&self, generation: u64, type_url: &str, key: u64) {
        if let Ok(mut inner) = self.inner.lock()
            && inner.generation == generation
        {
            inner.sets.remove(&(type_url.to_string(), key));
        }
    }

    /// One resource (`name` under `key`), computed once per snapshot.
    pub fn one(
        &self,
        generation: u64,
        key: u64,
        name: &str,
        f: impl FnOnce() -> Option<Generated>,
    ) -> Option<Arc<Generated>> {
        let k = (key, name.to_string());
        if let Ok(mut inner) = self.inner.lock() {
            if !inner.at(generation) {
                drop(inner);
                return f().map(Arc::new);
            }
            if let Some(v) = inner.one.get(&k) {
                return v.clone();
            }
        }
        // Computed outside the lock; two racing callers compute the same value. Names
        // that exist nowhere are not remembered: any client can ask for any name.
        let v = f().map(Arc::new);
        if let Ok(mut inner) = self.inner.lock()
            && inner.generation == generation
            && v.is_some()
            && inner.one.len() < MAX_ONE
        {
            inner.one.insert(k, v.clone());
        }
        v
    }

    /// `set` with each resource replaced by an equal one already interned for
    /// snapshot `generation`, if there is one (and interned otherwise).
    pub fn interned(&self, generation: u64, set: Vec<Arc<Generated>>) -> Vec<Arc<Generated>> {
        let Ok(mut inner) = self.inner.lock() else {
            return set;
        };
        if inner.generation != generation {
            return set;
        }
        set.into_iter()
            .map(|r| {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(&(r.name.len() as u64).to_le_bytes());
                h.update(r.name.as_bytes());
                h.update(r.version.as_bytes());
                let key = h.digest();
                match inner.interned.get(&key) {
                    // The version is a 64-bit hash of the bytes: compared whole, so
                    // that a collision keeps its own copy rather than serve another's.
                    Some(known) if known.name == r.name && known.any == r.any => known.clone(),
                    Some(_) => r,
                    None if inner.interned.len() >= MAX_INTERNED => r,
                    None => {
                        inner.interned.insert(key, r.clone());
                        r
                    }
                }
            })
            .collect()
    }

    /// Number of entries (for tests and the benchmark).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.sets.len() + i.one.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> super::super::names::Names {
        Arc::new(names.iter().map(|n| n.to_string()).collect())
    }

    fn one(name: &str) -> Vec<Arc<Generated>> {
        vec![Arc::new(Generated {
            name: name.into(),
            version: "v".into(),
            any: Default::default(),
        })]
    }

    fn res(name: &str, bytes: &'static [u8]) -> Arc<Generated> {
        Arc::new(Generated {
            name: name.into(),
            version: super::super::generate::version_of(bytes),
            any: bytes::Bytes::from_static(bytes).into(),
        })
    }

    #[tokio::test]
    async fn equal_resources_of_per_proxy_sets_are_held_once() {
        let cache = ResourceCache::default();
        cache.advance(1, None);
        let a = cache.interned(1, vec![res("in", b"one"), res("out", b"two")]);
        let b = cache.interned(1, vec![res("in", b"other"), res("out", b"two")]);
        assert!(!Arc::ptr_eq(&a[0], &b[0]), "different bytes stay apart");
        assert_eq!(b[0].any.to_vec(), b"other");
        assert!(Arc::ptr_eq(&a[1], &b[1]), "equal resources are one copy");
        // Same bytes under another name are another resource.
        let c = cache.interned(1, vec![res("other", b"two")]);
        assert_eq!(c[0].name, "other");
        // A colliding key (forced here) with other bytes keeps its own.
        let forged = Arc::new(Generated {
            name: "out".into(),
            version: a[1].version.clone(),
            any: bytes::Bytes::from_static(b"forged").into(),
        });
        let d = cache.interned(1, vec![forged]);
        assert_eq!(d[0].any.to_vec(), b"forged");
        // A new snapshot starts empty; an older one is not interned into.
        cache.advance(2, None);
        let e = cache.interned(2, vec![res("out", b"two")]);
        assert!(!Arc::ptr_eq(&a[1], &e[0]));
        let f = cache.interned(1, vec![res("out", b"two")]);
        assert!(!Arc::ptr_eq(&e[0], &f[0]));
    }

    #[tokio::test]
    async fn a_colliding_key_with_other_names_never_serves_the_cached_set() {
        let cache = ResourceCache::default();
        let a = cache
            .get_or_generate(1, "t", 7, &set(&["x", "y"]), || async { one("real") })
            .await;
        assert_eq!(a[0].name, "real");
        // Same key, other names (a hash collision, or a client's crafted names).
        let b = cache
            .get_or_generate(1, "t", 7, &set(&["x\0y"]), || async { one("other") })
            .await;
        assert_eq!(b[0].name, "other", "computed for its own names");
        // The first names still get their set, computed once.
        let c = cache
            .get_or_generate(1, "t", 7, &set(&["x", "y"]), || async { one("again") })
            .await;
        assert_eq!(c[0].name, "real");
    }
}
