//! Validation of `[tracing]`.

use crate::config::diagnostics::Diagnostics;
use crate::config::file::TracingSection;
use crate::config::model::TracingConfig;

/// Spans not sampled by a caller's parent are kept at this ratio unless the file says otherwise.
pub const DEFAULT_TRACE_SAMPLE: f64 = 0.01;
const DEFAULT_SERVICE_NAME: &str = "strait";

pub(super) fn validate_tracing(section: &TracingSection, diag: &mut Diagnostics) -> TracingConfig {
    let endpoint = section.otlp_endpoint.get_ref();
    if let Err(reason) = check_otlp_endpoint(endpoint) {
        diag.at(
            Some(section.otlp_endpoint.span()),
            "tracing.otlp_endpoint",
            format!("{endpoint:?} {reason}"),
        );
    }
    let service_name = match &section.service_name {
        None => DEFAULT_SERVICE_NAME.to_string(),
        Some(name) => {
            let value = name.get_ref();
            if value.trim().is_empty() || value.len() > 255 || value.chars().any(char::is_control) {
                diag.at(
                    Some(name.span()),
                    "tracing.service_name",
                    "must be 1 to 255 printable characters",
                );
            }
            value.clone()
        }
    };
    let sample = match &section.sample {
        None => DEFAULT_TRACE_SAMPLE,
        Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            diag.at(
                Some(s.span()),
                "tracing.sample",
                format!("must be between 0 and 1, got {}", s.get_ref()),
            );
            DEFAULT_TRACE_SAMPLE
        }
    };
    TracingConfig {
        otlp_endpoint: endpoint.clone(),
        service_name,
        sample,
    }
}

/// An OTLP/gRPC collector address: `http://` or `https://`, a host, an optional port, no path.
fn check_otlp_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or("is not an OTLP/gRPC URL like \"http://127.0.0.1:4317\" (http:// or https://)")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err("must be a scheme and host[:port] only, like \"http://127.0.0.1:4317\"");
    }
    // The port, if any, follows the last ':' outside an IPv6 literal's brackets.
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("has no valid port (1 to 65535)");
        }
    }
    match endpoint.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some() => Ok(()),
        _ => Err("is not a valid URL"),
    }
}

#[cfg(test)]
mod tests {
    use super::check_otlp_endpoint;

    #[test]
    fn otlp_endpoints() {
        for good in [
            "http://127.0.0.1:4317",
            "https://collector.example.com",
            "http://[::1]:4317/",
            "http://otel:4317",
        ] {
            assert_eq!(check_otlp_endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1:4317",
            "grpc://a:1",
            "http://",
            "http://a:1/v1/traces",
            "http://a:1?x=1",
            "http://user@a:1",
            "http://a:99999",
            "http://a:0",
            "http://a:",
            "http://a b:1",
        ] {
            assert!(check_otlp_endpoint(bad).is_err(), "{bad}");
        }
    }
}
