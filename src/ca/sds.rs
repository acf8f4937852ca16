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
        let now = SystemTime::now();
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
