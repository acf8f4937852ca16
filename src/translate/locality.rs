//! Locality load balancing, as istiod applies it to a client's endpoints: with outlier
//! detection, endpoints are prioritised by how close their locality is to the client's
//! (same subzone, zone, region, a `failover` target region, the rest), so traffic stays
//! local and fails over when local endpoints are ejected; with `distribute`, localities
//! get the weights the rule for the client's locality gives them. The DestinationRule's
//! `localityLbSetting` overrides mesh config's; `enabled: false` turns it off.

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::context::ProxyContext;
use crate::envoy::naming;
use crate::envoy::pb;
use crate::model::istio::{LocalityLbSetting, TrafficPolicy};
use crate::model::service::Service;

/// What locality load balancing does for one cluster of one client.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Priorities by closeness; `failover` (from region, to region) pairs.
    Failover(Vec<(String, String)>),
    /// (to pattern, weight) of the rule for the client's locality.
    Distribute(Vec<(String, u32)>),
    /// `failoverPriority`: endpoints matching the client on more of these labels (in
    /// order; `label=value` compares with the value instead) come first.
    Labels(Vec<String>),
}

/// Does `pattern` (`region/zone/subzone` with `*` for the rest) match `locality`?
fn matches(pattern: &str, locality: &str) -> bool {
    let l: Vec<&str> = locality.split('/').collect();
    for (i, p) in pattern.split('/').enumerate() {
        if p == "*" {
            return true;
        }
        if l.get(i).copied().unwrap_or("") != p {
            return false;
        }
    }
    true
}

/// The setting for a cluster: its rule's, else mesh config's.
fn setting<'a>(
    ctx: &'a ProxyContext,
    policy: Option<&'a TrafficPolicy>,
) -> Option<&'a LocalityLbSetting> {
    policy
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|lb| lb.locality_lb_setting.as_ref())
        .or(ctx.snap.mesh.locality_lb_setting.as_ref())
}

/// Whether the cluster balances by locality weight: with a `distribute` setting, or
/// with `failover` under outlier detection. As in istiod, this depends on the rules
/// alone, never on where the client runs — the client's locality shapes only its
/// endpoints (priorities and weights in EDS). `policy` is the cluster's, already
/// resolved for its port and subset.
pub fn weighted(ctx: &ProxyContext, policy: Option<&TrafficPolicy>) -> bool {
    let Some(setting) = setting(ctx, policy) else {
        return false;
    };
    if setting.enabled == Some(false) {
        return false;
    }
    !setting.distribute.is_empty()
        || (!setting.failover.is_empty() && policy.is_some_and(|p| p.outlier_detection.is_some()))
}

/// The plan for cluster (`svc`, `port`, `subset`) of this client, if any.
pub fn plan(ctx: &ProxyContext, svc: &Service, port: u16, subset: &str) -> Option<Plan> {
    let policy = super::cluster::effective_policy(ctx, svc, port, subset);
    let setting = setting(ctx, policy.as_ref());
    if setting.and_then(|s| s.enabled) == Some(false) {
        return None;
    }
    let default = LocalityLbSetting::default();
    let setting = setting.unwrap_or(&default);
    if !setting.failover_priority.is_empty() {
        // Like failover, only under outlier detection; the client's labels decide, not
        // its locality.
        policy.as_ref().and_then(|p| p.outlier_detection.as_ref())?;
        return Some(Plan::Labels(setting.failover_priority.clone()));
    }
    if ctx.locality.is_empty() {
        return None;
    }
    if !setting.distribute.is_empty() {
        let rule = setting.distribute.iter().find(|d| {
            d["from"]
                .as_str()
                .is_some_and(|from| matches(from, &ctx.locality))
        })?;
        let to = rule["to"]
            .as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), u32::try_from(v.as_u64()?).ok()?)))
            .collect();
        return Some(Plan::Distribute(to));
    }
    // Failover needs outlier detection to notice that local endpoints are gone.
    policy.as_ref().and_then(|p| p.outlier_detection.as_ref())?;
    let failover = setting
        .failover
        .iter()
        .filter_map(|f| {
            Some((
                f["from"].as_str()?.to_string(),
                f["to"].as_str()?.to_string(),
            ))
        })
        .collect();
    Some(Plan::Failover(failover))
}

fn locality_of(l: &envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints) -> String {
    l.locality
        .as_ref()
        .map(|x| format!("{}/{}/{}", x.region, x.zone, x.sub_zone))
        .unwrap_or_default()
}

/// Applies the client's plan to a load assignment of one of its clusters.
pub fn apply(ctx: &ProxyContext, cla: &mut ClusterLoadAssignment) {
    let Some((_, port, subset, host)) = naming::parse_cluster(&cla.cluster_name) else {
        return;
    };
    let Some(svc) = ctx.snap.services.get(host) else {
        return;
    };
    let Some(plan) = plan(ctx, svc, port, subset) else {
        return;
    };
    let client: Vec<&str> = ctx.locality.split('/').collect();
    let part = |v: &[&str], i: usize| v.get(i).copied().unwrap_or("").to_string();
    match plan {
        Plan::Failover(pairs) => {
            let mut raw: Vec<u32> = cla
                .endpoints
                .iter()
                .map(|l| {
                    let loc = locality_of(l);
                    let e: Vec<&str> = loc.split('/').collect();
                    let (same_r, same_z, same_s) = (
                        part(&e, 0) == part(&client, 0),
                        part(&e, 1) == part(&client, 1),
                        part(&e, 2) == part(&client, 2),
                    );
                    if same_r && same_z && same_s {
                        0
                    } else if same_r && same_z {
                        1
                    } else if same_r {
                        2
                    } else if pairs
                        .iter()
                        .any(|(f, t)| *f == part(&client, 0) && *t == part(&e, 0))
                    {
                        3
                    } else {
                        4
                    }
                })
                .collect();
            // Envoy wants priorities without gaps.
            let mut levels = raw.clone();
            levels.sort_unstable();
            levels.dedup();
            for p in &mut raw {
                *p = levels.iter().position(|x| x == p).unwrap_or(0) as u32;
            }
            for (l, p) in cla.endpoints.iter_mut().zip(raw) {
                l.priority = p;
            }
        }
        Plan::Labels(keys) => {
            let Some(eps) = ctx.snap.endpoints.get(host) else {
                return;
            };
            let rank = |addr: &str| -> u32 {
                let Some(inst) = eps.instances.iter().find(|i| i.address == addr) else {
                    return keys.len() as u32;
                };
                for (i, key) in keys.iter().enumerate() {
                    let (k, want) = match key.split_once('=') {
                        Some((k, v)) => (k, Some(v.to_string())),
                        None => (key.as_str(), ctx.labels.get(key).cloned()),
                    };
                    if want.is_none() || inst.labels.get(k) != want.as_ref() {
                        return (keys.len() - i) as u32;
                    }
                }
                0
            };
            // Split each locality's endpoints by rank: one group per (locality, rank).
            let mut groups = Vec::new();
            for l in std::mem::take(&mut cla.endpoints) {
                let mut by_rank: std::collections::BTreeMap<u32, Vec<_>> = Default::default();
                for e in &l.lb_endpoints {
                    by_rank
                        .entry(rank(&endpoint_address(e)))
                        .or_default()
                        .push(e.clone());
                }
                for (r, eps) in by_rank {
                    let mut g = l.clone();
                    g.lb_endpoints = eps;
                    g.priority = r;
                    groups.push(g);
                }
            }
            // Envoy wants priorities without gaps.
            let mut levels: Vec<u32> = groups.iter().map(|g| g.priority).collect();
            levels.sort_unstable();
            levels.dedup();
            for g in &mut groups {
                g.priority = levels.iter().position(|x| *x == g.priority).unwrap_or(0) as u32;
            }
            cla.endpoints = groups;
        }
        Plan::Distribute(to) => {
            let localities: Vec<String> = cla.endpoints.iter().map(locality_of).collect();
            let mut weights = vec![0u32; localities.len()];
            for (pattern, w) in &to {
                let matched: Vec<usize> = localities
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| matches(pattern, l))
                    .map(|(i, _)| i)
                    .collect();
                if matched.is_empty() {
                    continue;
                }
                let share = (*w / matched.len() as u32).max(1);
                for i in matched {
                    weights[i] = weights[i].saturating_add(share);
                }
            }
            let mut kept = Vec::new();
            for (mut l, w) in std::mem::take(&mut cla.endpoints).into_iter().zip(weights) {
                if w > 0 {
                    l.load_balancing_weight = pb::u32v(w);
                    l.priority = 0;
                    kept.push(l);
                }
            }
            cla.endpoints = kept;
        }
    }
}

fn endpoint_address(e: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint) -> String {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    match &e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => {
            match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(Address::SocketAddress(s)) => s.address.clone(),
                _ => String::new(),
            }
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn locality_patterns() {
        assert!(matches("*", "r/z/s"));
        assert!(matches("r/*", "r/z/s"));
        assert!(matches("r/z/*", "r/z/s"));
        assert!(!matches("r/z2/*", "r/z/s"));
        assert!(matches("r/z/s", "r/z/s"));
        assert!(!matches("r2", "r/z/s"));
    }
}
