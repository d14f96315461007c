//! A throw-away certificate authority for tests (rcgen), issuing server
//! certificates that rustls/webpki accepts: the CA carries BasicConstraints
//! CA:TRUE with keyCertSign, leaves carry serverAuth and proper SANs.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A self-signed CA that can issue leaf certificates.
pub struct TestCa {
    /// The CA certificate, to be trusted by clients (PEM).
    pub cert_pem: String,
    cert: Certificate,
    key: KeyPair,
}

/// A leaf certificate and its private key.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf certificate alone (PEM); see [`Issued::chain_pem`].
    pub cert_pem: String,
    /// The issuing CA's certificate (PEM).
    pub ca_pem: String,
    /// PKCS#8 private key (PEM).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA whose subject CN is `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            cert_pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A server certificate for `names`: entries that parse as an IP address
    /// become IP SANs, the rest DNS SANs; the first name is also the CN.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(names.first().copied().unwrap_or("ponte test"));
        params.subject_alt_names = names.iter().map(|n| san(n)).collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Issued {
            cert_pem: cert.pem(),
            ca_pem: self.cert_pem.clone(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/stem.crt` (for `--cacert`, `-CAfile`).
    pub fn write_to(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.crt"));
        std::fs::write(&path, &self.cert_pem).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        path
    }
}

impl Issued {
    /// Leaf followed by the CA certificate, as servers usually send it.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.ca_pem)
    }

    /// Writes `dir/stem.crt` (the chain) and `dir/stem.key`; returns both paths.
    pub fn write_to(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, self.chain_pem()).unwrap_or_else(|e| panic!("write {cert:?}: {e}"));
        std::fs::write(&key, &self.key_pem).unwrap_or_else(|e| panic!("write {key:?}: {e}"));
        (cert, key)
    }
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn san(name: &str) -> SanType {
    match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            name.try_into()
                .unwrap_or_else(|e| panic!("SAN {name:?}: {e}")),
        ),
    }
}

/// From January 1st of last year to ten years ahead: covers "now" without
/// pulling in a date crate, and survives a skewed CI clock.
fn set_validity(params: &mut CertificateParams) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}
