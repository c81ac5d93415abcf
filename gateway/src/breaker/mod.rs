//! The per-endpoint circuit breaker: an explicit state machine, a plain type with no I/O and no
//! clock of its own (time is passed in), so every rule is unit- and property-testable.
//!
//! Closed --(consecutive failures | failure rate | probes unhealthy)--> Open
//! Open --(open period over, probes not failing)--> HalfOpen (admits `half_open_calls` trials)
//! HalfOpen --(all trials succeed)--> Closed (back-off resets)
//! HalfOpen --(any trial fails)--> Open (next, longer period)

mod settings;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// The longest any breaker stays open, whatever its settings say.
const LONGEST_OPEN: Duration = Duration::from_secs(24 * 3600);

pub use settings::{Backoff, BreakerSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened; bounded, so it can be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ConsecutiveFailures,
    FailureRate,
    ProbeFailed,
    OpenPeriodOver,
    TrialFailed,
    TrialsSucceeded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => "consecutive_failures",
            Reason::FailureRate => "failure_rate",
            Reason::ProbeFailed => "probe_failed",
            Reason::OpenPeriodOver => "open_period_over",
            Reason::TrialFailed => "trial_failed",
            Reason::TrialsSucceeded => "trials_succeeded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    /// For transitions to Open: how long it stays open.
    pub open_for: Option<Duration>,
}

/// What `admit` decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: an ordinary call.
    Call,
    /// Half-open: one of the trial calls; its result decides the state.
    Trial,
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    consecutive_failures: u32,
    /// Results of the last `window` calls while closed (true = failure).
    window: VecDeque<bool>,
    failures_in_window: u32,
    /// Trips since the breaker last closed; drives the back-off.
    trips: u32,
    open_until: Option<Instant>,
    trials_admitted: u32,
    trials_succeeded: u32,
    /// Probes say the endpoint is unhealthy: stay open whatever the timer says.
    held_by_probe: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: State::Closed,
            consecutive_failures: 0,
            window: VecDeque::new(),
            failures_in_window: 0,
            trips: 0,
            open_until: None,
            trials_admitted: 0,
            trials_succeeded: 0,
            held_by_probe: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    pub fn held_by_probe(&self) -> bool {
        self.held_by_probe
    }

    /// Replaces the settings (a config reload) without forgetting the state.
    pub fn set_settings(&mut self, settings: BreakerSettings) {
        self.settings = settings;
    }

    /// Asks to send one call. Moving from Open to HalfOpen happens here, when the open period
    /// is over and a call wants through.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.state {
            State::Closed => (Admission::Call, None),
            State::Open => {
                if self.held_by_probe || self.open_until.is_some_and(|t| now < t) {
                    return (Admission::Rejected, None);
                }
                let transition = self.half_open_now();
                self.trials_admitted = 1;
                (Admission::Trial, Some(transition))
            }
            State::HalfOpen => {
                if self.trials_admitted < self.settings.half_open_calls {
                    self.trials_admitted += 1;
                    (Admission::Trial, None)
                } else {
                    (Admission::Rejected, None)
                }
            }
        }
    }

    /// Could a call be admitted now? Read-only: the balancer's quick filter.
    pub fn would_admit(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open => !self.held_by_probe && self.open_until.is_none_or(|t| now >= t),
            State::HalfOpen => self.trials_admitted < self.settings.half_open_calls,
        }
    }

    /// Records how a call ended. `trial` says whether `admit` gave it as a trial; results of
    /// calls admitted before the breaker opened are ignored once it is open.
    /// `may_open` is false when the upstream's ejection cap forbids opening another breaker.
    pub fn record(
        &mut self,
        outcome: Outcome,
        trial: bool,
        now: Instant,
        may_open: bool,
    ) -> Option<Transition> {
        match (self.state, trial) {
            (State::Closed, false) => self.record_closed(outcome, now, may_open),
            (State::HalfOpen, true) => match outcome {
                Outcome::Failure => Some(self.open_now(Reason::TrialFailed, now)),
                Outcome::Success => {
                    self.trials_succeeded += 1;
                    (self.trials_succeeded >= self.settings.half_open_calls)
                        .then(|| self.close_now(Reason::TrialsSucceeded))
                }
            },
            _ => None,
        }
    }

    fn record_closed(
        &mut self,
        outcome: Outcome,
        now: Instant,
        may_open: bool,
    ) -> Option<Transition> {
        let failed = outcome == Outcome::Failure;
        self.consecutive_failures = if failed {
            self.consecutive_failures + 1
        } else {
            0
        };
        self.window.push_back(failed);
        self.failures_in_window += u32::from(failed);
        while self.window.len() > self.settings.window as usize {
            if self.window.pop_front() == Some(true) {
                self.failures_in_window -= 1;
            }
        }
        if !failed || !may_open {
            return None;
        }
        if self.consecutive_failures >= self.settings.consecutive_failures {
            return Some(self.open_now(Reason::ConsecutiveFailures, now));
        }
        let seen = self.window.len() as u32;
        if seen >= self.settings.min_calls
            && f64::from(self.failures_in_window) >= self.settings.failure_rate * f64::from(seen)
        {
            return Some(self.open_now(Reason::FailureRate, now));
        }
        None
    }

    /// A trial ended without a verdict (the caller cancelled): its slot goes back.
    pub fn release_trial(&mut self) {
        if self.state == State::HalfOpen {
            self.trials_admitted = self.trials_admitted.saturating_sub(1);
        }
    }

    /// Probes found the endpoint unhealthy: open (if allowed) and stay open until they recover.
    pub fn probe_unhealthy(&mut self, now: Instant, may_open: bool) -> Option<Transition> {
        if self.held_by_probe {
            return None;
        }
        match self.state {
            State::Closed if !may_open => None,
            State::Open => {
                self.held_by_probe = true;
                None
            }
            _ => {
                let t = self.open_now(Reason::ProbeFailed, now);
                self.held_by_probe = true;
                Some(t)
            }
        }
    }

    /// Probes recovered: the open period ends now, so the next call is a half-open trial.
    pub fn probe_healthy(&mut self, now: Instant) {
        if self.held_by_probe {
            self.held_by_probe = false;
            if self.state == State::Open {
                self.open_until = Some(now);
            }
        }
    }

    fn open_now(&mut self, reason: Reason, now: Instant) -> Transition {
        let from = self.state;
        self.trips = self.trips.saturating_add(1);
        let open_for = self.settings.open_period(self.trips, rand::random::<f64>());
        self.state = State::Open;
        // Validation bounds open_for to an hour; clamped all the same so that settings built in
        // code can never make `Instant + Duration` panic on the call path.
        self.open_until = Some(now + open_for.min(LONGEST_OPEN));
        self.trials_admitted = 0;
        self.trials_succeeded = 0;
        self.consecutive_failures = 0;
        self.window.clear();
        self.failures_in_window = 0;
        Transition {
            from,
            to: State::Open,
            reason,
            open_for: Some(open_for),
        }
    }

    fn half_open_now(&mut self) -> Transition {
        self.state = State::HalfOpen;
        self.trials_admitted = 0;
        self.trials_succeeded = 0;
        Transition {
            from: State::Open,
            to: State::HalfOpen,
            reason: Reason::OpenPeriodOver,
            open_for: None,
        }
    }

    fn close_now(&mut self, reason: Reason) -> Transition {
        let from = self.state;
        self.state = State::Closed;
        self.trips = 0;
        self.open_until = None;
        self.consecutive_failures = 0;
        self.window.clear();
        self.failures_in_window = 0;
        Transition {
            from,
            to: State::Closed,
            reason,
            open_for: None,
        }
    }
}
