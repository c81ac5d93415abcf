//! A dry run of the time arithmetic a running gateway does with a validated config: deadlines
//! from route timeouts, breaker open periods over many consecutive trips, probe schedules,
//! connect and dial timeouts, keepalive, drain. Validation bounds every duration so that none of
//! it can overflow; the rehearsal proves it for a given config. `strait check` runs it, and so do
//! the property test over generated configs and the config fuzz target.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::grpc::format_grpc_timeout;

/// The consecutive trips rehearsed: past the doubling cap (30) and well beyond.
const TRIPS: u32 = 64;

/// What failed, for a message; `Ok` when everything the config asks for is representable.
pub fn rehearse(config: &Config) -> Result<(), String> {
    let now = Instant::now();
    let at = |what: &str, d: Duration| -> Result<Instant, String> {
        now.checked_add(d)
            .ok_or_else(|| format!("{what} of {d:?} cannot be scheduled"))
    };
    at("gateway.shutdown_grace", config.gateway.shutdown_grace)?;
    if let Some(etcd) = &config.etcd {
        // Discovery waits dial_timeout * 2 to connect and * 5 for the first list.
        let list = etcd
            .dial_timeout
            .checked_mul(5)
            .ok_or("etcd.dial_timeout is too long")?;
        at("etcd.dial_timeout", list)?;
    }
    for listener in &config.listeners {
        at("listener.idle_timeout", listener.idle_timeout)?;
        at(
            "listener.limits.handshake_timeout",
            listener.limits.handshake_timeout,
        )?;
        at(
            "listener.limits.request_header_timeout",
            listener.limits.request_header_timeout,
        )?;
        if let Some(keepalive) = listener.limits.keepalive {
            at("listener.limits.keepalive", keepalive)?;
        }
    }
    for route in &config.routes {
        if let Some(timeout) = route.timeout {
            at("route.timeout", timeout)?;
            // The budget sent upstream always parses back (8 digits and a unit).
            let header = format_grpc_timeout(timeout);
            crate::grpc::parse_grpc_timeout(header.as_bytes())
                .ok_or_else(|| format!("route.timeout {timeout:?} formats as {header:?}"))?;
        }
    }
    for upstream in &config.upstreams {
        // Pingora's total connection timeout is twice the per-endpoint one.
        let connect = upstream
            .connect_timeout
            .checked_mul(2)
            .ok_or("upstream.connect_timeout is too long")?;
        at("upstream.connect_timeout", connect)?;
        if let Some(health) = &upstream.health {
            at("upstream.health.interval", health.interval)?;
            at("upstream.health.timeout", health.timeout)?;
            at(
                "upstream.health.interval (first probe spread)",
                health.interval.mul_f64(0.999),
            )?;
        }
        for trip in 1..=TRIPS {
            for random in [0.0, 0.5, 0.999] {
                let open = upstream.breaker.open_period(trip, random);
                at("upstream.breaker open period", open)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Lasting;
    use crate::routing::RoutingSnapshot;
    use proptest::prelude::*;
    use std::path::Path;

    const HOUR_MS: u64 = 3_600_000;
    const YEAR_MS: u64 = 365 * 24 * HOUR_MS;

    /// Durations (in ms) for each field, as a config file would write them.
    struct Durations {
        shutdown_grace: u64,
        dial_timeout: u64,
        idle_timeout: u64,
        handshake_timeout: u64,
        request_header_timeout: u64,
        keepalive_s: u64,
        route_timeout: u64,
        connect_timeout: u64,
        interval: u64,
        probe_timeout: u64,
        open_for: u64,
        max_open_for: u64,
    }

    fn text(d: &Durations) -> String {
        format!(
            r#"
[gateway]
shutdown_grace = "{}ms"

[etcd]
endpoints = ["http://127.0.0.1:2379"]
dial_timeout = "{}ms"

[[listener]]
name = "public"
listen = "127.0.0.1:18080"
idle_timeout = "{}ms"

[listener.limits]
handshake_timeout = "{}ms"
request_header_timeout = "{}ms"
keepalive = "{}s"

[[route]]
listener = "public"
service = "*"
upstream = "static"
timeout = "{}ms"

[[upstream]]
name = "static"
endpoints = [{{ addr = "127.0.0.1:50051" }}]
connect_timeout = "{}ms"
health = {{ interval = "{}ms", timeout = "{}ms" }}
breaker = {{ open_for = "{}ms", max_open_for = "{}ms", backoff = "jittered" }}

[[upstream]]
name = "etcd"
discovery = "etcd"
service = "echo"
"#,
            d.shutdown_grace,
            d.dial_timeout,
            d.idle_timeout,
            d.handshake_timeout,
            d.request_header_timeout,
            d.keepalive_s,
            d.route_timeout,
            d.connect_timeout,
            d.interval,
            d.probe_timeout,
            d.open_for,
            d.max_open_for,
        )
    }

    /// Validates, builds a routing snapshot and rehearses; `Err` only for a refused file.
    fn accept_and_run(d: &Durations) -> Result<(), String> {
        let config = crate::config::parse(&text(d), Path::new("p.toml"), Path::new("/nonexistent"))
            .map_err(|e| e.to_string())?;
        RoutingSnapshot::build(&config, Default::default(), &Lasting::default(), None)
            .expect("an accepted config builds a snapshot");
        rehearse(&config).expect("an accepted config rehearses");
        Ok(())
    }

    fn maxima() -> Durations {
        Durations {
            shutdown_grace: HOUR_MS,
            dial_timeout: HOUR_MS,
            idle_timeout: YEAR_MS,
            handshake_timeout: HOUR_MS,
            request_header_timeout: HOUR_MS,
            keepalive_s: 32_767,
            route_timeout: YEAR_MS,
            connect_timeout: HOUR_MS,
            interval: HOUR_MS,
            probe_timeout: HOUR_MS,
            open_for: HOUR_MS,
            max_open_for: HOUR_MS,
        }
    }

    #[test]
    fn every_maximum_is_accepted_and_safe() {
        accept_and_run(&maxima()).unwrap();
    }

    #[test]
    fn one_past_any_maximum_is_refused_with_its_key() {
        type Field = fn(&mut Durations) -> &mut u64;
        let fields: [(&str, Field); 9] = [
            ("gateway.shutdown_grace", |d| &mut d.shutdown_grace),
            ("etcd.dial_timeout", |d| &mut d.dial_timeout),
            ("idle_timeout", |d| &mut d.idle_timeout),
            ("handshake_timeout", |d| &mut d.handshake_timeout),
            ("request_header_timeout", |d| &mut d.request_header_timeout),
            ("route", |d| &mut d.route_timeout),
            ("connect_timeout", |d| &mut d.connect_timeout),
            ("breaker.open_for", |d| &mut d.open_for),
            ("max_open_for", |d| &mut d.max_open_for),
        ];
        for (key, field) in fields {
            let mut d = maxima();
            *field(&mut d) += 1;
            let error = accept_and_run(&d).expect_err(key);
            assert!(error.contains(key), "{key}: {error}");
            assert!(error.contains("at most"), "{key}: {error}");
        }
        // The finding that started this: a huge route timeout is refused, not run.
        let mut d = maxima();
        d.route_timeout = u64::MAX / 2;
        assert!(accept_and_run(&d).unwrap_err().contains("at most 365 days"));
    }

    fn within(max: u64) -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(max),
            Just(max + 1),
            0..=max,
            max..u64::MAX / 4,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever durations a file holds, it is either refused or safe to run.
        #[test]
        fn accepted_configs_are_safe_to_run(
            shutdown_grace in within(HOUR_MS),
            dial_timeout in within(HOUR_MS),
            idle_timeout in within(YEAR_MS),
            handshake_timeout in within(HOUR_MS),
            request_header_timeout in within(HOUR_MS),
            keepalive_s in within(32_767),
            route_timeout in within(YEAR_MS),
            connect_timeout in within(HOUR_MS),
            interval in within(HOUR_MS),
            probe_timeout in within(HOUR_MS),
            open_for in within(HOUR_MS),
            max_open_for in within(HOUR_MS),
        ) {
            let _ = accept_and_run(&Durations {
                shutdown_grace, dial_timeout, idle_timeout, handshake_timeout,
                request_header_timeout, keepalive_s, route_timeout, connect_timeout, interval,
                probe_timeout, open_for, max_open_for,
            });
        }
    }
}
