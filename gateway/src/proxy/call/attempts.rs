//! An attempt's life, decided the same way for every driver: which endpoint it claims (through
//! the dial gate), how its end is judged (the breaker's verdict, the attempt counters), and
//! whether and when the call is sent again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::breaker::{Admission, Outcome};
use crate::endpoint::{DialGate, DialTurn};
use crate::grpc::{Code, LocalStatus};
use crate::metrics::AttemptOutcome;
use crate::policy::{NoRetry, Pushback, RetryFacts, Verdict};
use crate::routing::{Endpoint, UpstreamSet};

use super::{Attempt, CallCtx};

/// How close to the deadline a backend's CANCELLED counts as "the forwarded budget ran out".
pub const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// Why an attempt ended without an answer, as its driver read it from the transport's error
/// (`proxy/grpc/failure.rs` reads pingora's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    /// Nothing was sent yet: the connection could not be made.
    pub connecting: bool,
    /// The caller cancelled or went away: not the endpoint's doing.
    pub by_caller: bool,
    /// The backend stayed silent past the attempt's read timeout.
    pub timed_out: bool,
    /// The backend certainly did not process the request (REFUSED_STREAM, or a GOAWAY that
    /// left the stream out): only then may a non-idempotent call go again.
    pub unprocessed: bool,
    /// A short, human reason for the caller's `grpc-message`.
    pub reason: String,
}

/// What starts an attempt after the first, for `strait_retries_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// The first attempt.
    First,
    /// The previous attempt failed before the backend saw the call.
    Unprocessed,
    /// The route's `retry` sends the call again after a trailers-only status.
    Status,
    /// A hedged attempt beside (or after) the others.
    Hedge,
}

/// An endpoint claimed for an attempt: its upstream and its index there.
#[derive(Debug)]
pub struct Claimed {
    pub upstream: Arc<UpstreamSet>,
    pub index: usize,
}

impl Claimed {
    pub fn endpoint(&self) -> &Endpoint {
        &self.upstream.endpoints[self.index]
    }
}

/// Another attempt is dialing the endpoint: wait for its connection.
#[derive(Debug)]
pub struct DialWait {
    gate: Arc<DialGate>,
    bound: Duration,
}

impl DialWait {
    pub async fn settled(self) {
        self.gate.wait_settled(self.bound).await;
    }
}

/// What the response's head told a driver that is deciding whether to relay it.
#[derive(Debug, Clone, Copy)]
pub struct StatusFacts<'a> {
    /// `grpc-retry-pushback-ms` as the backend sent it.
    pub pushback: Option<&'a [u8]>,
    /// The request body outgrew what is kept for a resend.
    pub copy_truncated: bool,
}

impl CallCtx {
    /// Attempts this call may make: the route's `retry.max_attempts`, its `hedge.max_attempts`,
    /// else the upstream's.
    pub fn max_attempts(&self) -> u32 {
        self.target
            .as_ref()
            .map_or(1, |t| match (&t.hedge, &t.retry) {
                (Some(hedge), _) => hedge.max_attempts(),
                (None, Some(retry)) => retry.max_attempts(),
                (None, None) => t.upstream.max_attempts,
            })
    }

    /// Another attempt fits in the call's attempts and deadline.
    pub fn may_try_again(&self) -> bool {
        (self.tried.len() as u32) < self.max_attempts() && !self.deadline_passed()
    }

    /// Claims an endpoint this call has not tried for its next attempt. A status retry may go
    /// back to one already tried when no other is usable (the backend answered; it may answer
    /// differently now), and so may a resend of a stream the backend turned away unprocessed
    /// (its GOAWAY retires that connection, so the resend dials a new one, as a gRPC client's
    /// transparent retry would). A connect failure is never tried on the same endpoint again.
    /// `Err` is what the caller is told when none can be had.
    pub fn claim(&mut self, why: Resend) -> Result<(Claimed, Attempt), LocalStatus> {
        let Some(target) = self.target.as_ref() else {
            return Err(LocalStatus::new(Code::Internal, "the call was not routed"));
        };
        if self.deadline_passed() {
            return Err(self.deadline_status());
        }
        if (self.tried.len() as u32) >= self.max_attempts() {
            return Err(self.no_endpoint_status());
        }
        let upstream = target.upstream.clone();
        let claimed = upstream
            .claim(self.region.as_deref(), &self.tried)
            .or_else(|| {
                let may_return = match why {
                    Resend::Status => true,
                    Resend::Unprocessed => self.last_turned_away,
                    Resend::First | Resend::Hedge => false,
                };
                may_return
                    .then(|| upstream.claim(self.region.as_deref(), &[]))
                    .flatten()
            });
        let Some((index, admission)) = claimed else {
            return Err(self.no_endpoint_status());
        };
        if let Some(metrics) = &target.metrics {
            match why {
                Resend::First => {}
                Resend::Unprocessed => metrics.retry(false),
                Resend::Status => metrics.retry(true),
                Resend::Hedge => metrics.hedge(),
            }
        }
        let endpoint = &upstream.endpoints[index];
        self.tried.push(index);
        self.endpoint = Some(endpoint.addr);
        let mut attempt = Attempt::new(endpoint.state.clone(), admission == Admission::Trial);
        if self.trace.as_ref().is_some_and(|t| t.is_recording()) {
            attempt.started = Some(SystemTime::now());
        }
        Ok((Claimed { upstream, index }, attempt))
    }

    /// One dial in flight per endpoint: the attempt that dials carries a ticket that its
    /// driver settles (`connected`, or dropped on a failed connect); an attempt arriving while
    /// another dials gets a [`DialWait`] to await before it opens its stream on that
    /// connection, within its budget and the upstream's connect timeout, instead of dialing
    /// one more.
    pub fn dial_turn(&self, claimed: &Claimed, attempt: &mut Attempt) -> Option<DialWait> {
        let gate = &claimed.endpoint().state.dial;
        match gate.turn() {
            DialTurn::Go => None,
            DialTurn::Dial(ticket) => {
                attempt.dial = Some(ticket);
                None
            }
            DialTurn::Wait => {
                let connect_timeout = claimed.upstream.connect_timeout;
                let bound = self
                    .remaining()
                    .map_or(connect_timeout, |r| r.min(connect_timeout));
                Some(DialWait {
                    gate: gate.clone(),
                    bound,
                })
            }
        }
    }

    /// Ends the current attempt after a failure without an answer, remembers why for the
    /// caller's message and tells the breaker, unless the caller (cancelling, or its own
    /// deadline running out) is why it ended.
    pub fn attempt_failed(&mut self, failure: &AttemptFailure) {
        let verdict = self.failure_verdict(failure);
        self.finish_attempt(verdict.map(|_| Outcome::Failure), verdict);
        self.note_failure(failure);
    }

    /// How a failed attempt is counted; `None` when the caller, not the endpoint, ended it.
    pub fn failure_verdict(&self, failure: &AttemptFailure) -> Option<AttemptOutcome> {
        let callers_doing = failure.by_caller || (self.caller_deadline && self.deadline_passed());
        if callers_doing {
            None
        } else if failure.connecting {
            Some(AttemptOutcome::ConnectError)
        } else if self.deadline_passed() || failure.timed_out {
            Some(AttemptOutcome::Timeout)
        } else {
            Some(AttemptOutcome::Reset)
        }
    }

    /// Remembers an attempt's failure for the caller's message: what happened, never the
    /// endpoint's address (callers learn upstream and route names only; the access log and
    /// `/upstreams` have the addresses).
    pub fn note_failure(&mut self, failure: &AttemptFailure) {
        self.last_failure = Some(failure.reason.clone());
        self.last_turned_away = failure.unprocessed && !failure.connecting;
    }

    /// Whether a failed attempt is followed by another: the backend certainly did not process
    /// it, nothing came back yet, the whole request is still at hand, and the call has
    /// attempts and time left. gRPC calls are not idempotent: nothing else is sent again.
    pub fn resend_after(&self, failure: &AttemptFailure, body_kept: bool) -> bool {
        (failure.connecting || failure.unprocessed)
            && !self.response_started
            && body_kept
            && self.may_try_again()
    }

    /// The breaker's verdict on an attempt the backend answered, from its `grpc-status`;
    /// `ended_in_error` when something else (a reset, the deadline) already explains an end
    /// without one.
    pub fn classify_response(&self, ended_in_error: bool) -> Option<Outcome> {
        let failure_codes = &self.target.as_ref()?.upstream.breaker.failure_codes;
        match self.upstream_status {
            // The caller's own deadline ran out (the backend saw the forwarded budget expire).
            Some(Code::DeadlineExceeded | Code::Cancelled)
                if self.caller_deadline
                    && self.remaining().is_some_and(|r| r <= DEADLINE_SLACK) =>
            {
                None
            }
            Some(code) if failure_codes.contains(&code) => Some(Outcome::Failure),
            Some(_) => Some(Outcome::Success),
            // A response that ended without any grpc-status is broken (clients see INTERNAL),
            // unless something else already explains the end.
            None if !ended_in_error => Some(Outcome::Failure),
            None => None,
        }
    }

    /// Ends the current attempt with the verdict its answer earned.
    pub fn finish_answered(&mut self, ended_in_error: bool) {
        let outcome = self.classify_response(ended_in_error);
        self.finish_attempt(outcome, counted_as(outcome));
    }

    /// Notes the backend's `grpc-status`. The backend gets the remaining budget as
    /// `grpc-timeout` and its timer races the gateway's; when the backend wins, some servers
    /// (tonic) answer CANCELLED. The caller's deadline is what expired, so the caller is told
    /// DEADLINE_EXCEEDED either way: `Some` is that status, to send instead of the backend's.
    pub fn status_seen(&mut self, code: Code) -> Option<LocalStatus> {
        self.upstream_status = Some(code);
        let remaining = self.remaining()?;
        if code != Code::Cancelled || remaining > DEADLINE_SLACK {
            return None;
        }
        let status = self.deadline_status();
        self.upstream_status = Some(status.code);
        Some(status)
    }

    /// Asks the route's retry policy whether a trailers-only `code` is sent again; the wait
    /// before the next attempt when it is.
    pub fn retry_on_status(&self, code: Code, facts: StatusFacts<'_>) -> Option<Duration> {
        let target = self.target.as_ref()?;
        let policy = target.retry.as_ref()?;
        let budget = target.upstream.retry_budget()?;
        let facts = RetryFacts {
            attempts: self.tried.len() as u32,
            request_bytes: self.frames.bytes,
            copy_truncated: facts.copy_truncated,
            remaining: self.remaining(),
            pushback: Pushback::parse(facts.pushback),
            jitter: rand::random::<f64>(),
        };
        match policy.decide(code, facts, budget) {
            Verdict::RetryAfter(wait) => Some(wait),
            Verdict::Stop(NoRetry::BudgetExhausted) => {
                target.upstream.note_budget_exhausted();
                None
            }
            Verdict::Stop(_) => None,
        }
    }

    /// Ends an attempt whose trailers-only `code` is retried instead of relayed: the breaker
    /// and the attempt counters see the status, the caller sees nothing of it.
    pub fn hold_back_for_retry(&mut self, code: Code, wait: Duration) {
        let outcome = self.classify_response(false);
        // Answered, so counted as answered even when the caller's deadline excuses it.
        let counted = counted_as(outcome).unwrap_or(AttemptOutcome::Ok);
        self.finish_attempt(outcome, Some(counted));
        self.last_failure = Some(format!("an endpoint answered {code}"));
        self.upstream_status = None;
        self.pending_retry = Some(wait);
    }
}

/// The attempt counter a verdict goes to.
fn counted_as(outcome: Option<Outcome>) -> Option<AttemptOutcome> {
    match outcome {
        Some(Outcome::Failure) => Some(AttemptOutcome::GrpcFailure),
        Some(Outcome::Success) => Some(AttemptOutcome::Ok),
        None => None,
    }
}
