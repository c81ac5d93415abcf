//! A route's `retry`: whether a call the backend answered trailers-only with a listed status
//! may be sent again, and after how long (gRPC's retry design, A6).

use std::time::Duration;

use crate::config::RetryConfig;
use crate::grpc::Code;

use super::budget::RetryBudget;

/// The longest pushback a call waits out: a backend asking for more is asking not to be
/// retried, and a call without a deadline must not sleep for days on its word.
pub const MAX_PUSHBACK: Duration = Duration::from_secs(60);

/// What the backend said about trying again (`grpc-retry-pushback-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// No header: the policy's own back-off.
    Absent,
    /// Try again after exactly this long.
    After(Duration),
    /// A negative or malformed value: the backend asks not to be retried.
    Stop,
}

impl Pushback {
    /// A6: a non-negative decimal count of milliseconds; anything else stops retrying.
    pub fn parse(value: Option<&[u8]>) -> Self {
        let Some(raw) = value else {
            return Pushback::Absent;
        };
        let text = std::str::from_utf8(raw).unwrap_or("").trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Pushback::Stop;
        }
        match text.parse::<u64>() {
            Ok(ms) => Pushback::After(Duration::from_millis(ms)),
            Err(_) => Pushback::Stop, // too many digits to be a wait anyone means
        }
    }
}

/// What the proxy knows of the call when its attempt came back with a status.
#[derive(Debug, Clone, Copy)]
pub struct RetryFacts {
    /// Attempts made so far, the one that just ended included (connect-level ones too).
    pub attempts: u32,
    /// Request bytes the caller has sent so far.
    pub request_bytes: u64,
    /// The gateway's copy of the request is incomplete (pingora keeps 64 KiB at most).
    pub copy_truncated: bool,
    /// Time left before the call's deadline (none: no deadline).
    pub remaining: Option<Duration>,
    pub pushback: Pushback,
    /// A number in [0, 1) for the back-off's jitter.
    pub jitter: f64,
}

/// Why a call was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRetry {
    CodeNotListed,
    AttemptsUsed,
    RequestTooLarge,
    BackendSaidStop,
    NoTimeLeft,
    BudgetExhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    RetryAfter(Duration),
    Stop(NoRetry),
}

/// A route's retry settings on the call path.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    config: RetryConfig,
}

impl RetryPolicy {
    pub fn new(config: RetryConfig) -> Self {
        Self { config }
    }

    /// Attempts per call, first included; connect-level retries count against it too.
    pub fn max_attempts(&self) -> u32 {
        self.config.max_attempts
    }

    /// Whether to send the call again. The budget is asked last, so that a call stopped for
    /// any other reason spends no token.
    pub fn decide(&self, code: Code, facts: RetryFacts, budget: &RetryBudget) -> Verdict {
        use NoRetry::*;
        if !self.config.on.contains(&code) {
            return Verdict::Stop(CodeNotListed);
        }
        if facts.attempts >= self.config.max_attempts {
            return Verdict::Stop(AttemptsUsed);
        }
        if facts.copy_truncated || facts.request_bytes > u64::from(self.config.buffer) {
            return Verdict::Stop(RequestTooLarge);
        }
        let wait = match facts.pushback {
            Pushback::Stop => return Verdict::Stop(BackendSaidStop),
            Pushback::After(wait) if wait > MAX_PUSHBACK => return Verdict::Stop(BackendSaidStop),
            Pushback::After(wait) => wait,
            Pushback::Absent => self.backoff(facts.attempts, facts.jitter),
        };
        if facts.remaining.is_some_and(|left| left <= wait) {
            return Verdict::Stop(NoTimeLeft);
        }
        if !budget.try_withdraw() {
            return Verdict::Stop(BudgetExhausted);
        }
        Verdict::RetryAfter(wait)
    }

    /// A6's back-off before retry number `n` (1 for the first): a random wait in
    /// [0, min(backoff x 2^(n-1), max_backoff)).
    pub fn backoff(&self, n: u32, jitter: f64) -> Duration {
        let doubled = self
            .config
            .backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(20));
        doubled
            .min(self.config.max_backoff)
            .mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(RetryConfig {
            on: vec![Code::Unavailable],
            max_attempts: 3,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            buffer: 64 * 1024,
        })
    }

    fn facts() -> RetryFacts {
        RetryFacts {
            attempts: 1,
            request_bytes: 10,
            copy_truncated: false,
            remaining: None,
            pushback: Pushback::Absent,
            jitter: 0.5,
        }
    }

    fn plenty() -> RetryBudget {
        RetryBudget::new(0, 1000)
    }

    #[test]
    fn the_edges_are_still_retried() {
        let p = policy();
        assert_eq!(p.max_attempts(), 3);
        let budget = plenty();
        let at_buffer = RetryFacts {
            request_bytes: 64 * 1024,
            attempts: 2,
            ..facts()
        };
        assert!(matches!(
            p.decide(Code::Unavailable, at_buffer, &budget),
            Verdict::RetryAfter(_)
        ));
        let longest = RetryFacts {
            pushback: Pushback::After(MAX_PUSHBACK),
            ..facts()
        };
        assert_eq!(
            p.decide(Code::Unavailable, longest, &budget),
            Verdict::RetryAfter(MAX_PUSHBACK)
        );
    }

    #[test]
    fn the_backoff_doubles_per_retry_up_to_its_cap() {
        let p = policy();
        let half = |n| p.backoff(n, 0.5);
        assert_eq!(half(1), Duration::from_micros(12_500));
        assert_eq!(half(2), Duration::from_millis(25));
        assert_eq!(half(3), Duration::from_millis(50));
        assert_eq!(half(4), Duration::from_millis(100));
        assert_eq!(half(5), Duration::from_millis(125), "capped at 250 ms");
    }

    #[test]
    fn a_listed_code_is_retried_after_the_jittered_backoff() {
        assert_eq!(
            policy().decide(Code::Unavailable, facts(), &plenty()),
            Verdict::RetryAfter(Duration::from_micros(12_500))
        );
    }

    #[test]
    fn every_reason_to_stop() {
        let (p, budget) = (policy(), plenty());
        let cases = [
            (Code::Internal, facts(), NoRetry::CodeNotListed),
            (
                Code::Unavailable,
                RetryFacts {
                    attempts: 3,
                    ..facts()
                },
                NoRetry::AttemptsUsed,
            ),
            (
                Code::Unavailable,
                RetryFacts {
                    request_bytes: 64 * 1024 + 1,
                    ..facts()
                },
                NoRetry::RequestTooLarge,
            ),
            (
                Code::Unavailable,
                RetryFacts {
                    copy_truncated: true,
                    ..facts()
                },
                NoRetry::RequestTooLarge,
            ),
            (
                Code::Unavailable,
                RetryFacts {
                    pushback: Pushback::Stop,
                    ..facts()
                },
                NoRetry::BackendSaidStop,
            ),
            (
                Code::Unavailable,
                RetryFacts {
                    remaining: Some(Duration::from_millis(5)),
                    ..facts()
                },
                NoRetry::NoTimeLeft,
            ),
        ];
        for (code, f, why) in cases {
            assert_eq!(p.decide(code, f, &budget), Verdict::Stop(why), "{f:?}");
        }
    }

    #[test]
    fn the_backends_pushback_replaces_the_backoff() {
        let after = policy().decide(
            Code::Unavailable,
            RetryFacts {
                pushback: Pushback::After(Duration::from_millis(700)),
                ..facts()
            },
            &plenty(),
        );
        assert_eq!(after, Verdict::RetryAfter(Duration::from_millis(700)));
        let forever = policy().decide(
            Code::Unavailable,
            RetryFacts {
                pushback: Pushback::After(MAX_PUSHBACK + Duration::from_millis(1)),
                ..facts()
            },
            &plenty(),
        );
        assert_eq!(forever, Verdict::Stop(NoRetry::BackendSaidStop));
    }

    #[test]
    fn a_spent_budget_stops_and_other_stops_spend_nothing() {
        let budget = RetryBudget::new(0, 0);
        assert!(!budget.try_withdraw());
        let p = policy();
        assert_eq!(
            p.decide(Code::Unavailable, facts(), &budget),
            Verdict::Stop(NoRetry::BudgetExhausted)
        );
        let one = RetryBudget::new(0, 1); // ten tokens over the window
        for _ in 0..20 {
            p.decide(Code::Internal, facts(), &one);
        }
        assert!(
            one.try_withdraw(),
            "a stop for another reason spent a token"
        );
    }

    #[test]
    fn pushback_values() {
        assert_eq!(Pushback::parse(None), Pushback::Absent);
        assert_eq!(
            Pushback::parse(Some(b"250")),
            Pushback::After(Duration::from_millis(250))
        );
        assert_eq!(Pushback::parse(Some(b"0")), Pushback::After(Duration::ZERO));
        for bad in [
            &b"-1"[..],
            b"",
            b"1.5",
            b"soon",
            b"+5",
            b"99999999999999999999999",
        ] {
            assert_eq!(Pushback::parse(Some(bad)), Pushback::Stop, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn the_backoff_stays_under_its_cap(n in 1u32..100, jitter in 0.0f64..1.0) {
            let wait = policy().backoff(n, jitter);
            prop_assert!(wait <= Duration::from_millis(250));
            let cap = Duration::from_millis(25).saturating_mul(1 << (n - 1).min(20)).min(Duration::from_millis(250));
            prop_assert!(wait <= cap);
        }
    }
}
