//! How to reach one endpoint: pingora's `HttpPeer`, prepared once per snapshot.
//!
//! pingora's defaults silently break gRPC, so every setting that matters is set here on purpose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};

use crate::config::UpstreamConfig;

/// Concurrent streams we open on one upstream connection. pingora's default is 1, which means
/// one TCP connection per call; the backend's own SETTINGS_MAX_CONCURRENT_STREAMS still caps it.
const MAX_STREAMS_PER_CONNECTION: usize = 1000;
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// HTTP/2 PING on idle upstream connections, so a dead peer is noticed before a call needs it.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PeerTemplateError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("client certificate: {0}")]
    ClientCert(#[from] crate::tls::TlsError),
}

/// An upstream's TLS files, read once per config (not once per endpoint, nor on every
/// discovery change) and shared by all its endpoints' peers.
#[derive(Debug)]
pub struct PeerTls {
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
}

impl PeerTls {
    /// Reads the upstream's CA and client certificate files, if it speaks TLS.
    pub fn load(upstream: &UpstreamConfig) -> Result<Option<Arc<PeerTls>>, PeerTemplateError> {
        let Some(tls) = &upstream.tls else {
            return Ok(None);
        };
        let ca = tls.ca.as_deref().map(load_ca).transpose()?;
        let client = match &tls.identity {
            Some((cert, key)) => Some(load_client_cert(cert, key)?),
            None => None,
        };
        Ok(Some(Arc::new(PeerTls { ca, client })))
    }
}

/// A ready-made peer; each call clones it and sets its own read timeout (the deadline).
#[derive(Debug, Clone)]
pub struct PeerTemplate {
    peer: HttpPeer,
}

impl PeerTemplate {
    /// `tls` is `PeerTls::load` of the same upstream.
    pub fn new(addr: SocketAddr, upstream: &UpstreamConfig, tls: Option<&PeerTls>) -> Self {
        let mut peer = match (&upstream.tls, tls) {
            (Some(config), Some(files)) => {
                let server_name = if config.server_name.is_empty() {
                    addr.ip().to_string()
                } else {
                    config.server_name.clone()
                };
                let mut peer = HttpPeer::new(addr, true, server_name);
                peer.options.ca = files.ca.clone();
                peer.client_cert_key = files.client.clone();
                peer
            }
            _ => HttpPeer::new(addr, false, String::new()),
        };
        let options = &mut peer.options;
        // Plaintext + H2 means h2c with prior knowledge; over TLS it offers only "h2".
        options.alpn = ALPN::H2;
        options.max_h2_streams = MAX_STREAMS_PER_CONNECTION;
        options.connection_timeout = Some(upstream.connect_timeout);
        options.total_connection_timeout = Some(upstream.connect_timeout * 2);
        // No per-read timer by default: it would cut healthy quiet streams. The call's deadline,
        // when there is one, is set per call.
        options.read_timeout = None;
        options.write_timeout = None;
        options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        options.h2_ping_interval = Some(H2_PING_INTERVAL);
        Self { peer }
    }

    /// A peer for one attempt, cut off when the call's remaining budget runs out.
    pub fn for_attempt(&self, remaining: Option<Duration>) -> Box<HttpPeer> {
        let mut peer = Box::new(self.peer.clone());
        peer.options.read_timeout = remaining;
        peer
    }
}

/// The client certificate presented to backends that require mutual TLS.
fn load_client_cert(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<CertKey>, PeerTemplateError> {
    // Loading it as a rustls key checks the files and that the key matches the certificate.
    let certified = crate::tls::load_certified_key(cert, key)?;
    for der in &certified.cert {
        if x509_parser::parse_x509_certificate(der.as_ref()).is_err() {
            return Err(crate::tls::TlsError::Invalid {
                path: cert.display().to_string(),
                reason: "a certificate is not valid DER".into(),
            }
            .into());
        }
    }
    let key_der = crate::tls::load_private_key(key)?;
    let chain = certified.cert.iter().map(|c| c.as_ref().to_vec()).collect();
    Ok(Arc::new(CertKey::new(chain, key_der.secret_der().to_vec())))
}

fn load_ca(path: &std::path::Path) -> Result<Arc<[WrappedX509]>, PeerTemplateError> {
    let err = |reason: String| PeerTemplateError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let certs = crate::tls::load_certificates(path).map_err(|e| match e {
        crate::tls::TlsError::NoCertificate { .. } => err("no certificate in file".into()),
        crate::tls::TlsError::Read { reason, .. }
        | crate::tls::TlsError::Invalid { reason, .. } => err(reason),
        other => err(other.to_string()),
    })?;
    let mut wrapped = Vec::with_capacity(certs.len());
    for cert in certs {
        let der = cert.as_ref().to_vec();
        // pingora's parser panics on bad DER; check first so a bad file is an error, not a crash.
        if x509_parser::parse_x509_certificate(&der).is_err() {
            return Err(err("a certificate is not valid DER".into()));
        }
        wrapped.push(WrappedX509::new(der, pingora::utils::tls::parse_x509));
    }
    Ok(wrapped.into())
}
