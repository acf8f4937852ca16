//! Root and signing keys, and certificate issuance with Istio's rules: the SAN of a
//! workload certificate is exactly the caller's SPIFFE identity, keys are ECDSA P-256/P-384
//! or RSA ≥ 2048 bits, lifetimes default to 24 h and never exceed the maximum.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use super::identity::Identity;

/// Why a certificate was not issued. Messages name the reason and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaError {
    #[error("the CSR cannot be parsed: {0}")]
    BadCsr(String),
    #[error("the CSR's signature does not verify (hint: sign the CSR with the key it carries)")]
    BadCsrSignature,
    #[error("the CSR has no URI SAN (hint: request {expected})")]
    NoSan { expected: String },
    #[error(
        "CSR SAN {requested} does not match caller identity {caller} \
         (hint: a workload can only get a certificate for its own service account)"
    )]
    SanMismatch { requested: String, caller: String },
    #[error("the CSR asks for several identities ({0}); one SPIFFE URI is allowed")]
    TooManySans(String),
    #[error(
        "key {0} is not accepted (hint: use ECDSA P-256 or P-384, or RSA with at least 2048 bits)"
    )]
    WeakKey(String),
    #[error("requested lifetime {requested:?} exceeds the maximum {max:?}")]
    TtlTooLong { requested: Duration, max: Duration },
    #[error("CA files in {dir}: {reason}")]
    Files { dir: PathBuf, reason: String },
    #[error("signing failed: {0}")]
    Signing(String),
}

type Result<T, E = CaError> = std::result::Result<T, E>;

/// The certificate authority.
pub struct Authority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate and every certificate up to and including the root.
    chain_pem: Vec<String>,
    root_pem: String,
    root_not_after: SystemTime,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain_pem.len())
            .finish()
    }
}

const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start a little in the past, for clocks that lag.
const BACKDATE: Duration = Duration::from_secs(60);

fn files_err(dir: &Path, reason: impl Into<String>) -> CaError {
    CaError::Files {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// PEM with `\n` line endings, like every other certificate meshd hands out.
fn pem_lf(p: &pem::Pem) -> String {
    pem::encode_config(
        p,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn not_after_of(pem: &str) -> Option<SystemTime> {
    let der = pem::parse(pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).ok()?;
    let ts = cert.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64))
}

impl Authority {
    /// A new self-signed root (10 years), ECDSA P-256.
    pub fn self_signed(trust_domain: &str) -> Result<Authority> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "meshd root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + ROOT_TTL);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let root_pem = cert.pem();
        Authority::from_parts(
            trust_domain,
            &root_pem,
            key,
            vec![root_pem.clone()],
            now + ROOT_TTL,
        )
    }

    fn from_parts(
        trust_domain: &str,
        signing_cert_pem: &str,
        key: KeyPair,
        chain_pem: Vec<String>,
        root_not_after: SystemTime,
    ) -> Result<Authority> {
        let issuer = Issuer::from_ca_cert_pem(signing_cert_pem, key)
            .map_err(|e| CaError::Signing(format!("signing certificate: {e}")))?;
        let root_pem = chain_pem.last().cloned().unwrap_or_default();
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            issuer,
            chain_pem,
            root_pem,
            root_not_after,
            default_ttl: DEFAULT_TTL,
            max_ttl: MAX_TTL,
        })
    }

    /// A plugged-in CA in istio's `cacerts` layout: `ca-cert.pem` and `ca-key.pem` (the
    /// signing certificate and key), `root-cert.pem`, and `cert-chain.pem` (the signing
    /// certificate up to the root).
    pub fn from_cacerts(dir: &Path, trust_domain: &str) -> Result<Authority> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| files_err(dir, format!("cannot read {name}: {e}")))
        };
        let cert = read("ca-cert.pem")?;
        let key_pem = read("ca-key.pem")?;
        let root = read("root-cert.pem")?;
        let chain_text = read("cert-chain.pem").unwrap_or_else(|_| format!("{cert}{root}"));
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| files_err(dir, format!("ca-key.pem: {e}")))?;
        let mut chain: Vec<String> = pem::parse_many(chain_text.as_bytes())
            .map_err(|e| files_err(dir, format!("cert-chain.pem: {e}")))?
            .iter()
            .map(pem_lf)
            .collect();
        let root_norm = pem::parse(root.as_bytes())
            .map(|p| pem_lf(&p))
            .map_err(|e| files_err(dir, format!("root-cert.pem: {e}")))?;
        if chain.last() != Some(&root_norm) {
            chain.push(root_norm.clone());
        }
        let not_after = not_after_of(&root_norm)
            .ok_or_else(|| files_err(dir, "root-cert.pem is not a certificate"))?;
        Authority::from_parts(trust_domain, &cert, key, chain, not_after)
    }

    /// The persisted self-signed root in `dir` (`root-cert.pem`, `ca-key.pem`), created
    /// on first use, so a restart keeps the mesh's identities valid.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Authority> {
        let cert_path = dir.join("root-cert.pem");
        let key_path = dir.join("ca-key.pem");
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read_to_string(&cert_path)
                .map_err(|e| files_err(dir, format!("root-cert.pem: {e}")))?;
            let key = KeyPair::from_pem(
                &std::fs::read_to_string(&key_path)
                    .map_err(|e| files_err(dir, format!("ca-key.pem: {e}")))?,
            )
            .map_err(|e| files_err(dir, format!("ca-key.pem: {e}")))?;
            let not_after = not_after_of(&cert)
                .ok_or_else(|| files_err(dir, "root-cert.pem is not a certificate"))?;
            return Authority::from_parts(trust_domain, &cert, key, vec![cert.clone()], not_after);
        }
        let ca = Authority::self_signed(trust_domain)?;
        std::fs::create_dir_all(dir).map_err(|e| files_err(dir, e.to_string()))?;
        write_private(&key_path, &ca.issuer.key().serialize_pem())
            .map_err(|e| files_err(dir, format!("writing ca-key.pem: {e}")))?;
        std::fs::write(&cert_path, &ca.root_pem)
            .map_err(|e| files_err(dir, format!("writing root-cert.pem: {e}")))?;
        Ok(ca)
    }

    /// A self-signed root from its certificate and key (Kubernetes mode keeps them in
    /// Secret `istio-ca-secret`).
    pub fn from_pem(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Authority> {
        let here = Path::new("istio-ca-secret");
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| files_err(here, format!("ca-key.pem: {e}")))?;
        let not_after = not_after_of(cert_pem)
            .ok_or_else(|| files_err(here, "ca-cert.pem is not a certificate"))?;
        Authority::from_parts(
            trust_domain,
            cert_pem,
            key,
            vec![cert_pem.to_string()],
            not_after,
        )
    }

    /// The signing key, PEM (only for persisting a self-signed root).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate (what every proxy trusts: `ROOTCA`, `istio-ca-root-cert`).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn root_not_after(&self) -> SystemTime {
        self.root_not_after
    }

    fn ttl(&self, requested: Option<Duration>) -> Result<Duration> {
        match requested {
            None => Ok(self.default_ttl),
            Some(d) if d.is_zero() => Ok(self.default_ttl),
            Some(d) if d > self.max_ttl => Err(CaError::TtlTooLong {
                requested: d,
                max: self.max_ttl,
            }),
            Some(d) => Ok(d),
        }
    }

    fn leaf_params(&self, sans: Vec<SanType>, ttl: Duration) -> CertificateParams {
        let mut p = CertificateParams::default();
        // Istio's workload certificates carry their identity in the SAN only.
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        p.not_before = to_offset(now - BACKDATE);
        p.not_after = to_offset(now + ttl);
        p
    }

    fn chain_with(&self, leaf_pem: String) -> Vec<String> {
        let mut out = vec![leaf_pem];
        out.extend(self.chain_pem.iter().cloned());
        out
    }

    /// Signs `csr_pem` for `caller`: the CSR must carry exactly the caller's SPIFFE URI.
    /// Returns the chain, leaf first and root last.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        caller: &Identity,
        ttl: Option<Duration>,
    ) -> Result<Vec<String>> {
        let der = pem::parse(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        check_csr(der.contents(), caller)?;
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CaError::BadCsrSignature,
            other => CaError::BadCsr(other.to_string()),
        })?;
        let ttl = self.ttl(ttl)?;
        csr.params = self.leaf_params(vec![uri_san(&caller.to_string())?], ttl);
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(self.chain_with(cert.pem()))
    }

    /// A key and certificate for `identity` (and optional DNS names), made by meshd: for
    /// proxies that cannot send a CSR (plain Envoy over SDS) and for meshd's own servers.
    /// Returns (chain leaf first, private key PEM).
    pub fn issue(
        &self,
        identity: Option<&Identity>,
        dns: &[String],
        ttl: Option<Duration>,
    ) -> Result<(Vec<String>, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let mut sans = Vec::new();
        if let Some(id) = identity {
            sans.push(uri_san(&id.to_string())?);
        }
        for d in dns {
            sans.push(SanType::DnsName(
                d.as_str()
                    .try_into()
                    .map_err(|_| CaError::Signing(format!("bad DNS name {d}")))?,
            ));
        }
        let params = self.leaf_params(sans, self.ttl(ttl)?);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok((self.chain_with(cert.pem()), key.serialize_pem()))
    }
}

fn uri_san(uri: &str) -> Result<SanType> {
    Ok(SanType::URI(
        uri.try_into()
            .map_err(|_| CaError::Signing(format!("bad URI {uri}")))?,
    ))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(text.as_bytes())
}

/// SAN and key checks on the CSR itself, before anything is signed.
fn check_csr(der: &[u8], caller: &Identity) -> Result<()> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| CaError::BadCsr(e.to_string()))?;
    let mut uris = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push(u.to_string()),
                        GeneralName::DNSName(d) => uris.push(format!("dns:{d}")),
                        _ => uris.push("another name".into()),
                    }
                }
            }
        }
    }
    let expected = caller.to_string();
    match uris.as_slice() {
        [] => return Err(CaError::NoSan { expected }),
        [one] if *one == expected => {}
        [one] => {
            return Err(CaError::SanMismatch {
                requested: one.clone(),
                caller: expected,
            });
        }
        many => return Err(CaError::TooManySans(many.join(", "))),
    }
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(()),
        Ok(PublicKey::RSA(rsa)) => Err(CaError::WeakKey(format!("RSA {} bits", rsa.key_size()))),
        Ok(PublicKey::EC(ec)) if matches!(ec.key_size(), 256 | 384) => Ok(()),
        Ok(PublicKey::EC(ec)) => Err(CaError::WeakKey(format!("EC {} bits", ec.key_size()))),
        Ok(_) => Err(CaError::WeakKey(spki.algorithm.algorithm.to_id_string())),
        Err(e) => Err(CaError::BadCsr(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn csr(uri: &str, alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = KeyPair::generate_for(alg).expect("key");
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
        p.serialize_request(&key).expect("csr").pem().expect("pem")
    }

    fn id() -> Identity {
        Identity::new("cluster.local", "default", "reviews")
    }

    #[test]
    fn signs_own_identity_and_refuses_others() {
        let ca = Authority::self_signed("cluster.local").expect("ca");
        let chain = ca
            .sign_csr(
                &csr(&id().to_string(), &rcgen::PKCS_ECDSA_P256_SHA256),
                &id(),
                None,
            )
            .expect("signed");
        assert_eq!(chain.len(), 2, "leaf and root");
        assert_eq!(chain[1], ca.root_pem());
        let der = pem::parse(&chain[0]).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).expect("x509");
        let san = cert.subject_alternative_name().expect("ok").expect("san");
        assert_eq!(
            format!("{:?}", san.value.general_names),
            format!("[URI(\"{}\")]", id())
        );
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 24 * 3600 + 60, "24h plus the backdating");

        let other = Identity::new("cluster.local", "default", "ratings");
        let err = ca
            .sign_csr(
                &csr(&other.to_string(), &rcgen::PKCS_ECDSA_P256_SHA256),
                &id(),
                None,
            )
            .expect_err("refused");
        assert!(matches!(err, CaError::SanMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not match caller identity"));
        let err = ca
            .sign_csr(
                &csr(&id().to_string(), &rcgen::PKCS_ECDSA_P256_SHA256),
                &id(),
                Some(MAX_TTL * 2),
            )
            .expect_err("too long");
        assert!(matches!(err, CaError::TtlTooLong { .. }));
        assert!(matches!(
            ca.sign_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &id(),
                None
            ),
            Err(CaError::BadCsr(_))
        ));
    }

    #[test]
    fn plugged_in_intermediate_signs_with_the_full_chain() {
        // An operator's root, and an intermediate for meshd, in istio's cacerts layout.
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut rp = CertificateParams::default();
        rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = rp.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(rp, root_key);
        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut ip = CertificateParams::default();
        ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ip.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let int = ip.signed_by(&int_key, &root_issuer).expect("intermediate");
        let dir = std::env::temp_dir().join(format!("meshd-cacerts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("ca-cert.pem"), int.pem()).expect("w");
        std::fs::write(dir.join("ca-key.pem"), int_key.serialize_pem()).expect("w");
        std::fs::write(dir.join("root-cert.pem"), root.pem()).expect("w");
        std::fs::write(
            dir.join("cert-chain.pem"),
            format!("{}{}", int.pem(), root.pem()),
        )
        .expect("w");

        let ca = Authority::from_cacerts(&dir, "cluster.local").expect("plugged in");
        assert_eq!(ca.root_pem(), root.pem());
        let chain = ca
            .sign_csr(
                &csr(&id().to_string(), &rcgen::PKCS_ECDSA_P256_SHA256),
                &id(),
                None,
            )
            .expect("signed");
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        assert_eq!(chain[1], int.pem());
        assert_eq!(chain[2], root.pem());
        // The leaf is signed by the intermediate.
        let leaf = pem::parse(&chain[0]).expect("pem");
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf.contents()).expect("x509");
        let inter = pem::parse(&chain[1]).expect("pem");
        let (_, inter) = x509_parser::parse_x509_certificate(inter.contents()).expect("x509");
        assert!(leaf.verify_signature(Some(inter.public_key())).is_ok());
        let _ = std::fs::remove_dir_all(&dir);

        let err = Authority::from_cacerts(std::path::Path::new("/nonexistent"), "x")
            .expect_err("no files");
        assert!(err.to_string().contains("cannot read ca-cert.pem"), "{err}");
    }

    #[test]
    fn root_persists_across_restarts() {
        let dir = std::env::temp_dir().join(format!("meshd-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Authority::load_or_create(&dir, "cluster.local").expect("created");
        let b = Authority::load_or_create(&dir, "cluster.local").expect("loaded");
        assert_eq!(a.root_pem(), b.root_pem());
        let chain = b
            .sign_csr(
                &csr(&id().to_string(), &rcgen::PKCS_ECDSA_P384_SHA384),
                &id(),
                None,
            )
            .expect("signed by the reloaded key");
        assert_eq!(chain.last().map(String::as_str), Some(a.root_pem()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
