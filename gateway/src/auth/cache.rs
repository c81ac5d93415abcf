//! The verified-token cache: a client reusing its token pays one signature check. Keyed by the
//! token's SHA-256 (the token itself is never kept), valid until the token's `exp` and only for
//! the key set it was verified with: a new key set (a rotation) makes every entry worthless at
//! once, so a removed key admits nothing from the cache.

use std::num::NonZeroUsize;
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::Principal;

/// Entries per provider; the least recently used one goes first.
pub const TOKEN_CACHE_ENTRIES: usize = 4096;

#[derive(Debug, Clone)]
struct Entry {
    principal: Arc<Principal>,
    /// The token's `exp` (Unix seconds) plus the allowed clock skew.
    good_until: u64,
    generation: u64,
}

#[derive(Debug)]
pub struct TokenCache {
    entries: Mutex<lru::LruCache<[u8; 32], Entry>>,
}

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &[u8]) -> TokenHash {
    Sha256::digest(token).into()
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("at least 1"),
            )),
        }
    }

    /// The principal of a token verified with key set `generation`, still before its `exp`.
    pub fn get(&self, hash: &TokenHash, generation: u64, now: u64) -> Option<Arc<Principal>> {
        let mut entries = self.entries.lock();
        let entry = entries.get(hash)?;
        if entry.generation == generation && now <= entry.good_until {
            return Some(entry.principal.clone());
        }
        entries.pop(hash);
        None
    }

    pub fn put(
        &self,
        hash: TokenHash,
        principal: Arc<Principal>,
        good_until: u64,
        generation: u64,
    ) {
        self.entries.lock().put(
            hash,
            Entry {
                principal,
                good_until,
                generation,
            },
        );
    }

    /// Entries held (expired and superseded ones until they are next looked up or pushed out).
    pub fn entries(&self) -> usize {
        self.entries.lock().len()
    }
}
