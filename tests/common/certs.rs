//! Throw-away TLS certificates for tests (rcgen): a CA per call and a `localhost` leaf it signs.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::Path;
use std::sync::Arc;

/// A CA certificate (PEM, to trust) and a leaf certificate + key for `localhost`/127.0.0.1 (PEM).
pub struct TestCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The leaf's SubjectPublicKeyInfo, DER.
    pub leaf_spki: Vec<u8>,
}

impl TestCert {
    pub fn generate() -> TestCert {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        use rcgen::PublicKeyData;
        TestCert {
            leaf_spki: leaf_key.subject_public_key_info(),
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        }
    }

    /// base64(SHA-256(leaf SPKI)), as Chromium's `--ignore-certificate-errors-spki-list` takes it.
    pub fn spki_pin(&self) -> String {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&self.leaf_spki))
    }

    /// Writes the leaf and its key where tern reads them.
    pub fn install(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }

    /// A rustls client configuration that trusts only this CA and offers ALPN `stun.turn`.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client_config_alpn(&[b"stun.turn"])
    }

    /// A rustls client configuration that trusts only this CA and offers `alpn`.
    pub fn client_config_alpn(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// True if a TLS connection to 127.0.0.1:`port` that trusts only `cert`'s CA completes its
/// handshake (so the server presents that certificate).
pub fn served_by(port: u16, cert: &TestCert) -> bool {
    use std::net::TcpStream;
    use std::time::Duration;
    let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(cert.client_config(), name).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        if stream.conn.complete_io(&mut stream.sock).is_err() {
            return false;
        }
    }
    true
}

/// One HTTP/1.1 request over TLS to 127.0.0.1:`port` (SNI `localhost`), trusting only `cert`'s
/// CA; returns the status and the body. `Err` if the handshake fails (e.g. another certificate).
pub fn https(
    port: u16,
    cert: &TestCert,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let config = cert.client_config_alpn(&[b"http/1.1"]);
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    let auth = bearer
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    // A server may close without close_notify once the answer is complete.
    if let Err(error) = stream.read_to_end(&mut answer) {
        if answer.is_empty() {
            return Err(error);
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The ALPN protocol the server picks at 127.0.0.1:`port` when offered `alpn`.
pub fn negotiated_alpn(port: u16, cert: &TestCert, alpn: &[&[u8]]) -> Option<Vec<u8>> {
    use std::net::TcpStream;
    let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(cert.client_config_alpn(alpn), name).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).ok()?;
    }
    stream.conn.alpn_protocol().map(<[u8]>::to_vec)
}
