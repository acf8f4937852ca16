//! outboundTrafficPolicy `ALLOW_ANY_DYNAMIC_DNS` through a real sidecar: plaintext HTTP to
//! an address no service claims goes where its Host header says (Envoy's dynamic forward
//! proxy), not to the address the client dialled; back under ALLOW_ANY the same request
//! goes to the dialled address (and finds nothing there).

use std::time::Duration;

use crate::harness::*;

fn mesh(mode: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\n\
         data:\n  mesh: |\n    outboundTrafficPolicy: {{mode: {mode}}}\n"
    )
}

#[test]
fn unknown_http_follows_its_host_header() {
    let Some((dir, config)) = intercepting_test("dynamic-dns") else {
        return;
    };
    config.write("mesh.yaml", &mesh("ALLOW_ANY_DYNAMIC_DNS"));
    // The "external" site the Host header names; nothing listens at the dialled address.
    let _site = Backends::start(&[("external-site", "127.0.1.77")], 8077);
    let _meshd = Meshd::start(config.path(), dir.path(), &[]);
    let client = intercepted_sidecar(&dir, "127.0.0.40", "sleep", &[("app", "sleep")]);
    intercept_outbound("127.99.0.0/16");
    let host = [("host", "127.0.1.77:8077")];
    let r = wait_for(
        "the request to reach the Host header's site",
        Duration::from_secs(20),
        || {
            http_get("127.99.0.1:8077", "/", &host)
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    assert!(r.body.contains("external-site"), "{}", r.body);
    for _ in 0..5 {
        let r = http_get("127.99.0.1:8077", "/", &host).expect("through the sidecar");
        assert_eq!(r.status, 200);
    }
    let used: u64 = client
        .stats("AllowAnyDynamicDNSCluster.upstream_rq_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(
        used >= 6,
        "the dynamic forward proxy cluster carried them: {used}"
    );
    assert_envoy_accepted(&client);

    // ALLOW_ANY: the same request leaves for the address it was sent to, where nothing
    // answers, so the Host header no longer decides.
    config.write("mesh.yaml", &mesh("ALLOW_ANY"));
    // (a TCP passthrough: the refused connection closes the client's).
    wait_for("ALLOW_ANY in force", Duration::from_secs(20), || {
        (!matches!(http_get("127.99.0.1:8077", "/", &host), Ok(r) if r.status == 200)).then_some(())
    });
    for _ in 0..3 {
        let r = http_get("127.99.0.1:8077", "/", &host);
        assert!(
            !matches!(&r, Ok(r) if r.status == 200),
            "under ALLOW_ANY the dialled address decides: {r:?}"
        );
    }
}
