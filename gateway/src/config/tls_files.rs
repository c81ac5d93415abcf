//! Checks certificate and key files at load time, so a bad file is a config error with a line
//! number instead of a panic inside pingora's TLS setup.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads a PEM file and returns how many certificates it holds, or why it is unusable.
pub fn check_certificates(path: &Path) -> Result<usize, String> {
    let bytes = read(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(certs) if certs.is_empty() => {
            Err(format!("{} holds no PEM certificate", path.display()))
        }
        Ok(certs) => Ok(certs.len()),
        Err(e) => Err(format!(
            "{} is not a valid PEM certificate file: {e}",
            path.display()
        )),
    }
}

/// Reads a PEM file and checks that it holds a private key.
pub fn check_private_key(path: &Path) -> Result<(), String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map(|_| ())
        .map_err(|e| format!("{} holds no usable PEM private key: {e}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Checks that the key belongs to the certificate (the first in the chain), with the same
/// loader the listeners and upstream peers use.
pub fn check_key_pair(cert: &Path, key: &Path) -> Result<(), String> {
    match crate::tls::load_certified_key(cert, key) {
        Ok(_) => Ok(()),
        Err(crate::tls::TlsError::Mismatch { reason, .. }) => Err(format!(
            "{} does not belong to the certificate {}: {reason}",
            key.display(),
            cert.display()
        )),
        Err(other) => Err(other.to_string()),
    }
}
