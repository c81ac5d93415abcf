//! Browsers and REST clients on a gRPC listener: gRPC-Web (`grpc_web.rs`), gRPC-JSON
//! transcoding (`json.rs`, with the routes and message mapping in `crate::transcode`) and CORS
//! (`cors.rs`).
//!
//! Such a call is translated to native gRPC where it arrives (`request_filter`) and from then
//! on is routed, limited, balanced, retried, logged and counted like any other call; its
//! answer is translated back on the way out. Every answer goes through [`WebCall`]: the
//! backend's (through pingora's response filters, or [`WebCall::shape`] on the gateway's own
//! relay) and the gateway's own ([`WebCall::local_answer`]).

pub mod cors;
pub mod grpc_web;
pub mod json;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::HttpTask;

use crate::grpc::LocalStatus;
pub use crate::grpc::Protocol;
use cors::CorsPolicy;
use grpc_web::{Form, GrpcWebCall};
use json::JsonCall;

/// A listener's browser and REST settings.
#[derive(Debug, Clone, Default)]
pub struct WebSettings {
    pub grpc_web: bool,
    pub cors: Option<CorsPolicy>,
}

/// What kind of request arrived, before anything is translated.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Native gRPC (or something the native checks refuse).
    Native,
    Preflight,
    GrpcWeb {
        form: Form,
        grpc_content_type: &'static str,
    },
    /// Not gRPC of any kind, on a listener with transcoded routes: maybe a REST call.
    Rest,
}

impl WebSettings {
    pub fn classify(&self, req: &RequestHeader, transcodes: bool) -> Arrival {
        if self.cors.is_some() && CorsPolicy::is_preflight(req) {
            return Arrival::Preflight;
        }
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if self.grpc_web {
            if let Some((form, grpc_content_type)) = Form::of(content_type) {
                return Arrival::GrpcWeb {
                    form,
                    grpc_content_type,
                };
            }
        }
        if content_type.starts_with(b"application/grpc") || !transcodes {
            return Arrival::Native;
        }
        Arrival::Rest
    }
}

#[derive(Debug)]
enum Kind {
    GrpcWeb(GrpcWebCall),
    Json(Box<JsonCall>),
}

/// One browser or REST call's translation state.
#[derive(Debug)]
pub struct WebCall {
    kind: Kind,
    /// `Access-Control-Allow-Origin` for the answer, when the caller's origin is allowed.
    origin: Option<HeaderValue>,
    /// The answer depends on the caller's `Origin` (a list of allowed origins): caches are
    /// told so, whatever the origin was.
    vary_on_origin: bool,
    /// The caller speaks HTTP/1.1: heads written from an HTTP/2 answer must say so.
    http1: bool,
}

impl WebCall {
    pub fn grpc_web(form: Form, http1: bool, cors: CallCors) -> Self {
        Self {
            kind: Kind::GrpcWeb(GrpcWebCall::new(form, http1)),
            origin: cors.origin,
            vary_on_origin: cors.vary,
            http1,
        }
    }

    pub fn json(call: JsonCall, http1: bool, cors: CallCors) -> Self {
        Self {
            kind: Kind::Json(Box::new(call)),
            origin: cors.origin,
            vary_on_origin: cors.vary,
            http1,
        }
    }

    /// A status the gateway put in place of the backend's (a JSON reply that could not be
    /// rendered), for the call's metrics and log line.
    pub fn replaced_status(&self) -> Option<LocalStatus> {
        match &self.kind {
            Kind::Json(call) => call.replaced_status(),
            Kind::GrpcWeb(_) => None,
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self.kind {
            Kind::GrpcWeb(_) => Protocol::GrpcWeb,
            Kind::Json(_) => Protocol::Json,
        }
    }

    /// A request body chunk as the backend must see it (grpc-web-text is base64).
    pub fn request_body(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<(), String> {
        match &mut self.kind {
            Kind::GrpcWeb(call) => call.request_body(body, end),
            Kind::Json(_) => Ok(()),
        }
    }

    /// A retry sends the request body again from its start.
    pub fn restart_request(&mut self) {
        if let Kind::GrpcWeb(call) = &mut self.kind {
            call.restart_request();
        }
    }

    /// pingora's path (gRPC-Web): the response head.
    pub fn response_header(&mut self, resp: &mut ResponseHeader) {
        if let Kind::GrpcWeb(call) = &self.kind {
            call.response_header(resp);
        }
        self.decorate(resp);
    }

    /// pingora's path (gRPC-Web): a response body chunk.
    pub fn response_body(&mut self, body: &mut Option<Bytes>) {
        if let (Kind::GrpcWeb(call), Some(data)) = (&mut self.kind, body.as_mut()) {
            call.response_body(data);
        }
    }

    /// pingora's path (gRPC-Web): the trailers, as the body's last bytes.
    pub fn trailers(&mut self, trailers: &HeaderMap) -> Option<Bytes> {
        match &mut self.kind {
            Kind::GrpcWeb(call) => Some(call.trailer_frame(trailers)),
            Kind::Json(_) => None,
        }
    }

    /// The tasks to write for one task of the backend's native answer.
    pub fn shape(&mut self, task: HttpTask) -> Vec<HttpTask> {
        let mut out = match &mut self.kind {
            Kind::Json(call) => call.shape(task),
            Kind::GrpcWeb(call) => match task {
                HttpTask::Header(mut head, end) => {
                    call.response_header(&mut head);
                    vec![HttpTask::Header(head, end)]
                }
                HttpTask::Body(Some(mut data), end) => {
                    call.response_body(&mut data);
                    vec![HttpTask::Body(Some(data), end)]
                }
                HttpTask::Trailer(Some(trailers)) => {
                    vec![HttpTask::Body(Some(call.trailer_frame(&trailers)), true)]
                }
                other => vec![other],
            },
        };
        for task in &mut out {
            if let HttpTask::Header(head, _) = task {
                if self.http1 {
                    head.set_version(http::Version::HTTP_11);
                }
                self.decorate(head);
            }
        }
        out
    }

    /// The gateway's own status in this call's protocol; `started` when response headers
    /// already went to the caller.
    pub fn local_answer(&mut self, status: &LocalStatus, started: bool) -> Vec<HttpTask> {
        let task = if started {
            HttpTask::Trailer(Some(Box::new(status.trailers())))
        } else {
            HttpTask::Header(trailers_only_response(status), true)
        };
        let mut tasks = self.shape(task);
        if !started {
            for task in &mut tasks {
                if let HttpTask::Header(head, _) = task {
                    refused_caller(head, status.code);
                }
            }
        }
        tasks
    }

    fn decorate(&self, resp: &mut ResponseHeader) {
        if let Some(origin) = &self.origin {
            CorsPolicy::decorate(origin, resp);
        } else if self.vary_on_origin {
            let _ = resp.append_header(http::header::VARY, "Origin");
        }
    }
}

/// A browser or REST caller refused by the route's `auth` gets HTTP's own refusal, 401 with
/// `WWW-Authenticate: Bearer` or 403 (the gRPC status stays in the headers for gRPC-Web
/// clients that read it).
fn refused_caller(head: &mut ResponseHeader, code: crate::grpc::Code) {
    use crate::grpc::Code;
    let status = match code {
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        _ => return,
    };
    let _ = head.set_status(status);
    if status == 401 {
        let _ = head.insert_header(http::header::WWW_AUTHENTICATE, "Bearer");
    }
}

/// The response head of the gateway's own trailers-only answer: HTTP 200 with the status in
/// its headers, sent with END_STREAM.
pub fn trailers_only_response(status: &LocalStatus) -> Box<ResponseHeader> {
    let mut head = ResponseHeader::build(200, Some(4)).expect("static status line is valid");
    for (name, value) in status.trailers_only_headers().into_iter() {
        if let Some(name) = name {
            head.insert_header(name, value)
                .expect("the status headers are valid");
        }
    }
    Box::new(head)
}

/// What CORS means for one call's answer.
#[derive(Debug, Clone, Default)]
pub struct CallCors {
    /// `Access-Control-Allow-Origin`, when the caller's origin is allowed.
    pub origin: Option<HeaderValue>,
    /// The listener allows a list of origins: answers vary by `Origin`.
    pub vary: bool,
}

impl CallCors {
    pub fn of(settings: &WebSettings, req: &RequestHeader) -> Self {
        Self {
            origin: settings.cors.as_ref().and_then(|c| c.allow(req)),
            vary: settings.cors.as_ref().is_some_and(CorsPolicy::varies),
        }
    }
}
