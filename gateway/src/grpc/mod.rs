//! gRPC's wire vocabulary, shared by every layer (config, breaker, proxy) and free of pingora:
//! status codes, call protocols, the gateway's own statuses and how they are written
//! (`grpc-message` percent-encoding), the `grpc-timeout` header and the length-prefixed
//! message framing.

mod code;
mod framing;
mod protocol;
mod status;
mod timeout;

pub use code::Code;
pub use framing::{FrameError, FrameScanner};
pub use protocol::Protocol;
pub use status::{decode_grpc_message, encode_grpc_message, LocalStatus};
pub use timeout::{format_grpc_timeout, parse_grpc_timeout};
