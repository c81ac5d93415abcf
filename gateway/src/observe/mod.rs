//! What operators see of each call and connection, fed by the call context once it ends: the
//! access log (one line per call or tcp connection) and the last minute of traffic per route
//! and upstream for the status page. Nothing here runs before a call's answer is written, and
//! nothing here waits for a disk.

pub mod access_log;
pub mod traffic;
