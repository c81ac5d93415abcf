//! gRPC protocol vocabulary shared by every layer (config, breaker, proxy).

mod code;

pub use code::Code;
