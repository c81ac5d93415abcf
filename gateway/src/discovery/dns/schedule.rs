//! When a name is asked again.

use std::time::Duration;

use crate::config::MIN_DNS_REFRESH;

/// The wait before the next resolution of a name: the upstream's `refresh`, shortened by the
/// smallest TTL of the last answer, never below one second (a TTL of 0 must not become a
/// query loop).
pub fn next_refresh(refresh: Duration, ttl: Option<Duration>) -> Duration {
    ttl.map_or(refresh, |ttl| ttl.min(refresh))
        .max(MIN_DNS_REFRESH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_ttl_shortens_the_refresh_but_never_below_a_second() {
        let s = Duration::from_secs;
        assert_eq!(next_refresh(s(5), None), s(5));
        assert_eq!(next_refresh(s(30), Some(s(2))), s(2));
        assert_eq!(next_refresh(s(5), Some(s(300))), s(5));
        assert_eq!(next_refresh(s(5), Some(Duration::ZERO)), s(1));
    }

    proptest! {
        #[test]
        fn within_bounds(refresh_ms in 1_000u64..3_600_000, ttl_s in proptest::option::of(0u64..100_000)) {
            let refresh = Duration::from_millis(refresh_ms);
            let ttl = ttl_s.map(Duration::from_secs);
            let next = next_refresh(refresh, ttl);
            prop_assert!(next >= MIN_DNS_REFRESH);
            prop_assert!(next <= refresh);
            if let Some(ttl) = ttl {
                prop_assert!(next <= ttl.max(MIN_DNS_REFRESH));
            }
        }
    }
}
