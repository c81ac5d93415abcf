//! The data path: the L7 gRPC proxy (pingora `ProxyHttp`) and the shared in-flight call count
//! the shutdown drain waits on.

pub mod call;
pub mod grpc;
mod inflight;
pub mod refusal;
pub mod tcp;
pub mod web;

pub use inflight::{CallGuard, InFlightCalls};
