use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Fake {
    weight: u32,
    region: Option<String>,
    usable: bool,
}

impl Candidate for Fake {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
    fn is_usable(&self) -> bool {
        self.usable
    }
}

fn ep(weight: u32, region: &str) -> Fake {
    Fake {
        weight,
        region: Some(region.to_string()),
        usable: true,
    }
}

fn counts(endpoints: &[Fake], region: Option<&str>, n: usize) -> Vec<usize> {
    let wrr = SmoothWrr::new(endpoints.len());
    let mut counts = vec![0; endpoints.len()];
    for _ in 0..n {
        counts[pick(&wrr, endpoints, region, &[]).unwrap()] += 1;
    }
    counts
}

#[test]
fn preferred_region_takes_all_calls_while_usable() {
    let eps = vec![ep(100, "eu"), ep(50, "us"), ep(10, "eu")];
    let c = counts(&eps, Some("eu"), 1100);
    assert_eq!(c[1], 0);
    assert_eq!(c[0], 1000);
    assert_eq!(c[2], 100);
}

#[test]
fn falls_back_to_all_regions_by_weight_when_preferred_has_none_usable() {
    let mut eps = vec![ep(100, "eu"), ep(50, "us"), ep(25, "ap")];
    eps[0].usable = false;
    let c = counts(&eps, Some("eu"), 75 * 10);
    assert_eq!(c, vec![0, 500, 250]);
}

#[test]
fn region_with_only_drained_endpoints_counts_as_empty() {
    let eps = vec![ep(0, "eu"), ep(10, "us")];
    let c = counts(&eps, Some("eu"), 10);
    assert_eq!(c, vec![0, 10]);
}

#[test]
fn unknown_region_uses_everything() {
    let eps = vec![ep(3, "eu"), ep(1, "us")];
    let c = counts(&eps, Some("mars"), 400);
    assert_eq!(c, vec![300, 100]);
}

#[test]
fn weight_zero_is_never_picked_and_nothing_usable_picks_none() {
    let eps = vec![ep(0, "eu"), ep(0, "us")];
    let wrr = SmoothWrr::new(2);
    assert_eq!(pick(&wrr, &eps, Some("eu"), &[]), None);
}

#[test]
fn excluded_endpoints_are_skipped() {
    let eps = vec![ep(100, "eu"), ep(1, "eu")];
    let wrr = SmoothWrr::new(2);
    for _ in 0..10 {
        assert_eq!(pick(&wrr, &eps, Some("eu"), &[0]), Some(1));
    }
    assert_eq!(pick(&wrr, &eps, Some("eu"), &[0, 1]), None);
}

proptest! {
    /// Smooth WRR is exact per period: in every run of `total` picks from the start (total =
    /// the sum of the weights), each endpoint is picked exactly its weight times.
    #[test]
    fn every_period_gives_each_endpoint_exactly_its_weight(weights in prop::collection::vec(1u32..=100, 1..8)) {
        let eps: Vec<Fake> = weights.iter().map(|w| ep(*w, "r")).collect();
        let total = weights.iter().sum::<u32>() as usize;
        let wrr = SmoothWrr::new(eps.len());
        for period in 0..5 {
            let mut c = vec![0u32; eps.len()];
            for _ in 0..total {
                c[pick(&wrr, &eps, None, &[]).unwrap()] += 1;
            }
            prop_assert_eq!(&c, &weights, "period {}", period);
        }
    }

    /// Smoothness: within any window of `total` consecutive picks (not only whole periods),
    /// each endpoint appears its weight times give or take one, and at least once: no endpoint
    /// is starved for a whole period's worth of picks.
    #[test]
    fn picks_are_interleaved(weights in prop::collection::vec(1u32..=20, 2..6)) {
        let eps: Vec<Fake> = weights.iter().map(|w| ep(*w, "r")).collect();
        let total: u32 = weights.iter().sum();
        let wrr = SmoothWrr::new(eps.len());
        let seq: Vec<usize> = (0..(total as usize * 4)).map(|_| pick(&wrr, &eps, None, &[]).unwrap()).collect();
        for window in seq.windows(total as usize) {
            for (i, w) in weights.iter().enumerate() {
                let seen = window.iter().filter(|x| **x == i).count() as i64;
                prop_assert!(seen >= 1, "endpoint {i} weight {w} never picked in a window of {total}");
                prop_assert!((seen - i64::from(*w)).abs() <= 1, "endpoint {i} weight {w} seen {seen} in a window");
            }
        }
        // No endpoint gets a burst much longer than its share forces: with weight w among total t
        // a run is at most 2t/(t-w) (twice the even spacing; the exact 5,1,1 case is above).
        for (i, w) in weights.iter().enumerate() {
            let others = total - w;
            let bound = (2 * total / others) as usize;
            let mut longest = 0; let mut run = 0;
            for x in &seq { if *x == i { run += 1; longest = longest.max(run); } else { run = 0; } }
            prop_assert!(longest <= bound, "endpoint {i}: run {longest} exceeds {bound} for {weights:?}");
        }
    }

    /// Whatever the regions, usability and exclusions, a pick is always usable, not excluded,
    /// and in the preferred region whenever that region has a usable endpoint.
    #[test]
    fn picks_respect_region_and_exclusion(
        spec in prop::collection::vec((0u32..=5, 0usize..3, any::<bool>()), 1..10),
        preferred in 0usize..4,
        excluded_mask in any::<u16>(),
    ) {
        let regions = ["a", "b", "c", "d"];
        let eps: Vec<Fake> = spec.iter().map(|(w, r, u)| Fake { weight: *w, region: Some(regions[*r].into()), usable: *u }).collect();
        let excluded: Vec<usize> = (0..eps.len()).filter(|i| excluded_mask & (1 << i) != 0).collect();
        let wrr = SmoothWrr::new(eps.len());
        let region = regions[preferred];
        let ok = |i: usize| eps[i].weight > 0 && eps[i].usable && !excluded.contains(&i);
        let any_ok = (0..eps.len()).any(ok);
        let any_in_region = (0..eps.len()).any(|i| ok(i) && eps[i].region.as_deref() == Some(region));
        for _ in 0..20 {
            match pick(&wrr, &eps, Some(region), &excluded) {
                None => prop_assert!(!any_ok),
                Some(i) => {
                    prop_assert!(ok(i));
                    if any_in_region { prop_assert_eq!(eps[i].region.as_deref(), Some(region)); }
                }
            }
        }
    }
}

fn spill_gauge(endpoints: usize, home_region: Option<&str>) -> (Balancer, prometheus::Gauge) {
    let gauge = prometheus::Gauge::new("spill", "test").unwrap();
    // Not a value these tests' reports set: any report shows.
    gauge.set(0.25);
    let report = SpillReport {
        upstream: "u".into(),
        home_region: home_region.map(str::to_string),
        gauge: Some(gauge.clone()),
    };
    (Balancer::new(endpoints, 1.0, report), gauge)
}

#[test]
fn only_the_home_regions_spill_is_reported() {
    let eps = vec![ep(100, "home"), ep(100, "away")];
    let (balancer, gauge) = spill_gauge(eps.len(), Some("home"));
    assert!(balancer.pick(&eps, Some("away"), &[]).is_some());
    assert_eq!(gauge.get(), 0.25, "another region's calls report nothing");
    assert!(balancer.pick(&eps, None, &[]).is_some());
    assert_eq!(gauge.get(), 0.25, "calls without a region report nothing");
    assert_eq!(balancer.pick(&eps, Some("home"), &[]), Some(0));
    assert_eq!(gauge.get(), 0.0, "the home region, nothing spilled");

    let (balancer, gauge) = spill_gauge(eps.len(), None);
    assert!(balancer.pick(&eps, None, &[]).is_some());
    assert_eq!(gauge.get(), 0.25, "no home region: nothing to report");
}

#[test]
fn the_spilled_share_is_reported_in_thousandths() {
    // Two of the home region's three endpoints are out: it keeps a third of its calls
    // (region_overprovision 1.0) and spills two thirds.
    let mut eps = vec![
        ep(100, "home"),
        ep(100, "home"),
        ep(100, "home"),
        ep(100, "away"),
    ];
    eps[1].usable = false;
    eps[2].usable = false;
    let (balancer, gauge) = spill_gauge(eps.len(), Some("home"));
    assert!(balancer.pick(&eps, Some("home"), &[]).is_some());
    assert_eq!(gauge.get(), 0.667);
}

/// Log lines written while `f` runs.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = lines.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn a_spill_is_logged_once_it_starts_not_while_nothing_spills() {
    let all = vec![ep(100, "home"), ep(100, "home"), ep(100, "away")];
    let (balancer, _) = spill_gauge(all.len(), Some("home"));
    let quiet = logged(|| {
        balancer.pick(&all, Some("home"), &[]);
    });
    assert!(!quiet.contains("region spill changed"), "{quiet}");
    let mut half = all.clone();
    half[1].usable = false;
    let spilled = logged(|| {
        balancer.pick(&half, Some("home"), &[]);
    });
    assert!(spilled.contains("region spill changed"), "{spilled:?}");
}
