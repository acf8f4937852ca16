//! istio-proxy's own extension messages that istiod configures (the ALPN override filter,
//! the stats filter's plugin config) and udpa's `TypedStruct` (how istiod passes the
//! metadata-exchange filters their config), with their descriptors added to the pool so
//! they render as JSON and encode canonically like Envoy's.
//!
//! Only the fields meshd sets are declared; the field numbers are those of Istio's API
//! (`envoy/config/filter/http/alpn/v2alpha1/config.proto`,
//! `envoy/extensions/stats/config.proto`) and udpa's (`udpa/type/v1/typed_struct.proto`).

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf as gpb;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, MessageOptions};

/// `udpa.type.v1.TypedStruct`: a config given as a Struct with the type it stands for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<gpb::Struct>,
}

impl prost::Name for TypedStruct {
    const NAME: &'static str = "TypedStruct";
    const PACKAGE: &'static str = "udpa.type.v1";
    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

/// `istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig` (the `istio.alpn` filter).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AlpnFilterConfig {
    #[prost(message, repeated, tag = "1")]
    pub alpn_override: Vec<AlpnOverride>,
}

impl prost::Name for AlpnFilterConfig {
    const NAME: &'static str = "FilterConfig";
    const PACKAGE: &'static str = "istio.envoy.config.filter.http.alpn.v2alpha1";
    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

/// `FilterConfig.AlpnOverride`: the ALPN to offer upstream for one upstream protocol
/// (0 HTTP/1.0, 1 HTTP/1.1, 2 HTTP/2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AlpnOverride {
    #[prost(int32, tag = "1")]
    pub upstream_protocol: i32,
    #[prost(string, repeated, tag = "2")]
    pub alpn_override: Vec<String>,
}

/// `stats.PluginConfig` (the `istio.stats` filter).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsPluginConfig {
    #[prost(bool, tag = "6")]
    pub disable_host_header_fallback: bool,
    #[prost(message, optional, tag = "7")]
    pub tcp_reporting_duration: Option<gpb::Duration>,
    #[prost(message, repeated, tag = "8")]
    pub metrics: Vec<StatsMetricConfig>,
}

impl prost::Name for StatsPluginConfig {
    const NAME: &'static str = "PluginConfig";
    const PACKAGE: &'static str = "stats";
    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

/// `stats.MetricConfig`: one metric's changed dimensions, removed tags, or drop.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsMetricConfig {
    #[prost(btree_map = "string, string", tag = "1")]
    pub dimensions: BTreeMap<String, String>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub tags_to_remove: Vec<String>,
    #[prost(bool, tag = "5")]
    pub drop: bool,
}

fn field(
    name: &str,
    number: i32,
    ty: Type,
    label: Label,
    type_name: Option<&str>,
) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        r#type: Some(ty as i32),
        label: Some(label as i32),
        type_name: type_name.map(str::to_string),
        json_name: Some(json_name(name)),
        ..Default::default()
    }
}

fn json_name(name: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.into()),
        field: fields,
        ..Default::default()
    }
}

fn file(
    name: &str,
    package: &str,
    deps: &[&str],
    messages: Vec<DescriptorProto>,
) -> FileDescriptorProto {
    FileDescriptorProto {
        name: Some(name.into()),
        package: Some(package.into()),
        dependency: deps.iter().map(|d| d.to_string()).collect(),
        message_type: messages,
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

/// The descriptors of the messages above, for [`super::pb::pool`].
pub fn descriptors() -> Vec<FileDescriptorProto> {
    use Label::{Optional, Repeated};
    let typed_struct = file(
        "meshd/udpa/type/v1/typed_struct.proto",
        "udpa.type.v1",
        &["google/protobuf/struct.proto"],
        vec![message(
            "TypedStruct",
            vec![
                field("type_url", 1, Type::String, Optional, None),
                field(
                    "value",
                    2,
                    Type::Message,
                    Optional,
                    Some(".google.protobuf.Struct"),
                ),
            ],
        )],
    );
    let mut override_msg = message(
        "AlpnOverride",
        vec![
            field(
                "upstream_protocol",
                1,
                Type::Enum,
                Optional,
                Some(".istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.Protocol"),
            ),
            field("alpn_override", 2, Type::String, Repeated, None),
        ],
    );
    override_msg.field[0].r#type = Some(Type::Enum as i32);
    let mut alpn_msg = message(
        "FilterConfig",
        vec![field(
            "alpn_override",
            1,
            Type::Message,
            Repeated,
            Some(".istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig.AlpnOverride"),
        )],
    );
    alpn_msg.nested_type.push(override_msg);
    alpn_msg.enum_type.push(prost_types::EnumDescriptorProto {
        name: Some("Protocol".into()),
        value: ["HTTP10", "HTTP11", "HTTP2"]
            .iter()
            .enumerate()
            .map(|(i, n)| prost_types::EnumValueDescriptorProto {
                name: Some((*n).into()),
                number: Some(i as i32),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    let alpn = file(
        "meshd/istio/envoy/config/filter/http/alpn/v2alpha1/config.proto",
        "istio.envoy.config.filter.http.alpn.v2alpha1",
        &[],
        vec![alpn_msg],
    );
    let mut metric = message(
        "MetricConfig",
        vec![
            field(
                "dimensions",
                1,
                Type::Message,
                Repeated,
                Some(".stats.MetricConfig.DimensionsEntry"),
            ),
            field("name", 2, Type::String, Optional, None),
            field("tags_to_remove", 3, Type::String, Repeated, None),
            field("drop", 5, Type::Bool, Optional, None),
        ],
    );
    let mut entry = message(
        "DimensionsEntry",
        vec![
            field("key", 1, Type::String, Optional, None),
            field("value", 2, Type::String, Optional, None),
        ],
    );
    entry.options = Some(MessageOptions {
        map_entry: Some(true),
        ..Default::default()
    });
    metric.nested_type.push(entry);
    let stats = file(
        "meshd/stats/config.proto",
        "stats",
        &["google/protobuf/duration.proto"],
        vec![
            message(
                "PluginConfig",
                vec![
                    field(
                        "disable_host_header_fallback",
                        6,
                        Type::Bool,
                        Optional,
                        None,
                    ),
                    field(
                        "tcp_reporting_duration",
                        7,
                        Type::Message,
                        Optional,
                        Some(".google.protobuf.Duration"),
                    ),
                    field(
                        "metrics",
                        8,
                        Type::Message,
                        Repeated,
                        Some(".stats.MetricConfig"),
                    ),
                ],
            ),
            metric,
        ],
    );
    vec![typed_struct, alpn, stats]
}

/// A `TypedStruct` of `type_url` with `value` (a JSON object).
pub fn typed_struct(type_url: &str, value: &serde_json::Value) -> gpb::Any {
    super::pb::any(&TypedStruct {
        type_url: type_url.into(),
        value: Some(super::pb::to_struct(value)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_messages_render_as_istiod_writes_them() {
        let alpn = super::super::pb::any(&AlpnFilterConfig {
            alpn_override: vec![AlpnOverride {
                upstream_protocol: 1,
                alpn_override: vec!["istio-http/1.1".into(), "istio".into()],
            }],
        });
        assert_eq!(
            super::super::pb::any_to_json(&alpn),
            json!({
                "@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
                "alpnOverride": [{"upstreamProtocol": "HTTP11", "alpnOverride": ["istio-http/1.1", "istio"]}],
            })
        );
        let stats = super::super::pb::any(&StatsPluginConfig {
            disable_host_header_fallback: true,
            tcp_reporting_duration: None,
            metrics: vec![StatsMetricConfig {
                dimensions: [("a".to_string(), "b".to_string())].into(),
                name: "requests_total".into(),
                tags_to_remove: vec!["c".into()],
                drop: false,
            }],
        });
        assert_eq!(
            super::super::pb::any_to_json(&stats),
            json!({
                "@type": "type.googleapis.com/stats.PluginConfig",
                "disableHostHeaderFallback": true,
                "metrics": [{"dimensions": {"a": "b"}, "name": "requests_total", "tagsToRemove": ["c"]}],
            })
        );
        let ts = typed_struct(
            "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
            &json!({"protocol": "istio-peer-exchange", "enable_discovery": true}),
        );
        assert_eq!(
            super::super::pb::any_to_json(&ts),
            json!({
                "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "typeUrl": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
                "value": {"protocol": "istio-peer-exchange", "enable_discovery": true},
            })
        );
    }
}
