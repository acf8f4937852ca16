//! istio.io task "Authorization for TCP traffic" (docs/tasks/security/authorization/authz-tcp):
//! `sleep` talks to `tcp-echo` in namespace `foo`, both with sidecars, on the service ports
//! 9000 and 9001 and, straight to the pod address, on 9002, which the Service omits (the
//! pass-through filter chain). An ALLOW policy for ports 9000 and 9001 leaves those echoing
//! and closes 9002; an ALLOW rule naming the HTTP-only field `methods` cannot match TCP, so
//! istiod drops it and both ports close; a DENY rule with only `methods` denies every TCP
//! connection, and with `ports: ["9000"]` only port 9000's. A refused connection is closed
//! by the server's sidecar: no byte of the echo comes back.

use std::time::Duration;

use crate::harness::*;
use crate::scripted::raw_line;
use crate::secure_mesh::*;
use crate::traffic_apps::TcpEcho;

/// tcp-echo's pod: its sidecar captures inbound connections as istio-iptables would
/// (nftables to 15006), so the undeclared port 9002 reaches the pass-through chain.
const TCP_ECHO: Workload = Workload {
    pod: "tcp-echo",
    namespace: "foo",
    ip: "127.0.0.30",
    labels: &[("app", "tcp-echo"), ("version", "v1")],
    service_account: "default",
    sidecar: true,
    inbound: &[(9000, "TCP"), (9001, "TCP"), (9002, "TCP")],
    egress: &[],
    intercepted: true,
};

const SLEEP: Workload = Workload {
    pod: "sleep",
    namespace: "foo",
    ip: "127.0.0.40",
    labels: &[("app", "sleep")],
    service_account: "sleep",
    sidecar: true,
    inbound: &[],
    egress: &[(9000, "TCP"), (9001, "TCP")],
    intercepted: false,
};

/// samples/tcp-echo/tcp-echo.yaml's Service: ports 9000 and 9001, not 9002.
const TCP_ECHO_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: tcp-echo
  namespace: foo
  labels: {app: tcp-echo, service: tcp-echo}
spec:
  ports:
  - name: tcp
    port: 9000
  - name: tcp-other
    port: 9001
  selector: {app: tcp-echo}
"#;

/// The task's `tcp-policy`, as each step writes it.
fn tcp_policy(action: &str, operation: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: tcp-policy\n  namespace: foo\nspec:\n  selector:\n    matchLabels:\n      app: tcp-echo\n  action: {action}\n  rules:\n  - to:\n    - operation:\n{operation}"
    )
}

/// `echo "port N" | nc tcp-echo N` from sleep (for 9002 `nc $TCP_ECHO_IP 9002`): what came
/// back, or why nothing did. Ports 9000 and 9001 go through sleep's sidecar; 9002, to the
/// pod address and a port no Service declares, leaves sleep's sidecar through its
/// PassthroughCluster in plaintext, as this direct connection does.
fn nc(port: u16) -> Result<String, String> {
    let addr = if port == 9002 {
        format!("{}:9002", TCP_ECHO.ip)
    } else {
        egress_addr(SLEEP.ip, port)
    };
    raw_line(&addr, &format!("port {port}"))
}

/// The task's verdict: `grep "hello" && echo 'connection succeeded' || echo 'connection
/// rejected'`, with the echo itself checked when it succeeded.
fn outcome(port: u16) -> &'static str {
    match nc(port) {
        Ok(line) if line.contains("hello") => {
            assert_eq!(line, format!("hello port {port}"), "the echo");
            "connection succeeded"
        }
        _ => "connection rejected",
    }
}

/// Connections the server's sidecar closed on an RBAC decision (the network filter).
fn denied(mesh: &Mesh) -> u64 {
    mesh.stat(TCP_ECHO.pod, "tcp.rbac.denied")
}

/// `n` attempts on `port` all end as `expected`; with "connection rejected", nothing came
/// back at all (not even part of an echo) and the server's sidecar counted `n` denials.
fn assert_all(mesh: &Mesh, port: u16, expected: &str, n: usize) {
    let before = denied(mesh);
    for i in 0..n {
        assert_eq!(outcome(port), expected, "port {port}, attempt {i}");
        if expected == "connection rejected" {
            let r = nc(port);
            assert!(r.is_err(), "port {port}: data came back: {r:?}");
        }
    }
    let expected_denials = if expected == "connection rejected" {
        2 * n as u64
    } else {
        0
    };
    assert_eq!(
        denied(mesh) - before,
        expected_denials,
        "port {port}: RBAC denials at tcp-echo's sidecar"
    );
}

fn wait_outcome(port: u16, expected: &str) {
    wait_for(
        &format!("port {port}: {expected}"),
        Duration::from_secs(20),
        || (outcome(port) == expected).then_some(()),
    );
}

#[test]
fn authorization_for_tcp_traffic() {
    let Some(mesh) = Mesh::start(
        "authz-tcp",
        &[&TCP_ECHO, &SLEEP],
        &[("tcp-echo.yaml", TCP_ECHO_SERVICE)],
        false,
    ) else {
        return;
    };
    // The tcp-echo server (docker.io/istio/tcp-echo-server with `9000,9001,9002 hello`):
    // on each port, every line it reads comes back prefixed with `hello `.
    let _echo: Vec<TcpEcho> = [9000, 9001, 9002]
        .iter()
        .map(|port| TcpEcho::start(&format!("{}:{port}", TCP_ECHO.ip), "hello"))
        .collect();
    const OK: &str = "connection succeeded";
    const NO: &str = "connection rejected";

    // Before you begin: all three ports echo.
    for port in [9000, 9001, 9002] {
        wait_outcome(port, OK);
    }
    // Through both sidecars, over mTLS.
    let handshakes = mesh.stat(TCP_ECHO.pod, "ssl.handshake");
    assert_all(&mesh, 9000, OK, 3);
    assert!(
        mesh.stat(TCP_ECHO.pod, "ssl.handshake") >= handshakes + 3,
        "sleep's connections to 9000 arrive over mTLS"
    );

    // ALLOW ports 9000 and 9001: 9002 is refused, on the pass-through chain too.
    mesh.config.write(
        "tcp-policy.yaml",
        &tcp_policy("ALLOW", "        ports: [\"9000\", \"9001\"]\n"),
    );
    wait_outcome(9002, NO);
    assert_all(&mesh, 9000, OK, 5);
    assert_all(&mesh, 9001, OK, 5);
    assert_all(&mesh, 9002, NO, 5);

    // ALLOW with the HTTP-only `methods` for 9000: the rule cannot match TCP and is
    // dropped; nothing is allowed any more.
    mesh.config.write(
        "tcp-policy.yaml",
        &tcp_policy(
            "ALLOW",
            "        methods: [\"GET\"]\n        ports: [\"9000\"]\n",
        ),
    );
    wait_outcome(9001, NO);
    assert_all(&mesh, 9000, NO, 5);
    assert_all(&mesh, 9001, NO, 5);

    // DENY with only `methods`: for TCP the rule denies everything. Every port was
    // refused already, so wait for tcp-echo's sidecar to take the new listeners.
    mesh.apply_and_wait_lds(
        TCP_ECHO.pod,
        "tcp-policy.yaml",
        &tcp_policy("DENY", "        methods: [\"GET\"]\n"),
    );
    assert_all(&mesh, 9000, NO, 5);
    assert_all(&mesh, 9001, NO, 5);

    // DENY `methods` and `ports: ["9000"]`: only 9000 is denied.
    mesh.config.write(
        "tcp-policy.yaml",
        &tcp_policy(
            "DENY",
            "        methods: [\"GET\"]\n        ports: [\"9000\"]\n",
        ),
    );
    wait_outcome(9001, OK);
    assert_all(&mesh, 9000, NO, 5);
    assert_all(&mesh, 9001, OK, 5);
    mesh.assert_accepted();
}
