//! A route's `rate_limit`: GCRA token buckets (governor), one for the route or one per key
//! (client IP, a header's value), the keyed ones held in a bounded LRU store so a flood of
//! distinct keys costs bounded memory.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use parking_lot::Mutex;

use crate::config::{RateLimitConfig, RateLimitKey, RateLimitScope};

/// Keys tracked per limit; the least recently used go first beyond this.
pub const MAX_TRACKED_KEYS: usize = 100_000;
/// The store is split so that worker threads rarely wait on each other's keys.
const SHARDS: usize = 16;
/// Longer header values are cut before they become a key (bounded memory per key).
const MAX_KEY_BYTES: usize = 256;

/// Why a call was refused by its route's rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// When the next token for this key is due.
    pub retry_after: Duration,
}

type Direct = RateLimiter<
    NotKeyed,
    InMemoryState,
    DefaultClock,
    NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;
type Keyed = RateLimiter<
    Vec<u8>,
    BoundedKeys,
    DefaultClock,
    NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

enum Buckets {
    Route(Direct),
    Keyed(Keyed),
}

/// One route's limit. Shared by every call on the route, and kept across snapshot rebuilds
/// and reloads that leave the limit as it was (see `PolicyState`).
pub struct RateLimit {
    /// As written: for a cluster-wide limit, the whole cluster's.
    config: RateLimitConfig,
    /// Gateways sharing a cluster-wide limit (1 for a gateway's own).
    gateways: u32,
    buckets: Buckets,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("config", &self.config)
            .finish()
    }
}

impl RateLimit {
    /// The limit as written; a cluster-wide one enforces its share among `gateways`.
    pub fn new(config: RateLimitConfig, gateways: u32) -> Self {
        let gateways = match config.scope {
            RateLimitScope::Gateway => 1,
            RateLimitScope::Cluster => gateways.max(1),
        };
        let share = config.share(gateways);
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(share.per_second).unwrap_or(one))
            .allow_burst(NonZeroU32::new(share.burst).unwrap_or(one));
        let clock = DefaultClock::default();
        let buckets = match config.key {
            RateLimitKey::Route => Buckets::Route(RateLimiter::direct_with_clock(quota, clock)),
            RateLimitKey::Peer | RateLimitKey::Header(_) | RateLimitKey::Principal => {
                Buckets::Keyed(RateLimiter::new(
                    quota,
                    BoundedKeys::new(MAX_TRACKED_KEYS),
                    clock,
                ))
            }
        };
        Self {
            config,
            gateways,
            buckets,
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Whether this limit is `config` shared among `gateways` (so it can be kept).
    pub fn is(&self, config: &RateLimitConfig, gateways: u32) -> bool {
        let gateways = match config.scope {
            RateLimitScope::Gateway => 1,
            RateLimitScope::Cluster => gateways.max(1),
        };
        &self.config == config && self.gateways == gateways
    }

    /// Takes a token for this call, or says when one will be there.
    /// Keyed by principal: checked once authentication named the caller
    /// (`RoutePolicy::limit_principal`), not on arrival.
    pub fn is_per_principal(&self) -> bool {
        self.config.key == RateLimitKey::Principal
    }

    pub fn check(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<(), Limited> {
        self.check_keyed(headers, peer, None)
    }

    /// `check`, with the accepted caller for limits keyed by principal.
    pub fn check_keyed(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        principal: Option<&str>,
    ) -> Result<(), Limited> {
        let refused = match &self.buckets {
            Buckets::Route(limiter) => limiter.check().err().map(|n| (n, limiter.clock().now())),
            Buckets::Keyed(limiter) => {
                let key = self.key_of(headers, peer, principal);
                limiter
                    .check_key(&key)
                    .err()
                    .map(|n| (n, limiter.clock().now()))
            }
        };
        match refused {
            None => Ok(()),
            Some((not_until, now)) => Err(Limited {
                retry_after: not_until.wait_time_from(now),
            }),
        }
    }

    /// The bucket a call belongs to. Calls without the header (or without a known peer) share
    /// one bucket: leaving the header out is no way around the limit.
    fn key_of(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        principal: Option<&str>,
    ) -> Vec<u8> {
        match &self.config.key {
            RateLimitKey::Route => Vec::new(),
            // An IPv6 host usually holds a whole /64: one bucket per /64, or a caller would get
            // 2^64 buckets by changing addresses.
            RateLimitKey::Peer => match peer.map(|ip| ip.to_canonical()) {
                Some(IpAddr::V4(ip)) => ip.octets().to_vec(),
                Some(IpAddr::V6(ip)) => ip.octets()[..8].to_vec(),
                None => Vec::new(),
            },
            RateLimitKey::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes()[..v.len().min(MAX_KEY_BYTES)].to_vec())
                .unwrap_or_default(),
            RateLimitKey::Principal => principal
                .map(|p| p.as_bytes()[..p.len().min(MAX_KEY_BYTES)].to_vec())
                .unwrap_or_default(),
        }
    }

    /// How the limit reads in a refusal: "100/s (burst 200) per peer".
    pub fn describe(&self) -> String {
        let per = match &self.config.key {
            RateLimitKey::Route => String::new(),
            RateLimitKey::Peer => " per client address".into(),
            RateLimitKey::Header(name) => format!(" per {name} value"),
            RateLimitKey::Principal => " per caller".into(),
        };
        let shared = match self.config.scope {
            RateLimitScope::Gateway => String::new(),
            RateLimitScope::Cluster => format!(
                " across the cluster ({}/s on each of {} gateways)",
                self.config.share(self.gateways).per_second,
                self.gateways
            ),
        };
        format!(
            "{}/s (burst {}){per}{shared}",
            self.config.per_second, self.config.burst
        )
    }

    #[cfg(test)]
    fn tracked_keys(&self) -> usize {
        match &self.buckets {
            Buckets::Route(_) => 1,
            Buckets::Keyed(limiter) => limiter.len(),
        }
    }
}

/// A keyed state store holding at most `capacity` keys, least recently used dropped first
/// (per shard, so approximately overall).
pub struct BoundedKeys {
    shards: Vec<Mutex<lru::LruCache<Vec<u8>, Nanos>>>,
}

impl BoundedKeys {
    fn new(capacity: usize) -> Self {
        let per_shard = std::num::NonZeroUsize::new((capacity / SHARDS).max(1))
            .unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(lru::LruCache::new(per_shard)))
                .collect(),
        }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<lru::LruCache<Vec<u8>, Nanos>> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % self.shards.len()]
    }
}

impl StateStore for BoundedKeys {
    type Key = Vec<u8>;

    fn measure_and_replace<T, F, E>(&self, key: &Vec<u8>, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self.shard(key).lock();
        let previous = shard.get(key).copied();
        let (result, next) = f(previous)?;
        match shard.get_mut(key) {
            Some(slot) => *slot = next,
            None => {
                shard.put(key.clone(), next);
            }
        }
        Ok(result)
    }
}

impl governor::state::keyed::ShrinkableKeyedStateStore<Vec<u8>> for BoundedKeys {
    fn retain_recent(&self, _drop_below: Nanos) {
        // Bounded by capacity instead: nothing to sweep.
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn limit(per_second: u32, burst: u32, key: RateLimitKey) -> RateLimit {
        RateLimit::new(
            RateLimitConfig {
                per_second,
                burst,
                key,
                scope: crate::config::RateLimitScope::Gateway,
            },
            1,
        )
    }

    fn admitted(limit: &RateLimit, headers: &HeaderMap, peer: Option<IpAddr>, n: usize) -> usize {
        (0..n)
            .filter(|_| limit.check(headers, peer).is_ok())
            .count()
    }

    #[test]
    fn a_route_bucket_admits_its_burst_then_refuses_with_a_wait() {
        let l = limit(1, 5, RateLimitKey::Route);
        assert_eq!(admitted(&l, &HeaderMap::new(), None, 20), 5);
        let refused = l.check(&HeaderMap::new(), None).unwrap_err();
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1)
        );
    }

    #[test]
    fn a_cluster_limit_enforces_its_share_and_says_so() {
        let config = RateLimitConfig {
            per_second: 10,
            burst: 9,
            key: RateLimitKey::Route,
            scope: RateLimitScope::Cluster,
        };
        let of_three = RateLimit::new(config.clone(), 3);
        assert_eq!(admitted(&of_three, &HeaderMap::new(), None, 20), 3);
        assert!(of_three
            .describe()
            .contains("10/s (burst 9) across the cluster (4/s on each of 3 gateways)"));
        // Before the first count (0 gateways known), a gateway enforces the whole limit.
        let alone = RateLimit::new(config, 0);
        assert_eq!(admitted(&alone, &HeaderMap::new(), None, 20), 9);
    }

    #[test]
    fn peers_have_buckets_of_their_own() {
        let l = limit(1, 2, RateLimitKey::Peer);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(admitted(&l, &HeaderMap::new(), Some(a), 10), 2);
        assert_eq!(admitted(&l, &HeaderMap::new(), Some(b), 10), 2);
    }

    #[test]
    fn an_ipv6_peer_is_its_64_and_a_mapped_v4_peer_is_its_v4_address() {
        let l = limit(1, 2, RateLimitKey::Peer);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let next_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(admitted(&l, &HeaderMap::new(), Some(one), 10), 2);
        assert_eq!(
            admitted(&l, &HeaderMap::new(), Some(same_64), 10),
            0,
            "another address of the same /64 shares its bucket"
        );
        assert_eq!(admitted(&l, &HeaderMap::new(), Some(next_64), 10), 2);
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(admitted(&l, &HeaderMap::new(), Some(v4), 10), 2);
        assert_eq!(admitted(&l, &HeaderMap::new(), Some(mapped), 10), 0);
    }

    #[test]
    fn calls_without_the_header_share_one_bucket() {
        let name = HeaderName::from_static("x-tenant");
        let l = limit(1, 3, RateLimitKey::Header(name.clone()));
        let mut tenant = HeaderMap::new();
        tenant.insert(name, HeaderValue::from_static("a"));
        assert_eq!(admitted(&l, &tenant, None, 10), 3);
        assert_eq!(admitted(&l, &HeaderMap::new(), None, 10), 3);
        assert!(l.describe().contains("per x-tenant value"));
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        let l = limit(1, 1, RateLimitKey::Peer);
        for i in 0..(MAX_TRACKED_KEYS as u32 + 20_000) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            let _ = l.check(&HeaderMap::new(), Some(ip));
        }
        assert!(
            l.tracked_keys() <= MAX_TRACKED_KEYS,
            "{} keys",
            l.tracked_keys()
        );
        assert!(l.tracked_keys() >= MAX_TRACKED_KEYS - SHARDS);
    }

    #[test]
    fn the_most_recent_key_survives_eviction() {
        let store = BoundedKeys::new(SHARDS); // one key per shard
        let remember = |key: &[u8], value: u64| {
            store
                .measure_and_replace(&key.to_vec(), |_| Ok::<_, ()>(((), Nanos::from(value))))
                .unwrap()
        };
        let read = |key: &[u8]| {
            store
                .measure_and_replace(&key.to_vec(), Err::<((), Nanos), _>)
                .unwrap_err()
        };
        remember(b"old", 1);
        for i in 0..1000u32 {
            remember(&i.to_be_bytes(), 2);
        }
        remember(b"new", 3);
        assert_eq!(read(b"new"), Some(Nanos::from(3)));
        assert!(governor::state::keyed::ShrinkableKeyedStateStore::len(&store) <= SHARDS);
    }
}
