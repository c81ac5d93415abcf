//! A status the gateway decides on itself, in the shapes gRPC carries it: the headers of a
//! trailers-only answer, or trailers that end a stream already answered.

use http::{HeaderMap, HeaderValue};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};

use super::Code;

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

    fn pushback_value(&self) -> Option<HeaderValue> {
        // Rounded up: a caller that waits exactly this long finds a token.
        let wait = self.retry_pushback?;
        // At least 1: "0" would read as "try again now", and the token is not there yet.
        let millis = (wait.as_millis() + u128::from(wait.subsec_nanos() % 1_000_000 != 0)).max(1);
        HeaderValue::from_str(&millis.to_string()).ok()
    }

    /// The headers of a trailers-only answer (HTTP 200, sent with END_STREAM): the content
    /// type, then the status. gRPC clients depend on this exact shape (e.g. for transparent
    /// retries).
    pub fn trailers_only_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.extend(self.trailers());
        headers
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

/// What `grpc-message` sends as `%XX`: besides every non-ASCII byte (UTF-8), the controls and
/// `%` itself; the rest of printable ASCII goes as is (the gRPC HTTP/2 spec).
const GRPC_MESSAGE_ESCAPED: &AsciiSet = &CONTROLS.add(b'%');

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec requires.
pub fn encode_grpc_message(message: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(message, GRPC_MESSAGE_ESCAPED).to_string();
    HeaderValue::from_str(&encoded).expect("only visible ASCII remains after encoding")
}

/// A received `grpc-message`: percent-encoded UTF-8, decoded leniently (a broken escape is kept
/// as it is, invalid UTF-8 replaced), as the spec asks of receivers.
pub fn decode_grpc_message(raw: &[u8]) -> String {
    percent_decode(raw).decode_utf8_lossy().into_owned()
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
    fn messages_are_percent_decoded_leniently() {
        assert_eq!(decode_grpc_message(b"not%20found%3A x"), "not found: x");
        assert_eq!(decode_grpc_message(b"100%"), "100%");
        assert_eq!(decode_grpc_message(b"%zz"), "%zz");
        assert_eq!(decode_grpc_message(b"%C3%A9"), "\u{e9}");
        assert_eq!(decode_grpc_message(b"%ff"), "\u{fffd}");
    }

    #[test]
    fn encoding_and_decoding_round_trip() {
        for text in [
            "plain",
            "100% sure",
            "caf\u{e9}\n\ttab",
            "\u{1f980} ~!@#$^&*()",
        ] {
            let encoded = encode_grpc_message(text);
            assert!(encoded.as_bytes().iter().all(|b| (0x20..=0x7e).contains(b)));
            assert_eq!(decode_grpc_message(encoded.as_bytes()), text);
        }
    }

    #[test]
    fn pushback_is_whole_milliseconds_rounded_up_and_never_zero() {
        let pushback = |wait: std::time::Duration| {
            let status = LocalStatus {
                retry_pushback: Some(wait),
                ..LocalStatus::new(Code::ResourceExhausted, "slow down")
            };
            let trailers = status.trailers();
            assert_eq!(
                status.trailers_only_headers()["grpc-retry-pushback-ms"],
                trailers["grpc-retry-pushback-ms"]
            );
            trailers["grpc-retry-pushback-ms"]
                .to_str()
                .unwrap()
                .to_string()
        };
        use std::time::Duration;
        assert_eq!(pushback(Duration::from_millis(40)), "40");
        assert_eq!(pushback(Duration::from_micros(40_001)), "41");
        assert_eq!(pushback(Duration::from_micros(40_999)), "41");
        assert_eq!(pushback(Duration::from_secs(2)), "2000");
        assert_eq!(pushback(Duration::ZERO), "1", "never \"try again now\"");
    }

    #[test]
    fn trailers_only_has_grpc_shape() {
        let headers = LocalStatus::new(Code::Unavailable, "no endpoint").trailers_only_headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["grpc-message"], "no endpoint");
        assert!(!headers.contains_key("grpc-retry-pushback-ms"));
    }

    #[test]
    fn trailers_carry_the_status_and_encoded_message() {
        let trailers = LocalStatus::new(Code::DeadlineExceeded, "late: 5%").trailers();
        assert_eq!(trailers.len(), 2);
        assert_eq!(trailers["grpc-status"], "4");
        assert_eq!(trailers["grpc-message"], "late: 5%25");
    }
}
