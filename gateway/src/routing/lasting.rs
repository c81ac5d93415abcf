//! What outlives a routing snapshot. A discovery change or a reload builds a new snapshot;
//! what must carry over is kept here and handed to every build: each endpoint's state
//! (breaker, health, counters), and the traffic policy's state (rate-limit buckets, upstreams'
//! in-flight counts, retry budgets), so neither resets when the snapshot is swapped.

use std::sync::Arc;

use crate::auth::JwksRegistry;
use crate::discovery::RefusedAddresses;
use crate::endpoint::EndpointRegistry;
use crate::metrics::Metrics;
use crate::policy::PolicyState;

#[derive(Debug, Default)]
pub struct Lasting {
    /// Per-endpoint state, keyed by (upstream, address).
    pub endpoints: EndpointRegistry,
    /// Buckets, counts and budgets, keyed by route and upstream.
    pub policy: PolicyState,
    /// Remote JWKS of `[[auth]]` providers, with the keys fetched so far.
    pub jwks: Arc<JwksRegistry>,
    /// Discovered addresses upstreams refuse, so each is logged and counted once.
    pub refused: RefusedAddresses,
}

impl Lasting {
    pub fn with_metrics(metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            endpoints: EndpointRegistry::with_metrics(metrics.clone()),
            policy: PolicyState::default(),
            jwks: Arc::new(JwksRegistry::with_metrics(
                metrics.as_ref().map(|m| m.auth().clone()),
            )),
            refused: RefusedAddresses::with_metrics(metrics.clone()),
        }
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.endpoints.metrics()
    }
}
