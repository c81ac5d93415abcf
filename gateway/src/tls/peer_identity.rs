//! Who a mutual-TLS caller is: the names in its verified client certificate, read once per
//! connection when the handshake completes and carried on the connection's TLS digest, where
//! every call on the connection finds them (`auth`'s `mtls` providers, Envoy's XFCC header).

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use sha2::{Digest, Sha256};

/// The identity a verified client certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI subject alternative names (SPIFFE IDs), in certificate order.
    pub uris: Vec<String>,
    /// DNS subject alternative names, in certificate order.
    pub dns: Vec<String>,
    /// The subject as an RFC 4514 string (`CN=client,O=Example`).
    pub subject: String,
    /// SHA-256 of the DER certificate, lower-case hex (XFCC's `Hash`).
    pub hash: String,
}

impl PeerIdentity {
    /// Reads the names from a DER certificate; `None` if it does not parse (rustls verified it,
    /// so this does not happen with a certificate the listener accepted).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut identity = PeerIdentity {
            subject: cert.subject().to_string(),
            hash: hex(&Sha256::digest(der)),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_string()),
                    GeneralName::DNSName(dns) => identity.dns.push((*dns).to_string()),
                    _ => {}
                }
            }
        }
        Some(identity)
    }

    /// The principal a certificate names: its first URI SAN (a SPIFFE ID), else its first DNS
    /// SAN (Envoy's order).
    pub fn principal(&self) -> Option<&str> {
        self.uris.first().or(self.dns.first()).map(String::as_str)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// pingora's post-handshake hook: attaches the caller's `PeerIdentity` to the connection.
pub(super) struct IdentityCallback;

#[async_trait]
impl TlsAccept for IdentityCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let identity = PeerIdentity::from_der(tls.peer_certificate_der()?)?;
        Some(Arc::new(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_certificate_uri_first() {
        let mut params = rcgen::CertificateParams::new(vec!["client.example".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://td/ns/shop/sa/cart".try_into().unwrap(),
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cart");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let identity = PeerIdentity::from_der(cert.der()).unwrap();
        assert_eq!(identity.uris, ["spiffe://td/ns/shop/sa/cart"]);
        assert_eq!(identity.dns, ["client.example"]);
        assert_eq!(identity.principal(), Some("spiffe://td/ns/shop/sa/cart"));
        assert_eq!(identity.subject, "CN=cart");
        assert_eq!(identity.hash.len(), 64);
        assert!(PeerIdentity::from_der(b"not a certificate").is_none());
    }
}
