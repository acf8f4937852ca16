//! The resources of one type for one watch: translation's output packed once into the
//! shared encoded form ([`Generated`]) every stream sends from.

use std::sync::Arc;

use prost::Message;

use super::cache::{Generated, ResourceCache};
use super::watch::WatchState;
use crate::envoy::encoded::Encoded;
use crate::envoy::{pb, type_url};
use crate::translate::{self, ProxyContext};

pub(super) fn version_of(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// A resource packed once for every proxy that gets it: its `Any`, encoded.
pub(super) fn packed(name: String, any: &envoy_types::pb::google::protobuf::Any) -> Generated {
    packed_bytes(name, any.encode_to_vec())
}

/// [`packed`] for an `Any` already encoded.
pub(super) fn packed_bytes(name: String, any: Vec<u8>) -> Generated {
    packed_encoded(name, any.into())
}

/// [`packed`] for an `Any` already encoded, possibly in parts (which carry their
/// version).
pub(super) fn packed_encoded(name: String, any: Encoded) -> Generated {
    let version = match &any {
        Encoded::One(b) => version_of(b),
        Encoded::Parts { version, .. } => format!("{version:016x}"),
    };
    Generated { name, version, any }
}

pub(super) fn wrap<T: Message + prost::Name>(name: String, msg: &T) -> Generated {
    packed(name, &pb::resource(msg))
}

/// Load assignments, each computed once per snapshot for all proxies. A load assignment
/// depends on the client only through the DestinationRule that defines its subset.
pub(super) fn endpoints(
    ctx: &ProxyContext,
    cache: &ResourceCache,
    w: &WatchState,
) -> Vec<Arc<Generated>> {
    use crate::envoy::naming;
    // `failoverPriority` orders endpoints by how many of the named labels they share
    // with the client: the client's values of those labels are part of the key.
    let failover = {
        let keys = ctx.snap.failover_keys();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (k, v) in ctx.labels.iter().filter(|(k, _)| keys.contains(*k)) {
            for part in [k, v] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        h.digest()
    };
    w.names
        .iter()
        .filter_map(|name| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            // The rule matters for subsets, and (through locality load balancing) for
            // any cluster of a client that has a locality.
            if let Some(dr) = naming::parse_cluster(name)
                .filter(|(_, _, subset, _)| !subset.is_empty() || !ctx.locality.is_empty())
                .and_then(|(_, _, _, host)| ctx.snap.services.get(host))
                .and_then(|svc| {
                    ctx.snap
                        .destination_rule(&ctx.proxy.namespace, ctx.labels, svc)
                })
            {
                h.update(dr.key.namespace.as_bytes());
                h.update(&[0]);
                h.update(dr.key.name.as_bytes());
            }
            h.update(&[0]);
            // Locality load balancing makes the assignment depend on where the client
            // is.
            h.update(ctx.locality.as_bytes());
            h.update(&failover.to_le_bytes());
            let dr_key = h.digest();
            cache.one(ctx.snap.generation, dr_key, name, || {
                translate::endpoints(ctx, std::slice::from_ref(name))
                    .first()
                    .map(|e| wrap(e.cluster_name.clone(), e))
            })
        })
        .collect()
}

/// Resources for a proxyless gRPC client: only the names it asked for.
pub(super) fn generate_grpc(ctx: &ProxyContext, w: &WatchState) -> Vec<Arc<Generated>> {
    let names = w.names.iter();
    match &*w.type_url {
        type_url::LISTENER => names
            .filter_map(|n| translate::grpc::listener(ctx, n))
            .map(|l| Arc::new(wrap(l.name.clone(), &l)))
            .collect(),
        type_url::ROUTE => names
            .filter_map(|n| translate::grpc::route_config(ctx, n))
            .map(|r| Arc::new(wrap(r.name.clone(), &r)))
            .collect(),
        type_url::CLUSTER => names
            .filter_map(|n| translate::grpc::cluster(ctx, n))
            .map(|c| Arc::new(wrap(c.name.clone(), &c)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Sets are kept sorted by name: a stream remembers what its client holds as the set
/// last sent and looks names up in it.
pub(super) fn sorted(mut v: Vec<Arc<Generated>>) -> Vec<Arc<Generated>> {
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Resources of one type for the subscription in `w`. Route configurations are
/// assembled from the virtual hosts `vhosts` keeps across snapshots.
pub(super) fn generate(
    ctx: &ProxyContext,
    w: &WatchState,
    vhosts: &translate::route::pieces::VhostStore,
) -> Vec<Arc<Generated>> {
    if ctx.proxy.proxyless {
        return generate_grpc(ctx, w);
    }
    match &*w.type_url {
        type_url::CLUSTER => sorted(
            translate::cluster::clusters(ctx)
                .into_iter()
                .filter(|c| w.wants(&c.name))
                .map(|c| {
                    let name = c.name.clone();
                    Arc::new(packed_bytes(name, pb::cluster_any(*c)))
                })
                .collect(),
        ),
        type_url::LISTENER => sorted(
            translate::listener::listeners(ctx)
                .iter()
                .filter(|l| w.wants(&l.name))
                .map(|l| Arc::new(wrap(l.name.clone(), l)))
                .collect(),
        ),
        type_url::ROUTE => {
            let class = super::cache::class_key(ctx, false);
            w.names
                .iter()
                .filter_map(|n| {
                    translate::route_config_any(ctx, n, vhosts, class)
                        .map(|any| Arc::new(packed_encoded(n.clone(), any)))
                })
                .collect()
        }
        // Secrets are never served on the plaintext port.
        _ => Vec::new(),
    }
}

pub(super) fn set_version(res: &[Arc<Generated>]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for r in res {
        h.update(r.name.as_bytes());
        h.update(r.version.as_bytes());
    }
    format!("{:016x}", h.digest())
}
