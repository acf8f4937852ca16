//! Certificate signing requests as a proxy sends them to the CA (`csr` and
//! `validity_duration` of an IstioCertificateRequest), for a caller already
//! authenticated as `spiffe://cluster.local/ns/default/sa/fuzz`.
//!
//! Input: four bytes of requested lifetime in seconds (big-endian), then the CSR as PEM
//! text, or as DER (wrapped into PEM here so the fuzzer needs no base64).
//! Whatever is signed must name the caller and no one else.

use std::sync::OnceLock;
use std::time::Duration;

use crate::ca::{Authority, Identity};

fn authority() -> Option<&'static Authority> {
    static CA: OnceLock<Option<Authority>> = OnceLock::new();
    CA.get_or_init(|| Authority::self_signed("cluster.local").ok())
        .as_ref()
}

pub fn run(data: &[u8]) {
    let Some(ca) = authority() else {
        panic!("the fuzz CA could not be made");
    };
    if data.len() < 4 {
        return;
    }
    let (ttl, csr) = data.split_at(4);
    let ttl = u32::from_be_bytes([ttl[0], ttl[1], ttl[2], ttl[3]]);
    let ttl = (ttl > 0).then(|| Duration::from_secs(u64::from(ttl)));
    let pem_text = if csr.starts_with(b"-----") {
        String::from_utf8_lossy(csr).into_owned()
    } else {
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr.to_vec()))
    };
    let caller = Identity::new("cluster.local", "default", "fuzz");
    let Ok(chain) = ca.sign_csr(&pem_text, &caller, ttl) else {
        return;
    };
    let leaf = chain.first().expect("a signed chain starts with its leaf");
    let der = pem::parse(leaf).expect("the CA wrote PEM");
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.contents()).expect("the CA wrote a certificate");
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            names.push(format!("{n:?}"));
        }
    }
    assert_eq!(
        names,
        vec![format!("URI({:?})", caller.to_string())],
        "the CA signed a certificate naming someone other than its caller"
    );
}
