//! Per-call traffic policy: which route of a service takes a call (`match`), which upstream of
//! the route (`split`), whether it may go at all (`rate_limit`, `max_in_flight`), and whether
//! a failed attempt is tried again (`retry`, within the upstream's retry budget). Plain types
//! the proxy consults; the routing snapshot builds them from the config, and their live state
//! (buckets, in-flight counts, retry budgets) outlives snapshots in `PolicyState`.

mod budget;
mod hedge;
mod in_flight;
mod matcher;
mod rate_limit;
mod retry;
mod split;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderMap;
use parking_lot::Mutex;

use crate::config::{RateLimitConfig, RetryBudgetConfig};
pub use budget::RetryBudget;
pub use hedge::HedgePolicy;
pub use in_flight::{try_enter, InFlightCount, InFlightPermit};
pub use matcher::HeaderMatch;
pub use rate_limit::{Limited, RateLimit, MAX_TRACKED_KEYS};
pub use retry::{NoRetry, Pushback, RetryFacts, RetryPolicy, Verdict};
pub use split::{stable_hash, Split};

/// What the policy knows of a call when it decides.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    pub headers: &'a HeaderMap,
    /// The client's address (`rate_limit.key = "peer"`).
    pub peer: Option<IpAddr>,
}

/// Why the policy turned a call away. The proxy answers each the gRPC way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over the route's rate limit: RESOURCE_EXHAUSTED, with when to try again.
    RateLimited {
        limit: String,
        retry_after: Duration,
    },
    /// The upstream already has `max` calls in flight: UNAVAILABLE, at once.
    Shed { upstream: String, max: u32 },
}

/// Something a call can be sent to that bounds its calls in flight (an upstream).
pub trait Admits {
    /// Takes an in-flight slot, or refuses when the target is full.
    fn enter(&self) -> Result<InFlightPermit, Refusal>;
}

/// Where a route's calls go.
#[derive(Debug)]
pub enum Destination<T> {
    One(T),
    Split(Split<T>),
}

/// A route's limit with its refusal counter.
#[derive(Debug)]
pub struct RouteLimit {
    pub limit: Arc<RateLimit>,
    pub refused: Option<prometheus::IntCounter>,
}

impl RouteLimit {
    fn check(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        principal: Option<&str>,
    ) -> Result<(), Refusal> {
        match self.limit.check_keyed(headers, peer, principal) {
            Ok(()) => Ok(()),
            Err(Limited { retry_after }) => {
                if let Some(counter) = &self.refused {
                    counter.inc();
                }
                Err(Refusal::RateLimited {
                    limit: self.limit.describe(),
                    retry_after,
                })
            }
        }
    }
}

/// One `[[route]]` as the call path sees it.
#[derive(Debug)]
pub struct RoutePolicy<T> {
    pub matcher: HeaderMatch,
    pub destination: Destination<T>,
    pub rate_limit: Option<RouteLimit>,
}

/// A call the policy let through: where it goes, and its in-flight slot (held to the end).
#[derive(Debug)]
pub struct Admitted<'a, T> {
    pub target: &'a T,
    pub permit: InFlightPermit,
}

impl<T: Admits> RoutePolicy<T> {
    /// The rate limit first (a refused call must not take a slot), then the side of the
    /// split, then a slot on that side's upstream.
    pub fn admit(&self, call: CallFacts<'_>) -> Result<Admitted<'_, T>, Refusal> {
        if let Some(route_limit) = self
            .rate_limit
            .as_ref()
            .filter(|l| !l.limit.is_per_principal())
        {
            route_limit.check(call.headers, call.peer, None)?;
        }
        let target = match &self.destination {
            Destination::One(target) => target,
            Destination::Split(split) => split.choose(call.headers),
        };
        let permit = target.enter()?;
        Ok(Admitted { target, permit })
    }

    /// The route's rate limit is keyed by principal (checked after authentication).
    pub fn has_principal_limit(&self) -> bool {
        self.rate_limit
            .as_ref()
            .is_some_and(|l| l.limit.is_per_principal())
    }

    /// A limit keyed by principal, once the route's `auth` accepted the caller.
    pub fn limit_principal(&self, headers: &HeaderMap, principal: &str) -> Result<(), Refusal> {
        match self
            .rate_limit
            .as_ref()
            .filter(|l| l.limit.is_per_principal())
        {
            Some(route_limit) => route_limit.check(headers, None, Some(principal)),
            None => Ok(()),
        }
    }

    /// Every target the route can send to.
    pub fn targets(&self) -> Box<dyn Iterator<Item = &T> + '_> {
        match &self.destination {
            Destination::One(target) => Box::new(std::iter::once(target)),
            Destination::Split(split) => Box::new(split.sides()),
        }
    }
}

/// Routes for one service (or method), tried in order: those with `match` in file order,
/// then the fallback.
#[derive(Debug)]
pub struct RouteChoice<T> {
    routes: Vec<RoutePolicy<T>>,
}

impl<T> Default for RouteChoice<T> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<T> RouteChoice<T> {
    /// Adds a route in file order; the fallback (no `match`) always goes last.
    pub fn push(&mut self, route: RoutePolicy<T>) {
        let fallback_at = self.routes.iter().position(|r| r.matcher.is_fallback());
        match (route.matcher.is_fallback(), fallback_at) {
            (false, Some(at)) => self.routes.insert(at, route),
            _ => self.routes.push(route),
        }
    }

    /// The first route whose `match` holds for these headers.
    pub fn find(&self, headers: &HeaderMap) -> Option<&RoutePolicy<T>> {
        self.find_with(headers, &mut |_| None)
    }

    /// `find`, where a `match` naming a caller asks `principal` who the route's `auth` accepts.
    pub fn find_with(
        &self,
        headers: &HeaderMap,
        principal: &mut dyn FnMut(&RoutePolicy<T>) -> Option<String>,
    ) -> Option<&RoutePolicy<T>> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches_with(headers, || principal(r)))
    }

    pub fn routes(&self) -> impl Iterator<Item = &RoutePolicy<T>> {
        self.routes.iter()
    }
}

/// Policy state that outlives routing snapshots: a discovery change or a reload rebuilds the
/// snapshot, and a rate limit left as it was keeps its buckets, an upstream its in-flight count.
#[derive(Debug, Default)]
pub struct PolicyState {
    in_flight: Mutex<HashMap<String, Weak<InFlightCount>>>,
    rate_limits: Mutex<HashMap<String, Weak<RateLimit>>>,
    retry_budgets: Mutex<HashMap<String, Weak<RetryBudget>>>,
}

impl PolicyState {
    /// The in-flight count of the upstream named `upstream`.
    pub fn in_flight(&self, upstream: &str) -> Arc<InFlightCount> {
        shared(&self.in_flight, upstream, |_| true, InFlightCount::default)
    }

    /// The limit known as `id` (listener, route, match), reused while its settings (and, for a
    /// cluster-wide one, the number of gateways) stay; a changed one starts with full buckets.
    pub fn rate_limit(&self, id: &str, config: &RateLimitConfig, gateways: u32) -> Arc<RateLimit> {
        shared(
            &self.rate_limits,
            id,
            |limit| limit.is(config, gateways),
            || RateLimit::new(config.clone(), gateways),
        )
    }

    /// The retry budget of the upstream named `upstream`, kept while its settings stay (a
    /// rebuilt snapshot must not hand a failing upstream a fresh allowance).
    pub fn retry_budget(&self, upstream: &str, config: &RetryBudgetConfig) -> Arc<RetryBudget> {
        shared(
            &self.retry_budgets,
            upstream,
            |budget| budget.settings() == (config.percent, config.min_per_second),
            || RetryBudget::new(config.percent, config.min_per_second),
        )
    }
}

/// The live `T` known as `key` while a snapshot still holds it and `still_fits` it; else a new
/// one from `make`. Entries no snapshot holds any more are dropped on the way.
fn shared<T>(
    map: &Mutex<HashMap<String, Weak<T>>>,
    key: &str,
    still_fits: impl Fn(&T) -> bool,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut entries = map.lock();
    if let Some(live) = entries
        .get(key)
        .and_then(Weak::upgrade)
        .filter(|live| still_fits(live))
    {
        return live;
    }
    entries.retain(|_, weak| weak.strong_count() > 0);
    let fresh = Arc::new(make());
    entries.insert(key.to_string(), Arc::downgrade(&fresh));
    fresh
}

#[cfg(test)]
mod tests;
