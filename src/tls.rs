//! TLS for listeners: building rustls server configs from PEM files (ring provider
//! only), swapping them on reload, and reading a client certificate's Common Name.
//!
//! Owns nothing of MQTT. A listener holds a `TlsCell`; each accepted connection
//! takes the config current at that moment, so a reload (SIGHUP) changes the
//! certificates for new connections without touching open ones.

use crate::config::TlsConfig;
use crate::reload::Swap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Why a TLS config could not be built; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("TLS setup: {0}")]
    Rustls(String),
}

fn file_err(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The ring provider, the only one compiled in (aws-lc-rs never enters the build).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build a server config: TLS 1.2 and 1.3, the listener's certificate chain and
/// key, and client certificates checked against `client_ca` when set (required
/// with `require_client_cert`, optional but verified otherwise).
pub fn server_config(t: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&t.cert)?;
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| file_err(&t.key, e))?;
    let provider = provider();
    let verifier = match &t.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| file_err(ca, e))?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if t.require_client_cert {
                b
            } else {
                b.allow_unauthenticated()
            };
            b.build().map_err(|e| file_err(ca, e))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        // The usual cause: the key does not belong to the certificate.
        .map_err(|e| file_err(&t.key, e))?;
    Ok(Arc::new(config))
}

/// A bridge's TLS client config: the remote's certificate checked against
/// `ca` (there are no built-in roots: name the CA, e.g. Amazon's root for AWS
/// IoT Core), an optional client certificate, ALPN protocols (AWS IoT Core on
/// port 443 wants `x-amzn-mqtt-ca`). `insecure_skip_verify` accepts any server
/// certificate: for a test bench only, said loudly in the log by the caller.
pub fn client_config(
    ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
    alpn: &[String],
    insecure_skip_verify: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
    } else {
        let Some(ca) = ca else {
            return Err(TlsError::Rustls(
                "tls.ca is required: no root certificates are built in".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        for c in load_certs(ca)? {
            roots.add(c).map_err(|e| file_err(ca, e))?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match cert_key {
        Some((cert, key)) => {
            let certs = load_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| file_err(cert, e))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// Accepts any server certificate (`insecure_skip_verify`); signatures are
/// still checked, so the handshake itself is sound.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A listener's current TLS config, replaced on reload.
pub struct TlsCell {
    settings: TlsConfig,
    current: Swap<ServerConfig>,
}

impl TlsCell {
    pub fn new(settings: TlsConfig) -> Result<TlsCell, TlsError> {
        let config = server_config(&settings)?;
        Ok(TlsCell {
            settings,
            current: Swap::new(config),
        })
    }

    pub fn settings(&self) -> &TlsConfig {
        &self.settings
    }

    /// The config for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.get()
    }

    /// Re-read the files; on error keep the current config and say why.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.set(server_config(&self.settings)?);
        Ok(())
    }
}

/// The subject Common Name of a DER certificate: the first CN if there are several,
/// as Mosquitto takes it (`X509_NAME_get_index_by_NID(.., -1)`), so one
/// certificate is the same user on both brokers. The certificate has already
/// been verified by webpki; this only walks the structure to the subject:
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity, subject, ... } ... } (RFC 5280 4.1).
/// A hand-written walk of ~50 lines instead of an X.509 crate (x509-parser brings
/// nom, asn1-rs, time and proc macros) for one field of an already-checked input.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (cert, _) = der_item(der, 0x30)?;
    let (tbs, _) = der_item(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = der_skip(rest)?; // version
    }
    for _ in 0..4 {
        rest = der_skip(rest)?; // serial, signature, issuer, validity
    }
    let (mut subject, _) = der_item(rest, 0x30)?;
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF AttributeTypeAndValue)
    while !subject.is_empty() {
        let (mut set, after) = der_item(subject, 0x31)?;
        subject = after;
        while !set.is_empty() {
            let (atv, after) = der_item(set, 0x30)?;
            set = after;
            let (oid, value) = der_item(atv, 0x06)?;
            // id-at-commonName 2.5.4.3
            if oid == [0x55, 0x04, 0x03] {
                let tag = *value.first()?;
                let (text, _) = der_item(value, tag)?;
                return match tag {
                    // UTF8String, PrintableString, IA5String, T61String (as Latin-1
                    // is rare here, accept it only when it is valid UTF-8)
                    0x0C | 0x13 | 0x16 | 0x14 => Some(String::from_utf8(text.to_vec()).ok()?),
                    // BMPString: UTF-16BE
                    0x1E => {
                        // INVARIANT: chunks_exact(2) yields 2-byte slices only.
                        let units: Vec<u16> = text
                            .chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect();
                        Some(String::from_utf16(&units).ok()?)
                    }
                    _ => None,
                };
            }
        }
    }
    None
}

/// One DER item with the expected tag: (contents, what follows).
fn der_item(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *buf.first()? != tag {
        return None;
    }
    let (len, header) = der_len(buf.get(1..)?)?;
    let start = 1 + header;
    let end = start.checked_add(len)?;
    Some((buf.get(start..end)?, buf.get(end..)?))
}

/// Skip one DER item of any tag.
fn der_skip(buf: &[u8]) -> Option<&[u8]> {
    let tag = *buf.first()?;
    der_item(buf, tag).map(|(_, rest)| rest)
}

/// A DER length: (length, bytes it took).
fn der_len(buf: &[u8]) -> Option<(usize, usize)> {
    let first = *buf.first()?;
    if first < 0x80 {
        return Some((usize::from(first), 1));
    }
    let n = usize::from(first & 0x7F);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for b in buf.get(1..=n)? {
        len = (len << 8) | usize::from(*b);
    }
    Some((len, 1 + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_generated_certs() {
        for cn in ["device-42", "sensor ü", "a"] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "Tern test");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(common_name(cert.der()).as_deref(), Some(cn));
        }
    }

    #[test]
    fn no_common_name_and_garbage() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "no cn");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        assert_eq!(common_name(&der), None);
        // Every truncation and every single-byte change must be handled without
        // a panic (the result may be anything).
        for n in 0..der.len() {
            let _ = common_name(&der[..n]);
        }
        for i in 0..der.len() {
            let mut d = der.clone();
            d[i] ^= 0xFF;
            let _ = common_name(&d);
        }
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
    }
}
