//! Bad input gets a diagnostic with file:line, the object, the field and a hint; the
//! object is skipped and everything else is still translated.

use std::process::Command;

use crate::harness::*;

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\nspec:\n  selector: {app: reviews}\n  ports:\n  - {name: http, port: 9080}\n";

fn validate(dir: &TempDir) -> (i32, String) {
    let out = Command::new(meshd_bin())
        .arg("validate")
        .arg("--config-dir")
        .arg(dir.path())
        .output()
        .expect("run meshd validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Each case: a file with one fault, and what the diagnostic must say.
#[test]
fn each_kind_of_bad_input_is_named_precisely() {
    let cases: [(&str, &str, &[&str]); 9] = [
        (
            "malformed YAML",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [reviews\n",
            &["bad.yaml:7", "YAML syntax error", "hint:"],
        ),
        (
            "wrong field type",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: reviews\n  http:\n  - route:\n    - destination: {host: reviews}\n",
            &[
                "bad.yaml:6",
                "VirtualService default/r",
                "spec.hosts",
                "invalid type",
                "hint:",
            ],
        ),
        (
            "unknown field",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n  subset:\n  - name: v1\n    labels: {version: v1}\n",
            &[
                "bad.yaml:7",
                "DestinationRule default/r",
                "spec.subset",
                "unknown field",
                "did you mean `subsets`?",
            ],
        ),
        (
            "route to a subset that does not exist",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v2}\n",
            &[
                "bad.yaml:18",
                "VirtualService default/r",
                "spec.http[0].route[0].destination.subset",
                "\"v2\"",
                "defines subsets [v1]",
            ],
        ),
        (
            "duplicate object",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\nspec:\n  ports:\n  - {name: http, port: 9080}\n",
            &[
                "bad.yaml:1",
                "Service default/reviews is defined twice",
                "a-services.yaml:1",
                "hint:",
            ],
        ),
        (
            "invalid regex",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - uri: {regex: \"/(api\"}\n    route:\n    - destination: {host: reviews}\n",
            &[
                "bad.yaml:9",
                "spec.http[0].match[0].uri.regex",
                "invalid regular expression",
                "RE2",
            ],
        ),
        (
            "HTTPS gateway server without TLS settings",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n",
            &[
                "bad.yaml:",
                "Gateway default/gw",
                "spec.servers[0].tls",
                "a server with protocol HTTPS needs TLS settings",
                "credentialName",
            ],
        ),
        (
            "SIMPLE TLS with no certificate",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE}\n",
            &[
                "bad.yaml:10",
                "spec.servers[0].tls.serverCertificate",
                "SIMPLE TLS needs a server certificate",
                "Secret with tls.crt and tls.key",
            ],
        ),
        (
            "ISTIO_MUTUAL with a credential",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: ISTIO_MUTUAL, credentialName: x}\n",
            &[
                "bad.yaml:10",
                "spec.servers[0].tls",
                "ISTIO_MUTUAL uses the gateway's mesh certificate",
            ],
        ),
    ];
    for (what, text, expect) in cases {
        let dir = TempDir::new("bad");
        dir.write("a-services.yaml", SERVICES);
        dir.write("bad.yaml", text);
        let (code, out) = validate(&dir);
        assert_eq!(code, 1, "{what}: exit status 1 on errors\n{out}");
        let line = out
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or_else(|| panic!("{what}: an error line\n{out}"));
        for e in expect {
            assert!(
                line.contains(e),
                "{what}: {e:?} missing from\n{line}\n(all output:\n{out})"
            );
        }
    }
}

/// The good objects next to a bad one are still translated.
#[test]
fn a_bad_object_does_not_take_down_the_rest() {
    let dir = TempDir::new("rest");
    dir.write("a-services.yaml", SERVICES);
    dir.write(
        "b.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: good\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{headers: {x-canary: {exact: \"1\"}}}]\n    directResponse: {status: 299}\n  - route:\n    - destination: {host: reviews}\n---\nthis is: [not valid\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: broken\nspec:\n  servers: 12\n",
    );
    let out = Command::new(meshd_bin())
        .arg("translate")
        .arg("--config-dir")
        .arg(dir.path())
        .args([
            "--proxy",
            "sidecar~10.0.0.1~client.default~default.svc.cluster.local",
        ])
        .output()
        .expect("translate");
    assert!(out.status.success());
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let text = dump.to_string();
    assert!(
        text.contains("\"status\":299"),
        "the good VirtualService is translated"
    );
    assert!(text.contains("outbound|9080||reviews.default.svc.cluster.local"));
    let (code, diags) = validate(&dir);
    assert_eq!(code, 1);
    // The parser notices the unclosed sequence where the document ends.
    assert!(
        (diags.contains("b.yaml:13") || diags.contains("b.yaml:14"))
            && diags.contains("YAML syntax error"),
        "{diags}"
    );
    assert!(
        diags.contains("b.yaml:20")
            && diags.contains("Gateway default/broken")
            && diags.contains("spec.servers"),
        "{diags}"
    );
}

#[test]
fn clean_config_validates_with_status_zero() {
    let (code, out) = {
        let out = Command::new(meshd_bin())
            .arg("validate")
            .arg("--config-dir")
            .arg(repo().join("examples/bookinfo"))
            .output()
            .expect("validate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 errors"), "{out}");
}
