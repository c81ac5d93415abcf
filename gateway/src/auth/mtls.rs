//! `mtls`: the caller is the verified client certificate of its connection. The principal is
//! its first URI SAN (a SPIFFE ID), else its first DNS SAN; `allowed_sans` narrows who may call.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::{Denial, DenyReason, Principal};
use crate::tls::PeerIdentity;

/// Envoy's `x-forwarded-client-cert`, set for upstreams when `forward_client_cert` is on.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// A SAN a certificate may carry: exact, or a prefix ending in `*`
/// (`spiffe://example.org/ns/shop/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanPattern(String);

impl SanPattern {
    pub fn new(pattern: &str) -> Self {
        Self(pattern.to_string())
    }

    pub fn matches(&self, san: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => san.starts_with(prefix),
            None => san == self.0,
        }
    }
}

#[derive(Debug)]
pub struct MtlsProvider {
    name: Arc<str>,
    /// Empty: any certificate the listener's `client_ca` signed.
    allowed: Vec<SanPattern>,
    forward_client_cert: bool,
}

impl MtlsProvider {
    pub fn new(name: &str, allowed: Vec<SanPattern>, forward_client_cert: bool) -> Self {
        Self {
            name: name.into(),
            allowed,
            forward_client_cert,
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn forwards_client_cert(&self) -> bool {
        self.forward_client_cert
    }

    pub fn authenticate(&self, peer: Option<&PeerIdentity>) -> Result<Arc<Principal>, Denial> {
        let Some(peer) = peer else {
            return Err(Denial::new(DenyReason::Missing, "no client certificate"));
        };
        let subject = if self.allowed.is_empty() {
            peer.principal()
        } else {
            let mut sans = peer.uris.iter().chain(&peer.dns);
            let allowed = sans.find(|san| self.allowed.iter().any(|p| p.matches(san)));
            match allowed {
                Some(san) => Some(san.as_str()),
                None => {
                    return Err(Denial::new(
                        DenyReason::Forbidden,
                        "the client certificate's names are not allowed on this route",
                    ))
                }
            }
        };
        let Some(subject) = subject else {
            return Err(Denial::new(
                DenyReason::Invalid,
                "the client certificate has no URI or DNS name",
            ));
        };
        Ok(Arc::new(Principal {
            provider: self.name.clone(),
            subject: subject.to_string(),
            claims: None,
        }))
    }

    /// Envoy's XFCC element for this connection's certificate:
    /// `Hash=…;Subject="…";URI=…;DNS=…`.
    pub fn xfcc(&self, peer: Option<&PeerIdentity>) -> Option<(HeaderName, HeaderValue)> {
        if !self.forward_client_cert {
            return None;
        }
        let peer = peer?;
        let mut value = format!("Hash={};Subject={}", peer.hash, quoted(&peer.subject));
        for uri in &peer.uris {
            value.push_str(";URI=");
            value.push_str(&xfcc_value(uri));
        }
        for dns in &peer.dns {
            value.push_str(";DNS=");
            value.push_str(&xfcc_value(dns));
        }
        HeaderValue::try_from(value).ok().map(|v| (XFCC, v))
    }
}

/// Values with `,`, `;` or `=` are quoted (Envoy's rule).
fn xfcc_value(value: &str) -> String {
    if value.contains([',', ';', '=', '"']) {
        quoted(value)
    } else {
        value.to_string()
    }
}

fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}
