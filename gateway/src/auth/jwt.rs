//! `jwt`: a bearer token signed by the provider's keys, with its issuer, audience and validity
//! window checked (`jsonwebtoken` does the cryptography and the claim checks).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::cache::{token_hash, TokenCache, TOKEN_CACHE_ENTRIES};
use super::jwks::JwksSource;
use super::keys::{KeySet, MAX_KID_LEN};
use super::{Denial, DenyReason, Principal};

/// Default bound on a token's length; longer ones are refused unread.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a `[auth.jwt]` section says, besides where its keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Required `iss`.
    pub issuer: String,
    /// The token's `aud` must name one of these; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    pub clock_skew: Duration,
    /// Where the token is: `authorization` (as `Bearer TOKEN`) by default.
    pub from_header: HeaderName,
    /// Claims copied into headers sent upstream: (claim, header).
    pub claim_headers: Vec<(String, HeaderName)>,
    pub max_token_bytes: usize,
    /// Send the token upstream too (default: removed once verified).
    pub forward: bool,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS file or an HMAC secret, read when the config loaded.
    Fixed(Arc<KeySet>),
    /// A JWKS URL, fetched and refreshed in the background.
    Remote(Arc<JwksSource>),
}

impl KeySource {
    fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            KeySource::Fixed(set) => Some(set.clone()),
            KeySource::Remote(source) => source.current(),
        }
    }
}

pub struct JwtProvider {
    name: Arc<str>,
    settings: JwtSettings,
    keys: KeySource,
    /// One `Validation` per algorithm: issuer, audience, skew and required claims set once.
    validations: HashMap<Algorithm, Validation>,
    cache: TokenCache,
}

impl std::fmt::Debug for JwtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProvider")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

impl JwtProvider {
    pub fn new(name: &str, settings: JwtSettings, keys: KeySource) -> Self {
        let validations = ALGORITHMS
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = settings.clock_skew.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_issuer(&[&settings.issuer]);
                let mut required = vec!["exp", "iss"];
                if settings.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&settings.audiences);
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        Self {
            name: name.into(),
            settings,
            keys,
            validations,
            cache: TokenCache::new(TOKEN_CACHE_ENTRIES),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn keys(&self) -> &KeySource {
        &self.keys
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.entries()
    }

    pub fn claim_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.settings.claim_headers.iter().map(|(_, h)| h)
    }

    pub fn consumed_header(&self) -> Option<&HeaderName> {
        (!self.settings.forward).then_some(&self.settings.from_header)
    }

    /// The token the caller sent, `Err(Missing)` if none.
    fn token<'h>(&self, headers: &'h HeaderMap) -> Result<&'h [u8], Denial> {
        let mut values = headers.get_all(&self.settings.from_header).iter();
        let Some(value) = values.next() else {
            return Err(Denial::new(DenyReason::Missing, "no bearer token"));
        };
        if values.next().is_some() {
            return Err(Denial::new(DenyReason::Invalid, "more than one token"));
        }
        let bytes = value.as_bytes();
        let token = match strip_bearer(bytes) {
            Some(token) => token,
            // Another scheme in `authorization` (Basic, ...) is not this provider's credential.
            None if self.settings.from_header == AUTHORIZATION => {
                return Err(Denial::new(DenyReason::Missing, "no bearer token"))
            }
            None => bytes,
        };
        if token.len() > self.settings.max_token_bytes {
            return Err(Denial::new(DenyReason::Invalid, "token too large"));
        }
        Ok(token)
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Denial> {
        let token = self.token(headers)?;
        self.verify(token, now())
    }

    /// Verifies a token at time `now` (Unix seconds).
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Arc<Principal>, Denial> {
        let Some(keys) = self.keys.current() else {
            return Err(Denial::new(
                DenyReason::KeysUnavailable,
                "the gateway has no keys for this token's issuer yet",
            ));
        };
        let hash = token_hash(token);
        if let Some(principal) = self.cache.get(&hash, keys.generation, now) {
            return Ok(principal);
        }
        let invalid = |what: &str| Denial::new(DenyReason::Invalid, format!("token {what}"));
        let token = std::str::from_utf8(token).map_err(|_| invalid("is malformed"))?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("is malformed"))?;
        if header
            .kid
            .as_ref()
            .is_some_and(|kid| kid.len() > MAX_KID_LEN)
        {
            return Err(invalid("names no known key"));
        }
        let Some(key) = keys.find(header.kid.as_deref()) else {
            if let (KeySource::Remote(source), Some(_)) = (&self.keys, &header.kid) {
                // A key the set does not have yet may have been rotated in: refetch early.
                source.unknown_kid();
            }
            return Err(invalid("names no known key"));
        };
        // The algorithm is the key's, not the token's: the header must name one the key allows.
        if !key.algorithms.contains(&header.alg) {
            return Err(invalid("uses an algorithm its key does not allow"));
        }
        let Some(validation) = self.validations.get(&header.alg) else {
            return Err(invalid("uses an algorithm its key does not allow"));
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Denial::new(DenyReason::Expired, "token expired"),
                ErrorKind::ImmatureSignature => invalid("is not valid yet"),
                ErrorKind::InvalidIssuer => invalid("is from another issuer"),
                ErrorKind::InvalidAudience => invalid("is for another audience"),
                ErrorKind::InvalidSignature => invalid("signature does not verify"),
                ErrorKind::MissingRequiredClaim(claim) => {
                    invalid(&format!("lacks the {claim:?} claim"))
                }
                _ => invalid("is malformed"),
            })?;
        let claims = data.claims;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let principal = Arc::new(Principal {
            provider: self.name.clone(),
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            claims: Some(Arc::new(claims)),
        });
        let good_until = exp.saturating_add(self.settings.clock_skew.as_secs());
        self.cache
            .put(hash, principal.clone(), good_until, keys.generation);
        Ok(principal)
    }

    /// `claim_headers` for an accepted caller: strings, numbers and booleans; a claim that is
    /// absent, structured or not a valid header value is left out.
    pub fn claim_headers(&self, principal: &Principal) -> Vec<(HeaderName, HeaderValue)> {
        let Some(claims) = &principal.claims else {
            return Vec::new();
        };
        self.settings
            .claim_headers
            .iter()
            .filter_map(|(claim, header)| {
                let text = match claims.get(claim)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((header.clone(), HeaderValue::try_from(text).ok()?))
            })
            .collect()
    }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}
