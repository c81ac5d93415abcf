//! Strait: a gRPC edge gateway on pingora.
//!
//! Data flows one way through the modules:
//! `config` -> `discovery` -> `routing` (immutable snapshot) -> `balancer` -> `proxy`,
//! with per-endpoint state in `endpoint` and the process lifecycle in `server`. `xds` publishes
//! the same snapshot to gRPC clients that call services directly.

pub mod admin;
pub mod background;
mod backoff;
pub mod balancer;
pub mod breaker;
pub mod config;
pub mod control;
pub mod discovery;
pub mod endpoint;
pub mod grpc;
pub mod health;
pub mod memory;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod registrar;
pub mod rehearsal;
pub mod routing;
pub mod server;
pub mod tls;
pub mod transcode;
pub mod xds;
