//! TLS certificates for `turns:` (and for anything else that serves TLS, such as HTTPS): the
//! `cert` / `pkey` PEM files, loaded into a [`CertStore`] that swaps the certificate atomically
//! on reload. Handshakes in progress and established sessions keep what they had; new handshakes
//! get the new certificate. A file that does not load is refused and the old certificate stays.
//!
//! Reuse: [`CertStore::server_config`] builds a rustls `ServerConfig` (TLS 1.2 and 1.3, ring)
//! with any ALPN list whose certificate follows the store, e.g. `store.server_config(&[b"h2",
//! b"http/1.1"])` for HTTPS.

use crate::config::ConfigError;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{error, info};

/// ALPN for STUN/TURN over TLS (RFC 7443).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// The crypto provider tern uses everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain and its private key from PEM files and checks they belong together.
/// Errors name the key (`cert` or `pkey`) and the file, as configuration errors do.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, ConfigError> {
    let invalid = |name: &str, path: &Path, reason: String| ConfigError::Invalid {
        key: name.to_string(),
        value: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid("cert", cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(
            "cert",
            cert,
            "no CERTIFICATE block in the file".to_string(),
        ));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("pkey", key, e.to_string()))?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        invalid(
            "pkey",
            key,
            format!("not a usable private key for {}: {e}", cert.display()),
        )
    })
}

/// Size and modification time, to notice a file replaced on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len()))),
        )
    }
}

#[derive(Debug)]
struct WatchState {
    /// The files as they were when last loaded (or last tried).
    tried: (Stamp, Stamp),
    /// The files as seen on the previous poll, to wait until a writer is done.
    seen: (Stamp, Stamp),
}

/// The current certificate, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    watch: Mutex<WatchState>,
}

impl CertStore {
    /// Loads the files; an error names the key and the file.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, ConfigError> {
        let stamps = (Stamp::of(cert), Stamp::of(key));
        let certified = load_certified_key(cert, key)?;
        Ok(Arc::new(CertStore {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            current: ArcSwap::from_pointee(certified),
            watch: Mutex::new(WatchState {
                tried: stamps,
                seen: stamps,
            }),
        }))
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Reads the files again. On success new handshakes use the new certificate; on failure
    /// the error is logged (naming the file) and the old certificate keeps serving.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let stamps = (Stamp::of(&self.cert_path), Stamp::of(&self.key_path));
        self.lock_watch().tried = stamps;
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(certified) => {
                self.current.store(Arc::new(certified));
                info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(err) => {
                error!(error = %err, "TLS certificate reload refused; the previous certificate keeps serving");
                Err(err)
            }
        }
    }

    /// Polls the files every `every` and reloads once a change has settled (unchanged for one
    /// poll, so a half-written pair is not tried). Each state of the files is tried once.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = (Stamp::of(&self.cert_path), Stamp::of(&self.key_path));
            let due = {
                let mut state = self.lock_watch();
                let settled = state.seen == now;
                state.seen = now;
                settled && state.tried != now
            };
            if due {
                let _ = self.reload();
            }
        }
    }

    /// A rustls server configuration (TLS 1.2 and 1.3) whose certificate follows this store.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3");
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    fn lock_watch(&self) -> std::sync::MutexGuard<'_, WatchState> {
        super::common::lock(&self.watch)
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_swaps_and_refuses_bad_files() {
        let dir = temp_dir("swap");
        let (cert, key) = write_pair(&dir, "a");
        let store = CertStore::load(&cert, &key).unwrap();
        let first = store.current();
        let (cert_b, key_b) = write_pair(&dir, "b");
        std::fs::copy(&cert_b, &cert).unwrap();
        std::fs::copy(&key_b, &key).unwrap();
        store.reload().unwrap();
        let second = store.current();
        assert_ne!(first.cert, second.cert);

        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(store.reload().is_err());
        assert_eq!(
            store.current().cert,
            second.cert,
            "the old certificate stays"
        );

        // A key that does not belong to the certificate.
        std::fs::copy(&cert_b, &cert).unwrap();
        let (_, other_key) = write_pair(&dir, "c");
        std::fs::copy(&other_key, &key).unwrap();
        match store.reload() {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "pkey"),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_files_name_the_key() {
        let dir = temp_dir("missing");
        let (cert, key) = write_pair(&dir, "a");
        let missing = dir.join("nope.pem");
        match CertStore::load(&missing, &key) {
            Err(ConfigError::Invalid { key, value, .. }) => {
                assert_eq!(key, "cert");
                assert!(value.ends_with("nope.pem"));
            }
            other => panic!("{other:?}"),
        }
        match CertStore::load(&cert, &missing) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "pkey"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&missing, "").unwrap();
        assert!(
            CertStore::load(&missing, &key).is_err(),
            "an empty cert file"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
