//! The statuses the gateway answers with itself, in words an operator can act on. Every
//! driver takes them from here; how they are written (trailers-only, trailers, gRPC-Web,
//! JSON) is `grpc::LocalStatus` and `proxy::web::WebCall`.

use crate::auth::{Denial, DenyReason};
use crate::grpc::{Code, FrameError, LocalStatus};
use crate::policy::Refusal;

use super::CallCtx;

impl CallCtx {
    /// When a request body the gateway reads whole before forwarding (JSON, hedged calls) must
    /// have arrived: `limit` (`request_body_timeout`) from now, or the call's own deadline when
    /// that comes first. A caller that stops sending then holds its in-flight slot no longer.
    pub fn body_deadline(&self, limit: std::time::Duration) -> std::time::Instant {
        let by_limit = std::time::Instant::now() + limit;
        self.deadline.map_or(by_limit, |d| d.min(by_limit))
    }

    /// The answer to a call whose body did not arrive by `body_deadline`.
    pub fn body_timeout_status(&self, limit: std::time::Duration) -> LocalStatus {
        if self.deadline_passed() {
            return self.deadline_status();
        }
        LocalStatus::new(
            Code::DeadlineExceeded,
            format!(
                "the request body did not arrive within request_body_timeout ({} ms)",
                limit.as_millis()
            ),
        )
    }

    /// The call's deadline passed before an answer.
    pub fn deadline_status(&self) -> LocalStatus {
        LocalStatus::new(
            Code::DeadlineExceeded,
            format!(
                "deadline exceeded after {} ms waiting for upstream {:?}",
                self.started.elapsed().as_millis(),
                self.upstream_name()
            ),
        )
    }

    /// Why no endpoint could take the call.
    pub fn no_endpoint_status(&self) -> LocalStatus {
        let upstream = self.upstream_name();
        let tried = self.tried.len();
        let message = match &self.last_failure {
            Some(last) => format!(
                "upstream {upstream:?}: no endpoint could take the call after {tried} attempt{}; \
                 last error: {last}",
                if tried == 1 { "" } else { "s" }
            ),
            None => match self.target.as_ref().map(|t| &t.upstream) {
                Some(set) if set.endpoints.is_empty() => format!(
                    "upstream {upstream:?} has no endpoints: {}",
                    set.empty_reason.as_deref().unwrap_or("none configured")
                ),
                Some(set) => {
                    let total = set.endpoints.len();
                    let (open, unhealthy, drained) = set.unusable_counts();
                    if open == total {
                        format!("upstream {upstream:?}: all {total} endpoints open")
                    } else {
                        let parts: Vec<String> = [
                            (open, "open"),
                            (unhealthy, "unhealthy"),
                            (drained, "drained"),
                        ]
                        .into_iter()
                        .filter(|(n, _)| *n > 0)
                        .map(|(n, what)| format!("{n} {what}"))
                        .collect();
                        format!(
                            "upstream {upstream:?}: no usable endpoint ({} of {total})",
                            parts.join(", ")
                        )
                    }
                }
                None => format!("upstream {upstream:?}: no usable endpoint"),
            },
        };
        LocalStatus::new(Code::Unavailable, message)
    }

    /// The backend's answer had begun when its stream failed.
    pub fn mid_call_status(&self) -> LocalStatus {
        LocalStatus::new(
            Code::Unavailable,
            format!(
                "upstream {:?} failed mid-call: {}",
                self.upstream_name(),
                self.last_failure
                    .as_deref()
                    .unwrap_or("stream ended without trailers")
            ),
        )
    }

    /// What the caller is told when proxying ended in an error (`by_caller`: the caller
    /// cancelled or went away). `None` when nothing is to be written: the backend's status
    /// already went out, or nobody is left to answer. What was decided is kept as the call's
    /// own status for its report.
    pub fn closing_status(&mut self, by_caller: bool) -> Option<LocalStatus> {
        if self.upstream_status.is_some() {
            // The backend's status already went out; what failed afterwards (typically the
            // caller resetting its half of a finished stream) must not add a second ending.
            return None;
        }
        let status = if let Some(status) = self.local_status.clone() {
            status
        } else if self.deadline_passed() {
            self.deadline_status()
        } else if by_caller {
            self.local_status = Some(LocalStatus::new(Code::Cancelled, "cancelled by the caller"));
            return None;
        } else if self.response_started {
            self.mid_call_status()
        } else {
            self.no_endpoint_status()
        };
        self.local_status = Some(status.clone());
        Some(status)
    }
}

/// The answer to a call the traffic policy turned away.
pub fn refusal_status(refusal: Refusal, route: &str) -> LocalStatus {
    match refusal {
        Refusal::RateLimited { limit, retry_after } => LocalStatus {
            retry_pushback: Some(retry_after),
            ..LocalStatus::new(
                Code::ResourceExhausted,
                format!("rate limit of route {route:?} exceeded: {limit}"),
            )
        },
        Refusal::Shed { upstream, max } => LocalStatus::new(
            Code::Unavailable,
            format!("upstream {upstream:?} is at its max_in_flight of {max} calls; call shed"),
        ),
    }
}

/// A request body that breaks the listener's message rules.
pub fn request_body_status(error: FrameError) -> LocalStatus {
    match error {
        FrameError::TooLarge { length, limit } => LocalStatus::new(
            Code::ResourceExhausted,
            format!(
                "request message of {length} bytes is larger than this listener's \
                 max_message_size ({limit} bytes)"
            ),
        ),
        FrameError::Truncated => LocalStatus::new(
            Code::Internal,
            "the request body ended inside a gRPC message",
        ),
    }
}

/// A call the route's `auth` refused: UNAUTHENTICATED for its credential, PERMISSION_DENIED
/// for who it is, UNAVAILABLE while the gateway holds no keys. The message says what kind of
/// problem it is, never which key or secret.
pub fn denial_status(denial: &Denial) -> LocalStatus {
    let code = match denial.reason {
        reason if reason.is_authentication() => Code::Unauthenticated,
        DenyReason::KeysUnavailable => Code::Unavailable,
        _ => Code::PermissionDenied,
    };
    LocalStatus::new(code, denial.message.clone())
}
