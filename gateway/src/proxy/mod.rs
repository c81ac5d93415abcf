//! The data path: the call core every gRPC call is decided in (`call`), its two drivers
//! (`grpc`: pingora's `ProxyHttp` hooks and the gateway's own relay), browsers' and REST
//! clients' translation (`web`), the L4 proxy (`tcp`) and the shared in-flight call count the
//! shutdown drain waits on.

pub mod call;
pub mod grpc;
mod inflight;
pub mod refusal;
pub mod tcp;
pub mod web;

pub use inflight::{CallGuard, InFlightCalls};
