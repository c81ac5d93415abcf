//! `[gateway]`: region, region header, threads, shutdown grace.

use http::HeaderName;

use super::{duration_up_to, span, ONE_HOUR};
use crate::config::diagnostics::Diagnostics;
use crate::config::file::FileConfig;
use crate::config::model::*;

pub(super) fn validate_gateway(file_config: &FileConfig, diag: &mut Diagnostics) -> GatewayConfig {
    let section = &file_config.gateway;
    let region_header = section.region_header.as_ref().and_then(|h| {
        match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                diag.at(
                    span(h),
                    "gateway.region_header",
                    format!("{:?} is not a valid HTTP header name", h.get_ref()),
                );
                None
            }
        }
    });
    let default_threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = match &section.threads {
        None => default_threads,
        Some(t) if (1..=1024).contains(t.get_ref()) => *t.get_ref() as usize,
        Some(t) => {
            diag.at(
                span(t),
                "gateway.threads",
                format!("must be between 1 and 1024, got {}", t.get_ref()),
            );
            default_threads
        }
    };
    GatewayConfig {
        region: section.region.clone().filter(|r| !r.is_empty()),
        region_header,
        threads,
        shutdown_grace: duration_up_to(
            &section.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            ONE_HOUR,
            "gateway.shutdown_grace".into(),
            diag,
        ),
    }
}
