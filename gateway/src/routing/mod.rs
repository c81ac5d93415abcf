//! The routing snapshot: an immutable picture of routes, upstreams and their endpoints, swapped
//! atomically whenever it changes. The call path loads it once per call and never locks.

mod grpc_path;
mod lasting;
mod snapshot;

pub use grpc_path::{parse_grpc_path, GrpcPath};
pub use lasting::Lasting;
pub use snapshot::{
    Endpoint, Route, RouteTable, RouteTarget, Routing, RoutingSnapshot, SnapshotError, TcpRoute,
    UpstreamSet,
};
