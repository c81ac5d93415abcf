//! `api_keys`: named keys, stored as SHA-256 hashes in a file, presented in a header.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use super::{Denial, DenyReason, Principal};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiKeyError {
    #[error(
        "line {line}: expected `NAME SHA256-HEX` (the key's name, then the hex SHA-256 of the key)"
    )]
    Shape { line: usize },
    #[error("line {line}: {hash:?} is not 64 hex digits (a SHA-256)")]
    Hash { line: usize, hash: String },
    #[error("line {line}: the name {name:?} is used twice")]
    DuplicateName { line: usize, name: String },
    #[error("line {line}: the same key hash is listed twice")]
    DuplicateKey { line: usize },
    #[error("the file lists no key")]
    Empty,
}

/// The keys of a `keys_file`: the SHA-256 of each key, and its name (the principal).
///
/// The file has one `NAME SHA256-HEX` line per key; `#` starts a comment. Only hashes are
/// stored, so the file (and the gateway's memory) never holds a usable key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyTable {
    by_hash: HashMap<[u8; 32], Arc<str>>,
}

impl ApiKeyTable {
    pub fn parse(text: &str) -> Result<Self, ApiKeyError> {
        let mut by_hash = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut words = content.split_whitespace();
            let (Some(name), Some(hash), None) = (words.next(), words.next(), words.next()) else {
                return Err(ApiKeyError::Shape { line });
            };
            let digest = parse_hex32(hash).ok_or_else(|| ApiKeyError::Hash {
                line,
                hash: hash.to_string(),
            })?;
            if !names.insert(name.to_string()) {
                return Err(ApiKeyError::DuplicateName {
                    line,
                    name: name.to_string(),
                });
            }
            if by_hash.insert(digest, Arc::from(name)).is_some() {
                return Err(ApiKeyError::DuplicateKey { line });
            }
        }
        if by_hash.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        Ok(Self { by_hash })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The name of the key, if it is one of the table's. Looked up by the key's hash: the
    /// lookup's timing tells nothing about any stored key.
    pub fn name_of(&self, key: &[u8]) -> Option<&Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.by_hash.get(&digest)
    }
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[derive(Debug)]
pub struct ApiKeyProvider {
    name: Arc<str>,
    keys: Arc<ApiKeyTable>,
    header: HeaderName,
    /// Send the key upstream too (default: removed).
    forward: bool,
}

impl ApiKeyProvider {
    pub fn new(name: &str, keys: Arc<ApiKeyTable>, header: HeaderName, forward: bool) -> Self {
        Self {
            name: name.into(),
            keys,
            header,
            forward,
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn consumed_header(&self) -> Option<&HeaderName> {
        (!self.forward).then_some(&self.header)
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Denial> {
        let mut values = headers.get_all(&self.header).iter();
        let Some(key) = values.next() else {
            return Err(Denial::new(DenyReason::Missing, "no API key"));
        };
        if values.next().is_some() {
            return Err(Denial::new(DenyReason::Invalid, "more than one API key"));
        }
        match self.keys.name_of(key.as_bytes()) {
            Some(name) => Ok(Arc::new(Principal {
                provider: self.name.clone(),
                subject: name.to_string(),
                claims: None,
            })),
            None => Err(Denial::new(DenyReason::Invalid, "unknown API key")),
        }
    }
}
