//! gRPC-Web (PROTOCOL-WEB.md) to gRPC and back: content types, the trailer frame, and the
//! base64 of `application/grpc-web-text` in both directions.
//!
//! pingora's `GrpcWebCtx` bridge is used for the binary form's trailer frame. It does not cover
//! the text form (it would rename `grpc-web-text` to `grpc-text`), HTTP/2 callers, CORS, or
//! the gateway's own answers; those are here.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::bridge::grpc_web::GrpcWebCtx;

/// Which gRPC-Web form a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Binary,
    Text,
}

impl Form {
    /// The form named by a request's content type, `None` when it is not gRPC-Web.
    pub fn of(content_type: &[u8]) -> Option<(Form, &'static str)> {
        let ct = std::str::from_utf8(content_type).ok()?.to_ascii_lowercase();
        // The message codec after '+' is kept: "+proto" towards the backend as well.
        let (base, suffix) = match ct.split_once('+') {
            Some((base, suffix)) => (base.trim().to_string(), Some(suffix.trim().to_string())),
            None => (ct.trim().to_string(), None),
        };
        let form = match base.as_str() {
            "application/grpc-web" => Form::Binary,
            "application/grpc-web-text" => Form::Text,
            _ => return None,
        };
        match suffix.as_deref() {
            None => Some((form, "application/grpc")),
            Some("proto") => Some((form, "application/grpc+proto")),
            // Other codecs (json) are the backend's business only if it speaks them; Strait
            // forwards proto only, which is what gRPC-Web clients send.
            Some(_) => None,
        }
    }

    fn response_content_type(self) -> &'static str {
        match self {
            Form::Binary => "application/grpc-web+proto",
            Form::Text => "application/grpc-web-text+proto",
        }
    }
}

/// Headers that belong to one HTTP/1.1 hop and are forbidden in HTTP/2.
pub const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The request's head as the backend must see it: native gRPC over HTTP/2. The framing headers
/// (`content-length`, `transfer-encoding`) stay on the caller's side, where pingora still reads
/// the body by them; [`strip_hop_by_hop`] takes them off the backend's copy.
pub fn to_grpc_request(req: &mut RequestHeader, grpc_content_type: &'static str) {
    let _ = req.insert_header(http::header::CONTENT_TYPE, grpc_content_type);
    // gRPC over HTTP/2 requires it; browsers cannot send it.
    let _ = req.insert_header(http::header::TE, "trailers");
    // A gRPC request always ends with a DATA frame (pingora's bridge does the same).
    req.set_send_end_stream(false);
}

/// The backend's copy of a translated request: nothing of the caller's HTTP/1.1 hop, and no
/// length (the text form's decoded body is shorter; HTTP/2 frames its own).
pub fn strip_hop_by_hop(req: &mut RequestHeader) {
    // Headers the caller named in `Connection` belong to its hop too.
    let named: Vec<String> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty() && name != "te")
        .collect();
    for name in named {
        req.remove_header(name.as_str());
    }
    for name in HOP_BY_HOP {
        req.remove_header(name);
    }
}

/// One call's conversion state.
#[derive(Debug)]
pub struct GrpcWebCall {
    form: Form,
    http1: bool,
    /// Base64 characters of the request not yet decoded (fewer than 4).
    request_carry: Vec<u8>,
    /// Response bytes not yet encoded (fewer than 3), so padding only ends the stream.
    response_carry: BytesMut,
}

impl GrpcWebCall {
    pub fn new(form: Form, http1: bool) -> Self {
        Self {
            form,
            http1,
            request_carry: Vec::new(),
            response_carry: BytesMut::new(),
        }
    }

    pub fn form(&self) -> Form {
        self.form
    }

    pub fn restart_request(&mut self) {
        self.request_carry.clear();
    }

    /// Decodes a chunk of a text-form request body; binary bodies pass as they are.
    pub fn request_body(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<(), String> {
        if self.form == Form::Binary {
            return Ok(());
        }
        let mut input = std::mem::take(&mut self.request_carry);
        if let Some(chunk) = body.as_deref() {
            input.extend(chunk.iter().filter(|b| !b.is_ascii_whitespace()));
        }
        let whole = input.len() - input.len() % 4;
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // Quad by quad: a client may send several padded base64 chunks one after the other.
        for quad in input[..whole].chunks(4) {
            let mut decoded = [0u8; 3];
            let n = STANDARD
                .decode_slice(quad, &mut decoded)
                .map_err(|e| format!("the grpc-web-text body is not base64: {e}"))?;
            out.extend_from_slice(&decoded[..n]);
        }
        self.request_carry = input[whole..].to_vec();
        if end && !self.request_carry.is_empty() {
            return Err("the grpc-web-text body ends inside a base64 group".into());
        }
        *body = Some(Bytes::from(out));
        Ok(())
    }

    /// The backend's response head as a gRPC-Web caller expects it.
    pub fn response_header(&self, resp: &mut ResponseHeader) {
        let grpc = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc || resp.headers.contains_key("grpc-status") {
            let _ = resp.insert_header(
                http::header::CONTENT_TYPE,
                self.form.response_content_type(),
            );
        }
        resp.remove_header(&http::header::CONTENT_LENGTH);
        if self.http1 {
            // A trailers-only answer has no body; everything else streams in chunks.
            if resp.headers.contains_key("grpc-status") {
                let _ = resp.insert_header(http::header::CONTENT_LENGTH, "0");
            } else {
                let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
            }
        }
    }

    /// A response body chunk, encoded for the text form.
    pub fn response_body(&mut self, body: &mut Bytes) {
        if self.form == Form::Binary {
            return;
        }
        self.response_carry.extend_from_slice(body);
        let whole = self.response_carry.len() - self.response_carry.len() % 3;
        let ready = self.response_carry.split_to(whole);
        *body = Bytes::from(STANDARD.encode(&ready));
    }

    /// The trailers as gRPC-Web's trailer frame (and what the text form still held back).
    pub fn trailer_frame(&mut self, trailers: &HeaderMap) -> Bytes {
        let mut bridge = GrpcWebCtx::Trailers;
        let mut trailers = trailers.clone();
        let frame = bridge
            .response_trailer_filter(&mut trailers)
            .ok()
            .flatten()
            .unwrap_or_default();
        match self.form {
            Form::Binary => frame,
            Form::Text => {
                self.response_carry.extend_from_slice(&frame);
                let rest = self.response_carry.split();
                Bytes::from(STANDARD.encode(&rest))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_the_form() {
        assert_eq!(
            Form::of(b"application/grpc-web"),
            Some((Form::Binary, "application/grpc"))
        );
        assert_eq!(
            Form::of(b"application/grpc-web+proto"),
            Some((Form::Binary, "application/grpc+proto"))
        );
        assert_eq!(
            Form::of(b"Application/GRPC-Web-Text"),
            Some((Form::Text, "application/grpc"))
        );
        assert_eq!(Form::of(b"application/grpc"), None);
        assert_eq!(Form::of(b"application/grpc-web+json"), None);
        assert_eq!(Form::of(b"\xff"), None);
    }

    #[test]
    fn text_requests_decode_across_chunks_and_padded_runs() {
        let message = b"\x00\x00\x00\x00\x03abc";
        let text = STANDARD.encode(message);
        let mut call = GrpcWebCall::new(Form::Text, true);
        let (a, b) = text.split_at(5);
        let mut first = Some(Bytes::copy_from_slice(a.as_bytes()));
        call.request_body(&mut first, false).unwrap();
        let mut second = Some(Bytes::copy_from_slice(b.as_bytes()));
        call.request_body(&mut second, true).unwrap();
        let mut joined = first.unwrap().to_vec();
        joined.extend_from_slice(&second.unwrap());
        assert_eq!(joined, message);

        // Two separately padded chunks one after the other.
        let mut call = GrpcWebCall::new(Form::Text, true);
        let two = format!("{}{}", STANDARD.encode(b"a"), STANDARD.encode(b"bc"));
        let mut body = Some(Bytes::from(two));
        call.request_body(&mut body, true).unwrap();
        assert_eq!(body.unwrap().as_ref(), b"abc");
    }

    #[test]
    fn broken_text_requests_are_errors() {
        let mut call = GrpcWebCall::new(Form::Text, true);
        let mut body = Some(Bytes::from_static(b"!!!!"));
        assert!(call.request_body(&mut body, true).is_err());
        let mut call = GrpcWebCall::new(Form::Text, true);
        let mut body = Some(Bytes::from_static(b"QUJD4"));
        assert!(call.request_body(&mut body, true).is_err());
    }

    #[test]
    fn text_responses_pad_only_at_the_end() {
        let mut call = GrpcWebCall::new(Form::Text, true);
        let mut out = Vec::new();
        for chunk in [&b"\x00\x00\x00\x00\x01a"[..], b"\x00\x00"] {
            let mut body = Bytes::copy_from_slice(chunk);
            call.response_body(&mut body);
            assert!(!body.contains(&b'='));
            out.extend_from_slice(&body);
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        out.extend_from_slice(&call.trailer_frame(&trailers));
        let decoded = STANDARD.decode(&out).unwrap();
        assert_eq!(&decoded[..8], b"\x00\x00\x00\x00\x01a\x00\x00");
        assert_eq!(decoded[8], 0x80);
        assert!(decoded.ends_with(b"grpc-status:0\r\n"));
    }

    proptest::proptest! {
        #[test]
        fn text_round_trips_whatever_the_chunking(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200), cut in 0usize..300) {
            let text = STANDARD.encode(&data);
            let cut = cut.min(text.len());
            let mut call = GrpcWebCall::new(Form::Text, false);
            let mut a = Some(Bytes::copy_from_slice(&text.as_bytes()[..cut]));
            call.request_body(&mut a, false).unwrap();
            let mut b = Some(Bytes::copy_from_slice(&text.as_bytes()[cut..]));
            call.request_body(&mut b, true).unwrap();
            let mut joined = a.unwrap().to_vec();
            joined.extend_from_slice(&b.unwrap());
            proptest::prop_assert_eq!(joined, data);
        }
    }
}
