//! End-to-end tests: the real `strait` binary between real tonic backends and clients.

mod access_log;
mod breakers;
mod browser;
mod calls;
mod config_errors;
mod deadlines;
mod discovery;
mod dns;
mod fixture;
mod hostile;
mod keepalive;
mod lifecycle;
mod mtls;
mod observability;
mod registrar;
mod reload;
mod retries;
mod routing;
mod schema;
mod soak;
mod streams;
mod supervision;
mod tcp;
mod tracing;
mod traffic;
mod web;
