//! gRPC status codes and the gateway's own gRPC-shaped answers.

use http::{HeaderMap, HeaderValue};
use pingora::http::ResponseHeader;

pub use crate::grpc::Code;

/// A status the gateway itself decided on, with the message the caller will read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStatus {
    pub code: Code,
    pub message: String,
    /// `grpc-retry-pushback-ms`: when the caller may try again (gRPC retry design A6).
    pub retry_pushback: Option<std::time::Duration>,
}

impl LocalStatus {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_pushback: None,
        }
    }

    /// The answer to a call the traffic policy turned away.
    pub fn refused(refusal: crate::policy::Refusal, route: &str) -> Self {
        match refusal {
            crate::policy::Refusal::RateLimited { limit, retry_after } => Self {
                retry_pushback: Some(retry_after),
                ..Self::new(
                    Code::ResourceExhausted,
                    format!("rate limit of route {route:?} exceeded: {limit}"),
                )
            },
            crate::policy::Refusal::Shed { upstream, max } => Self::new(
                Code::Unavailable,
                format!("upstream {upstream:?} is at its max_in_flight of {max} calls; call shed"),
            ),
        }
    }

    fn pushback_value(&self) -> Option<HeaderValue> {
        // Rounded up: a caller that waits exactly this long finds a token.
        let wait = self.retry_pushback?;
        // At least 1: "0" would read as "try again now", and the token is not there yet.
        let millis = (wait.as_millis() + u128::from(wait.subsec_nanos() % 1_000_000 != 0)).max(1);
        HeaderValue::from_str(&millis.to_string()).ok()
    }

    /// The response head of a trailers-only answer: HTTP 200 carrying the status, sent with
    /// END_STREAM. gRPC clients depend on this exact shape (e.g. for transparent retries).
    pub fn trailers_only_response(&self) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, Some(3)).expect("static status line is valid");
        resp.insert_header("content-type", "application/grpc")
            .expect("static header is valid");
        resp.insert_header("grpc-status", self.code.header_value())
            .expect("numeric header is valid");
        resp.insert_header("grpc-message", encode_grpc_message(&self.message))
            .expect("percent-encoded header is valid");
        if let Some(pushback) = self.pushback_value() {
            resp.insert_header("grpc-retry-pushback-ms", pushback)
                .expect("numeric header is valid");
        }
        resp
    }

    /// Trailers that end a stream whose response headers were already sent.
    pub fn trailers(&self) -> HeaderMap {
        let mut trailers = HeaderMap::with_capacity(2);
        trailers.insert("grpc-status", self.code.header_value());
        trailers.insert("grpc-message", encode_grpc_message(&self.message));
        if let Some(pushback) = self.pushback_value() {
            trailers.insert("grpc-retry-pushback-ms", pushback);
        }
        trailers
    }
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec requires: printable ASCII except
/// `%` goes as is, everything else (UTF-8 bytes) as `%XX`.
pub fn encode_grpc_message(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&out).expect("only visible ASCII remains after encoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_headers() {
        for code in Code::ALL {
            let value = code.header_value();
            assert_eq!(Code::from_header(value.as_bytes()), code);
        }
        assert_eq!(Code::from_header(b"17"), Code::Unknown);
        assert_eq!(Code::from_header(b"abc"), Code::Unknown);
        assert_eq!(Code::from_header(b" 14 "), Code::Unavailable);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            encode_grpc_message("plain text").to_str().unwrap(),
            "plain text"
        );
        assert_eq!(encode_grpc_message("100%").to_str().unwrap(), "100%25");
        assert_eq!(encode_grpc_message("é\n").to_str().unwrap(), "%C3%A9%0A");
    }

    #[test]
    fn trailers_only_has_grpc_shape() {
        let resp = LocalStatus::new(Code::Unavailable, "no endpoint").trailers_only_response();
        assert_eq!(resp.status.as_u16(), 200);
        assert_eq!(resp.headers["content-type"], "application/grpc");
        assert_eq!(resp.headers["grpc-status"], "14");
        assert_eq!(resp.headers["grpc-message"], "no endpoint");
    }

    #[test]
    fn trailers_carry_the_status_and_encoded_message() {
        let trailers = LocalStatus::new(Code::DeadlineExceeded, "late: 5%").trailers();
        assert_eq!(trailers.len(), 2);
        assert_eq!(trailers["grpc-status"], "4");
        assert_eq!(trailers["grpc-message"], "late: 5%25");
    }
}
