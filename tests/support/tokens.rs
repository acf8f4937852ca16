//! Service-account-style tokens for tests: an EC key, its JWKS, and tokens signed with it.

#![allow(dead_code)]

use rcgen::KeyPair;

/// A token issuer for tests: an EC key and its JWKS.
#[derive(Debug)]
pub struct TokenIssuer {
    key: KeyPair,
    pub jwks: String,
}

impl TokenIssuer {
    pub fn new(kid: &str) -> TokenIssuer {
        use base64::Engine;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let raw = key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]})
        .to_string();
        TokenIssuer { key, jwks }
    }

    /// A token with arbitrary claims.
    pub fn sign(&self, claims: &serde_json::Value, kid: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_string());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.key.serialize_der());
        jsonwebtoken::encode(&header, claims, &key).expect("token")
    }

    /// A service-account token for `ns/sa`, valid for `ttl_secs` (negative: expired).
    pub fn token(&self, ns: &str, sa: &str, audience: &str, ttl_secs: i64, kid: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let claims = serde_json::json!({
            "iss": "kubernetes/serviceaccount",
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "aud": [audience],
            "iat": now, "exp": now + ttl_secs,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_string());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.key.serialize_der());
        jsonwebtoken::encode(&header, &claims, &key).expect("token")
    }
}
