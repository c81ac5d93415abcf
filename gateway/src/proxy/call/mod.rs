//! The call core: every gRPC call is decided here, whichever driver carries it. It knows
//! nothing of pingora; the two drivers translate between their transport and these types:
//! `proxy/grpc/mod.rs` (pingora's `ProxyHttp` hooks, for plain calls) and `proxy/grpc/relay.rs`
//! (the gateway's own relay, for hedged and JSON calls).
//!
//! - `ctx.rs`: the call's context and its current attempt (`CallCtx`, `Attempt`).
//! - `admission.rs`: route, traffic policy, deadline, preferred region.
//! - `attempts.rs`: claiming an endpoint through the dial gate, judging an attempt's end
//!   (breaker verdict, counters, span), whether and when the call goes again.
//! - `headers.rs`: what every attempt's request carries (budget, attempt number, span).
//! - `answers.rs`: the statuses the gateway answers with itself.
//! - `ext_authz.rs`: what a route's external authorization service is asked, and what its
//!   answer means (the asking, an await, is the driver's).

mod admission;
mod answers;
mod attempts;
mod ctx;
mod ext_authz;
mod forwarded;
mod headers;
#[cfg(test)]
mod tests;

pub use admission::{CallSettings, Request};
pub use answers::{refusal_status, request_body_status};
pub use attempts::{AttemptFailure, Claimed, DialWait, Resend, StatusFacts, DEADLINE_SLACK};
pub use ctx::{Attempt, CallCtx};
pub use ext_authz::{CheckedCall, ExtAuthzCheck};
pub use headers::AttemptHeaders;
