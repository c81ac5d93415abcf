//! What each attempt's request carries beyond the caller's: the remaining budget, the attempt's
//! number, the gateway's span and the caller's address. Both drivers write these and only these.

use http::header::HeaderName;
use http::HeaderValue;

use crate::grpc::format_grpc_timeout;

use super::CallCtx;

/// The headers an attempt sets, and the ones it removes.
#[derive(Debug, Default)]
pub struct AttemptHeaders<'a> {
    /// `grpc-timeout`, `grpc-previous-rpc-attempts`, `traceparent`, `x-forwarded-for`.
    pub set: [Option<(HeaderName, HeaderValue)>; 4],
    /// `tracestate`, when the gateway restarted the caller's trace.
    pub remove: Option<HeaderName>,
    /// The forwarding headers an untrusted caller sent (`forwarded::UNTRUSTED_FORWARDING`).
    pub remove_forwarding: &'static [HeaderName],
    /// The call's identity headers (`CallCtx::identity`): removed first, then set.
    pub identity: Option<&'a crate::auth::IdentityHeaders>,
}

impl<'a> AttemptHeaders<'a> {
    pub fn to_set(self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + 'a {
        let identity = self
            .identity
            .into_iter()
            .flat_map(|i| i.set.iter().cloned());
        self.set.into_iter().flatten().chain(identity)
    }

    /// Every header to remove before the ones to set are written.
    pub fn to_remove(&self) -> impl Iterator<Item = &HeaderName> {
        let identity = self.identity.into_iter().flat_map(|i| &i.remove);
        self.remove
            .iter()
            .chain(self.remove_forwarding)
            .chain(identity)
    }
}

impl CallCtx {
    /// The headers of the attempt most recently claimed (`tried` already counts it).
    pub fn attempt_headers(&self) -> AttemptHeaders<'_> {
        let mut headers = AttemptHeaders::default();
        if !self.identity.remove.is_empty() || !self.identity.set.is_empty() {
            headers.identity = Some(&self.identity);
        }
        if let Some(remaining) = self.remaining() {
            // The backend gets what is left of the budget, not the caller's original value.
            headers.set[0] = Some((
                HeaderName::from_static("grpc-timeout"),
                once_per_call(format_grpc_timeout(remaining)),
            ));
        }
        if self.tried.len() > 1 {
            // gRPC's retry design: the backend learns this is not the first attempt.
            headers.set[1] = Some((
                HeaderName::from_static("grpc-previous-rpc-attempts"),
                HeaderValue::from(self.tried.len() - 1),
            ));
        }
        if let Some(trace) = &self.trace {
            // The backend's spans join the caller's trace under the gateway's span.
            headers.set[2] = Some((
                HeaderName::from_static("traceparent"),
                trace.traceparent().clone(),
            ));
            if trace.restarted {
                headers.remove = Some(HeaderName::from_static("tracestate"));
            }
        }
        if !self.caller_trusted {
            headers.remove_forwarding = &super::forwarded::UNTRUSTED_FORWARDING;
        }
        if let Some(chain) = &self.forwarded_for {
            headers.set[3] = Some((super::forwarded::X_FORWARDED_FOR, chain.clone()));
        }
        headers
    }
}

/// A header value that differs on every call (a remaining budget, a span id). Marked so that
/// HPACK sends it as a literal that is never indexed: indexed, each call's value would be added
/// to the connection's dynamic table and push out the values that do repeat (content-type,
/// user-agent, the authority), costing every later call bytes and table churn.
fn once_per_call(value: String) -> HeaderValue {
    let mut value =
        HeaderValue::try_from(value).expect("a grpc-timeout is digits and a unit letter");
    value.set_sensitive(true);
    value
}
