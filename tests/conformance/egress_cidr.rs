//! A ServiceEntry whose addresses are a CIDR range, through a real sidecar with
//! iptables-style interception: connections to any address in the range reach the
//! service, and Envoy accepts the listeners (a CIDR is no listener address).

use std::time::Duration;

use crate::harness::*;
use crate::scripted::{Dual, raw_line};

const RANGE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.internal]
  addresses: [127.2.0.0/16]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 9100, name: tcp, protocol: TCP}]
"#;

#[test]
fn cidr_service_entries_route_by_destination_prefix() {
    let Some((dir, config)) = intercepting_test("cidr") else {
        return;
    };
    config.write("se.yaml", RANGE);
    let _hosts = [
        Dual::start("legacy-a", "127.2.0.5:9100"),
        Dual::start("legacy-b", "127.2.3.9:9100"),
    ];
    let _meshd = Meshd::start(config.path(), dir.path(), &[]);
    let client = intercepted_sidecar(&dir, "127.0.0.40", "sleep", &[("app", "sleep")]);
    intercept_outbound("127.2.0.0/16");
    wait_for(
        "the range through the sidecar",
        Duration::from_secs(20),
        || raw_line("127.2.0.5:9100", "x").ok(),
    );
    assert_eq!(
        raw_line("127.2.0.5:9100", "a").as_deref(),
        Ok("legacy-a: a")
    );
    assert_eq!(
        raw_line("127.2.3.9:9100", "b").as_deref(),
        Ok("legacy-b: b")
    );
    // The connections went through the service's cluster, not around it.
    let through: u64 = client
        .stats("legacy.internal.upstream_cx_total")
        .iter()
        .filter(|(k, _)| k == "cluster.outbound|9100||legacy.internal.upstream_cx_total")
        .map(|(_, v)| *v)
        .sum();
    assert!(
        through >= 2,
        "connections counted on the service's cluster: {through}"
    );
    assert_envoy_accepted(&client);
}
