//! gRPC protocol vocabulary shared by every layer (config, breaker, proxy).

mod code;
mod protocol;

pub use code::Code;
pub use protocol::Protocol;
