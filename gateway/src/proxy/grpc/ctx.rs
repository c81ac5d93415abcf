//! What one call carries from hook to hook.

use std::time::{Duration, Instant};

use crate::endpoint::InFlightGuard;
use crate::proxy::CallGuard;
use crate::routing::RouteTarget;

use super::status::{Code, LocalStatus};

/// The endpoint currently being tried; dropping it ends the endpoint's in-flight count.
#[derive(Debug)]
pub struct Attempt {
    pub endpoint: usize,
    _in_flight: InFlightGuard,
}

impl Attempt {
    pub fn new(endpoint: usize, in_flight: InFlightGuard) -> Self {
        Self {
            endpoint,
            _in_flight: in_flight,
        }
    }
}

#[derive(Debug)]
pub struct CallCtx {
    pub started: Instant,
    pub target: Option<RouteTarget>,
    /// Absolute deadline: the caller's `grpc-timeout`, else the route's timeout.
    pub deadline: Option<Instant>,
    /// Region whose endpoints are preferred for this call.
    pub region: Option<String>,
    /// Endpoint indices already tried for this call; retries go elsewhere.
    pub tried: Vec<usize>,
    pub attempt: Option<Attempt>,
    /// The last attempt's failure, for the caller's error message.
    pub last_failure: Option<String>,
    /// Upstream response headers arrived: from here on the call is committed to that endpoint.
    pub response_started: bool,
    /// `grpc-status` seen from the backend (trailers or trailers-only).
    pub upstream_status: Option<Code>,
    /// A status the gateway decided on itself, written by `fail_to_proxy` or a filter.
    pub local_status: Option<LocalStatus>,
    pub call_guard: Option<CallGuard>,
}

impl CallCtx {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            target: None,
            deadline: None,
            region: None,
            tried: Vec::new(),
            attempt: None,
            last_failure: None,
            response_started: false,
            upstream_status: None,
            local_status: None,
            call_guard: None,
        }
    }

    /// Remaining budget, `Some(ZERO)` once the deadline has passed, `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub fn deadline_passed(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// The status this call ended with, as far as the gateway knows.
    pub fn final_code(&self) -> Option<Code> {
        self.local_status
            .as_ref()
            .map(|s| s.code)
            .or(self.upstream_status)
    }

    pub fn upstream_name(&self) -> &str {
        self.target
            .as_ref()
            .map(|t| t.upstream.name.as_str())
            .unwrap_or("-")
    }
}

impl Default for CallCtx {
    fn default() -> Self {
        Self::new()
    }
}
