//! Tokens presented to the CA and the TLS xDS port (Kubernetes service-account JWTs
//! checked against a JWKS), and JWKS documents themselves.
//!
//! The verifier's key is made when the process starts, so no input can carry a valid
//! signature: a token that verifies is a defect (an algorithm confusion, an unsigned
//! token accepted).

use std::sync::OnceLock;

use base64::Engine;

use crate::ca::jwt::JwtVerifier;

fn verifier() -> Option<&'static JwtVerifier> {
    static V: OnceLock<Option<JwtVerifier>> = OnceLock::new();
    V.get_or_init(|| {
        let key = rcgen::KeyPair::generate().ok()?;
        let raw = key.public_key_raw();
        // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
        if raw.len() != 65 {
            return None;
        }
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "fuzz", "alg": "ES256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]});
        JwtVerifier::from_jwks(&jwks.to_string(), "cluster.local").ok()
    })
    .as_ref()
}

/// A token of the right shape whose signature cannot verify.
const TOKEN: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImZ1enoifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpmdXp6IiwiYXVkIjoiaXN0aW8tY2EifQ.c2lnbmF0dXJl";

pub fn run(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode & 1 == 0 {
        let Some(v) = verifier() else {
            panic!("the fuzz verifier could not be made");
        };
        if let Ok(id) = v.verify(text) {
            panic!("a token no one could sign was accepted as {id}: {text}");
        }
    } else if let Ok(v) = JwtVerifier::from_jwks(text, "cluster.local") {
        // A JWKS that parses; the unsigned token must still be refused.
        assert!(v.verify(TOKEN).is_err(), "a bad signature verified");
    }
}
