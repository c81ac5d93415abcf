//! Validation of a route's traffic policy (`upstream` or `split`, `match`, `rate_limit`) and of
//! the upstream keys that shape load (`max_in_flight`, `region_overprovision`).

use std::collections::HashSet;

use http::HeaderName;

use super::diagnostics::Diagnostics;
use super::file::{RouteSection, UpstreamSection};
use super::model::{Destination, HeaderCondition, RateLimitConfig, RateLimitKey, SplitSide};

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
    let known = |name: &super::spanned::Spanned<String>, key: String, diag: &mut Diagnostics| {
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
    if headers.is_empty() || headers.len() > MAX_MATCH_HEADERS {
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
            other => match other.strip_prefix("header:") {
                Some(name) => header_name(name, &format!("{key_path}.key"), k.span(), diag)
                    .map(RateLimitKey::Header)
                    .unwrap_or(RateLimitKey::Route),
                None => {
                    diag.at(
                        Some(k.span()),
                        format!("{key_path}.key"),
                        format!(
                            "unknown key {other:?}; use \"route\", \"peer\" or \"header:NAME\""
                        ),
                    );
                    RateLimitKey::Route
                }
            },
        },
    };
    Some(RateLimitConfig {
        per_second,
        burst,
        key,
    })
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
