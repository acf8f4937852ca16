//! Which secrets a stream may be sent: SDS is answered only on the TLS port, only to an
//! authenticated proxy, and only with what belongs to its identity.

use super::*;

/// Secrets for a stream whose peer is `auth` (and, once it said who it is, `conn`): only
/// on the TLS port, only to an authenticated proxy, and only its own (`default` for its
/// identity, `ROOTCA`). Anything else asked for is refused, logged and counted. (A free
/// function over what it reads, so that it can run on the CPU pool.)
pub(super) fn secrets(
    state: &XdsState,
    auth: &PeerAuth,
    conn: Option<&Arc<Connection>>,
    w: &WatchState,
) -> Vec<Arc<Generated>> {
    let (Some(store), PeerAuth::Authenticated(id)) = (&state.secrets, auth) else {
        return Vec::new();
    };
    let proxy = conn.map(|c| c.proxy.id.as_str()).unwrap_or("");
    let mut out = Vec::new();
    for name in w.names.iter() {
        let secret = match name.as_str() {
            translate::secret::DEFAULT => match store.get(id) {
                Ok(cert) => translate::secret::workload(name, &cert.chain, &cert.key_pem),
                Err(e) => {
                    warn!(proxy, identity = %id, error = %e, "cannot issue the workload certificate");
                    continue;
                }
            },
            translate::secret::ROOTCA => translate::secret::root(name, store.root_pem()),
            // A Gateway API listener's certificate in another namespace: served
            // only to a gateway of the proxy's own namespace (the one it
            // authenticated for) whose Gateway names it, with a ReferenceGrant
            // there — checked here, per request, not trusted from the
            // configuration the proxy was sent.
            other if other.starts_with(CROSS_NAMESPACE_CREDENTIAL) => {
                let rest = &other[CROSS_NAMESPACE_CREDENTIAL.len()..];
                let snap = state.snapshot();
                let labels = conn.map(|c| c.proxy.labels.clone()).unwrap_or_default();
                let secret = rest
                    .split_once('/')
                    .and_then(|(ns, n)| snap.gateway_secret(&id.namespace, &labels, ns, n));
                match secret.and_then(|s| Some((s.cert.as_ref()?, s.key.as_ref()?))) {
                    Some((c, k)) => translate::secret::workload(name, std::slice::from_ref(c), k),
                    None => {
                        state.metrics.sds_refusals.inc();
                        warn!(proxy, identity = %id, secret = other,
                                  "SDS request refused: no such Secret, or no ReferenceGrant for the proxy's namespace");
                        continue;
                    }
                }
            }
            // A ConfigMap's CA bundle (BackendTLSPolicy): public, for any
            // authenticated proxy, as istiod serves it.
            other if other.starts_with(CONFIGMAP_CREDENTIAL) => {
                let rest = &other[CONFIGMAP_CREDENTIAL.len()..];
                let rest = rest.strip_suffix("-cacert").unwrap_or(rest);
                let snap = state.snapshot();
                match rest
                    .split_once('/')
                    .and_then(|(ns, n)| snap.ca_configmap(ns, n))
                {
                    Some((ca_pem, crl)) => {
                        translate::secret::trust(name, ca_pem, crl.map(String::as_str))
                    }
                    None => {
                        state.metrics.sds_refusals.inc();
                        warn!(proxy, identity = %id, secret = other,
                                  "SDS request refused: no such ConfigMap with a CA certificate");
                        continue;
                    }
                }
            }
            // DestinationRule credentialName: a Secret of the proxy's own namespace
            // (the one it authenticated for), never another's.
            other if other.starts_with("kubernetes://") => {
                let rest = &other["kubernetes://".len()..];
                let snap = state.snapshot();
                let (secret_name, ca) = match rest.strip_suffix("-cacert") {
                    Some(n) if snap.tls_secret(&id.namespace, rest).is_none() => (n, true),
                    _ => (rest, false),
                };
                match snap.tls_secret(&id.namespace, secret_name) {
                    Some(sec) if ca => match &sec.ca {
                        Some(ca_pem) => translate::secret::trust(name, ca_pem, sec.crl.as_deref()),
                        None => continue,
                    },
                    Some(sec) => match (&sec.cert, &sec.key) {
                        (Some(c), Some(k)) => {
                            translate::secret::workload(name, std::slice::from_ref(c), k)
                        }
                        _ => continue,
                    },
                    None => {
                        state.metrics.sds_refusals.inc();
                        warn!(proxy, identity = %id, secret = other,
                                  "SDS request refused: no such Secret in the proxy's namespace");
                        continue;
                    }
                }
            }
            other => {
                state.metrics.sds_refusals.inc();
                warn!(proxy, identity = %id, secret = other,
                          "SDS request refused: the secret does not belong to this proxy's identity");
                continue;
            }
        };
        out.push(Arc::new(wrap(name.clone(), &secret)));
    }
    out
}
