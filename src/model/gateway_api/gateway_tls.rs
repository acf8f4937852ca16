//! A Gateway's own TLS settings (`spec.tls`, standard channel since v1.5; istiod supports
//! neither part):
//!
//! - `frontend`: client certificate validation. Each HTTPS listener terminating TLS takes
//!   the validation of its port (`perPort`, else `default`). `AllowValidOnly` makes the
//!   server MUTUAL — a client must present a certificate the CA bundle verifies; with
//!   `AllowInsecureFallback` a certificate is asked for but neither required nor verified
//!   (the Gateway then says so in its InsecureFrontendValidationMode condition).
//! - `backend.clientCertificateRef`: the certificate the Gateway's proxies present when
//!   they originate TLS to a backend (BackendTLSPolicy, DestinationRule SIMPLE), served to
//!   them alone over SDS.

use super::backend_tls::ca_bundle;
use super::convert::{CROSS_NAMESPACE_CREDENTIAL, granted};
use super::{FrontendValidation, GatewaySpec};
use crate::model::object::{Kind, Object, ObjectKey, Spec};

/// Annotation on a generated Istio Gateway whose server asks for client certificates
/// without verifying them (AllowInsecureFallback).
pub const ACCEPT_UNTRUSTED: &str = "internal.meshd.io/accept-untrusted-clients";

/// Annotation on the Istio Gateways generated for a Gateway API Gateway with a usable
/// backend client certificate: `NAMESPACE/NAME` of its Secret.
pub const BACKEND_CERTIFICATE: &str = "internal.meshd.io/backend-client-certificate";

/// Why a reference cannot be used: (condition reason, message).
pub type RefProblem = (&'static str, String);

/// How a listener validates clients.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// `configmap://NS/NAME`: the CA bundle, over SDS.
    pub ca_credential: String,
    /// AllowInsecureFallback.
    pub insecure: bool,
}

/// The validation a Gateway asks of clients on `port`, or (ResolvedRefs reason, message)
/// when its CA reference cannot be used.
pub fn for_port(
    gw: &Object,
    port: u32,
    objects: &crate::model::objects::ObjectMap,
    grants: &[&Object],
) -> Result<Option<Validation>, RefProblem> {
    let Spec::KubeGateway(spec) = &gw.spec else {
        return Ok(None);
    };
    let Some(v) = validation(spec, port) else {
        return Ok(None);
    };
    let Some(r) = v.ca_certificate_refs.first() else {
        return Err((
            "InvalidCACertificateRef",
            "frontend validation names no caCertificateRefs".into(),
        ));
    };
    let ns = core_ref(
        gw,
        r,
        "ConfigMap",
        "InvalidCACertificateKind",
        "caCertificateRef",
        grants,
    )?;
    let ca_credential = ca_bundle(objects, &ns, &r.name).map_err(|why| {
        (
            "InvalidCACertificateRef",
            format!("caCertificateRef: {why}"),
        )
    })?;
    Ok(Some(Validation {
        ca_credential,
        insecure: v.mode.as_deref() == Some("AllowInsecureFallback"),
    }))
}

/// The namespace of `r`, a Gateway's reference to a core object of kind `kind` (the
/// default when it names none), or the problem: another group or kind (`bad_kind`), or
/// another namespace without a ReferenceGrant for Gateways of `gw`'s (RefNotPermitted).
fn core_ref(
    gw: &Object,
    r: &super::ObjectRef,
    kind: &str,
    bad_kind: &'static str,
    field: &str,
    grants: &[&Object],
) -> Result<String, RefProblem> {
    let (group, named) = (
        r.group.as_deref().unwrap_or(""),
        r.kind.as_deref().unwrap_or(kind),
    );
    if !group.is_empty() || named != kind {
        return Err((
            bad_kind,
            format!("{field} of group {group:?} kind {named:?} is not supported (only {kind}s)"),
        ));
    }
    let ns = r.namespace.clone().unwrap_or(gw.key.namespace.clone());
    if ns != gw.key.namespace
        && !granted(grants, "Gateway", &gw.key.namespace, "", kind, &ns, &r.name)
    {
        return Err((
            "RefNotPermitted",
            format!(
                "{field} {ns}/{} not accessible to a Gateway in namespace {:?} (missing a ReferenceGrant?)",
                r.name, gw.key.namespace
            ),
        ));
    }
    Ok(ns)
}

/// The validation for `port`: its perPort entry, else the default.
fn validation(spec: &GatewaySpec, port: u32) -> Option<&FrontendValidation> {
    let f = spec.tls.as_ref()?.frontend.as_ref()?;
    match f.per_port.iter().find(|p| p.port == port) {
        Some(p) => p.tls.validation.as_ref(),
        None => f.default.as_ref()?.validation.as_ref(),
    }
}

/// The backend client certificate of Gateway `gw`: None when it names none, else its
/// credential (`kubernetes-gateway://NS/NAME`) or (Gateway ResolvedRefs reason, message).
pub fn backend_client_certificate(
    gw: &Object,
    objects: &crate::model::objects::ObjectMap,
    grants: &[&Object],
) -> Option<Result<(String, String), RefProblem>> {
    let Spec::KubeGateway(spec) = &gw.spec else {
        return None;
    };
    let r = spec
        .tls
        .as_ref()?
        .backend
        .as_ref()?
        .client_certificate_ref
        .as_ref()?;
    let ns = match core_ref(
        gw,
        r,
        "Secret",
        "InvalidClientCertificateRef",
        "clientCertificateRef",
        grants,
    ) {
        Ok(ns) => ns,
        Err(e) => return Some(Err(e)),
    };
    let key = ObjectKey {
        kind: Kind::Secret,
        namespace: ns.clone(),
        name: r.name.clone(),
    };
    let usable = match objects.get(&key).map(|o| &o.spec) {
        Some(Spec::Secret(s)) => {
            s.cert
                .as_deref()
                .is_some_and(|c| c.contains("-----BEGIN CERTIFICATE-----"))
                && s.key
                    .as_deref()
                    .is_some_and(|k| k.contains("PRIVATE KEY-----"))
        }
        _ => false,
    };
    if !usable {
        return Some(Err((
            "InvalidClientCertificateRef",
            format!(
                "clientCertificateRef {ns}/{} is not a Secret with a PEM certificate and key",
                r.name
            ),
        )));
    }
    Some(Ok((ns, r.name.clone())))
}

/// The credential name the Gateway's proxies fetch a Secret of `ns` by.
pub fn credential(ns: &str, name: &str) -> String {
    format!("{CROSS_NAMESPACE_CREDENTIAL}{ns}/{name}")
}
