//! Reading pingora's errors into the call core's terms: what went wrong in words, whose doing
//! it was, and whether the backend certainly did not see the call.

use pingora::{Error, ErrorSource, ErrorType};

use crate::proxy::call::AttemptFailure;

/// An attempt's failure as the call core judges it; `connecting` when no connection was made.
pub fn read(e: &Error, connecting: bool) -> AttemptFailure {
    AttemptFailure {
        connecting,
        by_caller: caused_by_caller(e),
        timed_out: *e.etype() == ErrorType::ReadTimedout,
        unprocessed: certainly_unprocessed(e),
        reason: describe(e),
    }
}

/// A short, human reason for an attempt's failure, used in the caller's `grpc-message`.
pub fn describe(e: &Error) -> String {
    let reason = match e.etype() {
        ErrorType::ConnectRefused => "connection refused",
        ErrorType::ConnectTimedout => "connect timed out",
        ErrorType::ConnectNoRoute => "no route to host",
        ErrorType::TLSHandshakeFailure | ErrorType::HandshakeError => "TLS handshake failed",
        ErrorType::TLSHandshakeTimedout => "TLS handshake timed out",
        ErrorType::InvalidCert => "invalid certificate",
        ErrorType::ReadTimedout => "timed out waiting for the backend",
        ErrorType::ConnectionClosed => "connection closed",
        ErrorType::ReadError | ErrorType::WriteError => "connection error",
        ErrorType::H2Error => {
            if let Some(h2e) = h2_cause(e) {
                if h2e.is_go_away() && h2e.is_remote() {
                    return "backend sent GOAWAY".into();
                }
                if h2e.is_go_away() {
                    return "the connection to the backend failed".into();
                }
                if let Some(reason) = h2e.reason() {
                    return format!("backend reset the stream ({reason:?})");
                }
            }
            "HTTP/2 error"
        }
        ErrorType::InvalidH2 | ErrorType::H2Downgrade => "backend does not speak HTTP/2",
        _ => return e.etype().as_str().to_string(),
    };
    reason.to_string()
}

/// True when the backend certainly did not process the request: it refused the stream, or the
/// stream was above the last id of its GOAWAY. Only then may a non-idempotent gRPC call be
/// retried. Both must come from the backend: when the gateway's own HTTP/2 client gives up on a
/// connection (a GOAWAY it sends), the backend may well have processed the calls on it.
pub fn certainly_unprocessed(e: &Error) -> bool {
    if *e.esource() != ErrorSource::Upstream {
        return false;
    }
    h2_cause(e).is_some_and(|h2e| {
        h2e.is_remote() && (h2e.is_go_away() || h2e.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// True when the error came from the caller's side (it cancelled or went away).
pub fn caused_by_caller(e: &Error) -> bool {
    *e.esource() == ErrorSource::Downstream
}

fn h2_cause(e: &Error) -> Option<&h2::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(h2e) = err.downcast_ref::<h2::Error>() {
            return Some(h2e);
        }
        current = err.source();
    }
    // pingora keeps the cause outside the std `source()` chain; look there too.
    e.root_cause().downcast_ref::<h2::Error>()
}
