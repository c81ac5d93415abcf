//! TLS material read from PEM files, held so that a reload can swap it under running listeners
//! and connection pools: new handshakes use the new files, existing connections are untouched.

mod client_auth;
mod peer_identity;
mod pem;
mod server_cert;

pub use client_auth::ReloadingClientVerifier;
pub use peer_identity::PeerIdentity;
pub use pem::{load_certificates, load_certified_key, load_private_key, load_roots};
pub use server_cert::ReloadingCert;

use std::path::Path;
use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;

/// The files of a TLS listener: its certificate chain and key, and with mutual TLS the CAs
/// its callers' certificates must be signed by.
#[derive(Debug, Clone, Copy)]
pub struct ListenerTlsFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: Option<&'a Path>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("certificate {cert} and key {key} do not belong together: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

/// A listener's certificate and client verifier as read from its files, not yet in use.
pub struct TlsMaterial {
    key: Arc<rustls::sign::CertifiedKey>,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// A TLS listener's certificate and (with mutual TLS) client verifier, reloadable in place.
#[derive(Debug, Clone)]
pub struct ListenerTlsState {
    cert: Arc<ReloadingCert>,
    client_auth: Option<Arc<ReloadingClientVerifier>>,
}

impl ListenerTlsState {
    pub fn load(listener: &str, files: ListenerTlsFiles<'_>) -> Result<Self, TlsError> {
        let cert = Arc::new(ReloadingCert::new(load_certified_key(
            files.cert, files.key,
        )?));
        let client_auth = match files.client_ca {
            None => None,
            Some(ca) => Some(Arc::new(ReloadingClientVerifier::new(
                listener,
                client_auth::verifier(ca)?,
            ))),
        };
        Ok(Self { cert, client_auth })
    }

    /// Reads every file of a reload without changing anything: a bad file refuses the reload
    /// here, before any other part of the gateway has changed.
    pub fn read(&self, files: ListenerTlsFiles<'_>) -> Result<TlsMaterial, TlsError> {
        let key = load_certified_key(files.cert, files.key)?;
        let verifier = match (&self.client_auth, files.client_ca) {
            (Some(_), Some(ca)) => Some(client_auth::verifier(ca)?),
            _ => None,
        };
        Ok(TlsMaterial { key, verifier })
    }

    /// Swaps in material `read` earlier; cannot fail, so a reload that got this far applies
    /// whole.
    pub fn install(&self, material: TlsMaterial) {
        self.cert.replace(material.key);
        if let (Some(current), Some(fresh)) = (&self.client_auth, material.verifier) {
            current.replace(fresh);
        }
    }

    /// pingora settings for the listener: certificate from the resolver, ALPN h2 (HTTP/1.1 is
    /// offered too, only to be refused with a readable answer).
    pub fn pingora_settings(&self) -> TlsSettings {
        crate::tls::install_crypto_provider();
        // Paths are unused once a resolver is set. With mutual TLS the caller's certificate names
        // are read once per connection, for the routes that authenticate by them.
        let mut settings = match &self.client_auth {
            Some(_) => TlsSettings::with_callbacks(Box::new(peer_identity::IdentityCallback)),
            None => TlsSettings::intermediate("", ""),
        }
        .expect("infallible constructor");
        settings.set_cert_resolver(self.cert.clone());
        if let Some(verifier) = &self.client_auth {
            settings.set_client_cert_verifier(verifier.clone());
        }
        settings.enable_h2();
        settings
    }
}

/// rustls needs one process-wide crypto provider; pingora uses ring.
pub fn install_crypto_provider() {
    pingora::tls::install_default_crypto_provider();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name`, written as `name.crt` and `name.key` in `dir`;
    /// returns its DER.
    fn write_identity(dir: &Path, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn files<'a>(cert: &'a Path, key: &'a Path) -> ListenerTlsFiles<'a> {
        ListenerTlsFiles {
            cert,
            key,
            client_ca: None,
        }
    }

    /// A reload reads first and installs later; what it installs is what it read, even when the
    /// files change or vanish in between (the reload does not half-apply).
    #[test]
    fn material_read_for_a_reload_is_what_gets_installed() {
        let dir = std::env::temp_dir().join(format!("strait-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old_der = write_identity(&dir, "old");
        let new_der = write_identity(&dir, "new");
        let (old_crt, old_key) = (dir.join("old.crt"), dir.join("old.key"));
        let (new_crt, new_key) = (dir.join("new.crt"), dir.join("new.key"));
        let state = ListenerTlsState::load("public", files(&old_crt, &old_key)).unwrap();
        let serving = |state: &ListenerTlsState| state.cert.current().cert[0].to_vec();
        assert_eq!(serving(&state), old_der);

        let material = state.read(files(&new_crt, &new_key)).unwrap();
        assert_eq!(serving(&state), old_der, "reading changes nothing");
        std::fs::write(&new_crt, "garbage").unwrap();
        std::fs::remove_file(&new_key).unwrap();
        state.install(material);
        assert_eq!(serving(&state), new_der);

        assert!(
            state.read(files(&new_crt, &new_key)).is_err(),
            "a bad file refuses at read time"
        );
        assert_eq!(serving(&state), new_der);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
