//! SDS resources: a workload's key and certificate (`default`) and the trust bundle
//! (`ROOTCA`), named as istio-proxy names them.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};

pub const DEFAULT: &str = "default";
pub const ROOTCA: &str = "ROOTCA";

fn inline(bytes: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineBytes(
            bytes.as_bytes().to_vec(),
        )),
        ..Default::default()
    })
}

/// `default`: the chain (without the root, which peers have) and the key.
pub fn workload(name: &str, chain: &[String], key_pem: &str) -> Secret {
    let served = if chain.len() > 1 {
        &chain[..chain.len() - 1]
    } else {
        chain
    };
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&served.concat()),
            private_key: inline(key_pem),
            ..Default::default()
        })),
    }
}

/// `ROOTCA`: the roots peers' certificates must chain to.
pub fn root(name: &str, root_pem: &str) -> Secret {
    trust(name, root_pem, None)
}

/// A validation context: trusted roots and, if given, the revocation list checked with
/// them (a Secret's `ca.crt` and `ca.crl`).
pub fn trust(name: &str, ca_pem: &str, crl_pem: Option<&str>) -> Secret {
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(ca_pem),
                crl: crl_pem.and_then(inline),
                ..Default::default()
            },
        )),
    }
}
