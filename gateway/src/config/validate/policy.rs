//! Validation of a route's traffic policy (`upstream` or `split`, `match`, `rate_limit`,
//! `retry`) and of the upstream keys that shape load (`max_in_flight`, `region_overprovision`,
//! `retry_budget`).

use std::collections::HashSet;
use std::time::Duration;

use http::HeaderName;

use super::int_in;
use crate::config::diagnostics::Diagnostics;
use crate::config::duration::ConfigDuration;
use crate::config::file::{ByteSize, RouteSection, UpstreamSection};
use crate::config::model::DEFAULT_MEMBERS_PREFIX;
use crate::config::model::{
    Destination, HeaderCondition, HedgeConfig, RateLimitConfig, RateLimitKey, RateLimitScope,
    RetryBudgetConfig, RetryConfig, SplitSide,
};
use crate::config::spanned::Spanned;
use crate::grpc::Code;

/// Envoy's default overprovisioning factor: a region with 5 of 7 endpoints usable still keeps
/// all of its calls; below that it spills gradually.
pub const DEFAULT_REGION_OVERPROVISION: f64 = 1.4;
const MAX_SPLIT_WEIGHT: i64 = 10_000;
const MAX_SPLIT_SIDES: usize = 16;
const MAX_MATCH_HEADERS: usize = 16;
const MAX_RATE: i64 = 1_000_000;
const MAX_IN_FLIGHT: i64 = 1_000_000;

/// A header name a route may test or hash: a valid name, not a pseudo-header, lower case.
fn header_name(
    text: &str,
    key: &str,
    span: std::ops::Range<usize>,
    diag: &mut Diagnostics,
) -> Option<HeaderName> {
    if text.starts_with(':') {
        diag.at(
            Some(span),
            key,
            format!("{text:?} is a pseudo-header; routes choose by service and method instead"),
        );
        return None;
    }
    match HeaderName::from_bytes(text.as_bytes()) {
        Ok(name) => Some(name),
        Err(_) => {
            diag.at(
                Some(span),
                key,
                format!("{text:?} is not a valid HTTP header name"),
            );
            None
        }
    }
}

pub(super) fn validate_destination(
    section: &RouteSection,
    path: &str,
    upstream_names: &HashSet<&str>,
    diag: &mut Diagnostics,
) -> Destination {
    let known =
        |name: &crate::config::spanned::Spanned<String>, key: String, diag: &mut Diagnostics| {
            if !upstream_names.contains(name.get_ref().as_str()) {
                diag.at(
                    Some(name.span()),
                    key,
                    format!("no upstream named {:?}", name.get_ref()),
                );
            }
        };
    let hash_header = section
        .hash_header
        .as_ref()
        .and_then(|h| header_name(h.get_ref(), &format!("{path}.hash_header"), h.span(), diag));
    match (&section.upstream, &section.split) {
        (Some(upstream), None) => {
            known(upstream, format!("{path}.upstream"), diag);
            if let Some(h) = &section.hash_header {
                diag.at(
                    Some(h.span()),
                    format!("{path}.hash_header"),
                    "hash_header chooses a side of a `split`; this route has one upstream",
                );
            }
            Destination::Upstream(upstream.get_ref().clone())
        }
        (None, Some(split)) => {
            let sides_written = split.get_ref();
            if sides_written.is_empty() || sides_written.len() > MAX_SPLIT_SIDES {
                diag.at(
                    Some(split.span()),
                    format!("{path}.split"),
                    format!("a split has 1 to {MAX_SPLIT_SIDES} sides"),
                );
            }
            let mut seen = HashSet::new();
            let mut sides = Vec::new();
            for (j, side) in sides_written.iter().enumerate() {
                let key = format!("{path}.split[{j}]");
                known(&side.upstream, format!("{key}.upstream"), diag);
                if !seen.insert(side.upstream.get_ref().as_str()) {
                    diag.at(
                        Some(side.upstream.span()),
                        format!("{key}.upstream"),
                        format!(
                            "upstream {:?} is already a side of this split",
                            side.upstream.get_ref()
                        ),
                    );
                }
                let weight = *side.weight.get_ref();
                if !(0..=MAX_SPLIT_WEIGHT).contains(&weight) {
                    diag.at(
                        Some(side.weight.span()),
                        format!("{key}.weight"),
                        format!("must be between 0 and {MAX_SPLIT_WEIGHT}, got {weight}"),
                    );
                }
                sides.push(SplitSide {
                    upstream: side.upstream.get_ref().clone(),
                    weight: weight.clamp(0, MAX_SPLIT_WEIGHT) as u32,
                });
            }
            if !sides.is_empty() && sides.iter().all(|s| s.weight == 0) {
                diag.at(
                    Some(split.span()),
                    format!("{path}.split"),
                    "every side has weight 0: the route could take no call",
                );
            }
            Destination::Split { sides, hash_header }
        }
        (Some(upstream), Some(_)) => {
            diag.at(
                Some(upstream.span()),
                path,
                "a route has either `upstream` or `split`, not both",
            );
            Destination::Upstream(upstream.get_ref().clone())
        }
        (None, None) => {
            diag.at(
                Some(section.service.span()),
                path,
                "a route needs `upstream` (or `split`)",
            );
            Destination::Upstream(String::new())
        }
    }
}

pub(super) fn validate_match(
    section: &RouteSection,
    path: &str,
    diag: &mut Diagnostics,
) -> Vec<HeaderCondition> {
    let Some(match_on) = &section.match_on else {
        return Vec::new();
    };
    let headers = &match_on.get_ref().headers;
    let key = format!("{path}.match.headers");
    let names_caller = match_on.get_ref().principal.is_some();
    if (headers.is_empty() && !names_caller) || headers.len() > MAX_MATCH_HEADERS {
        diag.at(
            Some(match_on.span()),
            &key,
            format!(
                "a match lists 1 to {MAX_MATCH_HEADERS} headers (a route without `match` takes every call)"
            ),
        );
    }
    let mut conditions = Vec::new();
    for (name, value) in headers {
        let Some(header) = header_name(name, &key, match_on.span(), diag) else {
            continue;
        };
        let span = value.span();
        let value = value.get_ref();
        if http::HeaderValue::from_str(value).is_err() {
            diag.at(
                Some(span),
                format!("{key}.{name}"),
                format!("{value:?} cannot be a header value"),
            );
        }
        conditions.push(HeaderCondition {
            name: header,
            value: (value != "*").then(|| value.clone()),
        });
    }
    conditions
}

pub(super) fn validate_rate_limit(
    section: &RouteSection,
    path: &str,
    diag: &mut Diagnostics,
) -> Option<RateLimitConfig> {
    let limit = section.rate_limit.as_ref()?;
    let written = limit.get_ref();
    let key_path = format!("{path}.rate_limit");
    let rate = *written.per_second.get_ref();
    if !(1..=MAX_RATE).contains(&rate) {
        diag.at(
            Some(written.per_second.span()),
            format!("{key_path}.per_second"),
            format!("must be between 1 and {MAX_RATE}, got {rate}"),
        );
    }
    let per_second = rate.clamp(1, MAX_RATE) as u32;
    let burst = match &written.burst {
        None => per_second,
        Some(b) if (1..=MAX_RATE).contains(b.get_ref()) => *b.get_ref() as u32,
        Some(b) => {
            diag.at(
                Some(b.span()),
                format!("{key_path}.burst"),
                format!("must be between 1 and {MAX_RATE}, got {}", b.get_ref()),
            );
            per_second
        }
    };
    let key = match written.key.as_ref() {
        None => RateLimitKey::Route,
        Some(k) => match k.get_ref().as_str() {
            "route" => RateLimitKey::Route,
            "peer" => RateLimitKey::Peer,
            "principal" if section.auth.is_none() => {
                diag.at(
                    Some(k.span()),
                    format!("{key_path}.key"),
                    "\"principal\" needs `auth` on the route: only an accepted caller has one",
                );
                RateLimitKey::Route
            }
            "principal" => RateLimitKey::Principal,
            other => match other.strip_prefix("header:") {
                Some(name) => header_name(name, &format!("{key_path}.key"), k.span(), diag)
                    .map(RateLimitKey::Header)
                    .unwrap_or(RateLimitKey::Route),
                None => {
                    diag.at(
                        Some(k.span()),
                        format!("{key_path}.key"),
                        format!(
                            "unknown key {other:?}; use \"route\", \"peer\", \"principal\" or \"header:NAME\""
                        ),
                    );
                    RateLimitKey::Route
                }
            },
        },
    };
    let scope = match written.scope.as_ref() {
        None => RateLimitScope::Gateway,
        Some(s) => match s.get_ref().as_str() {
            "gateway" => RateLimitScope::Gateway,
            "cluster" => RateLimitScope::Cluster,
            other => {
                diag.at(
                    Some(s.span()),
                    format!("{key_path}.scope"),
                    format!("unknown scope {other:?}; use \"gateway\" or \"cluster\""),
                );
                RateLimitScope::Gateway
            }
        },
    };
    Some(RateLimitConfig {
        per_second,
        burst,
        key,
        scope,
    })
}

/// A cluster-wide limit counts the gateways registered in etcd: without `[etcd]` it has nothing
/// to count.
pub(super) fn check_cluster_limits_have_etcd(
    routes: &[RouteSection],
    have_etcd: bool,
    diag: &mut Diagnostics,
) {
    if have_etcd {
        return;
    }
    for (i, route) in routes.iter().enumerate() {
        let scope = route
            .rate_limit
            .as_ref()
            .and_then(|l| l.get_ref().scope.as_ref())
            .filter(|s| s.get_ref() == "cluster");
        if let Some(scope) = scope {
            diag.at(
                Some(scope.span()),
                format!("route[{i}].rate_limit.scope"),
                "a cluster-wide limit needs [etcd]: the gateways share it through their \
                 registrations there",
            );
        }
    }
}

/// `[etcd] members_prefix`: where gateways register, disjoint from the services' prefix.
pub(super) fn validate_members_prefix(
    written: Option<&Spanned<String>>,
    services_prefix: &str,
    diag: &mut Diagnostics,
) -> String {
    let Some(written) = written else {
        return DEFAULT_MEMBERS_PREFIX.to_string();
    };
    let mut prefix = written.get_ref().clone();
    if !prefix.starts_with('/') {
        diag.at(
            Some(written.span()),
            "etcd.members_prefix",
            "must start with '/' (e.g. \"/strait/gateways/\")",
        );
        return DEFAULT_MEMBERS_PREFIX.to_string();
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    if prefix.starts_with(services_prefix) || services_prefix.starts_with(&prefix) {
        diag.at(
            Some(written.span()),
            "etcd.members_prefix",
            format!(
                "{prefix:?} overlaps the services' prefix {services_prefix:?}: gateways would be \
                 read as service instances"
            ),
        );
    }
    prefix
}

/// `max_in_flight` and `region_overprovision` of one upstream.
pub(super) fn validate_load_shaping(
    section: &UpstreamSection,
    path: &str,
    diag: &mut Diagnostics,
) -> (Option<u32>, f64) {
    let max_in_flight = section.max_in_flight.as_ref().and_then(|n| {
        let value = *n.get_ref();
        if (1..=MAX_IN_FLIGHT).contains(&value) {
            Some(value as u32)
        } else {
            diag.at(
                Some(n.span()),
                format!("{path}.max_in_flight"),
                format!("must be between 1 and {MAX_IN_FLIGHT}, got {value}"),
            );
            None
        }
    });
    let overprovision = match &section.region_overprovision {
        None => DEFAULT_REGION_OVERPROVISION,
        Some(f) if *f.get_ref() == 0.0 || (1.0..=10.0).contains(f.get_ref()) => *f.get_ref(),
        Some(f) => {
            diag.at(
                Some(f.span()),
                format!("{path}.region_overprovision"),
                format!(
                    "must be 0 (strict region first) or between 1 and 10, got {}",
                    f.get_ref()
                ),
            );
            DEFAULT_REGION_OVERPROVISION
        }
    };
    (max_in_flight, overprovision)
}

/// pingora keeps at most 64 KiB of a request to send it again (its retry buffer).
pub const MAX_RETRY_BUFFER: u32 = 64 * 1024;
const DEFAULT_RETRY_ATTEMPTS: i64 = 3;
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_millis(250);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);

pub(super) fn validate_retry(
    section: &RouteSection,
    path: &str,
    diag: &mut Diagnostics,
) -> Option<RetryConfig> {
    let retry = section.retry.as_ref()?;
    let written = retry.get_ref();
    let key = |name: &str| format!("{path}.retry.{name}");
    if written.on.is_empty() {
        diag.at(
            Some(retry.span()),
            key("on"),
            "list at least one status, like [\"UNAVAILABLE\"]",
        );
    }
    let mut on = Vec::new();
    for code in &written.on {
        match code.get_ref().parse::<Code>() {
            Ok(Code::Ok) => diag.at(Some(code.span()), key("on"), "OK is not a failure to retry"),
            Ok(c) if on.contains(&c) => {
                diag.at(Some(code.span()), key("on"), format!("{c} is listed twice"))
            }
            Ok(c) => on.push(c),
            Err(e) => diag.at(Some(code.span()), key("on"), e),
        }
    }
    let max_attempts = match &written.max_attempts {
        None => DEFAULT_RETRY_ATTEMPTS,
        Some(n) if (2..=10).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            diag.at(
                Some(n.span()),
                key("max_attempts"),
                format!(
                    "must be between 2 and 10 (the first attempt included), got {}",
                    n.get_ref()
                ),
            );
            DEFAULT_RETRY_ATTEMPTS
        }
    } as u32;
    let duration = |value: &Option<Spanned<ConfigDuration>>,
                    name: &str,
                    default,
                    diag: &mut Diagnostics| match value {
        None => default,
        Some(d) if d.get_ref().0 > Duration::ZERO && d.get_ref().0 <= MAX_RETRY_BACKOFF => {
            d.get_ref().0
        }
        Some(d) => {
            diag.at(
                Some(d.span()),
                key(name),
                format!("must be above 0 and at most 60s, got {:?}", d.get_ref().0),
            );
            default
        }
    };
    let backoff = duration(&written.backoff, "backoff", DEFAULT_RETRY_BACKOFF, diag);
    let max_backoff = duration(
        &written.max_backoff,
        "max_backoff",
        DEFAULT_RETRY_MAX_BACKOFF.max(backoff),
        diag,
    );
    if backoff > max_backoff {
        let at = written
            .max_backoff
            .as_ref()
            .or(written.backoff.as_ref())
            .map(|d| d.span());
        diag.at(
            at,
            key("max_backoff"),
            format!("must be at least backoff ({backoff:?}), got {max_backoff:?}"),
        );
    }
    let buffer = match &written.buffer {
        None => MAX_RETRY_BUFFER,
        Some(size) => match byte_size(size.get_ref()) {
            Ok(bytes) if bytes <= u64::from(MAX_RETRY_BUFFER) => bytes as u32,
            Ok(bytes) => {
                diag.at(
                    Some(size.span()),
                    key("buffer"),
                    format!(
                        "at most 64KiB (the most of a request the gateway keeps to send again), got {bytes} bytes"
                    ),
                );
                MAX_RETRY_BUFFER
            }
            Err(e) => {
                diag.at(Some(size.span()), key("buffer"), e);
                MAX_RETRY_BUFFER
            }
        },
    };
    Some(RetryConfig {
        on,
        max_attempts,
        backoff,
        max_backoff: max_backoff.max(backoff),
        buffer,
    })
}

/// A route's `hedge`: only with `idempotent = true`, and not with `retry` (A6: a method has one
/// policy or the other).
pub(super) fn validate_hedge(
    section: &RouteSection,
    path: &str,
    diag: &mut Diagnostics,
) -> Option<HedgeConfig> {
    let hedge = section.hedge.as_ref()?;
    let written = hedge.get_ref();
    let key = |name: &str| format!("{path}.hedge{name}");
    if !section.idempotent.as_ref().is_some_and(|i| *i.get_ref()) {
        diag.at(
            Some(hedge.span()),
            key(""),
            "hedging sends a call more than once: mark the route `idempotent = true` if its \
             calls may run twice",
        );
    }
    if let Some(retry) = &section.retry {
        diag.at(
            Some(retry.span()),
            format!("{path}.retry"),
            "a route has either `retry` or `hedge`, not both (a hedged call is already sent \
             again)",
        );
    }
    let delay = written.delay.get_ref().0;
    if delay < Duration::from_millis(1) || delay > MAX_RETRY_BACKOFF {
        diag.at(
            Some(written.delay.span()),
            key(".delay"),
            format!("must be between 1ms and 60s, got {delay:?}"),
        );
    }
    let max_attempts = match &written.max_attempts {
        None => 2,
        Some(n) if (2..=5).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            diag.at(
                Some(n.span()),
                key(".max_attempts"),
                format!(
                    "must be between 2 and 5 (the first attempt included), got {}",
                    n.get_ref()
                ),
            );
            2
        }
    };
    Some(HedgeConfig {
        delay: delay.clamp(Duration::from_millis(1), MAX_RETRY_BACKOFF),
        max_attempts,
    })
}

/// "64KiB", "512B", "1MiB" or a plain number of bytes.
fn byte_size(size: &ByteSize) -> Result<u64, String> {
    let text = match size {
        ByteSize::Bytes(n) => {
            return u64::try_from(*n).map_err(|_| format!("a size cannot be negative, got {n}"))
        }
        ByteSize::Text(text) => text.trim(),
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use B, KiB or MiB"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_bytes))
        .ok_or_else(|| format!("{text:?} is not a size like \"64KiB\""))
}

/// An upstream's `retry_budget`.
pub(super) fn validate_retry_budget(
    section: &UpstreamSection,
    path: &str,
    diag: &mut Diagnostics,
) -> RetryBudgetConfig {
    let defaults = RetryBudgetConfig::default();
    let Some(budget) = &section.retry_budget else {
        return defaults;
    };
    let written = budget.get_ref();
    let key = |name: &str| format!("{path}.retry_budget.{name}");
    RetryBudgetConfig {
        percent: int_in(
            &written.percent,
            0..=100,
            defaults.percent,
            key("percent"),
            diag,
        ),
        min_per_second: int_in(
            &written.min_per_second,
            0..=100_000,
            defaults.min_per_second,
            key("min_per_second"),
            diag,
        ),
    }
}
