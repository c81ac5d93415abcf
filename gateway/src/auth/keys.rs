//! The keys a JWT provider verifies with: a JWKS (from a file or fetched), or an HMAC secret.
//! Each key is pinned to the algorithms its type allows (its JWK `alg` if it names one), and a
//! token's header must name one of them: the token never chooses how it is checked.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The longest `kid` looked up; longer ones are refused before any lookup.
pub const MAX_KID_LEN: usize = 256;
/// At most this many keys are kept from one JWKS.
pub const MAX_KEYS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySetError {
    #[error("not a JWKS (a JSON object with a \"keys\" array): {0}")]
    Json(String),
    #[error("the JWKS holds no key usable for signatures")]
    NoKeys,
    #[error("the JWKS holds more than {MAX_KEYS} keys")]
    TooMany,
    #[error("the secret file is empty")]
    EmptySecret,
}

/// One verification key and the algorithms it may be used with.
pub struct Key {
    pub decoding: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A verified-token cache entry is only good for the key set it was verified with: each set a
/// source publishes gets a new generation.
#[derive(Debug)]
pub struct KeySet {
    pub generation: u64,
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`, usable only when the set holds exactly one key.
    unnamed: Vec<Key>,
    /// What the JWKS text was, to tell a real rotation from a refetch of the same keys.
    fingerprint: u64,
}

impl KeySet {
    /// Reads a JWKS document. Keys that are not for signatures (`use: enc`), or of a type or
    /// algorithm that cannot verify a JWT, are skipped; a set with none left is an error.
    pub fn from_jwks(text: &[u8], generation: u64) -> Result<Self, KeySetError> {
        let set: JwkSet =
            serde_json::from_slice(text).map_err(|e| KeySetError::Json(e.to_string()))?;
        if set.keys.len() > MAX_KEYS {
            return Err(KeySetError::TooMany);
        }
        let mut by_kid = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &set.keys {
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let Some(algorithms) = algorithms_for(jwk) else {
                continue;
            };
            let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let key = Key {
                decoding,
                algorithms,
            };
            match &jwk.common.key_id {
                Some(kid) if kid.len() <= MAX_KID_LEN => {
                    by_kid.insert(kid.clone(), key);
                }
                Some(_) => {}
                None => unnamed.push(key),
            }
        }
        if by_kid.is_empty() && unnamed.is_empty() {
            return Err(KeySetError::NoKeys);
        }
        Ok(Self {
            generation,
            by_kid,
            unnamed,
            fingerprint: fingerprint(text),
        })
    }

    /// One HMAC secret (HS256 only, named explicitly in the config).
    pub fn from_secret(secret: &HmacSecret, generation: u64) -> Self {
        Self {
            generation,
            by_kid: HashMap::new(),
            unnamed: vec![Key {
                decoding: DecodingKey::from_secret(&secret.0),
                algorithms: vec![Algorithm::HS256],
            }],
            fingerprint: 0,
        }
    }

    /// The key a token's `kid` names. A token without `kid` is checked against the only key of
    /// a single-key set, never guessed among several.
    pub fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.len() == 1 => self.unnamed.first().or(self.by_kid.values().next()),
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Same keys as another set (a refetch that changed nothing keeps the token cache).
    pub fn same_keys(&self, other: &KeySet) -> bool {
        self.fingerprint != 0 && self.fingerprint == other.fingerprint
    }
}

fn fingerprint(text: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text);
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")).max(1)
}

/// The algorithms a JWK may verify: the one its `alg` names, else every signature algorithm of
/// its type. Symmetric keys (`kty: oct`) in a JWKS are refused: an HMAC secret is configured
/// explicitly or not at all.
fn algorithms_for(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Vec<Algorithm>> {
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(family),
        Some(named) => {
            let named = signature_algorithm(named)?;
            family.contains(&named).then(|| vec![named])
        }
    }
}

fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// An HS256 secret read from a file.
#[derive(Clone, PartialEq, Eq)]
pub struct HmacSecret(Vec<u8>);

impl HmacSecret {
    /// Surrounding whitespace and a trailing newline are not part of the secret.
    pub fn from_file_text(text: &[u8]) -> Result<Self, KeySetError> {
        let trimmed = text.trim_ascii();
        if trimmed.is_empty() {
            return Err(KeySetError::EmptySecret);
        }
        Ok(Self(trimmed.to_vec()))
    }
}

impl std::fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSecret(..)")
    }
}
