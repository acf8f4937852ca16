//! The client side of HTTPS in tests: a TLS stream to an address, trusting given roots,
//! optionally presenting a client certificate; and HTTP/1.1 chunked bodies.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

fn err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> std::io::Error {
    std::io::Error::other(e)
}

/// A TLS connection to `addr` for `server_name`, trusting `root_pem`, with an optional
/// client certificate (certificate PEM, key PEM); reads time out after `read_timeout`.
pub fn connect(
    addr: SocketAddr,
    server_name: &str,
    root_pem: &str,
    client: Option<(&str, &str)>,
    read_timeout: Duration,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    connect_alpn(addr, server_name, root_pem, client, read_timeout, &[])
}

/// [`connect`], offering `alpn` in the handshake.
pub fn connect_alpn(
    addr: SocketAddr,
    server_name: &str,
    root_pem: &str,
    client: Option<(&str, &str)>,
    read_timeout: Duration,
    alpn: &[&str],
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let (cfg, _) = client_config(root_pem, client, alpn)?;
    open(addr, server_name, cfg, read_timeout)
}

/// A TLS client's configuration: trusting `root_pem`, offering `alpn`, presenting the
/// client certificate (certificate PEM, key PEM) when the server asks for one — and
/// whether it has asked (set during the handshake).
pub fn client_config(
    root_pem: &str,
    client: Option<(&str, &str)>,
    alpn: &[&str],
) -> std::io::Result<(
    Arc<rustls::ClientConfig>,
    Arc<std::sync::atomic::AtomicBool>,
)> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.map_err(err)?).map_err(err)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_root_certificates(roots);
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cfg = match client {
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(err)?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(err)?;
            let signer = provider.key_provider.load_private_key(key).map_err(err)?;
            builder.with_client_cert_resolver(Arc::new(Recording {
                key: Arc::new(rustls::sign::CertifiedKey::new(certs, signer)),
                asked: asked.clone(),
            }))
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok((Arc::new(cfg), asked))
}

/// A TLS stream to `addr` for `server_name` with `cfg`; reads time out after
/// `read_timeout`.
fn open(
    addr: SocketAddr,
    server_name: &str,
    cfg: Arc<rustls::ClientConfig>,
    read_timeout: Duration,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let name = ServerName::try_from(server_name.to_string()).map_err(err)?;
    let conn = rustls::ClientConnection::new(cfg, name).map_err(err)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(read_timeout))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// The body of an HTTP/1.1 chunked response.
pub fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Presents a client certificate when the server asks for one, noting that it asked.
#[derive(Debug)]
struct Recording {
    key: Arc<rustls::sign::CertifiedKey>,
    asked: Arc<std::sync::atomic::AtomicBool>,
}

impl rustls::client::ResolvesClientCert for Recording {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, std::sync::atomic::Ordering::SeqCst);
        Some(self.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// [`connect`], and whether the server has asked for the client certificate (set during
/// the handshake, which completes on the first read or write).
pub fn connect_recording(
    addr: SocketAddr,
    server_name: &str,
    root_pem: &str,
    client: Option<(&str, &str)>,
    read_timeout: Duration,
) -> std::io::Result<(
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    Arc<std::sync::atomic::AtomicBool>,
)> {
    let (cfg, asked) = client_config(root_pem, client, &[])?;
    Ok((open(addr, server_name, cfg, read_timeout)?, asked))
}
