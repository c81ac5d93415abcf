//! Test support for Strait: real gRPC backends, real clients, and the gateway as a real process.
//!
//! Everything here talks over loopback sockets; nothing is mocked.

pub mod attack;
pub mod ccore;
pub mod dns;
pub mod echo;
pub mod etcd;
pub mod ext_authz;
pub mod gateway;
pub mod h2_backend;
pub mod jwt;
pub mod net;
pub mod otlp;
pub mod raw;
pub mod tcp;
pub mod tls;
pub mod xds;

/// Generated from `proto/echo.proto`.
pub mod pb {
    tonic::include_proto!("bench");
}

/// `proto/echo.proto` as a FileDescriptorSet with its imports (google.api.http annotations).
pub const ECHO_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.pb"));

pub use echo::{Backend, BackendOptions};
pub use gateway::Gateway;

/// Largest message the test clients and backends accept (tonic's default is 4 MiB, which a
/// 4 MiB payload plus framing would exceed).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
