//! Throw-away certificates for the TLS tests, made with rcgen: a CA, a server
//! certificate for localhost / 127.0.0.1 and client certificates (valid, expired,
//! from another CA), written as PEM files into a temporary directory.

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for a leaf signed by this CA.
    fn leaf(&self, cn: &str, sans: &[&str], server: bool, expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn server(&self) -> (String, String) {
        self.leaf("localhost", &["localhost", "127.0.0.1"], true, false)
    }

    pub fn client(&self, cn: &str) -> (String, String) {
        self.leaf(cn, &[], false, false)
    }

    pub fn expired_client(&self, cn: &str) -> (String, String) {
        self.leaf(cn, &[], false, true)
    }
}

/// A directory of PEM files: ca.pem, server.pem/.key, and whatever else is added.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("Tern test CA");
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        let (c, k) = ca.server();
        std::fs::write(dir.path().join("server.pem"), c).unwrap();
        std::fs::write(dir.path().join("server.key"), k).unwrap();
        Pki { dir, ca }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write `name.pem` / `name.key` (a client certificate) and return their paths.
    pub fn write_pair(&self, name: &str, pair: (String, String)) -> (PathBuf, PathBuf) {
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, pair.0).unwrap();
        std::fs::write(&k, pair.1).unwrap();
        (c, k)
    }

    /// A TOML `tls = {...}` value for a listener.
    pub fn tls_toml(&self, client_ca: bool, require: bool, identity: bool) -> String {
        let mut s = format!(
            "{{ cert = \"{}\", key = \"{}\"",
            self.path("server.pem").display(),
            self.path("server.key").display()
        );
        if client_ca {
            s += &format!(", client_ca = \"{}\"", self.path("ca.pem").display());
        }
        if require {
            s += ", require_client_cert = true";
        }
        if identity {
            s += ", identity_as_username = true";
        }
        s + " }"
    }

    pub fn tls_config(
        &self,
        client_ca: bool,
        require: bool,
        identity: bool,
    ) -> tern::config::TlsConfig {
        tern::config::TlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.then(|| self.path("ca.pem")),
            require_client_cert: require,
            identity_as_username: identity,
        }
    }

    /// A rustls client config trusting this CA, optionally with a client certificate.
    pub fn client_config(&self, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
        client_config_trusting(&self.ca.cert_pem, client)
    }
}

pub fn client_config_trusting(
    ca_pem: &str,
    client: Option<(&Path, &Path)>,
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(config)
}
