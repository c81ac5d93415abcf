//! The answer of a transcoded (JSON) call: gRPC replies rendered as JSON, the gRPC status as an
//! HTTP status with a JSON error body.
//!
//! A unary answer is held until its status is known, so an error always gets its HTTP status
//! (never 200 with an error inside). A server stream is a JSON array written as the replies
//! arrive; a status that is not OK after the first reply becomes a last element
//! `{"error": {...}}`, since the HTTP status went out with the first reply.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{json, Value};

use crate::grpc::{decode_grpc_message, Code, LocalStatus};
use crate::transcode::render_message;

/// The standard mapping of gRPC codes to HTTP statuses (google.rpc.Code's documentation).
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
    }
}

/// `{"code": N, "message": "...", "details": [...]}`.
pub fn error_body(code: Code, message: &str, details: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"code": code as u8, "message": message, "details": details}))
        .unwrap_or_default()
}

/// A status read off headers or trailers.
#[derive(Debug, Clone)]
struct Status {
    code: Code,
    message: String,
    details: Vec<Value>,
    /// The gateway's, not the backend's.
    replaced: bool,
}

#[derive(Debug)]
pub struct JsonCall {
    output: MessageDescriptor,
    response_body: Option<String>,
    streaming: bool,
    http1: bool,
    /// Reply bytes not yet a whole message.
    pending: BytesMut,
    /// Replies rendered so far.
    sent: u32,
    /// The backend's response head: held (unary) or already sent (stream).
    head: Option<Box<ResponseHeader>>,
    head_sent: bool,
    /// Unary: the rendered reply, written with the status.
    reply: Option<Vec<u8>>,
    /// A reply that could not be rendered: the call ends with this.
    broken: Option<String>,
    /// A reply larger than this is not rendered (the call ends INTERNAL).
    max_reply: usize,
    /// The status the caller got in place of the backend's, if it did.
    replaced: Option<LocalStatus>,
    finished: bool,
}

impl JsonCall {
    pub fn new(
        output: MessageDescriptor,
        response_body: Option<String>,
        streaming: bool,
        http1: bool,
        max_reply: usize,
    ) -> Self {
        Self {
            output,
            response_body,
            streaming,
            http1,
            pending: BytesMut::new(),
            sent: 0,
            head: None,
            head_sent: false,
            reply: None,
            broken: None,
            max_reply,
            replaced: None,
            finished: false,
        }
    }

    /// The status the caller got in place of the backend's (a reply that could not be
    /// rendered, an answer without a status), for the metrics and the access log.
    pub fn replaced_status(&self) -> Option<LocalStatus> {
        self.replaced.clone()
    }

    /// The tasks to write in place of one task of the backend's gRPC answer.
    pub fn shape(&mut self, task: HttpTask) -> Vec<HttpTask> {
        if self.finished {
            return Vec::new();
        }
        match task {
            HttpTask::Header(head, end) => {
                if let Some(code) = head.headers.get("grpc-status") {
                    // Trailers-only: the whole answer is this status.
                    let status = read_status(code.as_bytes(), &head.headers, &self.output);
                    self.head = Some(head);
                    return self.finish(status);
                }
                self.head = Some(head);
                if end {
                    return self.finish(missing_status());
                }
                if self.streaming {
                    self.head_sent = true;
                    let head = self.head_for(200, None);
                    return vec![HttpTask::Header(head, false)];
                }
                Vec::new()
            }
            HttpTask::Body(Some(data), end) => {
                let mut out = self.replies(&data);
                if end {
                    out.extend(self.finish(missing_status()));
                }
                out
            }
            HttpTask::Body(None, true) => self.finish(missing_status()),
            HttpTask::Trailer(Some(trailers)) => {
                let status = match trailers.get("grpc-status") {
                    Some(code) => read_status(code.as_bytes(), &trailers, &self.output),
                    None => missing_status(),
                };
                self.finish(status)
            }
            HttpTask::Trailer(None) => self.finish(missing_status()),
            other => vec![other],
        }
    }

    /// Renders the whole messages in `data` (and what came before it).
    fn replies(&mut self, data: &[u8]) -> Vec<HttpTask> {
        if self.broken.is_some() {
            return Vec::new();
        }
        self.pending.extend_from_slice(data);
        let mut chunk = Vec::new();
        while self.pending.len() >= 5 {
            let compressed = self.pending[0] & 1 == 1;
            let length = u32::from_be_bytes([
                self.pending[1],
                self.pending[2],
                self.pending[3],
                self.pending[4],
            ]) as usize;
            if compressed {
                self.broken = Some(
                    "the backend sent a compressed reply; JSON callers get uncompressed ones only"
                        .into(),
                );
                break;
            }
            if length > self.max_reply {
                self.broken = Some(format!(
                    "a reply of {length} bytes is too large to render as JSON"
                ));
                break;
            }
            if self.pending.len() < 5 + length {
                break;
            }
            self.pending.advance(5);
            let message = self.pending.split_to(length);
            match render_message(&self.output, self.response_body.as_deref(), &message) {
                Ok(json) => {
                    if self.streaming {
                        chunk.push(if self.sent == 0 { b'[' } else { b',' });
                        chunk.extend_from_slice(&json);
                    } else {
                        self.reply = Some(json);
                    }
                    self.sent += 1;
                }
                Err(reason) => {
                    self.broken = Some(reason);
                    break;
                }
            }
        }
        if chunk.is_empty() {
            Vec::new()
        } else {
            vec![HttpTask::Body(Some(Bytes::from(chunk)), false)]
        }
    }

    /// The last tasks of the answer, once the status is known.
    fn finish(&mut self, status: Status) -> Vec<HttpTask> {
        self.finished = true;
        let status = match self.broken.take() {
            Some(reason) => Status {
                code: Code::Internal,
                message: reason,
                details: Vec::new(),
                replaced: true,
            },
            None => status,
        };
        if status.replaced {
            self.replaced = Some(LocalStatus::new(status.code, status.message.clone()));
        }
        if self.head_sent {
            // A stream: the HTTP status is out; close the array.
            let mut tail = Vec::new();
            if self.sent == 0 {
                tail.push(b'[');
            }
            if status.code != Code::Ok {
                if self.sent > 0 {
                    tail.push(b',');
                }
                let error = json!({"error": {"code": status.code as u8, "message": status.message, "details": status.details}});
                tail.extend_from_slice(&serde_json::to_vec(&error).unwrap_or_default());
            }
            tail.push(b']');
            return vec![HttpTask::Body(Some(Bytes::from(tail)), true)];
        }
        let body = if status.code != Code::Ok {
            error_body(status.code, &status.message, status.details)
        } else if self.streaming {
            b"[]".to_vec()
        } else {
            self.reply.take().unwrap_or_else(|| b"{}".to_vec())
        };
        let head = self.head_for(http_status(status.code), Some(body.len()));
        vec![
            HttpTask::Header(head, false),
            HttpTask::Body(Some(Bytes::from(body)), true),
        ]
    }

    /// The HTTP head: the backend's metadata headers kept, gRPC's own dropped.
    fn head_for(&self, status: u16, length: Option<usize>) -> Box<ResponseHeader> {
        let mut head = ResponseHeader::build(status, None).expect("valid status");
        if let Some(from) = &self.head {
            for (name, value) in from.headers.iter() {
                let name_str = name.as_str();
                if name_str.starts_with("grpc-")
                    || name_str == "content-type"
                    || name_str == "content-length"
                    || name_str == "trailer"
                {
                    continue;
                }
                let _ = head.append_header(name.clone(), value.clone());
            }
        }
        let _ = head.insert_header(http::header::CONTENT_TYPE, "application/json");
        match length {
            Some(length) => {
                let _ = head.insert_header(http::header::CONTENT_LENGTH, length.to_string());
            }
            None if self.http1 => {
                let _ = head.insert_header(http::header::TRANSFER_ENCODING, "chunked");
            }
            None => {}
        }
        Box::new(head)
    }
}

fn missing_status() -> Status {
    Status {
        code: Code::Internal,
        message: "the backend's answer ended without a grpc-status".into(),
        details: Vec::new(),
        replaced: true,
    }
}

fn read_status(code: &[u8], headers: &HeaderMap, pool_of: &MessageDescriptor) -> Status {
    let message = headers
        .get("grpc-message")
        .map(|m| decode_grpc_message(m.as_bytes()))
        .unwrap_or_default();
    let details = headers
        .get("grpc-status-details-bin")
        .map(|v| status_details(v.as_bytes(), pool_of))
        .unwrap_or_default();
    Status {
        code: Code::from_header(code),
        message,
        details,
        replaced: false,
    }
}

/// `google.rpc.Status`, as `grpc-status-details-bin` carries it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<AnyDetail>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct AnyDetail {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// The details as JSON: each `Any` rendered through the descriptors when they know its type,
/// else as `{"@type": ..., "value": base64}`.
fn status_details(value: &[u8], pool_of: &MessageDescriptor) -> Vec<Value> {
    // Sent base64 without padding; decoders must accept either.
    let trimmed: Vec<u8> = value.iter().copied().filter(|b| *b != b'=').collect();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(&trimmed) else {
        return Vec::new();
    };
    let Ok(status) = RpcStatus::decode(bytes.as_slice()) else {
        return Vec::new();
    };
    let pool = pool_of.parent_pool();
    status
        .details
        .into_iter()
        .map(|any| {
            let name = any.type_url.rsplit('/').next().unwrap_or_default();
            let rendered = pool
                .get_message_by_name(name)
                .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
                .filter(|m| crate::transcode::any_nesting_within(m, 1))
                .and_then(|m| {
                    m.serialize_with_options(
                        serde_json::value::Serializer,
                        &SerializeOptions::new(),
                    )
                    .ok()
                });
            match rendered {
                Some(Value::Object(mut object)) => {
                    object.insert("@type".into(), Value::String(any.type_url.clone()));
                    Value::Object(object)
                }
                _ => json!({"@type": any.type_url, "value": STANDARD.encode(&any.value)}),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_standard_http_status() {
        let expected = [
            200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401,
        ];
        for (n, want) in expected.iter().enumerate() {
            let code = Code::from_u8(n as u8).unwrap();
            assert_eq!(http_status(code), *want, "{code}");
        }
    }

    #[test]
    fn error_bodies_carry_code_message_and_details() {
        let body: Value =
            serde_json::from_slice(&error_body(Code::NotFound, "gone", vec![])).unwrap();
        assert_eq!(body, json!({"code": 5, "message": "gone", "details": []}));
    }
}
