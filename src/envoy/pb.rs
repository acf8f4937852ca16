//! Small constructors for Envoy protobuf values, canonical encoding, and the descriptor
//! pool used to render Envoy messages as JSON.
//!
//! Canonical encoding: prost encodes `map<>` fields (Struct fields, filter metadata,
//! typed_per_filter_config) in HashMap order, which differs between two maps with the same
//! content. Versions are content hashes, so every resource is re-encoded with map entries
//! sorted by key ([`canonical`]): same inputs, byte-identical output.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf as gpb;
use prost::Message;
use prost::encoding::encoded_len_varint;
use prost_reflect::{DescriptorPool, Kind as FieldKind, MessageDescriptor};

/// Envoy's descriptors (from the envoy-types crate), loaded on first use.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The descriptor set is generated with the very types we encode, at build time.
        #[allow(clippy::expect_used)]
        let mut pool =
            DescriptorPool::decode(crate::ENVOY_DESCRIPTORS).expect("envoy descriptors decode");
        // istio-proxy's messages: constant descriptors written for these dependencies.
        #[allow(clippy::expect_used)]
        pool.add_file_descriptor_protos(super::istio::descriptors())
            .expect("istio-proxy descriptors");
        pool
    })
}

/// Packs a message as it is nested inside a resource (typed configs). Not canonicalized
/// here: [`resource`] canonicalizes the whole resource, nested `Any`s included, once.
pub fn any<T: Message + prost::Name>(msg: &T) -> gpb::Any {
    gpb::Any {
        type_url: T::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// Packs a top-level resource (what is versioned and sent) in canonical form.
pub fn resource<T: Message + prost::Name>(msg: &T) -> gpb::Any {
    let type_url = T::type_url();
    let bytes = msg.encode_to_vec();
    gpb::Any {
        value: canonical(&type_url, &bytes),
        type_url,
    }
}

pub fn duration(d: std::time::Duration) -> gpb::Duration {
    gpb::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn secs(s: i64) -> Option<gpb::Duration> {
    Some(gpb::Duration {
        seconds: s,
        nanos: 0,
    })
}

pub fn u32v(v: u32) -> Option<gpb::UInt32Value> {
    Some(gpb::UInt32Value { value: v })
}

pub fn boolv(v: bool) -> Option<gpb::BoolValue> {
    Some(gpb::BoolValue { value: v })
}

pub fn socket_address(address: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: address.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A listener address: `unix:///PATH` is a Unix domain socket (an Envoy pipe), anything
/// else an IP with `port`.
pub fn listen_address(bind: &str, port: u32) -> core::Address {
    match bind.strip_prefix(UNIX_PREFIX) {
        Some(path) => core::Address {
            address: Some(core::address::Address::Pipe(core::Pipe {
                path: path.to_string(),
                mode: 0,
            })),
        },
        None => socket_address(bind, port),
    }
}

/// How Istio writes a Unix domain socket address (`bind: unix:///var/run/gw.sock`).
pub const UNIX_PREFIX: &str = "unix://";

/// `ads: {}` config source, as istiod uses for EDS and RDS.
pub fn ads_config_source() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        // istiod sets 0s so that a proxy never waits for a resource that may not exist.
        initial_fetch_timeout: secs(0),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub fn typed_config<T: Message + prost::Name>(name: &str, msg: &T) -> core::TypedExtensionConfig {
    core::TypedExtensionConfig {
        name: name.to_string(),
        typed_config: Some(any(msg)),
    }
}

/// A protobuf Struct value from JSON.
pub fn struct_value(v: &serde_json::Value) -> gpb::Value {
    use gpb::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(gpb::ListValue {
            values: a.iter().map(struct_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(gpb::Struct {
            fields: m
                .iter()
                .map(|(k, v)| (k.clone(), struct_value(v)))
                .collect(),
        }),
    };
    gpb::Value { kind: Some(kind) }
}

pub fn to_struct(v: &serde_json::Value) -> gpb::Struct {
    match struct_value(v).kind {
        Some(gpb::value::Kind::StructValue(s)) => s,
        _ => gpb::Struct::default(),
    }
}

/// JSON from a protobuf Struct (node metadata).
pub fn struct_to_json(s: &gpb::Struct) -> BTreeMap<String, serde_json::Value> {
    fn value(v: &gpb::Value) -> serde_json::Value {
        use gpb::value::Kind;
        match &v.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
            Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
            Some(Kind::ListValue(l)) => {
                serde_json::Value::Array(l.values.iter().map(value).collect())
            }
            Some(Kind::StructValue(s)) => serde_json::Value::Object(
                s.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), value(v)))
                    .collect(),
            ),
        }
    }
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value(v)))
        .collect()
}

/// A cluster encoded as the `google.protobuf.Any` a response carries, in one buffer
/// sized up front: the `Any`'s type URL and value header, the cluster as prost encodes
/// it with its metadata taken out, then the metadata in key order ([`cluster_resource`]
/// says why) — the same bytes as encoding `cluster_resource`'s `Any`, without building
/// the value and copying it into the `Any` (30,000 clusters at 10,000 services).
pub fn cluster_any(mut c: envoy_types::pb::envoy::config::cluster::v3::Cluster) -> Vec<u8> {
    use super::type_url::CLUSTER;
    let Some(meta) = ordered_metadata(&mut c) else {
        return resource(&c).encode_to_vec();
    };
    let meta_len = meta_len(&meta);
    let value_len = cluster_value_len(&c, meta_len);
    let mut out = Vec::with_capacity(len_delimited(CLUSTER.len()) + len_delimited(value_len));
    put_bytes(&mut out, 1, CLUSTER.as_bytes());
    put_len(&mut out, 2, value_len);
    put_cluster_value(&c, &meta, meta_len, &mut out);
    out
}

/// The metadata taken out of `c` when it can be encoded by hand in key order: with at
/// most one protocol option (a map prost would encode in hash order) and no typed
/// metadata. Otherwise `c` is left whole, for the canonical re-encoding.
fn ordered_metadata(
    c: &mut envoy_types::pb::envoy::config::cluster::v3::Cluster,
) -> Option<core::Metadata> {
    match c.metadata.take() {
        Some(m)
            if c.typed_extension_protocol_options.len() <= 1
                && m.typed_filter_metadata.is_empty() =>
        {
            Some(m)
        }
        other => {
            c.metadata = other;
            None
        }
    }
}

/// The encoded length of [`put_cluster_value`]'s output, the metadata being `meta_len`
/// bytes.
fn cluster_value_len(
    c: &envoy_types::pb::envoy::config::cluster::v3::Cluster,
    meta_len: usize,
) -> usize {
    c.encoded_len() + len_delimited_tag(25, meta_len)
}

/// `c` (its metadata taken out) as prost encodes it, then the metadata (`meta_len`
/// bytes, computed once by the caller: it walks every nested value) as field 25.
fn put_cluster_value(
    c: &envoy_types::pb::envoy::config::cluster::v3::Cluster,
    meta: &core::Metadata,
    meta_len: usize,
    out: &mut Vec<u8>,
) {
    // What prost's own `encode_to_vec` does after sizing its buffer: the caller computed
    // the length once, and `encode` would compute it again.
    c.encode_raw(out);
    put_len(out, 25, meta_len);
    put_meta(meta, out);
}

/// The length of a length-delimited field `tag` holding `payload` bytes.
fn len_delimited_tag(tag: u32, payload: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(payload as u64) + payload
}

/// A Cluster in deterministic form, fast when it can be: a cluster meshd generates has
/// no map with more than one entry besides `metadata` (protocol options carry one), so
/// prost's encoding of it is already deterministic, and `metadata` (a Struct, several
/// keys) is canonicalized alone and appended — protobuf merges a field that comes last.
/// About ten times cheaper than [`resource`] on large meshes, where clusters dominate.
/// A cluster with more (an EnvoyFilter may add protocol options or typed metadata) takes
/// the canonical path, so its bytes, and so its version, never depend on HashMap order.
pub fn cluster_resource(mut c: envoy_types::pb::envoy::config::cluster::v3::Cluster) -> gpb::Any {
    // Deterministic only with at most one protocol option (a map) and no typed
    // metadata; otherwise the canonical re-encoding.
    let Some(meta) = ordered_metadata(&mut c) else {
        return resource(&c);
    };
    // Taken out (not copied): the rest encodes as prost does, the metadata after it.
    let meta_len = meta_len(&meta);
    let mut bytes = Vec::with_capacity(cluster_value_len(&c, meta_len));
    put_cluster_value(&c, &meta, meta_len, &mut bytes);
    gpb::Any {
        type_url: <envoy_types::pb::envoy::config::cluster::v3::Cluster as prost::Name>::type_url(),
        value: bytes,
    }
}

/// `Metadata` encoded with every map in key order (typed_filter_metadata unsupported:
/// meshd never generates it on clusters).
#[cfg(test)]
fn metadata_bytes(meta: &core::Metadata) -> Vec<u8> {
    let mut out = Vec::with_capacity(meta_len(meta));
    put_meta(meta, &mut out);
    out
}

// The metadata is written in one buffer: each length-delimited field's length is
// computed first instead of each nested message being built in a buffer of its own and
// copied into its parent. A nested value's length is computed again at each level above
// it; cluster metadata is two or three levels deep, so that costs less than passing
// lengths down would complicate.

/// A length-delimited field of tag 1 or 2 (the only ones Struct, Value and map entries
/// use).
fn len_delimited(payload: usize) -> usize {
    len_delimited_tag(1, payload)
}

fn sorted_keys<V>(map: &std::collections::HashMap<String, V>) -> Vec<&String> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    keys
}

fn value_len(v: &gpb::Value) -> usize {
    use gpb::value::Kind;
    match &v.kind {
        None => 0,
        Some(Kind::NullValue(n)) => 1 + encoded_len_varint(*n as u64),
        Some(Kind::NumberValue(_)) => 1 + 8,
        Some(Kind::StringValue(s)) => len_delimited(s.len()),
        Some(Kind::BoolValue(b)) => 1 + encoded_len_varint(u64::from(*b)),
        Some(Kind::StructValue(st)) => len_delimited(struct_len(st)),
        Some(Kind::ListValue(l)) => len_delimited(list_len(l)),
    }
}

fn list_len(l: &gpb::ListValue) -> usize {
    l.values.iter().map(|v| len_delimited(value_len(v))).sum()
}

/// A map entry (key, field 1; value, field 2) as a length-delimited field.
fn entry_len(key: &str, value_len: usize) -> usize {
    len_delimited(len_delimited(key.len()) + len_delimited(value_len))
}

fn struct_len(st: &gpb::Struct) -> usize {
    st.fields
        .iter()
        .map(|(k, v)| entry_len(k, value_len(v)))
        .sum()
}

fn meta_len(meta: &core::Metadata) -> usize {
    meta.filter_metadata
        .iter()
        .map(|(k, st)| entry_len(k, struct_len(st)))
        .sum()
}

fn put_len(out: &mut Vec<u8>, tag: u32, len: usize) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

fn put_bytes(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_len(out, tag, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_value(v: &gpb::Value, out: &mut Vec<u8>) {
    use gpb::value::Kind;
    use prost::encoding::{WireType, encode_key, encode_varint};
    match &v.kind {
        None => {}
        Some(Kind::NullValue(n)) => {
            encode_key(1, WireType::Varint, out);
            encode_varint(*n as u64, out);
        }
        Some(Kind::NumberValue(n)) => {
            encode_key(2, WireType::SixtyFourBit, out);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Some(Kind::StringValue(s)) => put_bytes(out, 3, s.as_bytes()),
        Some(Kind::BoolValue(b)) => {
            encode_key(4, WireType::Varint, out);
            encode_varint(u64::from(*b), out);
        }
        Some(Kind::StructValue(st)) => {
            put_len(out, 5, struct_len(st));
            put_struct(st, out);
        }
        Some(Kind::ListValue(l)) => {
            put_len(out, 6, list_len(l));
            for item in &l.values {
                put_len(out, 1, value_len(item));
                put_value(item, out);
            }
        }
    }
}

/// Field 1 holding a map entry: its key, then its value (`value_len` bytes, written by
/// `value`).
fn put_entry(out: &mut Vec<u8>, key: &str, value_len: usize, value: impl FnOnce(&mut Vec<u8>)) {
    put_len(out, 1, len_delimited(key.len()) + len_delimited(value_len));
    put_bytes(out, 1, key.as_bytes());
    put_len(out, 2, value_len);
    value(out);
}

fn put_struct(st: &gpb::Struct, out: &mut Vec<u8>) {
    for k in sorted_keys(&st.fields) {
        let v = &st.fields[k];
        put_entry(out, k, value_len(v), |out| put_value(v, out));
    }
}

fn put_meta(meta: &core::Metadata, out: &mut Vec<u8>) {
    for k in sorted_keys(&meta.filter_metadata) {
        let st = &meta.filter_metadata[k];
        put_entry(out, k, struct_len(st), |out| put_struct(st, out));
    }
}

// ---------------------------------------------------------------------------------------
// Canonical encoding
// ---------------------------------------------------------------------------------------

/// Re-encodes `bytes` (a message of `type_url`) with fields in number order and map
/// entries sorted by key, recursively, including inside `Any`. Unknown types are returned
/// unchanged.
pub fn canonical(type_url: &str, bytes: &[u8]) -> Vec<u8> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    match pool().get_message_by_name(name) {
        Some(desc) => canonical_message(&desc, bytes).unwrap_or_else(|| bytes.to_vec()),
        None => bytes.to_vec(),
    }
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(out);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One encoded field: its number and its complete bytes (tag included).
struct Field {
    number: u32,
    /// For map entries: the sort key (the entry's encoded key).
    map_key: Option<Vec<u8>>,
    bytes: Vec<u8>,
}

/// Whether a message type can contain a map or an `Any` anywhere below it. Types that
/// cannot are already canonical as prost writes them and are copied as they are.
fn needs_walk(desc: &MessageDescriptor) -> bool {
    use std::collections::HashMap;
    use std::sync::RwLock;
    static MEMO: OnceLock<RwLock<HashMap<String, bool>>> = OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    if let Ok(m) = memo.read()
        && let Some(v) = m.get(desc.full_name())
    {
        return *v;
    }
    fn walk(desc: &MessageDescriptor, visiting: &mut Vec<String>) -> bool {
        if desc.full_name() == "google.protobuf.Any" {
            return true;
        }
        if visiting.iter().any(|v| v == desc.full_name()) {
            // A cycle: whatever makes it need a walk is found on another path.
            return false;
        }
        visiting.push(desc.full_name().to_string());
        let out = desc.fields().any(|f| {
            f.is_map()
                || match f.kind() {
                    FieldKind::Message(m) => walk(&m, visiting),
                    _ => false,
                }
        });
        visiting.pop();
        out
    }
    let v = walk(desc, &mut Vec::new());
    if let Ok(mut m) = memo.write() {
        m.insert(desc.full_name().to_string(), v);
    }
    v
}

fn canonical_message(desc: &MessageDescriptor, buf: &[u8]) -> Option<Vec<u8>> {
    if !needs_walk(desc) {
        return Some(buf.to_vec());
    }
    let is_any = desc.full_name() == "google.protobuf.Any";
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0usize;
    let mut any_type_url = String::new();
    while pos < buf.len() {
        let start = pos;
        let tag = read_varint(buf, &mut pos)?;
        let number = (tag >> 3) as u32;
        let wire = (tag & 7) as u8;
        match wire {
            0 => {
                read_varint(buf, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = read_varint(buf, &mut pos)? as usize;
                let payload = buf.get(pos..pos + len)?;
                pos += len;
                let fd = desc.get_field(number);
                let sub = match fd.as_ref().map(|f| f.kind()) {
                    Some(FieldKind::Message(m)) => Some(m),
                    _ => None,
                };
                if is_any && number == 1 {
                    any_type_url = String::from_utf8_lossy(payload).into_owned();
                }
                let new_payload = if is_any && number == 2 {
                    Some(canonical(&any_type_url, payload))
                } else if let Some(m) = &sub {
                    Some(canonical_message(m, payload)?)
                } else {
                    None
                };
                if let Some(p) = new_payload {
                    let mut bytes = Vec::with_capacity(p.len() + 6);
                    write_varint(&mut bytes, tag);
                    write_varint(&mut bytes, p.len() as u64);
                    let key = if fd.is_some_and(|f| f.is_map()) {
                        Some(map_entry_key(&p))
                    } else {
                        None
                    };
                    bytes.extend_from_slice(&p);
                    fields.push(Field {
                        number,
                        map_key: key,
                        bytes,
                    });
                    continue;
                }
            }
            _ => return None,
        }
        let end = pos.min(buf.len());
        fields.push(Field {
            number,
            map_key: None,
            bytes: buf.get(start..end)?.to_vec(),
        });
    }
    if pos != buf.len() {
        return None;
    }
    // Stable: repeated fields keep their order; map entries sort by key.
    fields.sort_by(|a, b| {
        a.number
            .cmp(&b.number)
            .then_with(|| match (&a.map_key, &b.map_key) {
                (Some(x), Some(y)) => x.cmp(y),
                _ => std::cmp::Ordering::Equal,
            })
    });
    let mut out = Vec::with_capacity(buf.len());
    for f in fields {
        out.extend_from_slice(&f.bytes);
    }
    Some(out)
}

/// The encoded key field (number 1) of a map entry.
fn map_entry_key(entry: &[u8]) -> Vec<u8> {
    let mut pos = 0;
    while pos < entry.len() {
        let start = pos;
        let Some(tag) = read_varint(entry, &mut pos) else {
            break;
        };
        let skip = match tag & 7 {
            0 => read_varint(entry, &mut pos).map(|_| 0),
            1 => Some(8),
            5 => Some(4),
            2 => read_varint(entry, &mut pos).map(|l| l as usize),
            _ => None,
        };
        let Some(skip) = skip else { break };
        pos += skip;
        if tag >> 3 == 1 {
            return entry
                .get(start..pos.min(entry.len()))
                .unwrap_or_default()
                .to_vec();
        }
    }
    Vec::new()
}

/// Envoy JSON → protobuf bytes of message `type_name` (for configuration built as JSON).
pub fn json_to_bytes(type_name: &str, v: &serde_json::Value) -> Result<Vec<u8>, String> {
    let desc = pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| format!("unknown message {type_name}"))?;
    let msg =
        prost_reflect::DynamicMessage::deserialize(desc, v.clone()).map_err(|e| e.to_string())?;
    Ok(msg.encode_to_vec())
}

/// Envoy JSON in one normal form (defaults dropped, camelCase), for comparing configs.
pub fn normalize_json(type_name: &str, v: &serde_json::Value) -> Result<serde_json::Value, String> {
    let desc = pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| format!("unknown message {type_name}"))?;
    let msg =
        prost_reflect::DynamicMessage::deserialize(desc, v.clone()).map_err(|e| e.to_string())?;
    let opts = prost_reflect::SerializeOptions::new().skip_default_fields(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| e.to_string())
}

/// `TypedStruct` (udpa or xds) wrappers replaced by the message they describe, at any
/// depth: Envoy accepts both, and a typed value can be merged and checked.
fn unwrap_typed_struct(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let is_typed_struct = m
                .get("@type")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|t| {
                    t.ends_with("/udpa.type.v1.TypedStruct")
                        || t.ends_with("/xds.type.v3.TypedStruct")
                });
            if is_typed_struct {
                let url = m
                    .get("type_url")
                    .or_else(|| m.get("typeUrl"))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                let mut out = serde_json::Map::new();
                out.insert("@type".into(), url);
                if let Some(serde_json::Value::Object(inner)) = m.get("value") {
                    for (k, v) in inner {
                        out.insert(k.clone(), unwrap_typed_struct(v));
                    }
                }
                return serde_json::Value::Object(out);
            }
            serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), unwrap_typed_struct(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(unwrap_typed_struct).collect())
        }
        other => other.clone(),
    }
}

/// A value given as `type_name` (snake_case or camelCase, `TypedStruct`s allowed) in
/// Envoy's normal JSON form, or why Envoy's schema refuses it.
pub fn normalize_typed_json(
    type_name: &str,
    v: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    normalize_json(type_name, &unwrap_typed_struct(v))
}

/// Renders an `Any` as Envoy's JSON (camelCase, `@type`), via the descriptor pool.
pub fn any_to_json(any: &gpb::Any) -> serde_json::Value {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let Some(desc) = pool().get_message_by_name(name) else {
        return serde_json::json!({"@type": any.type_url});
    };
    match prost_reflect::DynamicMessage::decode(desc, any.value.as_slice()) {
        Ok(msg) => {
            let opts = prost_reflect::SerializeOptions::new().skip_default_fields(true);
            let mut v = msg
                .serialize_with_options(serde_json::value::Serializer, &opts)
                .unwrap_or_default();
            if let serde_json::Value::Object(m) = &mut v {
                let mut with_type = serde_json::Map::new();
                with_type.insert("@type".into(), any.type_url.clone().into());
                with_type.extend(std::mem::take(m));
                *m = with_type;
            }
            v
        }
        Err(e) => serde_json::json!({"@type": any.type_url, "error": e.to_string()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use serde_json::json;

    #[test]
    fn canonical_encoding_is_independent_of_map_order() {
        let meta = json!({"services": [{"host": "a", "name": "b", "namespace": "c"}],
                          "default_original_port": 9080, "subset": "v1", "x": 1, "y": 2});
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let c = Cluster {
                name: "c".into(),
                metadata: Some(core::Metadata {
                    filter_metadata: [
                        ("istio".to_string(), to_struct(&meta)),
                        ("z".to_string(), to_struct(&meta)),
                    ]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            seen.insert(resource(&c).value);
        }
        assert_eq!(seen.len(), 1, "one canonical encoding");
        let bytes = seen.into_iter().next().unwrap_or_default();
        let back = Cluster::decode(bytes.as_slice()).expect("still valid protobuf");
        assert_eq!(back.name, "c");
        let m = back.metadata.expect("metadata");
        assert_eq!(
            struct_to_json(&m.filter_metadata["istio"])["subset"],
            json!("v1")
        );
    }

    #[test]
    fn fast_cluster_encoding_is_deterministic_and_equivalent() {
        let meta = json!({"services": [{"host": "a", "name": "b", "namespace": "c"}], "default_original_port": 9080, "subset": "v1", "mtls": true, "none": null, "nested": {"z": [1, "x", false], "a": {}}});
        let make = || Cluster {
            name: "c".into(),
            connect_timeout: secs(10),
            metadata: Some(core::Metadata {
                filter_metadata: [("istio".to_string(), to_struct(&meta))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(cluster_resource(make()).value);
        }
        assert_eq!(seen.len(), 1);
        // The server's one-buffer `Any` is that `Any`, encoded.
        assert_eq!(
            cluster_any(make()),
            cluster_resource(make()).encode_to_vec()
        );
        let bytes = seen.into_iter().next().unwrap_or_default();
        let back = Cluster::decode(bytes.as_slice()).expect("valid");
        assert_eq!(back, {
            let mut c = make();
            c.metadata = back.metadata.clone();
            c
        });
        let m = back.metadata.expect("metadata kept");
        assert_eq!(
            struct_to_json(&m.filter_metadata["istio"])["subset"],
            json!("v1")
        );
        assert_eq!(
            struct_to_json(&m.filter_metadata["istio"]),
            struct_to_json(&to_struct(&meta))
        );
        // The hand-ordered metadata encoding decodes to the same metadata.
        let md = make().metadata.expect("metadata");
        let back = core::Metadata::decode(metadata_bytes(&md).as_slice()).expect("valid metadata");
        assert_eq!(back, md);
    }

    #[test]
    fn clusters_with_several_protocol_options_encode_deterministically() {
        // HashMaps with the same entries, inserted in different orders: the encoding
        // must not follow either order.
        let opt = |name: &str| {
            (
                format!("envoy.extensions.upstreams.{name}"),
                gpb::Any {
                    type_url: format!("type.googleapis.com/{name}"),
                    value: name.as_bytes().to_vec(),
                },
            )
        };
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let mut seen = std::collections::BTreeSet::new();
        for rot in 0..names.len() {
            let mut order = names.to_vec();
            order.rotate_left(rot);
            let c = Cluster {
                name: "c".into(),
                typed_extension_protocol_options: order.iter().map(|n| opt(n)).collect(),
                metadata: Some(core::Metadata {
                    filter_metadata: [("istio".to_string(), to_struct(&json!({"a": 1})))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            seen.insert(cluster_resource(c).value);
        }
        assert_eq!(seen.len(), 1, "one encoding whatever the insertion order");
    }

    #[test]
    fn any_renders_as_envoy_json() {
        let c = Cluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            connect_timeout: secs(10),
            ..Default::default()
        };
        let v = any_to_json(&any(&c));
        assert_eq!(
            v["@type"],
            json!("type.googleapis.com/envoy.config.cluster.v3.Cluster")
        );
        assert_eq!(v["connectTimeout"], json!("10s"));
        assert_eq!(
            v["name"],
            json!("outbound|9080||reviews.default.svc.cluster.local")
        );
    }
}
