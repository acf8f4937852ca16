//! Service ports named without a protocol (most real Services) through real sidecars
//! with iptables-style interception: outbound, the sidecar sniffs the protocol, so the
//! VirtualService's HTTP rules apply to HTTP and anything else still reaches the
//! service; inbound, raw TCP to such a port reaches the application.

use std::time::Duration;

use crate::harness::*;
use crate::scripted::{Dual, raw_line};

/// A Service `echo` with cluster IP 127.1.0.10 whose port 7000 is named `web` (no
/// protocol prefix), and its pod at `pod_ip`.
fn echo_service(pod_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: default}}\nspec:\n  clusterIP: 127.1.0.10\n  selector: {{app: echo}}\n  ports: [{{name: web, port: 7000}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: echo, namespace: default, labels: {{app: echo}}}}\nspec: {{containers: [{{name: echo, image: echo}}]}}\nstatus: {{phase: Running, podIP: {pod_ip}}}\n"
    )
}

const FAULT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {x-case: {exact: fault}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - route: [{destination: {host: echo}}]
"#;

#[test]
fn outbound_http_rules_apply_on_unnamed_ports_and_tcp_still_flows() {
    let Some((dir, config)) = intercepting_test("sniff-out") else {
        return;
    };
    config.write("echo.yaml", &echo_service("127.0.0.30"));
    config.write("vs.yaml", FAULT);
    let _app = Dual::start("echo", "127.0.0.30:7000");
    let _meshd = Meshd::start(config.path(), dir.path(), &[]);
    let client = intercepted_sidecar(&dir, "127.0.0.40", "sleep", &[("app", "sleep")]);
    intercept_outbound("127.1.0.0/16");
    let get = |case: &str| {
        http_get(
            "127.1.0.10:7000",
            "/",
            &[("Host", "echo.default.svc.cluster.local"), ("x-case", case)],
        )
        .map(|r| r.status)
        .map_err(|e| e.to_string())
    };
    wait_for("HTTP through the sidecar", Duration::from_secs(20), || {
        (get("none") == Ok(200)).then_some(())
    });
    // The VirtualService's HTTP rule applies: the fault answers 418.
    for _ in 0..3 {
        assert_eq!(
            get("fault"),
            Ok(418),
            "the HTTP rule applies on an unnamed port"
        );
        assert_eq!(get("none"), Ok(200));
    }
    // Raw TCP on the same port goes to the service.
    assert_eq!(
        raw_line("127.1.0.10:7000", "PING").as_deref(),
        Ok("echo: PING"),
        "raw TCP on an unnamed port reaches the service"
    );
    assert_envoy_accepted(&client);
}

#[test]
fn inbound_raw_tcp_reaches_the_application_on_unnamed_ports() {
    let Some((dir, config)) = intercepting_test("sniff-in") else {
        return;
    };
    config.write("echo.yaml", &echo_service("127.0.0.20"));
    let _app = Dual::start("echo", "127.0.0.20:7000");
    let _meshd = Meshd::start(config.path(), dir.path(), &[]);
    let server = intercepted_sidecar(&dir, "127.0.0.20", "echo", &[("app", "echo")]);
    intercept_inbound("127.0.0.20");
    wait_for(
        "HTTP through the server sidecar",
        Duration::from_secs(20),
        || {
            http_get("127.0.0.20:7000", "/", &[("Host", "echo")])
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    // The request went through the sidecar's HTTP handling (it counts it).
    let handled: u64 = server
        .stats("inbound_0.0.0.0_7000.downstream_rq_total")
        .iter()
        .filter(|(k, _)| k == "http.inbound_0.0.0.0_7000.downstream_rq_total")
        .map(|(_, v)| *v)
        .sum();
    assert!(handled > 0, "HTTP on the sniffed port is handled as HTTP");
    for _ in 0..5 {
        assert_eq!(
            raw_line("127.0.0.20:7000", "PING").as_deref(),
            Ok("echo: PING"),
            "raw TCP on an unnamed port reaches the application"
        );
    }
    assert_envoy_accepted(&server);
}
