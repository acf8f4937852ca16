//! B5: proxies connecting over TLS to the secure port (15012's stack: meshd's rotating
//! serving certificate, client certificates from meshd's CA, identity checked against
//! each node's namespace), all at once against a freshly started server — what a
//! restart of meshd (or of its load balancer) puts it through.
//!
//! The server side and the client side share one directory holding the CA, the
//! serving name and a client certificate for the bench's namespace; the clients run in
//! B2's child process, which dials through [`Dial`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshd::ca::authority::Authority;
use meshd::ca::identity::Identity;
use meshd::ca::server::{Authenticator, ServingCert};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};

/// The name clients verify the serving certificate against (istiod's).
const SERVER_NAME: &str = "istiod.istio-system.svc";
const TRUST_DOMAIN: &str = "cluster.local";

/// How B2's clients reach the server.
#[derive(Clone)]
pub enum Dial {
    Plain(String),
    Tls {
        addr: String,
        config: Arc<rustls::ClientConfig>,
    },
}

impl Dial {
    /// `addr` in plaintext, or over TLS with the credentials in `dir` (made by
    /// [`server`]).
    pub fn new(addr: &str, tls_dir: Option<&Path>) -> Dial {
        match tls_dir {
            None => Dial::Plain(addr.to_string()),
            Some(dir) => Dial::Tls {
                addr: addr.trim_start_matches("http://").to_string(),
                config: client_config(dir),
            },
        }
    }

    pub async fn channel(&self) -> Option<Channel> {
        match self {
            Dial::Plain(addr) => Endpoint::from_shared(addr.clone())
                .ok()?
                .connect()
                .await
                .ok(),
            Dial::Tls { addr, config } => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let addr = addr.clone();
                Endpoint::from_static("http://istiod.istio-system.svc:15012")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let connector = connector.clone();
                        let addr = addr.clone();
                        async move {
                            let tcp = tokio::net::TcpStream::connect(&addr).await?;
                            let name = ServerName::try_from(SERVER_NAME)
                                .map_err(|e| std::io::Error::other(e.to_string()))?;
                            let tls = connector.connect(name, tcp).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                        }
                    }))
                    .await
                    .ok()
            }
        }
    }
}

/// The server side: a fresh CA in a new directory under the system's temporary one, a
/// serving certificate, the rustls settings of 15012 and an authenticator that takes
/// client certificates. Writes `root.pem`, `client.pem` and `client-key.pem` (identity
/// `ns/bench/sa/default`, the namespace of the bench's proxies) for the clients.
pub fn server() -> (PathBuf, Arc<rustls::ServerConfig>, Arc<Authenticator>) {
    let dir = std::env::temp_dir().join(format!("meshd-bench-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let ca = Authority::load_or_create(&dir.join("ca"), TRUST_DOMAIN).expect("CA");
    let serving =
        Arc::new(ServingCert::issue(&ca, &[SERVER_NAME.to_string()]).expect("serving cert"));
    let config = meshd::ca::server::server_config(&ca, serving).expect("TLS settings");
    let id = Identity::new(TRUST_DOMAIN, "bench", "default");
    let (chain, key) = ca.issue(Some(&id), &[], None).expect("client cert");
    std::fs::write(dir.join("root.pem"), ca.root_pem()).expect("write root");
    std::fs::write(dir.join("client.pem"), chain.join("")).expect("write chain");
    std::fs::write(dir.join("client-key.pem"), key).expect("write key");
    let auth = Arc::new(Authenticator {
        trust_domain: TRUST_DOMAIN.into(),
        jwt: None,
        token_review: None,
    });
    (dir, config, auth)
}

fn client_config(dir: &Path) -> Arc<rustls::ClientConfig> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("bench TLS file");
    let der = |text: &str| -> Vec<Vec<u8>> {
        pem::parse_many(text.as_bytes())
            .expect("PEM")
            .into_iter()
            .map(|p| p.contents().to_vec())
            .collect()
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in der(&read("root.pem")) {
        roots.add(CertificateDer::from(c)).expect("root");
    }
    let chain = der(&read("client.pem"))
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::try_from(der(&read("client-key.pem")).remove(0)).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}
