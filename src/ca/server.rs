//! Port 15012: TLS with meshd's own (rotating) serving certificate, optional client
//! certificates from this CA, and the `istio.v1.auth.IstioCertificateService` API. The
//! same listener carries secure ADS (with SDS); see `crate::server`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::authority::Authority;
use super::identity::Identity;
use super::jwt::JwtVerifier;
use crate::metrics::Metrics;

/// `istio.v1.auth.IstioCertificateRequest` (security/v1alpha1/ca.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity, in seconds.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<envoy_types::pb::google::protobuf::Struct>,
}

/// `istio.v1.auth.IstioCertificateResponse`: leaf first, root last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// What the TLS handshake established about the peer.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    pub remote: Option<SocketAddr>,
    /// The SPIFFE identity of a verified client certificate.
    pub peer_identity: Option<Identity>,
}

/// Who is calling, from a verified client certificate or a bearer token.
#[derive(Debug)]
pub struct Authenticator {
    pub trust_domain: String,
    pub jwt: Option<JwtVerifier>,
    /// Kubernetes mode: tokens are checked by the API server.
    pub token_review: Option<crate::kube::TokenReviewer>,
}

impl Authenticator {
    /// The caller's identity, or why it has none.
    pub async fn authenticate<T>(&self, req: &Request<T>) -> Result<Identity, String> {
        let token = self.bearer(req)?;
        match token {
            Bearer::Identity(id) => Ok(id),
            Bearer::Token(token) => self.verify_token(&token).await,
        }
    }

    /// The identity a bearer token proves (JWKS, else the API server's TokenReview).
    pub async fn verify_token(&self, token: &str) -> Result<Identity, String> {
        match (&self.jwt, &self.token_review) {
            (Some(v), None) => v.verify(token),
            (None, Some(r)) => r.review(token).await,
            // Both: a token the JWKS does not know goes to the API server.
            (Some(v), Some(r)) => match v.verify(token) {
                Ok(id) => Ok(id),
                Err(_) => r.review(token).await,
            },
            (None, None) => Err(
                "bearer tokens are not accepted: meshd has no JWKS (hint: --ca-jwks FILE)".into(),
            ),
        }
    }

    fn bearer<T>(&self, req: &Request<T>) -> Result<Bearer, String> {
        if let Some(info) = req.extensions().get::<TlsConnectInfo>()
            && let Some(id) = &info.peer_identity
        {
            return Ok(Bearer::Identity(id.clone()));
        }
        let Some(auth) = req.metadata().get("authorization") else {
            return Err(
                "no client certificate from this CA and no bearer token (hint: send \
                 `authorization: Bearer <service account token with audience istio-ca>`)"
                    .into(),
            );
        };
        let auth = auth
            .to_str()
            .map_err(|_| "authorization header is not text".to_string())?;
        let token = auth
            .strip_prefix("Bearer ")
            .ok_or_else(|| "authorization header is not `Bearer <token>`".to_string())?;
        Ok(Bearer::Token(token.to_string()))
    }
}

enum Bearer {
    Identity(Identity),
    Token(String),
}

/// The CA gRPC service.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<Authority>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl CaService {
    pub fn new(ca: Arc<Authority>, auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> Self {
        CaService { ca, auth, metrics }
    }

    async fn create(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, Status> {
        self.metrics.csr_count.inc();
        let caller = self.auth.authenticate(&req).await.map_err(|e| {
            self.metrics.auth_failures.inc();
            warn!(error = %e, "CSR refused: unauthenticated");
            Status::unauthenticated(e)
        })?;
        let body = req.into_inner();
        let ttl = (body.validity_duration > 0)
            .then(|| Duration::from_secs(body.validity_duration as u64));
        match self.ca.sign_csr(&body.csr, &caller, ttl) {
            Ok(chain) => {
                self.metrics.certs_issued.inc();
                info!(identity = %caller, "certificate issued");
                Ok(IstioCertificateResponse { cert_chain: chain })
            }
            Err(e) => {
                self.metrics.csr_errors.inc();
                warn!(identity = %caller, error = %e, "CSR refused");
                Err(match e {
                    super::CaError::SanMismatch { .. } => Status::permission_denied(e.to_string()),
                    super::CaError::Signing(_) | super::CaError::Files { .. } => {
                        Status::internal(e.to_string())
                    }
                    _ => Status::invalid_argument(e.to_string()),
                })
            }
        }
    }
}

impl tonic::server::NamedService for CaService {
    const NAME: &'static str = SERVICE;
}

struct Unary(CaService);

impl tonic::server::UnaryService<IstioCertificateRequest> for Unary {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Response<IstioCertificateResponse>, Status>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.create(request).await.map(Response::new) })
    }
}

impl<B> Service<http::Request<B>> for CaService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        if req.uri().path() == CREATE_CERTIFICATE {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Unary(svc), req).await)
            })
        } else {
            Box::pin(async move { Ok(Status::unimplemented("unknown method").into_http()) })
        }
    }
}

/// meshd's own serving certificate for 15012, re-issued by the CA before it expires.
#[derive(Debug)]
pub struct ServingCert {
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

/// How long meshd's own serving certificate lives; it is renewed at half of that.
pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

fn certified_key(chain: &[String], key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|p| {
            pem::parse(p)
                .map(|d| CertificateDer::from(d.contents().to_vec()))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let key = pem::parse(key_pem).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::try_from(key.contents().to_vec()).map_err(|e| e.to_string())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

impl ServingCert {
    pub fn issue(ca: &Authority, dns: &[String]) -> Result<ServingCert, String> {
        let (chain, key) = ca
            .issue(None, dns, Some(SERVING_TTL))
            .map_err(|e| e.to_string())?;
        // Serve the leaf and intermediates; clients already have the root.
        let ck = certified_key(&chain[..chain.len().saturating_sub(1).max(1)], &key)?;
        Ok(ServingCert {
            current: Mutex::new((ck, SystemTime::now() + SERVING_TTL)),
        })
    }

    /// Re-issues the certificate when half its life has passed.
    pub fn rotate_if_due(&self, ca: &Authority, dns: &[String]) {
        let due = self
            .current
            .lock()
            .map(|c| SystemTime::now() + SERVING_TTL / 2 > c.1)
            .unwrap_or(false);
        if !due {
            return;
        }
        match ServingCert::issue(ca, dns) {
            Ok(fresh) => {
                if let (Ok(mut cur), Ok(new)) = (self.current.lock(), fresh.current.into_inner()) {
                    *cur = new;
                    info!("serving certificate rotated");
                }
            }
            Err(e) => warn!(error = %e, "serving certificate rotation failed; keeping the old one"),
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.lock().ok().map(|c| c.0.clone())
    }
}

/// rustls settings for 15012: our serving certificate, client certificates optional
/// (proxies may authenticate with a token instead) but verified against our root.
pub fn server_config(
    ca: &Authority,
    cert: Arc<ServingCert>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let root = pem::parse(ca.root_pem()).map_err(|e| e.to_string())?;
    roots
        .add(CertificateDer::from(root.contents().to_vec()))
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS connection that tells tonic who the peer is.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;
    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    // Forwarded so that hyper writes the ADS body's shared chunks as they are; without
    // these it flattens every response into a copy first.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The SPIFFE identity in a verified client certificate of our trust domain.
fn peer_identity(conn: &rustls::ServerConnection, trust_domain: &str) -> Option<Identity> {
    use x509_parser::extensions::GeneralName;
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Identity::parse(u)
            .ok()
            .filter(|id| id.trust_domain == trust_domain),
        _ => None,
    })
}

/// Accepts TLS connections on `listener`: handshakes run in their own tasks so a slow or
/// failing client never holds up the others.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    trust_domain: String,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept on the TLS port failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            let td = trust_domain.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let peer_identity = peer_identity(tls.get_ref().1, &td);
                        let conn = TlsConn {
                            inner: tls,
                            info: TlsConnectInfo {
                                remote: Some(remote),
                                peer_identity,
                            },
                        };
                        let _ = conn_tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
