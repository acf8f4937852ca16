//! istio.io task "Authorization with JWT" (docs/tasks/security/authorization/authz-jwt):
//! `sleep` calls `httpbin` in namespace `foo`, both with sidecars. With the
//! RequestAuthentication `jwt-example` alone an invalid token gets 401 and no token 200;
//! with the AuthorizationPolicy `require-jwt` (requestPrincipals
//! `testing@secure.istio.io/testing@secure.istio.io`) a valid token gets 200 and no token
//! 403; with the claim rule (`request.auth.claims[groups]` contains `group1`) the token with
//! the groups claim gets 200 and the one without it 403.
//!
//! The task's issuer publishes an RSA JWKS on GitHub and signed demo.jwt and
//! groups-scope.jwt with it; here the test generates a key (ES256), gives its JWKS inline
//! (`jwks` instead of `jwksUri`: no network) and signs tokens with the demo tokens' exact
//! claims.

use std::time::Duration;

use crate::harness::*;
use crate::secure_mesh::*;
use crate::tokens::TokenIssuer;

/// The key id of the task's sample JWKS (security/tools/jwt/samples/jwks.json).
const KID: &str = "DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ";

/// Step 1: the RequestAuthentication `jwt-example`, its JWKS inline.
fn request_authentication(jwks: &str) -> String {
    format!(
        r#"apiVersion: "security.istio.io/v1beta1"
kind: "RequestAuthentication"
metadata:
  name: "jwt-example"
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwks: '{jwks}'
"#
    )
}

/// Step 4: the AuthorizationPolicy `require-jwt`.
const REQUIRE_JWT: &str = r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
       requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]
"#;

/// Step 8: `require-jwt` with the claim condition.
const REQUIRE_GROUP: &str = r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
       requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
"#;

/// `curl http://httpbin.foo:8000/headers [-H "Authorization: Bearer TOKEN"]` from sleep:
/// the status.
fn curl(token: Option<&str>) -> u16 {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Host", "httpbin.foo:8000")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    status(request(
        &egress_addr(SLEEP_FOO.ip, 8000),
        "GET",
        "/headers",
        &headers,
    ))
}

#[test]
fn authorization_with_jwt() {
    let issuer = TokenIssuer::new(KID);
    // demo.jwt's claims (step 5's output).
    let token = issuer.sign(
        &serde_json::json!({"exp": 4685989700u64, "foo": "bar", "iat": 1532389700u64,
            "iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io"}),
        KID,
    );
    // groups-scope.jwt's claims (step 9's output).
    let token_group = issuer.sign(
        &serde_json::json!({"exp": 3537391104u64, "groups": ["group1", "group2"],
            "iat": 1537391104u64, "iss": "testing@secure.istio.io",
            "scope": ["scope1", "scope2"], "sub": "testing@secure.istio.io"}),
        KID,
    );
    let Some(mesh) = Mesh::start(
        "authz-jwt",
        &[&HTTPBIN_FOO, &SLEEP_FOO],
        &[("httpbin.yaml", &httpbin_service("foo"))],
        false,
    ) else {
        return;
    };
    let _httpbin = Backends::start(&[("httpbin", &app_ip(HTTPBIN_FOO.ip))], 8080);

    // Before you begin: sleep reaches httpbin.
    wait_for("sleep to reach httpbin", Duration::from_secs(20), || {
        (curl(None) == 200).then_some(())
    });

    // A RequestAuthentication alone: an invalid token is rejected (401), a request
    // without a token is still accepted (200).
    mesh.config.write(
        "request-authentication.yaml",
        &request_authentication(&issuer.jwks),
    );
    wait_for(
        "the invalid token to be rejected",
        Duration::from_secs(20),
        || (curl(Some("invalidToken")) == 401).then_some(()),
    );
    assert_eq!(curl(None), 200, "no token: no authentication to fail");
    assert_eq!(curl(Some(&token)), 200, "a valid token");
    // A token the issuer's key did not sign.
    let forged = TokenIssuer::new(KID).sign(
        &serde_json::json!({"exp": 4685989700u64, "iss": "testing@secure.istio.io",
            "sub": "testing@secure.istio.io"}),
        KID,
    );
    assert_eq!(curl(Some(&forged)), 401, "a token signed by another key");

    // require-jwt: the request principal is required.
    mesh.config.write("authorization-policy.yaml", REQUIRE_JWT);
    wait_for(
        "a request without a token to be denied",
        Duration::from_secs(20),
        || (curl(None) == 403).then_some(()),
    );
    assert_eq!(curl(Some(&token)), 200, "a valid token");
    assert_eq!(curl(Some(&token_group)), 200, "the other valid token");
    assert_eq!(curl(Some("invalidToken")), 401, "still unauthenticated");
    let r = request(
        &egress_addr(SLEEP_FOO.ip, 8000),
        "GET",
        "/headers",
        &[("Host", "httpbin.foo:8000")],
    )
    .expect("an answer");
    assert_eq!(r.body, "RBAC: access denied");

    // require-jwt with the claim rule: only a token whose groups contain group1.
    mesh.config
        .write("authorization-policy.yaml", REQUIRE_GROUP);
    wait_for(
        "the token without groups to be denied",
        Duration::from_secs(20),
        || (curl(Some(&token)) == 403).then_some(()),
    );
    assert_eq!(curl(Some(&token_group)), 200, "groups contain group1");
    let group2_only = issuer.sign(
        &serde_json::json!({"exp": 3537391104u64, "groups": ["group2"],
            "iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io"}),
        KID,
    );
    assert_eq!(curl(Some(&group2_only)), 403, "groups without group1");
    assert_eq!(curl(None), 403, "no token");
    // Ten more of each, the same answers.
    let answers: Vec<(u16, u16)> = (0..10)
        .map(|_| (curl(Some(&token_group)), curl(Some(&token))))
        .collect();
    assert_eq!(answers, vec![(200, 403); 10]);
    mesh.assert_accepted();
}
