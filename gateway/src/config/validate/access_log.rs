//! Validation of `[access_log]`.

use std::path::Path;

use crate::config::diagnostics::Diagnostics;
use crate::config::file::AccessLogSection;
use crate::config::model::{AccessLogConfig, AccessLogFormat, AccessLogSink};

pub(super) fn validate_access_log(
    section: &AccessLogSection,
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> AccessLogConfig {
    let sink = match section.path.as_ref().map(|p| (p, p.get_ref().as_str())) {
        None | Some((_, "stderr")) => AccessLogSink::Stderr,
        Some((_, "stdout")) => AccessLogSink::Stdout,
        Some((p, "")) => {
            diag.at(
                Some(p.span()),
                "access_log.path",
                "must be \"stderr\", \"stdout\" or a file path",
            );
            AccessLogSink::Stderr
        }
        Some((p, path)) => {
            let resolved = super::resolve(base_dir, path);
            match resolved.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => diag.at(
                    Some(p.span()),
                    "access_log.path",
                    format!("directory {} does not exist", dir.display()),
                ),
                _ if resolved.is_dir() => diag.at(
                    Some(p.span()),
                    "access_log.path",
                    format!("{} is a directory", resolved.display()),
                ),
                _ => {}
            }
            AccessLogSink::File(resolved)
        }
    };
    let format = match section.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "json")) => AccessLogFormat::Json,
        Some((_, "text")) => AccessLogFormat::Text,
        Some((f, other)) => {
            diag.at(
                Some(f.span()),
                "access_log.format",
                format!("unknown format {other:?}; use \"json\" or \"text\""),
            );
            AccessLogFormat::Json
        }
    };
    let sample = match &section.sample {
        None => 1.0,
        Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            diag.at(
                Some(s.span()),
                "access_log.sample",
                format!("must be between 0 and 1, got {}", s.get_ref()),
            );
            1.0
        }
    };
    AccessLogConfig {
        sink,
        format,
        sample,
    }
}
