//! Checks certificate and key files at load time, so a bad file is a config error with a line
//! number instead of a panic inside pingora's TLS setup. The files are read by `crate::tls`,
//! the same loader the listeners and upstream peers use.

use std::path::Path;

use crate::tls::{load_certificates, load_certified_key, load_private_key, TlsError};

/// How many certificates a PEM file holds, or why it is unusable.
pub fn check_certificates(path: &Path) -> Result<usize, String> {
    load_certificates(path)
        .map(|certs| certs.len())
        .map_err(|e| match e {
            TlsError::Invalid { path, reason } => {
                format!("{path} is not a valid PEM certificate file: {reason}")
            }
            other => other.to_string(),
        })
}

/// Checks that a PEM file holds a private key.
pub fn check_private_key(path: &Path) -> Result<(), String> {
    load_private_key(path).map(drop).map_err(|e| match e {
        TlsError::Invalid { path, reason } => {
            format!("{path} holds no usable PEM private key: {reason}")
        }
        other => other.to_string(),
    })
}

/// Checks that the key belongs to the certificate (the first in the chain).
pub fn check_key_pair(cert: &Path, key: &Path) -> Result<(), String> {
    match load_certified_key(cert, key) {
        Ok(_) => Ok(()),
        Err(TlsError::Mismatch { reason, .. }) => Err(format!(
            "{} does not belong to the certificate {}: {reason}",
            key.display(),
            cert.display()
        )),
        Err(other) => Err(other.to_string()),
    }
}
