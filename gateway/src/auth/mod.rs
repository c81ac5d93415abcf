//! Who may call: the credentials a caller presents (a JWT, an API key, a client certificate),
//! checked by named providers (`[[auth]]`), and what a route then requires of the principal
//! they name (`require_claims`). Plain types with no pingora in them: the call core consults a
//! route's `RouteAuth` at admission, both drivers alike ([auth.md](../../../docs/auth.md)).
//!
//! Keys and key files are read when the config loads (so `strait check` proves them); a remote
//! JWKS is fetched by `jwks.rs`'s refresh loop and kept across reloads by `JwksRegistry`.

mod api_keys;
mod cache;
mod claims;
mod ext_authz;
mod jwks;
mod jwt;
mod keys;
mod mtls;
mod policy;
#[cfg(test)]
mod tests;

pub use api_keys::{ApiKeyError, ApiKeyProvider, ApiKeyTable};
pub use claims::RequiredClaims;
pub use ext_authz::{
    check_request, read_response, CheckFacts, ExtAuthz, Verdict,
    DEFAULT_TIMEOUT as EXT_AUTHZ_TIMEOUT,
};
pub use jwks::{
    refresh_loop, JwksError, JwksRegistry, JwksSource, JwksSpec, JwksStatus, MIN_REFRESH,
};
pub use jwt::{JwtProvider, JwtSettings, KeySource, DEFAULT_MAX_TOKEN_BYTES};
pub use keys::{HmacSecret, KeySet, KeySetError};
pub use mtls::{MtlsProvider, SanPattern, XFCC};
pub use policy::{PolicyError, PolicyInput, RegoPolicy};

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::tls::PeerIdentity;

/// The caller a provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The `[[auth]]` provider that accepted the caller.
    pub provider: Arc<str>,
    /// The JWT's `sub`, the API key's name, or the certificate's SAN.
    pub subject: String,
    /// A JWT's claims (none for other providers).
    pub claims: Option<Arc<Map<String, Value>>>,
}

/// Why a call was refused, as counted in `strait_auth_denied_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No credential of any accepted kind.
    Missing,
    /// A credential that does not verify (signature, issuer, audience, unknown key, malformed).
    Invalid,
    /// A token past its `exp`.
    Expired,
    /// An authenticated caller the route does not allow (`require_claims`, `allowed_sans`).
    Forbidden,
    /// The gateway holds no keys to check the token with yet (a JWKS never fetched).
    KeysUnavailable,
    /// The route's Rego policy said no.
    Policy,
    /// The route's Rego policy failed (an error, the time limit): denied, fail closed.
    PolicyError,
    /// The route's ext_authz service said no.
    ExtAuthz,
    /// The route's ext_authz service did not answer (and `failure_mode_allow` is off).
    ExtAuthzError,
}

impl DenyReason {
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::Missing => "missing",
            DenyReason::Invalid => "invalid",
            DenyReason::Expired => "expired",
            DenyReason::Forbidden => "forbidden",
            DenyReason::KeysUnavailable => "keys_unavailable",
            DenyReason::Policy => "policy",
            DenyReason::PolicyError => "policy_error",
            DenyReason::ExtAuthz => "ext_authz",
            DenyReason::ExtAuthzError => "ext_authz_error",
        }
    }

    /// Refused for its credential (UNAUTHENTICATED), rather than for who it is
    /// (PERMISSION_DENIED) or for the gateway's own state (UNAVAILABLE).
    pub fn is_authentication(self) -> bool {
        matches!(
            self,
            DenyReason::Missing | DenyReason::Invalid | DenyReason::Expired
        )
    }
}

/// A refusal: its reason and a message that says what kind of problem it is, never which key
/// or secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    pub message: String,
}

impl Denial {
    pub fn new(reason: DenyReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What a caller presents.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub headers: &'a HeaderMap,
    /// The verified client certificate's names (TLS listeners with `client_ca`).
    pub peer: Option<&'a PeerIdentity>,
}

/// Where a call is going and where it comes from, for a route's policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallFacts<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub peer: Option<std::net::IpAddr>,
}

/// One `[[auth]]` provider.
#[derive(Debug)]
pub enum Provider {
    Jwt(Box<JwtProvider>),
    ApiKeys(ApiKeyProvider),
    Mtls(MtlsProvider),
}

impl Provider {
    pub fn name(&self) -> &Arc<str> {
        match self {
            Provider::Jwt(p) => p.name(),
            Provider::ApiKeys(p) => p.name(),
            Provider::Mtls(p) => p.name(),
        }
    }

    /// `Err(Missing)` when the caller presents no credential of this kind.
    pub fn authenticate(&self, creds: Credentials<'_>) -> Result<Arc<Principal>, Denial> {
        match self {
            Provider::Jwt(p) => p.authenticate(creds.headers),
            Provider::ApiKeys(p) => p.authenticate(creds.headers),
            Provider::Mtls(p) => p.authenticate(creds.peer),
        }
    }

    /// Headers this provider sets from a credential: whatever a caller sent under these names
    /// is removed from every call, so none can be spoofed.
    pub fn owned_headers(&self) -> Vec<HeaderName> {
        match self {
            Provider::Jwt(p) => p.claim_header_names().cloned().collect(),
            Provider::ApiKeys(_) => Vec::new(),
            Provider::Mtls(p) if p.forwards_client_cert() => vec![XFCC],
            Provider::Mtls(_) => Vec::new(),
        }
    }

    /// The header the credential came in, removed before the call goes upstream unless the
    /// provider forwards it.
    pub fn consumed_header(&self) -> Option<&HeaderName> {
        match self {
            Provider::Jwt(p) => p.consumed_header(),
            Provider::ApiKeys(p) => p.consumed_header(),
            Provider::Mtls(_) => None,
        }
    }

    /// The headers sent upstream for an accepted caller (`claim_headers`, XFCC).
    pub fn identity_headers(
        &self,
        principal: &Principal,
        peer: Option<&PeerIdentity>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Provider::Jwt(p) => p.claim_headers(principal),
            Provider::ApiKeys(_) => Vec::new(),
            Provider::Mtls(p) => p.xfcc(peer).into_iter().collect(),
        }
    }
}

/// Every provider and ext_authz service of a config, by name, and the identity headers any
/// provider owns.
#[derive(Debug, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<Provider>>,
    owned_headers: Arc<[HeaderName]>,
    ext_authz: HashMap<String, Arc<ExtAuthz>>,
}

impl Providers {
    pub fn new(providers: Vec<Provider>) -> Self {
        let mut owned: Vec<HeaderName> = providers.iter().flat_map(|p| p.owned_headers()).collect();
        owned.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        owned.dedup();
        Self {
            by_name: providers
                .into_iter()
                .map(|p| (p.name().to_string(), Arc::new(p)))
                .collect(),
            owned_headers: owned.into(),
            ext_authz: HashMap::new(),
        }
    }

    /// The config's `[[ext_authz]]` services.
    pub fn with_ext_authz(mut self, services: Vec<ExtAuthz>) -> Self {
        self.ext_authz = services
            .into_iter()
            .map(|s| (s.name.to_string(), Arc::new(s)))
            .collect();
        self
    }

    pub fn ext_authz(&self, name: &str) -> Option<&Arc<ExtAuthz>> {
        self.ext_authz.get(name)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    /// Removed from every call on every listener (empty without providers that set headers).
    pub fn owned_headers(&self) -> &Arc<[HeaderName]> {
        &self.owned_headers
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_name.values()
    }
}

/// What an accepted call carries upstream beyond the caller's headers.
#[derive(Debug, Default, Clone)]
pub struct IdentityHeaders {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
}

/// A route's `auth`, `require_claims` and `policy`.
#[derive(Debug)]
pub struct RouteAuth {
    /// A caller must be accepted by one of these, tried in order.
    pub providers: Vec<Arc<Provider>>,
    pub require: RequiredClaims,
    /// Asked last, about an accepted caller that holds the required claims.
    pub policy: Option<Arc<RegoPolicy>>,
}

/// The caller accepted, and the headers its call carries upstream.
#[derive(Debug)]
pub struct Accepted {
    pub principal: Arc<Principal>,
    pub headers: IdentityHeaders,
}

impl RouteAuth {
    /// Who the route's providers accept, without the route's claims or policy (for a `match`
    /// naming a caller: the chosen route then checks everything).
    pub fn identify(&self, creds: Credentials<'_>) -> Option<Arc<Principal>> {
        self.providers
            .iter()
            .find_map(|provider| provider.authenticate(creds).ok())
    }

    /// The first provider that accepts the caller decides; a caller with no credential any of
    /// them knows is `Missing`, otherwise the first provider's refusal is told.
    pub fn check(&self, creds: Credentials<'_>, call: CallFacts<'_>) -> Result<Accepted, Denial> {
        let mut refusal: Option<Denial> = None;
        for provider in &self.providers {
            match provider.authenticate(creds) {
                Ok(principal) => {
                    if let Err(missing) = self.require.check(&principal) {
                        return Err(Denial::new(
                            DenyReason::Forbidden,
                            format!("the route requires the claim {missing:?}"),
                        ));
                    }
                    if let Some(policy) = &self.policy {
                        let input = PolicyInput {
                            listener: call.listener,
                            route: call.route,
                            service: call.service,
                            method: call.method,
                            principal: &principal,
                            peer: call.peer,
                            headers: creds.headers,
                        };
                        match policy.allows(&input) {
                            Ok(true) => {}
                            Ok(false) => {
                                return Err(Denial::new(
                                    DenyReason::Policy,
                                    "the route's policy does not allow this call",
                                ))
                            }
                            Err(error) => {
                                tracing::debug!(route = call.route, %error, "route policy failed; the call is denied");
                                return Err(Denial::new(
                                    DenyReason::PolicyError,
                                    "the route's policy could not decide; denied",
                                ));
                            }
                        }
                    }
                    let headers = IdentityHeaders {
                        remove: provider.consumed_header().cloned().into_iter().collect(),
                        set: provider.identity_headers(&principal, creds.peer),
                    };
                    return Ok(Accepted { principal, headers });
                }
                Err(denial) if denial.reason == DenyReason::Missing => {}
                Err(denial) => {
                    refusal.get_or_insert(denial);
                }
            }
        }
        Err(refusal
            .unwrap_or_else(|| Denial::new(DenyReason::Missing, "the route requires a credential")))
    }
}
