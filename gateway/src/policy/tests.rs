use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::*;
use crate::config::{HeaderCondition, RateLimitKey, RetryBudgetConfig};

/// A target with a fixed capacity, standing in for an upstream.
#[derive(Debug)]
struct Target {
    name: &'static str,
    count: Arc<InFlightCount>,
    max: Option<u32>,
}

impl Target {
    fn new(name: &'static str, max: Option<u32>) -> Self {
        Self {
            name,
            count: Arc::default(),
            max,
        }
    }
}

impl Admits for Target {
    fn enter(&self) -> Result<InFlightPermit, Refusal> {
        try_enter(&self.count, self.max).ok_or(Refusal::Shed {
            upstream: self.name.into(),
            max: self.max.unwrap_or(0),
        })
    }
}

fn matching(name: &'static str, value: Option<&str>) -> HeaderMatch {
    HeaderMatch::new(vec![HeaderCondition {
        name: HeaderName::from_static(name),
        value: value.map(str::to_string),
    }])
}

fn route(matcher: HeaderMatch, target: &'static str) -> RoutePolicy<Target> {
    RoutePolicy {
        matcher,
        destination: Destination::One(Target::new(target, None)),
        rate_limit: None,
    }
}

fn facts(headers: &HeaderMap) -> CallFacts<'_> {
    CallFacts {
        headers,
        peer: None,
    }
}

#[test]
fn matched_routes_go_first_in_file_order_and_the_fallback_last() {
    let mut choice = RouteChoice::default();
    choice.push(route(HeaderMatch::default(), "stable"));
    choice.push(route(matching("x-canary", Some("true")), "canary"));
    choice.push(route(matching("x-tenant", None), "tenant"));
    let pick = |pairs: &[(&'static str, &'static str)]| {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(*k, HeaderValue::from_static(v));
        }
        let chosen = choice.find(&headers).unwrap();
        chosen.admit(facts(&headers)).unwrap().target.name
    };
    assert_eq!(pick(&[]), "stable");
    assert_eq!(pick(&[("x-canary", "true")]), "canary");
    assert_eq!(pick(&[("x-canary", "false")]), "stable");
    assert_eq!(pick(&[("x-tenant", "a")]), "tenant");
    assert_eq!(pick(&[("x-tenant", "a"), ("x-canary", "true")]), "canary");
}

#[test]
fn without_a_fallback_an_unmatched_call_finds_no_route() {
    let mut choice = RouteChoice::default();
    choice.push(route(matching("x-canary", None), "canary"));
    assert!(choice.find(&HeaderMap::new()).is_none());
}

#[test]
fn a_rate_limited_call_takes_no_in_flight_slot() {
    let policy = RoutePolicy {
        matcher: HeaderMatch::default(),
        destination: Destination::One(Target::new("a", Some(10))),
        rate_limit: Some(RouteLimit {
            limit: Arc::new(RateLimit::new(
                RateLimitConfig {
                    per_second: 1,
                    burst: 2,
                    key: RateLimitKey::Route,
                    scope: crate::config::RateLimitScope::Gateway,
                },
                1,
            )),
            refused: None,
        }),
    };
    let headers = HeaderMap::new();
    let held: Vec<_> = (0..2)
        .map(|_| policy.admit(facts(&headers)).unwrap())
        .collect();
    match policy.admit(facts(&headers)) {
        Err(Refusal::RateLimited { limit, retry_after }) => {
            assert_eq!(limit, "1/s (burst 2)");
            assert!(retry_after <= Duration::from_secs(1));
        }
        other => panic!("expected a rate limit refusal, got {other:?}"),
    }
    let Destination::One(target) = &policy.destination else {
        unreachable!()
    };
    assert_eq!(target.count.current(), 2);
    drop(held);
    assert_eq!(target.count.current(), 0);
}

#[test]
fn a_full_side_of_a_split_sheds_the_call() {
    let policy = RoutePolicy {
        matcher: HeaderMatch::default(),
        destination: Destination::Split(Split::new(vec![(Target::new("only", Some(1)), 1)], None)),
        rate_limit: None,
    };
    let headers = HeaderMap::new();
    let first = policy.admit(facts(&headers)).unwrap();
    assert_eq!(
        policy.admit(facts(&headers)).unwrap_err(),
        Refusal::Shed {
            upstream: "only".into(),
            max: 1
        }
    );
    drop(first);
    assert!(policy.admit(facts(&headers)).is_ok());
}

#[test]
fn state_is_kept_for_unchanged_limits_and_renewed_for_changed_ones() {
    let state = PolicyState::default();
    let config = RateLimitConfig {
        per_second: 5,
        burst: 5,
        key: RateLimitKey::Peer,
        scope: crate::config::RateLimitScope::Gateway,
    };
    let first = state.rate_limit("l|a.A|", &config, 1);
    assert!(Arc::ptr_eq(&first, &state.rate_limit("l|a.A|", &config, 1)));
    // A gateway's own limit does not care how many gateways there are.
    assert!(Arc::ptr_eq(&first, &state.rate_limit("l|a.A|", &config, 3)));
    let changed = RateLimitConfig {
        per_second: 6,
        ..config.clone()
    };
    assert!(!Arc::ptr_eq(
        &first,
        &state.rate_limit("l|a.A|", &changed, 1)
    ));
    // A cluster-wide one is rebuilt for its new share when the number of gateways changes.
    let cluster = RateLimitConfig {
        scope: crate::config::RateLimitScope::Cluster,
        ..config.clone()
    };
    let of_two = state.rate_limit("l|b.B|", &cluster, 2);
    assert!(Arc::ptr_eq(
        &of_two,
        &state.rate_limit("l|b.B|", &cluster, 2)
    ));
    assert!(!Arc::ptr_eq(
        &of_two,
        &state.rate_limit("l|b.B|", &cluster, 3)
    ));
    let budget = RetryBudgetConfig {
        percent: 20,
        min_per_second: 10,
    };
    let kept = state.retry_budget("up", &budget);
    assert!(Arc::ptr_eq(&kept, &state.retry_budget("up", &budget)));
    for changed in [
        RetryBudgetConfig {
            percent: 30,
            ..budget
        },
        RetryBudgetConfig {
            min_per_second: 5,
            ..budget
        },
    ] {
        assert!(!Arc::ptr_eq(&kept, &state.retry_budget("up", &changed)));
    }
    let count = state.in_flight("up");
    assert!(Arc::ptr_eq(&count, &state.in_flight("up")));
    drop(count);
    // Nobody holds the old count: a new one starts at zero.
    assert_eq!(state.in_flight("up").current(), 0);
}
