//! How a call reached the gateway: native gRPC, gRPC-Web, or JSON through transcoding. The
//! `protocol` of its metrics and access log line.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    GrpcWeb,
    Json,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Json => "json",
        }
    }
}
