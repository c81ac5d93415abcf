use super::*;
use proptest::prelude::*;

fn settings() -> BreakerSettings {
    BreakerSettings {
        consecutive_failures: 3,
        failure_rate: 0.5,
        window: 10,
        min_calls: 6,
        open_for: Duration::from_secs(1),
        backoff: Backoff::Exponential,
        max_open_for: Duration::from_secs(8),
        half_open_calls: 2,
        ..BreakerSettings::default()
    }
}

fn fail(b: &mut Breaker, now: Instant) -> Option<Transition> {
    b.record(Outcome::Failure, false, now, true)
}

#[test]
fn consecutive_failures_open_the_breaker() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    assert_eq!(fail(&mut b, now), None);
    assert_eq!(fail(&mut b, now), None);
    let t = fail(&mut b, now).expect("third failure trips");
    assert_eq!(
        (t.from, t.to, t.reason),
        (State::Closed, State::Open, Reason::ConsecutiveFailures)
    );
    assert_eq!(t.open_for, Some(Duration::from_secs(1)));
    assert_eq!(b.admit(now).0, Admission::Rejected);
}

#[test]
fn a_success_resets_the_consecutive_count() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    for _ in 0..10 {
        fail(&mut b, now);
        fail(&mut b, now);
        for _ in 0..6 {
            b.record(Outcome::Success, false, now, true);
        }
    }
    assert_eq!(
        b.state(),
        State::Closed,
        "two failures in a row, at most 40% of a window: no trip"
    );
}

#[test]
fn failure_rate_opens_once_min_calls_were_seen() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    // Alternate: never 3 in a row, but half of the window fails.
    let mut tripped = None;
    for i in 0..6 {
        let outcome = if i % 2 == 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        tripped = tripped.or(b.record(outcome, false, now, true));
    }
    // Six calls seen, three failed: 50% >= 0.5, but the last was a success.
    assert_eq!(tripped, None);
    let t = fail(&mut b, now).expect("the rate trips on the next failure");
    assert_eq!(t.reason, Reason::FailureRate);
}

#[test]
fn half_open_admits_its_quota_and_closes_when_all_succeed() {
    let start = Instant::now();
    let mut b = Breaker::new(settings());
    for _ in 0..3 {
        fail(&mut b, start);
    }
    let later = start + Duration::from_secs(1);
    let (first, t) = b.admit(later);
    assert_eq!(first, Admission::Trial);
    assert_eq!(t.unwrap().to, State::HalfOpen);
    assert_eq!(b.admit(later).0, Admission::Trial);
    assert_eq!(b.admit(later).0, Admission::Rejected, "quota of 2");
    assert_eq!(b.record(Outcome::Success, true, later, true), None);
    let closed = b
        .record(Outcome::Success, true, later, true)
        .expect("closes");
    assert_eq!(
        (closed.to, closed.reason),
        (State::Closed, Reason::TrialsSucceeded)
    );
    assert_eq!(b.admit(later).0, Admission::Call);
}

#[test]
fn a_failed_trial_reopens_with_a_longer_period_and_closing_resets_it() {
    let mut now = Instant::now();
    let mut b = Breaker::new(settings());
    let mut periods = Vec::new();
    for _ in 0..3 {
        fail(&mut b, now);
    }
    periods.push(b.open_until().unwrap() - now);
    for _ in 0..4 {
        now = b.open_until().unwrap();
        assert_eq!(b.admit(now).0, Admission::Trial);
        let t = b.record(Outcome::Failure, true, now, true).unwrap();
        assert_eq!(t.reason, Reason::TrialFailed);
        periods.push(t.open_for.unwrap());
    }
    let secs: Vec<u64> = periods.iter().map(|d| d.as_secs()).collect();
    assert_eq!(
        secs,
        vec![1, 2, 4, 8, 8],
        "doubling, capped at max_open_for"
    );
    now = b.open_until().unwrap();
    b.admit(now);
    b.admit(now);
    b.record(Outcome::Success, true, now, true);
    b.record(Outcome::Success, true, now, true);
    assert_eq!(b.state(), State::Closed);
    for _ in 0..3 {
        fail(&mut b, now);
    }
    assert_eq!(
        b.open_until().unwrap() - now,
        Duration::from_secs(1),
        "back-off reset after closing"
    );
}

#[test]
fn ejection_cap_keeps_the_breaker_closed() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    for _ in 0..20 {
        assert_eq!(b.record(Outcome::Failure, false, now, false), None);
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.probe_unhealthy(now, false), None);
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn probes_hold_the_breaker_open_until_they_recover() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    let t = b.probe_unhealthy(now, true).unwrap();
    assert_eq!(t.reason, Reason::ProbeFailed);
    let much_later = now + Duration::from_secs(600);
    assert_eq!(
        b.admit(much_later).0,
        Admission::Rejected,
        "held while probes fail"
    );
    b.probe_healthy(much_later);
    let (admission, t) = b.admit(much_later);
    assert_eq!(
        admission,
        Admission::Trial,
        "recovery goes through half-open"
    );
    assert_eq!(t.unwrap().to, State::HalfOpen);
}

#[test]
fn results_of_calls_admitted_before_opening_are_ignored() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    for _ in 0..3 {
        fail(&mut b, now);
    }
    assert_eq!(b.record(Outcome::Success, false, now, true), None);
    assert_eq!(b.record(Outcome::Failure, false, now, true), None);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn backoff_kinds() {
    let mut s = settings();
    s.backoff = Backoff::Fixed;
    assert_eq!(s.open_period(5, 0.3), Duration::from_secs(1));
    s.backoff = Backoff::Jittered;
    let low = s.open_period(2, 0.0);
    let high = s.open_period(2, 0.999);
    assert!(
        low >= Duration::from_millis(1500) && high <= Duration::from_millis(2500) && low < high
    );
    assert_eq!(s.max_ejected(4), 2);
    assert_eq!(s.max_ejected(1), 0);
}

#[test]
fn labels_are_the_documented_strings() {
    let states = [State::Closed, State::Open, State::HalfOpen];
    assert_eq!(states.map(State::as_str), ["closed", "open", "half_open"]);
    assert_eq!(
        states.map(|s| s.to_string()),
        ["closed", "open", "half_open"]
    );
    let reasons = [
        Reason::ConsecutiveFailures,
        Reason::FailureRate,
        Reason::ProbeFailed,
        Reason::OpenPeriodOver,
        Reason::TrialFailed,
        Reason::TrialsSucceeded,
    ];
    assert_eq!(
        reasons.map(Reason::as_str),
        [
            "consecutive_failures",
            "failure_rate",
            "probe_failed",
            "open_period_over",
            "trial_failed",
            "trials_succeeded"
        ]
    );
}

#[test]
fn reloaded_settings_apply_and_the_state_stays() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    for _ in 0..3 {
        fail(&mut b, now);
    }
    let reloaded = BreakerSettings {
        half_open_calls: 4,
        ..settings()
    };
    b.set_settings(reloaded.clone());
    assert_eq!(b.settings(), &reloaded);
    assert_eq!(
        b.state(),
        State::Open,
        "a reload does not close an open breaker"
    );
    let later = now + Duration::from_secs(1);
    for _ in 0..4 {
        assert_eq!(b.admit(later).0, Admission::Trial, "the new quota applies");
    }
    assert_eq!(b.admit(later).0, Admission::Rejected);
}

#[test]
fn probe_hold_is_visible_and_released() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    assert!(!b.held_by_probe());
    b.probe_unhealthy(now, true);
    assert!(b.held_by_probe());
    b.probe_healthy(now);
    assert!(!b.held_by_probe());
}

/// Settings built in code (validation allows at most an hour) still never hold a breaker open
/// for more than a day.
#[test]
fn no_breaker_stays_open_longer_than_a_day() {
    let now = Instant::now();
    let day = Duration::from_secs(24 * 3600);
    let mut b = Breaker::new(BreakerSettings {
        open_for: 2 * day,
        max_open_for: 2 * day,
        backoff: Backoff::Fixed,
        ..settings()
    });
    for _ in 0..3 {
        fail(&mut b, now);
    }
    assert_eq!(b.open_until(), Some(now + day));
    assert!(!b.would_admit(now + day - Duration::from_millis(1)));
    assert_eq!(
        b.admit(now + day - Duration::from_millis(1)).0,
        Admission::Rejected
    );
    assert!(b.would_admit(now + day));
    assert_eq!(b.admit(now + day).0, Admission::Trial);
}

#[derive(Debug, Clone)]
enum Event {
    Result(bool),
    Admit,
    Advance(u64),
    ProbeBad,
    ProbeGood,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        any::<bool>().prop_map(Event::Result),
        Just(Event::Admit),
        (0u64..3000).prop_map(Event::Advance),
        Just(Event::ProbeBad),
        Just(Event::ProbeGood),
    ]
}

proptest! {
    /// Over random event sequences: nothing is admitted while open and before the period ends,
    /// half-open never admits more than its quota, and every open period is within bounds.
    #[test]
    fn state_machine_invariants(
        events in prop::collection::vec(event(), 1..300),
        backoff in prop_oneof![Just(Backoff::Fixed), Just(Backoff::Exponential), Just(Backoff::Jittered)],
        quota in 1u32..5,
    ) {
        let s = BreakerSettings { backoff, half_open_calls: quota, ..settings() };
        let mut b = Breaker::new(s.clone());
        let mut now = Instant::now();
        let mut trials_outstanding: u32 = 0;
        let mut trials_this_half_open: u32 = 0;
        for e in events {
            match e {
                Event::Advance(ms) => now += Duration::from_millis(ms),
                Event::ProbeBad => { b.probe_unhealthy(now, true); }
                Event::ProbeGood => b.probe_healthy(now),
                Event::Admit => {
                    let before = b.state();
                    let until = b.open_until();
                    let held = b.held_by_probe();
                    let predicted = b.would_admit(now);
                    let (admission, transition) = b.admit(now);
                    // The balancer's read-only filter agrees with what admit then does.
                    prop_assert_eq!(predicted, admission != Admission::Rejected);
                    if before == State::Open && (held || until.is_some_and(|u| now < u)) {
                        prop_assert_eq!(admission, Admission::Rejected);
                    }
                    if transition.is_some() { trials_this_half_open = 0; }
                    if admission == Admission::Trial {
                        trials_this_half_open += 1;
                        trials_outstanding += 1;
                        prop_assert!(trials_this_half_open <= quota, "half-open admitted {} > {}", trials_this_half_open, quota);
                    }
                }
                Event::Result(ok) => {
                    let trial = trials_outstanding > 0 && b.state() == State::HalfOpen;
                    if trial { trials_outstanding -= 1; }
                    let outcome = if ok { Outcome::Success } else { Outcome::Failure };
                    if let Some(t) = b.record(outcome, trial, now, true) {
                        if let Some(open_for) = t.open_for {
                            let low = match s.backoff { Backoff::Jittered => s.open_for.mul_f64(0.75), _ => s.open_for };
                            prop_assert!(open_for >= low && open_for <= s.max_open_for, "open_for {:?}", open_for);
                        }
                        if t.to != State::HalfOpen { trials_outstanding = 0; }
                    }
                }
            }
            if b.state() == State::Open {
                prop_assert!(b.open_until().is_some());
            }
        }
    }
}

#[test]
fn the_window_holds_exactly_window_calls() {
    let now = Instant::now();
    let mut b = Breaker::new(BreakerSettings {
        consecutive_failures: 100,
        window: 4,
        min_calls: 4,
        failure_rate: 0.5,
        ..settings()
    });
    for outcome in [Outcome::Success, Outcome::Failure, Outcome::Success] {
        assert_eq!(b.record(outcome, false, now, true), None);
    }
    let t = b
        .record(Outcome::Failure, false, now, true)
        .expect("2 of the last 4 failed: the rate trips once 4 calls were seen");
    assert_eq!(t.reason, Reason::FailureRate);
}

#[test]
fn a_released_trial_gives_its_slot_back() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    b.release_trial();
    for _ in 0..3 {
        fail(&mut b, now);
    }
    let later = now + Duration::from_secs(1);
    assert_eq!(b.admit(later).0, Admission::Trial);
    assert_eq!(b.admit(later).0, Admission::Trial);
    assert_eq!(b.admit(later).0, Admission::Rejected, "quota of 2 used");
    b.release_trial();
    assert_eq!(b.admit(later).0, Admission::Trial, "the released slot");
    assert_eq!(b.admit(later).0, Admission::Rejected);
}

#[test]
fn failing_probes_on_an_open_breaker_hold_it_without_a_new_trip() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    for _ in 0..3 {
        fail(&mut b, now);
    }
    let until = b.open_until();
    assert_eq!(
        b.probe_unhealthy(now, true),
        None,
        "already open: no new transition"
    );
    assert_eq!(b.open_until(), until, "the open period is not restarted");
    assert!(b.held_by_probe());
}

#[test]
fn recovering_probes_end_the_open_period_at_once() {
    let now = Instant::now();
    let mut b = Breaker::new(settings());
    b.probe_unhealthy(now, true);
    let soon = now + Duration::from_millis(100);
    assert_eq!(b.admit(soon).0, Admission::Rejected);
    b.probe_healthy(soon);
    assert_eq!(b.open_until(), Some(soon));
    assert_eq!(
        b.admit(soon).0,
        Admission::Trial,
        "no need to wait out the 1 s period"
    );
}
