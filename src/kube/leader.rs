//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it: the
//! holder renews every `retry` period; anyone may take the lease once `duration` has
//! passed without a renewal; every write is guarded by the lease's resourceVersion, so two
//! replicas can never both believe they lead.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// The Lease meshd's replicas compete for.
pub const LEASE_NAME: &str = "meshd-leader";

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews and the others try.
    pub retry: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: namespace.to_string(),
            name: LEASE_NAME.to_string(),
            identity: identity.to_string(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Leading,
    Following(String),
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn attempt(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<Outcome, kube::Error> {
    let secs = cfg.duration.as_secs() as i32;
    let existing = api.get_opt(&cfg.name).await?;
    let Some(mut lease) = existing else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Outcome::Leading),
            // Someone else created it first: they lead.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Following(String::new())),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(cfg.duration);
    let expired = match &spec.renew_time {
        Some(MicroTime(t)) => {
            let age = Timestamp::now().duration_since(*t);
            age.as_secs() >= duration.as_secs() as i64
        }
        None => true,
    };
    if holder != cfg.identity && !holder.is_empty() && !expired {
        return Ok(Outcome::Following(holder));
    }
    if holder != cfg.identity {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(cfg.identity.clone());
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(secs);
    // The resourceVersion in `lease` makes this a compare-and-swap.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Outcome::Leading),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Following(holder)),
        Err(e) => Err(e),
    }
}

/// Runs the election forever; the receiver says whether this replica leads now.
pub fn run(client: Client, cfg: LeaderConfig) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            let leading = match attempt(&api, &cfg).await {
                Ok(Outcome::Leading) => {
                    last_renewed = Some(tokio::time::Instant::now());
                    true
                }
                Ok(Outcome::Following(holder)) => {
                    if *tx.borrow() {
                        warn!(lease = %cfg.name, %holder, "leadership lost");
                    }
                    last_renewed = None;
                    false
                }
                Err(e) => {
                    // Keep leading only while the lease we hold cannot have expired.
                    let still = last_renewed
                        .is_some_and(|t| t.elapsed() < cfg.duration.saturating_sub(cfg.retry));
                    warn!(lease = %cfg.name, error = %e, still_leading = still, "lease update failed");
                    still
                }
            };
            if leading != *tx.borrow() {
                if leading {
                    info!(lease = %cfg.name, identity = %cfg.identity, "became the leader");
                }
                let _ = tx.send(leading);
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(cfg.retry).await;
        }
    });
    rx
}
