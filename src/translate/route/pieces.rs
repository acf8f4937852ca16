//! Outbound route configurations assembled from virtual hosts encoded once and kept
//! across snapshots.
//!
//! A sidecar's route configuration for a port holds a virtual host per service it sees
//! (10,001 of them in a 10,000-service mesh). One VirtualService edit changes one of
//! them, yet building the configuration again translated every route of every host.
//! Here each virtual host of a proxy class is kept as its encoded bytes (a [`Piece`]),
//! and a new snapshot that changed only VirtualServices drops just the pieces of the
//! hosts they name: the configuration is then the kept bytes laid end to end, with the
//! changed hosts translated again. The bytes are those [`crate::envoy::pb::resource`]
//! makes for the whole configuration (a test holds the two paths to it), so a proxy
//! cannot tell which path served it.
//!
//! The class also keeps its last layout: the pieces in order, which domains each keeps,
//! and their encoding in segments. An edit that leaves every VirtualService's hosts
//! where they were changes no host's place, so the next assembly makes only the pieces
//! the edit dropped and encodes only their segments (`patched_in_place`), without
//! planning the port's hosts again: its work follows the edit, not the mesh.
//!
//! What a piece depends on besides its host's VirtualService — the services, their
//! DestinationRules, the Sidecar, the mesh configuration and mesh-wide policies, the
//! proxy's class — empties the store when it changes ([`VhostStore::advance`]); so a
//! piece is only ever reused within one line of snapshots that differ by
//! VirtualServices (and endpoints) alone.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Seeded per process (hosts and domains come from users' configuration), and several
/// times faster than the default hasher on the short strings looked up here for every
/// host of every assembly.
type Fast = foldhash::quality::RandomState;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::{
    Planned, egress_for_port, in_port_order, outbound_catch_all, outbound_envelope, outbound_plan,
    service_virtual_host, virtual_service_for, vs_host_virtual_host,
};
use crate::envoy::encoded::Encoded;
use crate::envoy::pb;
use crate::model::host;
use crate::model::scope::EgressScope;
use crate::model::snapshot::{Changes, VirtualServiceConfig};
use crate::translate::ProxyContext;

/// One virtual host, encoded.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece {
    name: String,
    /// Kept apart from the bytes: a domain an earlier host of the configuration holds
    /// is left out here (Envoy refuses a configuration with a domain twice).
    domains: Vec<String>,
    /// A service's host made from its VirtualService's routes (not the default route):
    /// such hosts come first when domains are contested.
    routed: bool,
    /// The canonical encoding of the virtual host's fields after its name and domains.
    rest: Vec<u8>,
}

impl Piece {
    fn of(mut vh: VirtualHost, routed: bool) -> Piece {
        let name = std::mem::take(&mut vh.name);
        let domains = std::mem::take(&mut vh.domains);
        let rest = pb::canonical(
            &<VirtualHost as prost::Name>::type_url(),
            &vh.encode_to_vec(),
        );
        Piece {
            name,
            domains,
            routed,
            rest,
        }
    }

    fn content_hash(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in std::iter::once(&self.name).chain(&self.domains) {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&[u8::from(self.routed)]);
        h.update(&self.rest);
        h.digest()
    }
}

/// The pieces of one proxy class on one port.
#[derive(Debug, Default)]
struct ClassPieces {
    /// The snapshot generation they hold for: a stream still translating an older
    /// snapshot must not add to them (checked under this lock, which the store's
    /// `advance` takes to move them).
    generation: u64,
    /// By service hostname.
    services: HashMap<String, Placed<Arc<Piece>>, Fast>,
    /// By VirtualService host no service took; None when its rules yield no route here.
    vs_hosts: HashMap<String, Placed<Option<Arc<Piece>>>, Fast>,
    /// How the last assembly laid its pieces out.
    layout: Option<Layout>,
    /// The pieces dropped since the last assembly, with where it had put them: an
    /// assembly whose plan is the last one's makes only these again
    /// ([`patched_in_place`]). Past [`MAX_DIRTY`] they are not recorded (`overflow`),
    /// and the next assembly plans every host.
    dirty: Vec<Dirty>,
    overflow: bool,
}

/// A kept piece, and where the last assembly put it: its index in the layout's pieces
/// and in its shape's hosts ([`NOWHERE`]: not laid out, or keeping no domain).
#[derive(Debug, Clone)]
struct Placed<P> {
    piece: P,
    at: u32,
    slot: u32,
}

const NOWHERE: u32 = u32::MAX;

/// A piece a change dropped: its host, whether it is a service's (else a VirtualService
/// host's), and where the last assembly put it.
#[derive(Debug)]
struct Dirty {
    host: String,
    service: bool,
    at: u32,
    slot: u32,
}

/// Dropped pieces recorded for an assembly in place: an edit names a few hosts; a
/// wildcard host can drop thousands, and then planning every host is as cheap.
const MAX_DIRTY: usize = 64;

/// Which domains each host of an assembly kept, and the hosts' order. Both follow from
/// the pieces' names and domains in port order alone, so an assembly whose pieces
/// differ from the last one's only in their routes (a VirtualService edit) takes them
/// from here instead of deduplicating every domain and sorting every host again.
#[derive(Debug)]
struct Layout {
    /// The pieces laid out, in port order. (They keep a piece a change dropped alive
    /// until the class is next assembled: one per host at most.)
    pieces: Vec<Arc<Piece>>,
    shape: Shape,
    /// The hosts encoded, [`SEGMENT_HOSTS`] to a segment in configuration order.
    segments: Vec<Segment>,
    /// The egress scope's VirtualServices the plan was made from. The plan (which
    /// hosts, in what order, routed by which VirtualService's position) follows from
    /// their hosts and the services alone, and the services do not change while pieces
    /// are kept: with the same hosts at the same positions, the plan is the same.
    vs: Vec<Arc<VirtualServiceConfig>>,
}

/// Consecutive hosts of a configuration, encoded (each as the configuration's field 2),
/// with the hash of the bytes. An assembly whose layout holds reuses the segments whose
/// pieces are all as they were: a VirtualService edit encodes the one segment its host
/// is in, not the megabytes of the whole configuration.
#[derive(Debug, Clone)]
struct Segment {
    bytes: bytes::Bytes,
    hash: u64,
}

/// Hosts per segment: about 36 KB of a typical mesh's hosts (large enough to go out
/// uncopied, see xds/wire.rs; small enough that an edit copies little). Small in tests,
/// so that their few hosts span several segments.
const SEGMENT_HOSTS: usize = if cfg!(test) { 2 } else { 64 };

/// How a [`Layout`] lays its pieces out: which domains each host keeps, and the hosts'
/// order. (Segments are made under the class's lock: the class's other streams wait,
/// then find them made; `VhostStore::advance` drops a class it finds busy.)
#[derive(Debug)]
struct Shape {
    /// The hosts in configuration order: a piece's index in the pieces, and the
    /// indices of the domains it keeps (None: all of them, as most hosts do).
    hosts: Vec<(u32, Option<Vec<u32>>)>,
    /// The catch-all's domains, and the indices of those it keeps.
    catch_all: (Vec<String>, Vec<u32>),
}

impl Shape {
    /// Lays `pieces` (in port order) and the catch-all out, as `sidecar_route_config`
    /// does: contested domains to the earlier host, hosts by name, then the catch-all,
    /// whose `*` an earlier host may already hold.
    fn of(pieces: &[Arc<Piece>], catch_all: &Piece) -> Shape {
        let domains: usize = pieces.iter().map(|p| p.domains.len()).sum();
        let mut used: HashSet<Cow<str>, Fast> =
            HashSet::with_capacity_and_hasher(domains + 1, Fast::default());
        let mut hosts: Vec<(u32, Option<Vec<u32>>)> = pieces
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let kept = first_uses(&p.domains, &mut used);
                let all = kept.len() == p.domains.len();
                (!kept.is_empty()).then(|| (i as u32, (!all).then_some(kept)))
            })
            .collect();
        hosts.sort_by(|a, b| pieces[a.0 as usize].name.cmp(&pieces[b.0 as usize].name));
        let kept = first_uses(&catch_all.domains, &mut used);
        Shape {
            hosts,
            catch_all: (catch_all.domains.clone(), kept),
        }
    }

    /// The domains of `p` that host `kept` keeps.
    fn kept<'a>(p: &'a Piece, kept: Option<&'a [u32]>) -> impl Iterator<Item = &'a str> {
        let all = kept.is_none().then(|| p.domains.iter().map(String::as_str));
        let some = kept.map(|k| k.iter().map(|&d| p.domains[d as usize].as_str()));
        all.into_iter().flatten().chain(some.into_iter().flatten())
    }
}

impl Layout {
    /// Whether this layout holds for `pieces` and `catch_all`: the same names and
    /// domains in the same order (the routes may differ).
    fn fits(&self, pieces: &[Arc<Piece>], catch_all: &Piece) -> bool {
        self.pieces.len() == pieces.len()
            && self.shape.catch_all.0 == catch_all.domains
            && self
                .pieces
                .iter()
                .zip(pieces)
                .all(|(a, b)| Arc::ptr_eq(a, b) || (a.name == b.name && a.domains == b.domains))
    }
}

impl ClassPieces {
    /// Drops the pieces of `hosts` (and of every host a wildcard among them covers),
    /// recording where they were laid out.
    fn forget(&mut self, hosts: &BTreeSet<String>, wildcards: &[&String]) {
        let stale = |h: &str| hosts.contains(h) || wildcards.iter().any(|w| host::matches(w, h));
        let (dirty, overflow) = (&mut self.dirty, &mut self.overflow);
        let mut record = |host: &String, service: bool, at: u32, slot: u32| {
            if *overflow || dirty.len() >= MAX_DIRTY {
                *overflow = true;
                dirty.clear();
            } else {
                dirty.push(Dirty {
                    host: host.clone(),
                    service,
                    at,
                    slot,
                });
            }
        };
        self.services.retain(|h, p| {
            let stale = stale(h);
            if stale {
                record(h, true, p.at, p.slot);
            }
            !stale
        });
        self.vs_hosts.retain(|h, p| {
            let stale = stale(h);
            if stale {
                record(h, false, p.at, p.slot);
            }
            !stale
        });
    }
}

/// At most this many (class, port) entries: proxies choose their labels and namespace,
/// so past the bound a class is assembled without keeping its pieces.
const MAX_CLASSES: usize = 4_000;

/// A proxy class and a port.
type ClassKey = (u64, u16);
type Shared = Arc<Mutex<ClassPieces>>;

#[derive(Debug, Default)]
struct StoreInner {
    /// The snapshot generation the pieces hold for.
    generation: u64,
    classes: HashMap<ClassKey, Shared>,
    /// Pieces by content: classes whose hosts come out the same hold one copy.
    interned: HashMap<u64, Arc<Piece>>,
}

/// Virtual hosts kept across snapshots, per proxy class and port.
#[derive(Debug, Default)]
pub struct VhostStore {
    inner: Mutex<StoreInner>,
    /// Assemblies that patched the last layout in place, and the pieces they made
    /// again (for tests and the benchmark).
    patched: std::sync::atomic::AtomicU64,
    remade: std::sync::atomic::AtomicU64,
}

impl VhostStore {
    /// Moves the store from snapshot `from` to `to`, which differs from it by `changes`.
    /// Only a change of VirtualServices (or of endpoints, which no virtual host reads)
    /// keeps pieces, less those of the hosts the change names; any other change, or a
    /// store not at `from`, starts empty.
    pub fn advance(&self, from: u64, to: u64, changes: &Changes) {
        let classes: Vec<(ClassKey, Shared)> = {
            let Ok(mut inner) = self.inner.lock() else {
                return;
            };
            if to <= inner.generation {
                return;
            }
            let keeps = inner.generation == from
                && !changes.full
                && changes.services.is_empty()
                && changes.policies.is_empty()
                && changes.sidecars.is_empty()
                && changes.pod_shaped.is_empty()
                && !changes.gateways;
            inner.generation = to;
            if !keeps {
                inner.classes.clear();
                inner.interned.clear();
                return;
            }
            inner.classes.iter().map(|(k, c)| (*k, c.clone())).collect()
        };
        // Each class is moved under its own lock, the store's released: a stream
        // holding a class's lock takes the store's to share a piece.
        let wildcards: Vec<&String> = changes
            .routes
            .iter()
            .filter(|h| h.starts_with('*'))
            .collect();
        // A class a stream is assembling (on the older snapshot) is dropped rather than
        // waited for: the publish does not wait behind a 10,000-host translation.
        let mut busy = Vec::new();
        for (key, class) in classes {
            let moved = match class.try_lock() {
                Ok(mut c) if c.generation == from => {
                    c.forget(&changes.routes, &wildcards);
                    c.generation = to;
                    true
                }
                _ => false,
            };
            if !moved {
                busy.push((key, class));
            }
        }
        if (!changes.routes.is_empty() || !busy.is_empty())
            && let Ok(mut inner) = self.inner.lock()
        {
            for (key, class) in busy {
                if inner
                    .classes
                    .get(&key)
                    .is_some_and(|c| Arc::ptr_eq(c, &class))
                {
                    inner.classes.remove(&key);
                }
            }
            // Pieces no class holds any more.
            inner.interned.retain(|_, p| Arc::strong_count(p) > 1);
        }
    }

    /// The pieces of `class` on `port` for snapshot `generation`, if the store is at it.
    fn class(&self, generation: u64, class: u64, port: u16) -> Option<Arc<Mutex<ClassPieces>>> {
        let mut inner = self.inner.lock().ok()?;
        if inner.generation != generation {
            return None;
        }
        if let Some(c) = inner.classes.get(&(class, port)) {
            return Some(c.clone());
        }
        if inner.classes.len() >= MAX_CLASSES {
            return None;
        }
        let fresh = ClassPieces {
            generation,
            ..Default::default()
        };
        Some(
            inner
                .classes
                .entry((class, port))
                .or_insert_with(|| Arc::new(Mutex::new(fresh)))
                .clone(),
        )
    }

    /// One copy of `p`'s content for every class.
    fn intern(&self, p: Piece) -> Arc<Piece> {
        let hash = p.content_hash();
        let Ok(mut inner) = self.inner.lock() else {
            return Arc::new(p);
        };
        match inner.interned.get(&hash) {
            Some(known) if **known == p => known.clone(),
            // A different piece under the same hash: kept alone.
            Some(_) => Arc::new(p),
            None => inner
                .interned
                .entry(hash)
                .or_insert_with(|| Arc::new(p))
                .clone(),
        }
    }

    /// Number of kept pieces (for tests and the benchmark).
    pub fn len(&self) -> usize {
        // The classes are locked with the store's lock released (a stream takes them in
        // the other order).
        let classes: Vec<Arc<Mutex<ClassPieces>>> = match self.inner.lock() {
            Ok(inner) => inner.classes.values().cloned().collect(),
            Err(_) => return 0,
        };
        classes
            .iter()
            .filter_map(|c| c.lock().ok().map(|c| c.services.len() + c.vs_hosts.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many assemblies patched their class's last layout in place, making only the
    /// pieces a change dropped (`patched_in_place`).
    pub fn patched(&self) -> u64 {
        self.patched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many pieces assemblies patched in place made again: the hosts edits named.
    pub fn remade_in_place(&self) -> u64 {
        self.remade.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The outbound route configuration `name` (a port number) of a sidecar in `class`,
/// encoded as a `google.protobuf.Any`, from the pieces `store` keeps where it has them.
/// None when the proxy has no such route configuration.
pub fn outbound_route_config_any(
    ctx: &ProxyContext,
    name: &str,
    store: &VhostStore,
    class: u64,
) -> Option<Encoded> {
    let port: u16 = name.parse().ok()?;
    let egress = egress_for_port(ctx, port)?;
    let kept = store.class(ctx.snap.generation, class, port);
    let mut local = ClassPieces::default();
    let mut guard = kept
        .as_ref()
        .and_then(|c| c.lock().ok())
        .filter(|c| c.generation == ctx.snap.generation);
    let keeps = guard.is_some();
    let pieces: &mut ClassPieces = match guard.as_deref_mut() {
        Some(p) => p,
        None => &mut local,
    };
    // Pieces of a class the store keeps are shared with other classes; pieces made for
    // this assembly alone (past the store's bound, or on an older snapshot) are not
    // interned, so that they cannot pile up outside the bound.
    let share = |p: Piece| if keeps { store.intern(p) } else { Arc::new(p) };
    let catch_all = Piece::of(outbound_catch_all(ctx), false);
    let dirty = pieces.dirty.len() as u64;
    if keeps
        && let Some(any) = patched_in_place(ctx, name, egress, port, pieces, &share, &catch_all)
    {
        use std::sync::atomic::Ordering::Relaxed;
        store.patched.fetch_add(1, Relaxed);
        store.remade.fetch_add(dirty, Relaxed);
        return Some(any);
    }
    // Each planned host's piece, with its VirtualService's position when it routes by
    // one, and its key in the class's pieces.
    let mut items: Vec<(Option<usize>, Planted)> = Vec::new();
    for planned in outbound_plan(ctx, egress, port) {
        match planned {
            Planned::Service { svc, vs } => {
                let piece = match pieces.services.get(svc.hostname.as_str()) {
                    Some(p) => p.piece.clone(),
                    None => {
                        let (routed, vh) =
                            service_virtual_host(ctx, svc, vs.map(|(_, v)| &**v), port);
                        let p = share(Piece::of(vh, routed));
                        pieces
                            .services
                            .insert(svc.hostname.clone(), placed(p.clone()));
                        p
                    }
                };
                let at = vs.filter(|_| piece.routed).map(|(i, _)| i);
                items.push((at, (piece, (svc.hostname.as_str(), true))));
            }
            Planned::VsHost { i, host, vs, svc } => {
                let piece = match pieces.vs_hosts.get(host) {
                    Some(p) => p.piece.clone(),
                    None => {
                        let p = vs_host_virtual_host(ctx, host, vs, svc.map(|s| &**s), port)
                            .map(|vh| share(Piece::of(vh, true)));
                        pieces.vs_hosts.insert(host.to_string(), placed(p.clone()));
                        p
                    }
                };
                if let Some(p) = piece {
                    items.push((Some(i), (p, (host, false))));
                }
            }
        }
    }
    let (ordered, keys): (Vec<Arc<Piece>>, Vec<HostKey>) = in_port_order(items).into_iter().unzip();
    // The last layout if it still fits (the pieces' routes changed, not their names or
    // domains), else a new one, kept for the next assembly of a kept class.
    let (shape, last) = match pieces.layout.take() {
        Some(l) if l.fits(&ordered, &catch_all) => (l.shape, Some((l.pieces, l.segments))),
        _ => (Shape::of(&ordered, &catch_all), None),
    };
    // Under the class's lock: the other streams of the class wait, then find every
    // segment made.
    let segments = segments(
        &shape,
        &ordered,
        last.as_ref().map(|(p, s)| (&p[..], &s[..])),
    );
    let any = encode_any(name, &segments, &catch_all, &shape.catch_all.1);
    if keeps {
        // Where each piece went, for the next assembly to patch in place.
        let mut slots = vec![NOWHERE; ordered.len()];
        for (slot, (i, _)) in shape.hosts.iter().enumerate() {
            slots[*i as usize] = slot as u32;
        }
        // A VirtualService host the plan no longer has keeps its piece, not its place.
        // (Services stay in the plan while pieces are kept.)
        for p in pieces.vs_hosts.values_mut() {
            (p.at, p.slot) = (NOWHERE, NOWHERE);
        }
        for (at, (host, service)) in keys.into_iter().enumerate() {
            let (place, slot) = (at as u32, slots[at]);
            if service {
                if let Some(p) = pieces.services.get_mut(host) {
                    (p.at, p.slot) = (place, slot);
                }
            } else if let Some(p) = pieces.vs_hosts.get_mut(host) {
                (p.at, p.slot) = (place, slot);
            }
        }
        pieces.dirty.clear();
        pieces.overflow = false;
        pieces.layout = Some(Layout {
            pieces: ordered,
            shape,
            segments,
            vs: egress.virtual_services.clone(),
        });
    }
    Some(any)
}

/// A planned host's key in the class's pieces: its host, and whether it is a
/// service's (else a VirtualService host's).
type HostKey<'a> = (&'a str, bool);

/// A planned host's piece with its key.
type Planted<'a> = (Arc<Piece>, HostKey<'a>);

/// A piece not laid out yet.
fn placed<P>(piece: P) -> Placed<P> {
    Placed {
        piece,
        at: NOWHERE,
        slot: NOWHERE,
    }
}

/// The configuration made from the class's last layout, with only the pieces a change
/// dropped made again and only their segments encoded again: work for the hosts an
/// edit names, not a pass over every service in scope. None, and nothing changed, when
/// the layout does not hold: no layout, other VirtualService hosts (so another plan),
/// or a new piece whose name, domains or routing differ (another order or shape).
fn patched_in_place(
    ctx: &ProxyContext,
    name: &str,
    egress: &EgressScope,
    port: u16,
    pieces: &mut ClassPieces,
    share: &dyn Fn(Piece) -> Arc<Piece>,
    catch_all: &Piece,
) -> Option<Encoded> {
    let ClassPieces {
        services,
        vs_hosts,
        layout,
        dirty,
        overflow,
        ..
    } = pieces;
    let layout = layout.as_mut()?;
    let same_hosts = layout.vs.len() == egress.virtual_services.len()
        && layout
            .vs
            .iter()
            .zip(&egress.virtual_services)
            .all(|(a, b)| Arc::ptr_eq(a, b) || a.hosts == b.hosts);
    if *overflow || !same_hosts || layout.shape.catch_all.0 != catch_all.domains {
        return None;
    }
    // Every dropped piece made again and checked against the one it replaces, before
    // anything is changed.
    let same_place = |at: u32, vh: &VirtualHost, routed: bool| {
        layout.pieces.get(at as usize).is_some_and(|old| {
            old.routed == routed && old.name == vh.name && old.domains == vh.domains
        })
    };
    let mut made: Vec<Option<Piece>> = Vec::with_capacity(dirty.len());
    for d in dirty.iter() {
        if d.service {
            let svc = ctx.snap.services.get(&d.host)?;
            let vs = virtual_service_for(egress, &d.host);
            let (routed, vh) = service_virtual_host(ctx, svc, vs.map(|(_, v)| &**v), port);
            if !same_place(d.at, &vh, routed) {
                return None;
            }
            made.push(Some(Piece::of(vh, routed)));
        } else {
            // The host's first VirtualService, as the plan takes it.
            let vs = egress.first_naming(&d.host)?;
            let svc = ctx.snap.services.get(&d.host);
            match vs_host_virtual_host(ctx, &d.host, vs, svc.map(|s| &**s), port) {
                None if d.at == NOWHERE => made.push(None),
                Some(vh) if same_place(d.at, &vh, true) => made.push(Some(Piece::of(vh, true))),
                _ => return None,
            }
        }
    }
    let mut touched = BTreeSet::new();
    for (d, piece) in dirty.drain(..).zip(made) {
        let piece = piece.map(share);
        if let Some(p) = &piece {
            let old = &mut layout.pieces[d.at as usize];
            if !Arc::ptr_eq(old, p) {
                *old = p.clone();
                if d.slot != NOWHERE {
                    touched.insert(d.slot as usize / SEGMENT_HOSTS);
                }
            }
        }
        let (at, slot) = (d.at, d.slot);
        if d.service {
            if let Some(piece) = piece {
                services.insert(d.host, Placed { piece, at, slot });
            }
        } else {
            vs_hosts.insert(d.host, Placed { piece, at, slot });
        }
    }
    for k in touched {
        let hosts = layout.shape.hosts.chunks(SEGMENT_HOSTS).nth(k)?;
        layout.segments[k] = encode_segment(hosts, &layout.pieces);
    }
    layout.vs.clone_from(&egress.virtual_services);
    Some(encode_any(
        name,
        &layout.segments,
        catch_all,
        &layout.shape.catch_all.1,
    ))
}

/// The hosts of `shape` encoded in segments, those of the last layout (`last`: its
/// pieces and segments, when `shape` is its shape) reused where all their pieces are
/// the same.
fn segments(
    shape: &Shape,
    pieces: &[Arc<Piece>],
    last: Option<(&[Arc<Piece>], &[Segment])>,
) -> Vec<Segment> {
    shape
        .hosts
        .chunks(SEGMENT_HOSTS)
        .enumerate()
        .map(|(k, hosts)| {
            let same = last.and_then(|(last_pieces, last_segments)| {
                let seg = last_segments.get(k)?;
                hosts
                    .iter()
                    .all(|(i, _)| Arc::ptr_eq(&pieces[*i as usize], &last_pieces[*i as usize]))
                    .then(|| seg.clone())
            });
            same.unwrap_or_else(|| encode_segment(hosts, pieces))
        })
        .collect()
}

/// One segment: `hosts` (of a shape) of `pieces`, each with the domains it keeps.
fn encode_segment(hosts: &[(u32, Option<Vec<u32>>)], pieces: &[Arc<Piece>]) -> Segment {
    let hosts: Vec<(&Piece, Option<&[u32]>, usize)> = hosts
        .iter()
        .map(|(i, kept)| {
            let p = &*pieces[*i as usize];
            let kept = kept.as_deref();
            (p, kept, host_len(p, kept))
        })
        .collect();
    let len = hosts.iter().map(|(_, _, len)| field_len(*len)).sum();
    let mut buf = Vec::with_capacity(len);
    for (p, kept, len) in hosts {
        put_host(p, kept, len, &mut buf);
    }
    Segment {
        hash: xxhash_rust::xxh3::xxh3_64(&buf),
        bytes: buf.into(),
    }
}

/// The indices of the domains of `domains` not in `used` (compared without case), now
/// added to it.
fn first_uses<'a>(domains: &'a [String], used: &mut HashSet<Cow<'a, str>, Fast>) -> Vec<u32> {
    domains
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            let key = if d.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(d.to_ascii_lowercase())
            } else {
                Cow::Borrowed(d.as_str())
            };
            used.insert(key)
        })
        .map(|(i, _)| i as u32)
        .collect()
}

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_string(tag: u32, s: &str, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.extend_from_slice(s.as_bytes());
}

/// A field of `len` bytes with its key and length (field 2, the virtual hosts').
fn field_len(len: usize) -> usize {
    prost::encoding::key_len(2) + encoded_len_varint(len as u64) + len
}

/// The encoded length of host `p` keeping the domains `kept` (None: all).
fn host_len(p: &Piece, kept: Option<&[u32]>) -> usize {
    string_len(1, &p.name)
        + Shape::kept(p, kept)
            .map(|d| prost::encoding::key_len(2) + encoded_len_varint(d.len() as u64) + d.len())
            .sum::<usize>()
        + p.rest.len()
}

/// Host `p` as a field of the configuration (field 2, `len` bytes: [`host_len`]), its
/// name, domains, then the rest.
fn put_host(p: &Piece, kept: Option<&[u32]>, len: usize, buf: &mut Vec<u8>) {
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
    if !p.name.is_empty() {
        put_string(1, &p.name, buf);
    }
    for d in Shape::kept(p, kept) {
        put_string(2, d, buf);
    }
    buf.extend_from_slice(&p.rest);
}

/// The `Any` of a route configuration named `name`: its hosts (`segments`), then the
/// catch-all keeping the domains `catch_all_kept` (none: left out), byte for byte as
/// [`pb::resource`] encodes the same configuration — fields in number order: the name
/// (1), the virtual hosts (2), then the envelope's others. In parts: the head (the
/// `Any`'s type and length, the name), the segments, shared, and the tail.
fn encode_any(
    name: &str,
    segments: &[Segment],
    catch_all: &Piece,
    catch_all_kept: &[u32],
) -> Encoded {
    let type_url = <RouteConfiguration as prost::Name>::type_url();
    let envelope = RouteConfiguration {
        name: String::new(),
        ..outbound_envelope(name)
    };
    let mut tail = Vec::new();
    if !catch_all_kept.is_empty() {
        let len = host_len(catch_all, Some(catch_all_kept));
        tail.reserve(field_len(len));
        put_host(catch_all, Some(catch_all_kept), len, &mut tail);
    }
    tail.extend_from_slice(&pb::canonical(&type_url, &envelope.encode_to_vec()));
    let value_len =
        string_len(1, name) + segments.iter().map(|s| s.bytes.len()).sum::<usize>() + tail.len();
    let mut head = Vec::with_capacity(type_url.len() + string_len(1, name) + 2 * (1 + 10) + 8);
    put_string(1, &type_url, &mut head);
    encode_key(2, WireType::LengthDelimited, &mut head);
    encode_varint(value_len as u64, &mut head);
    if !name.is_empty() {
        put_string(1, name, &mut head);
    }
    // The version from the segments' hashes: the same bytes in the same segments give
    // the same version, without hashing megabytes at each edit.
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&head);
    for s in segments {
        h.update(&s.hash.to_le_bytes());
    }
    h.update(&tail);
    let mut parts = Vec::with_capacity(segments.len() + 2);
    parts.push(bytes::Bytes::from(head));
    parts.extend(segments.iter().map(|s| s.bytes.clone()));
    parts.push(bytes::Bytes::from(tail));
    Encoded::from_parts(parts, h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::Snapshot;

    const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec: {ports: [{name: http, port: 80}, {name: http-alt, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: c, namespace: other}
spec: {clusterIP: None, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec: {hosts: [api.EXAMPLE.com], ports: [{name: http, number: 80, protocol: HTTP}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: default}
spec:
  host: a
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
";

    fn vs(name: &str, hosts: &str, body: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: {hosts}\n  http:\n{body}\n"
        )
    }

    use crate::model::testing::config_set as set;

    fn fresh(snap: &Snapshot, labels: &str, name: &str) -> Vec<u8> {
        let proxy = proxy(labels);
        let ctx = ProxyContext::new(snap, &proxy);
        let rc = super::super::sidecar_route_config(&ctx, name).expect("route configuration");
        pb::resource(&rc).encode_to_vec()
    }

    fn proxy(labels: &str) -> crate::model::Proxy {
        let mut meta = std::collections::BTreeMap::new();
        meta.insert(
            "LABELS".to_string(),
            serde_json::json!({ "app": labels, "pod-template-hash": "x" }),
        );
        crate::model::Proxy::from_node("sidecar~10.0.0.1~p.default~default.svc.cluster.local", meta)
            .expect("node")
    }

    /// The snapshot of `text` after `prev` (without errors), and its changes.
    fn next(text: &str, prev: Option<&Snapshot>) -> (Snapshot, Changes) {
        let snap = Snapshot::build(&set(text), prev, "cluster.local", "istio-system");
        assert_eq!(snap.error_count(), 0, "{:?}", snap.diagnostics);
        let changes = prev.map(|p| snap.changes_since(p)).unwrap_or_default();
        (snap, changes)
    }

    /// The version an assembly carries.
    fn version(e: &Encoded) -> u64 {
        match e {
            Encoded::Parts { version, .. } => *version,
            Encoded::One(_) => panic!("an assembly is in parts"),
        }
    }

    fn kept(snap: &Snapshot, store: &VhostStore, labels: &str, name: &str) -> Encoded {
        let proxy = proxy(labels);
        let ctx = ProxyContext::new(snap, &proxy);
        outbound_route_config_any(&ctx, name, store, labels.len() as u64).expect("assembled")
    }

    /// Each step edits VirtualServices only; after each, the kept pieces (less the
    /// changed hosts') must assemble into exactly the fresh translation's bytes.
    #[test]
    fn kept_pieces_assemble_as_a_fresh_translation_through_virtual_service_edits() {
        let route = |dest: &str, w: u32| {
            format!(
                "  - match: [{{sourceLabels: {{app: canary}}}}]\n    fault: {{abort: {{httpStatus: 503, percentage: {{value: 10}}}}}}\n    route: [{{destination: {{host: {dest}}}, weight: {w}}}, {{destination: {{host: a}}, weight: {}}}]\n  - route: [{{destination: {{host: {dest}}}}}]",
                100 - w
            )
        };
        let b_on_8080 = "  - match: [{port: 8080}]\n    route: [{destination: {host: b}}]";
        let steps = [
            // b routed, an unknown host routed to a, api.example.com untouched.
            SERVICES.to_string()
                + &vs("b", "[b]", &route("b", 90))
                + &vs("unknown", "[foo.example.com]", &route("a", 50)),
            // b's weights change.
            SERVICES.to_string()
                + &vs("b", "[b]", &route("b", 80))
                + &vs("unknown", "[foo.example.com]", &route("a", 50)),
            // The unknown host's weights change.
            SERVICES.to_string()
                + &vs("b", "[b]", &route("b", 80))
                + &vs("unknown", "[foo.example.com]", &route("a", 40)),
            // b routed on 8080 only: on 80 it takes the default route, and the
            // hosts' order changes there.
            SERVICES.to_string()
                + &vs("b", "[b]", b_on_8080)
                + &vs("unknown", "[foo.example.com]", &route("a", 40)),
            // A VirtualService for the headless service in another namespace; the
            // unknown host goes.
            SERVICES.to_string()
                + &vs("b", "[b]", &route("b", 80))
                + &vs("c", "[c.other.svc.cluster.local]", &route("a", 70)),
            // A wildcard over the namespace's services, and one for the entry.
            SERVICES.to_string()
                + &vs("b", "[b]", &route("b", 80))
                + &vs("c", "[c.other.svc.cluster.local]", &route("a", 70))
                + &vs("wild", "['*.default.svc.cluster.local']", &route("b", 60))
                + &vs("ext", "[api.example.com]", &route("a", 30)),
            // The wildcard's weights change: every service it covers is made again.
            SERVICES.to_string()
                + &vs("b", "[b]", &route("b", 80))
                + &vs("c", "[c.other.svc.cluster.local]", &route("a", 70))
                + &vs("wild", "['*.default.svc.cluster.local']", &route("b", 50))
                + &vs("ext", "[api.example.com]", &route("a", 30)),
            // A host of its own again, then another in its place: as many hosts as
            // before, one name different (the last layout must not be taken).
            SERVICES.to_string()
                + &vs("b", "[b]", &route("b", 80))
                + &vs("unknown", "[foo.example.com]", &route("a", 50)),
            SERVICES.to_string()
                + &vs("b", "[b]", &route("b", 80))
                + &vs("unknown", "[bar.example.com]", &route("a", 50)),
        ];
        let store = VhostStore::default();
        let mut prev: Option<Snapshot> = None;
        let mut last: HashMap<(&str, &str), (Encoded, Vec<u8>)> = HashMap::new();
        for (i, text) in steps.iter().enumerate() {
            let (snap, changes) = next(text, prev.as_ref());
            if i > 0 {
                assert!(!changes.routes.is_empty(), "step {i} changes routes");
                assert!(
                    changes.services.is_empty() && changes.policies.is_empty() && !changes.full,
                    "step {i} changes routes only: {changes:?}"
                );
            }
            let before = store.len();
            store.advance(
                prev.as_ref().map_or(0, |p| p.generation),
                snap.generation,
                &changes,
            );
            if i > 0 {
                let after = store.len();
                assert!(after > 0, "step {i}: pieces kept");
                assert!(
                    after < before,
                    "step {i}: the changed hosts' pieces dropped"
                );
            }
            for labels in ["web", "canary"] {
                for port in ["80", "8080"] {
                    let want = fresh(&snap, labels, port);
                    // Patched in place where only routes changed: the edits of b's
                    // weights, the unknown host's and the wildcard's, and b's move to
                    // 8080 there. Elsewhere VirtualService hosts came or went (another
                    // plan), or b's host lost its routes on 80 (another order).
                    let in_place = matches!((i, port), (1 | 2 | 6, _) | (3, "8080"));
                    let patched = store.patched();
                    let first = kept(&snap, &store, labels, port);
                    assert_eq!(first.to_vec(), want, "step {i} {labels} {port}");
                    assert_eq!(
                        store.patched() - patched,
                        u64::from(in_place),
                        "step {i} {labels} {port}: patched in place"
                    );
                    // Again, all from kept pieces and segments: the same bytes, the
                    // same version, every segment shared.
                    let patched = store.patched();
                    let again = kept(&snap, &store, labels, port);
                    assert_eq!(store.patched() - patched, 1, "step {i}: again in place");
                    assert_eq!(again.to_vec(), want, "step {i} {labels} {port}");
                    assert_eq!(version(&first), version(&again));
                    let (a, b) = (first.parts(), again.parts());
                    if port == "80" {
                        assert!(a.len() > 3, "step {i}: hosts in several segments");
                    }
                    assert!(
                        a[1..a.len() - 1]
                            .iter()
                            .zip(&b[1..b.len() - 1])
                            .all(|(x, y)| x.as_ptr() == y.as_ptr()),
                        "step {i} {labels} {port}: segments made again"
                    );
                    if let Some((before, bytes)) = last.get(&(labels, port)) {
                        assert_eq!(
                            *bytes == want,
                            version(before) == version(&first),
                            "step {i} {labels} {port}: the version follows the bytes"
                        );
                        // One host changed (b's weights, seen by the canary only):
                        // its segment is made again, the others are the last
                        // assembly's; where it did not change, all of them are.
                        if i == 1 {
                            let (p, n) = (before.parts(), first.parts());
                            let shared = p[1..p.len() - 1]
                                .iter()
                                .zip(&n[1..n.len() - 1])
                                .filter(|(x, y)| x.as_ptr() == y.as_ptr())
                                .count();
                            let all = n.len() - 2;
                            let changed = *bytes != want;
                            assert!(
                                if changed {
                                    shared == all - 1
                                } else {
                                    shared == all
                                },
                                "step 1 {labels} {port}: {shared} of {all} segments shared \
                                 (changed: {changed})"
                            );
                        }
                    }
                    last.insert((labels, port), (first, want));
                }
            }
            prev = Some(snap);
        }
    }

    /// Two edits published before the class is assembled again: the pieces both
    /// dropped are made again in the one patch.
    #[test]
    fn edits_between_two_assemblies_are_patched_together() {
        let route = |dest: &str, w: u32| {
            format!(
                "  - route: [{{destination: {{host: {dest}}}, weight: {w}}}, {{destination: {{host: a}}, weight: {}}}]",
                100 - w
            )
        };
        let text = |b: u32, unknown: u32| {
            SERVICES.to_string()
                + &vs("b", "[b]", &route("b", b))
                + &vs("unknown", "[foo.example.com]", &route("b", unknown))
        };
        let build = |t: String, prev: Option<&Snapshot>| {
            Snapshot::build(&set(&t), prev, "cluster.local", "istio-system")
        };
        let store = VhostStore::default();
        let a = build(text(90, 50), None);
        store.advance(0, a.generation, &Changes::default());
        kept(&a, &store, "web", "80");
        let b = build(text(80, 50), Some(&a));
        store.advance(a.generation, b.generation, &b.changes_since(&a));
        let c = build(text(80, 40), Some(&b));
        store.advance(b.generation, c.generation, &c.changes_since(&b));
        let (patched, remade) = (store.patched(), store.remade_in_place());
        assert_eq!(
            kept(&c, &store, "web", "80").to_vec(),
            fresh(&c, "web", "80")
        );
        assert_eq!(store.patched(), patched + 1, "patched in place");
        assert_eq!(
            store.remade_in_place(),
            remade + 2,
            "b's piece and the unknown host's made again"
        );
    }

    /// Edits the layout cannot take in place: a host outside the registry whose rules
    /// start to yield a route on the port (a host the layout does not have), and a
    /// wildcard edit that drops more pieces than are recorded. Both are planned again,
    /// to the fresh translation's bytes.
    #[test]
    fn edits_that_change_the_layout_are_planned_again() {
        let on = |port: u16| {
            format!("  - match: [{{port: {port}}}]\n    route: [{{destination: {{host: a}}}}]")
        };
        let many: String = (0..MAX_DIRTY + 1)
            .map(|i| {
                format!(
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
                     spec: {{ports: [{{name: http, port: 80}}]}}\n"
                )
            })
            .collect();
        let wild = |w: u32| {
            vs(
                "wild",
                "['*.default.svc.cluster.local']",
                &format!(
                    "  - route: [{{destination: {{host: a}}, weight: {w}}}, {{destination: {{host: b}}, weight: {}}}]",
                    100 - w
                ),
            )
        };
        let steps = [
            SERVICES.to_string()
                + &many
                + &vs("unknown", "[foo.example.com]", &on(8080))
                + &wild(90),
            // The unknown host now has a route on 80.
            SERVICES.to_string() + &many + &vs("unknown", "[foo.example.com]", &on(80)) + &wild(90),
            // The wildcard covers more services than are recorded.
            SERVICES.to_string() + &many + &vs("unknown", "[foo.example.com]", &on(80)) + &wild(80),
        ];
        let store = VhostStore::default();
        let mut prev: Option<Snapshot> = None;
        for (i, text) in steps.iter().enumerate() {
            let (snap, changes) = next(text, prev.as_ref());
            store.advance(
                prev.as_ref().map_or(0, |p| p.generation),
                snap.generation,
                &changes,
            );
            let patched = store.patched();
            assert_eq!(
                kept(&snap, &store, "web", "80").to_vec(),
                fresh(&snap, "web", "80"),
                "step {i}"
            );
            assert_eq!(store.patched(), patched, "step {i}: planned again");
            prev = Some(snap);
        }
    }

    #[test]
    fn a_change_beyond_virtual_services_empties_the_store() {
        let store = VhostStore::default();
        let a = Snapshot::build(&set(SERVICES), None, "cluster.local", "istio-system");
        store.advance(0, a.generation, &Changes::default());
        kept(&a, &store, "web", "80");
        assert!(!store.is_empty());
        let b = Snapshot::build(
            &set(&SERVICES.replace("consistentHash: {httpHeaderName: x-user}", "simple: RANDOM")),
            Some(&a),
            "cluster.local",
            "istio-system",
        );
        let changes = b.changes_since(&a);
        assert!(!changes.policies.is_empty());
        store.advance(a.generation, b.generation, &changes);
        assert!(store.is_empty());
        assert_eq!(
            kept(&b, &store, "web", "80").to_vec(),
            fresh(&b, "web", "80")
        );
        // A stream still on the older snapshot neither reads nor adds pieces.
        let len = store.len();
        assert_eq!(
            kept(&a, &store, "web", "80").to_vec(),
            fresh(&a, "web", "80")
        );
        assert_eq!(store.len(), len);
    }
}
