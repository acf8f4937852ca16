//! Bearer-token authentication for the CA and SDS in file mode: a JWT signed by a key in
//! a configured JWKS file, with the claims of a Kubernetes service-account token
//! (`sub: system:serviceaccount:NS:SA`, audience `istio-ca`). In Kubernetes mode the
//! same check is a TokenReview.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::identity::Identity;

/// The audience a token for the CA must carry.
pub const AUDIENCE: &str = "istio-ca";

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against a JWKS.
pub struct JwtVerifier {
    keys: Vec<Key>,
    trust_domain: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl JwtVerifier {
    pub fn from_jwks(jwks_json: &str, trust_domain: &str) -> Result<JwtVerifier, String> {
        let set: JwkSet =
            serde_json::from_str(jwks_json).map_err(|e| format!("JWKS is not valid: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (_, Some(a)) => a
                    .to_string()
                    .parse::<Algorithm>()
                    .map_err(|e| format!("JWKS key algorithm: {e}"))?,
                (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(_), None) => Algorithm::ES256,
                _ => return Err("JWKS keys must be RSA or EC".into()),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key: {e}"))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        Ok(JwtVerifier {
            keys,
            trust_domain: trust_domain.to_string(),
        })
    }

    pub fn from_file(path: &Path, trust_domain: &str) -> Result<JwtVerifier, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read JWKS {}: {e}", path.display()))?;
        JwtVerifier::from_jwks(&text, trust_domain)
    }

    /// The identity a valid token speaks for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(format!(
                "no key in the JWKS for kid {:?} and algorithm {:?}",
                header.kid, header.alg
            ));
        }
        let mut last = String::new();
        for k in candidates {
            let mut v = Validation::new(k.alg);
            v.set_audience(&[AUDIENCE]);
            v.leeway = 30;
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(data) => {
                    return Identity::from_k8s_subject(&self.trust_domain, &data.claims.sub)
                        .ok_or_else(|| {
                            format!(
                                "token subject {:?} is not system:serviceaccount:NAMESPACE:NAME",
                                data.claims.sub
                            )
                        });
                }
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                            "token has expired".to_string()
                        }
                        jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                            format!("token audience is not {AUDIENCE}")
                        }
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                            "token signature does not verify".to_string()
                        }
                        _ => format!("token refused: {e}"),
                    }
                }
            }
        }
        Err(last)
    }
}
