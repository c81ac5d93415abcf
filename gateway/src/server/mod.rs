//! The listener machinery: every data listener a pingora listening service on a socket bound
//! by us (`listeners.rs`), behind a connection cap and handshake deadline (`admission.rs`) and
//! the HTTP/2 frame guard (`frame_guard.rs`), on one shared runtime (`runtime.rs`); and the
//! drain on SIGTERM (`drain.rs`). The process itself is put together in `app.rs`.

mod admission;
mod drain;
mod frame_guard;
mod listeners;
mod proxy_protocol;
mod runtime;

pub use drain::exit_when_drained;
pub use listeners::{
    check_bindable, ListenerChanges, ListenerDeps, ListenerError, ListenerPlan, ListenerSet,
};

/// An app behind a connection cap and nothing else (the admin listener: its own cap, so a
/// client holding connections open cannot take the data listeners' slots or its own forever).
pub fn with_connection_cap<A>(
    listener: &str,
    app: A,
    max_connections: u32,
) -> impl pingora::apps::ServerApp
where
    A: pingora::apps::ServerApp + Send + Sync + 'static,
{
    admission::Admission::new(
        listener,
        app,
        max_connections,
        admission::Handshake::None,
        None,
        None,
    )
}
