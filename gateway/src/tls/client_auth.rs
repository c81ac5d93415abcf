//! Mutual TLS on a listener: client certificates verified against a CA bundle that a reload can
//! replace. Refusals are logged with the reason rustls gives (unknown CA, expired, ...).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tracing::warn;

use super::TlsError;

/// A verifier requiring a client certificate signed by a CA in `ca`.
pub fn verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    super::install_crypto_provider();
    let roots = super::load_roots(ca)?;
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TlsError::Invalid {
            path: ca.display().to_string(),
            reason: e.to_string(),
        })
}

#[derive(Debug)]
pub struct ReloadingClientVerifier {
    listener: String,
    current: ArcSwap<Arc<dyn ClientCertVerifier>>,
    /// Refusals are the callers' doing: a few log lines a second at most.
    refusal_log: crate::logging::LogThrottle,
}

impl ReloadingClientVerifier {
    pub fn new(listener: &str, verifier: Arc<dyn ClientCertVerifier>) -> Self {
        Self {
            listener: listener.to_string(),
            current: ArcSwap::from_pointee(verifier),
            refusal_log: Default::default(),
        }
    }

    pub fn replace(&self, verifier: Arc<dyn ClientCertVerifier>) {
        self.current.store(Arc::new(verifier));
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA hints: the set can change under us and this must return a borrow. Clients send
    /// their configured certificate without hints.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self
            .current
            .load()
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &result {
            if let Some(not_logged) = self.refusal_log.take_turn() {
                warn!(listener = %self.listener, reason = %e, not_logged,
                      "client certificate refused (a few lines a second at most)");
            }
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}
