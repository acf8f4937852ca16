//! istiod's resource names. istioctl, Kiali and dashboards parse these, so they are exact.

/// Direction of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// `outbound|9080|v1|reviews.default.svc.cluster.local`
pub fn outbound_cluster(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|9080||` (istiod keys inbound clusters by the workload's target port).
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Parses a cluster name back into (direction, port, subset, host).
pub fn parse_cluster(name: &str) -> Option<(Direction, u16, &str, &str)> {
    // istiod's DNS SRV form, `outbound_.PORT_.SUBSET_.HOST` (gateways' SNI-DNAT clusters,
    // named as the SNI that selects them).
    for (prefix, dir) in [
        ("outbound_.", Direction::Outbound),
        ("inbound_.", Direction::Inbound),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let (port, rest) = rest.split_once("_.")?;
            let (subset, host) = rest.split_once("_.")?;
            return Some((dir, port.parse().ok()?, subset, host));
        }
    }
    let mut parts = name.split('|');
    let dir = match parts.next()? {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        _ => return None,
    };
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((dir, port, subset, host))
}

/// istiod's SNI-DNAT cluster name (and the SNI that selects it at an AUTO_PASSTHROUGH
/// gateway): `outbound_.PORT_.SUBSET_.HOST`.
pub fn sni_dnat_cluster(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// The bootstrap's cluster for meshd (istio-proxy's and meshd's bootstraps name it so):
/// xDS, and the access log service behind the mesh's metrics.
pub const XDS_CLUSTER: &str = "xds-grpc";
/// The access logs whose records meshd counts as the mesh's metrics, by reporter.
pub const METRICS_LOG_SOURCE: &str = "meshd-metrics-source";
pub const METRICS_LOG_DESTINATION: &str = "meshd-metrics-destination";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
pub const VIRTUAL_INBOUND_PORT: u32 = 15006;

/// `0.0.0.0_9080`
pub fn listener(address: &str, port: u16) -> String {
    format!("{address}_{port}")
}

/// Virtual host name `reviews.default.svc.cluster.local:9080`.
pub fn virtual_host(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// Gateway route config `http.8080` (`https.443.name.gw.ns` for TLS servers).
pub fn gateway_route(port: u16) -> String {
    format!("http.{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_dnat_names_parse() {
        let n = sni_dnat_cluster(9080, "", "reviews.default.svc.cluster.local");
        assert_eq!(n, "outbound_.9080_._.reviews.default.svc.cluster.local");
        assert_eq!(
            parse_cluster(&n),
            Some((
                Direction::Outbound,
                9080,
                "",
                "reviews.default.svc.cluster.local"
            ))
        );
        assert_eq!(
            parse_cluster("outbound_.9080_.v1_.reviews.default.svc.cluster.local"),
            Some((
                Direction::Outbound,
                9080,
                "v1",
                "reviews.default.svc.cluster.local"
            ))
        );
        assert_eq!(parse_cluster("outbound_.x_._.h"), None);
    }

    #[test]
    fn cluster_names_round_trip() {
        let n = outbound_cluster(9080, "v1", "reviews.default.svc.cluster.local");
        assert_eq!(n, "outbound|9080|v1|reviews.default.svc.cluster.local");
        assert_eq!(
            parse_cluster(&n),
            Some((
                Direction::Outbound,
                9080,
                "v1",
                "reviews.default.svc.cluster.local"
            ))
        );
        assert_eq!(inbound_cluster(9080), "inbound|9080||");
        assert_eq!(
            parse_cluster("inbound|9080||"),
            Some((Direction::Inbound, 9080, "", ""))
        );
        assert_eq!(parse_cluster("PassthroughCluster"), None);
        assert_eq!(parse_cluster("outbound|x||h"), None);
    }
}
