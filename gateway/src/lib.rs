//! Strait: a gRPC edge gateway on pingora.
//!
//! The modules are listed in the order data flows through them (`docs/architecture.md`): each
//! imports only modules listed above it, so there is no import circle. The vocabulary every
//! layer shares comes first; then config -> discovery -> routing (immutable snapshot) ->
//! balancer -> proxy, with outcomes fed back into per-endpoint state; the listeners, the
//! control plane that writes the snapshot, and operators' views beside them; the process last.

// Shared vocabulary and plumbing.
pub mod grpc;
pub mod logging;
mod backoff;
pub mod memory;
pub mod address_policy;
pub mod tls;
pub mod transcode;
pub mod breaker;
pub mod balancer;
pub mod metrics;
pub mod background;
pub mod auth;

// Configuration, and where endpoints come from.
pub mod config;
pub mod rehearsal;
pub mod discovery;
pub mod registrar;

// Per-call policy, per-endpoint state, the routing snapshot and its probes.
pub mod observe;
pub mod policy;
pub mod endpoint;
pub mod routing;
pub mod health;

// The data path, the listeners it runs on, and the control plane that swaps the snapshot.
pub mod proxy;
pub mod server;
pub mod control;

// Beside the data path: proxyless clients and operators.
pub mod xds;
pub mod admin;

// The process, put together.
pub mod app;
