//! A weighted split of a route's calls across upstreams: smooth weighted per call, or pinned by
//! a stable hash of one header's value so a caller stays on one side through a canary.

use http::{HeaderMap, HeaderName};

use crate::balancer::SmoothWrr;

/// The sides of a split, each with its weight (> 0 for at least one).
#[derive(Debug)]
pub struct Split<T> {
    sides: Vec<(T, u32)>,
    total: u64,
    hash_header: Option<HeaderName>,
    sequence: SmoothWrr,
}

impl<T> Split<T> {
    pub fn new(sides: Vec<(T, u32)>, hash_header: Option<HeaderName>) -> Self {
        let total = sides.iter().map(|(_, w)| u64::from(*w)).sum();
        Self {
            sequence: SmoothWrr::new(sides.len()),
            sides,
            total,
            hash_header,
        }
    }

    pub fn sides(&self) -> impl Iterator<Item = &T> {
        self.sides.iter().map(|(side, _)| side)
    }

    /// The side for one call.
    pub fn choose(&self, headers: &HeaderMap) -> &T {
        let pinned = self
            .hash_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .and_then(|value| self.by_hash(stable_hash(value.as_bytes())));
        let index = pinned
            .or_else(|| {
                self.sequence
                    .pick(self.sides.iter().enumerate().map(|(i, (_, w))| (i, *w)))
            })
            .unwrap_or(0);
        &self.sides[index].0
    }

    /// The side whose share of the hash space holds `hash`: each side owns a run of
    /// `weight` slots out of `total`, so changing one weight moves only the callers at the
    /// border of the runs it touches.
    fn by_hash(&self, hash: u64) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let mut slot = hash % self.total;
        for (i, (_, weight)) in self.sides.iter().enumerate() {
            let weight = u64::from(*weight);
            if slot < weight {
                return Some(i);
            }
            slot -= weight;
        }
        None
    }
}

/// FNV-1a, 64 bits: the same value hashes the same in every gateway of a fleet and in every
/// release (std's hasher promises neither), and it is cheap for short ids.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn user(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_str(id).unwrap());
        headers
    }

    #[test]
    fn fnv1a_reference_values() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn unpinned_calls_follow_the_weights_exactly() {
        let split = Split::new(vec![("a", 90), ("b", 10)], None);
        let b = (0..1000)
            .filter(|_| *split.choose(&HeaderMap::new()) == "b")
            .count();
        assert_eq!(b, 100);
    }

    #[test]
    fn a_zero_weight_side_takes_nothing() {
        let split = Split::new(
            vec![("a", 1), ("b", 0)],
            Some(HeaderName::from_static("x-user-id")),
        );
        for i in 0..200 {
            assert_eq!(*split.choose(&user(&i.to_string())), "a");
            assert_eq!(*split.choose(&HeaderMap::new()), "a");
        }
    }

    #[test]
    fn hashed_sides_hold_roughly_their_weights() {
        let split = Split::new(
            vec![("a", 90), ("b", 10)],
            Some(HeaderName::from_static("x-user-id")),
        );
        let b = (0..10_000)
            .filter(|i| *split.choose(&user(&format!("user-{i}"))) == "b")
            .count();
        assert!((800..=1200).contains(&b), "{b} of 10000 on the 10% side");
    }

    proptest! {
        #[test]
        fn one_value_always_lands_on_one_side(id in "[a-zA-Z0-9-]{1,40}", w1 in 0u32..100, w2 in 1u32..100) {
            let split = Split::new(vec![(1, w1), (2, w2)], Some(HeaderName::from_static("x-user-id")));
            let first = *split.choose(&user(&id));
            for _ in 0..5 {
                // Unpinned calls in between move the smooth sequence, never a pinned caller.
                split.choose(&HeaderMap::new());
                prop_assert_eq!(*split.choose(&user(&id)), first);
            }
        }

        #[test]
        fn the_chosen_side_never_has_weight_zero(weights in proptest::collection::vec(0u32..5, 1..6), id in "[a-z]{0,8}") {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let split = Split::new(weights.iter().copied().enumerate().collect(), Some(HeaderName::from_static("x-user-id")));
            let chosen = *split.choose(&user(&id));
            prop_assert!(weights[chosen] > 0);
            let unpinned = *split.choose(&HeaderMap::new());
            prop_assert!(weights[unpinned] > 0);
        }
    }
}
