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

    /// Re-reads every file first and swaps only when all of them are good.
    pub fn reload(&self, files: ListenerTlsFiles<'_>) -> Result<(), TlsError> {
        let key = load_certified_key(files.cert, files.key)?;
        let verifier = match (&self.client_auth, files.client_ca) {
            (Some(_), Some(ca)) => Some(client_auth::verifier(ca)?),
            _ => None,
        };
        self.cert.replace(key);
        if let (Some(current), Some(fresh)) = (&self.client_auth, verifier) {
            current.replace(fresh);
        }
        Ok(())
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
