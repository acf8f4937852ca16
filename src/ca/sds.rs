//! Workload secrets for proxies that cannot send a CSR themselves (plain Envoy): meshd
//! makes the key, the CA signs it, and the pair is served over SDS to the proxy that
//! authenticated as that identity — and to no one else. Certificates are renewed when 80%
//! of their life has passed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::authority::Authority;
use super::identity::Identity;

/// A key and certificate chain for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadCert {
    /// Leaf first, root last.
    pub chain: Vec<String>,
    pub key_pem: String,
    pub issued: SystemTime,
    pub expires: SystemTime,
}

impl WorkloadCert {
    fn due(&self, now: SystemTime) -> bool {
        let life = self.expires.duration_since(self.issued).unwrap_or_default();
        now >= self.issued + life.mul_f64(0.8)
    }
}

/// The CA plus a cache of issued workload certificates.
#[derive(Debug)]
pub struct WorkloadSecrets {
    pub ca: Arc<Authority>,
    pub ttl: Duration,
    cache: Mutex<HashMap<Identity, Arc<WorkloadCert>>>,
}

impl WorkloadSecrets {
    pub fn new(ca: Arc<Authority>, ttl: Duration) -> Self {
        WorkloadSecrets {
            ca,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The current certificate for `id`, issuing (or renewing) it when needed.
    pub fn get(&self, id: &Identity) -> Result<Arc<WorkloadCert>, String> {
        self.get_at(id, SystemTime::now())
    }

    /// [`WorkloadSecrets::get`] as of `now` (tests move the clock).
    pub fn get_at(&self, id: &Identity, now: SystemTime) -> Result<Arc<WorkloadCert>, String> {
        if let Ok(c) = self.cache.lock()
            && let Some(cert) = c.get(id)
            && !cert.due(now)
        {
            return Ok(cert.clone());
        }
        let (chain, key_pem) = self
            .ca
            .issue(Some(id), &[], Some(self.ttl))
            .map_err(|e| e.to_string())?;
        let cert = Arc::new(WorkloadCert {
            chain,
            key_pem,
            issued: now,
            expires: now + self.ttl,
        });
        if let Ok(mut c) = self.cache.lock() {
            c.insert(id.clone(), cert.clone());
        }
        Ok(cert)
    }

    pub fn root_pem(&self) -> &str {
        self.ca.root_pem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_cached_then_renewed_at_eighty_percent() {
        let ca = Arc::new(Authority::self_signed("cluster.local").expect("ca"));
        let store = WorkloadSecrets::new(ca, Duration::from_secs(100));
        let id = Identity::new("cluster.local", "default", "reviews");
        let t0 = SystemTime::now();
        let first = store.get_at(&id, t0).expect("issued");
        let again = store
            .get_at(&id, t0 + Duration::from_secs(79))
            .expect("cached");
        assert!(Arc::ptr_eq(&first, &again), "reused before 80% of its life");
        let renewed = store
            .get_at(&id, t0 + Duration::from_secs(81))
            .expect("renewed");
        assert_ne!(
            first.chain[0], renewed.chain[0],
            "a new certificate after 80%"
        );
        assert_ne!(first.key_pem, renewed.key_pem, "with a new key");
        let other = store
            .get_at(&Identity::new("cluster.local", "default", "ratings"), t0)
            .expect("issued");
        assert_ne!(
            other.chain[0], first.chain[0],
            "one certificate per identity"
        );
    }
}
