//! The first step of a browser or REST call (`request_filter`): answer a CORS preflight, or
//! turn the request into the native gRPC request the rest of the gateway handles.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, Version};
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::Result;

use super::answer::write_local_status;
use crate::grpc::{Code, FrameError, LocalStatus};
use crate::proxy::call::{self, CallCtx};
use crate::proxy::web::cors::{CorsPolicy, Preflight};
use crate::proxy::web::grpc_web::to_grpc_request;
use crate::proxy::web::json::{error_body, JsonCall};
use crate::proxy::web::{Arrival, CallCors, WebCall, WebSettings};
use crate::transcode::{build_request, Binding, RestRoute, TranscodeTable};

/// The largest JSON request body read, whatever the listener's `max_message_size`: the body is
/// held whole while it becomes a message.
pub const MAX_JSON_BODY: u32 = 4 * 1024 * 1024;

/// What `request_filter` does next.
pub enum Arrived {
    /// Native gRPC: its own checks (HTTP/2, content type, POST) apply.
    Grpc,
    /// gRPC-Web, now in native form: routed as usual.
    GrpcWeb,
    /// JSON, its head already native; the body is read once the call is admitted
    /// ([`json_request`]), and the relay carries it.
    Json(PendingJson),
    /// The gateway answered (preflight, refusal, no REST route).
    Answered,
}

/// A REST call whose route matched and whose body is still to be read.
pub struct PendingJson {
    route: Arc<RestRoute>,
    bindings: Vec<Binding>,
    query: Option<String>,
    /// The caller named a JSON content type (a body under any other type is refused).
    json_content: bool,
}

pub async fn arrive(
    session: &mut Session,
    ctx: &mut CallCtx,
    settings: &WebSettings,
    transcoder: Option<Arc<TranscodeTable>>,
) -> Result<Arrived> {
    let req = session.req_header();
    let cors = CallCors::of(settings, req);
    let http1 = req.version != Version::HTTP_2;
    match settings.classify(req, transcoder.is_some()) {
        Arrival::Native => Ok(Arrived::Grpc),
        Arrival::Preflight => {
            ctx.not_grpc = true;
            let policy = settings.cors.as_ref().expect("classified as a preflight");
            match policy.preflight(req) {
                Preflight::Allowed(head) => {
                    session
                        .write_response_tasks(vec![HttpTask::Header(head, true)])
                        .await?;
                }
                Preflight::Refused(reason) => {
                    write_plain(session, 403, &reason, &cors).await?;
                }
            }
            Ok(Arrived::Answered)
        }
        Arrival::GrpcWeb {
            form,
            grpc_content_type,
        } => {
            if req.method != Method::POST {
                ctx.not_grpc = true;
                write_plain(session, 405, "gRPC-Web calls use POST", &cors).await?;
                return Ok(Arrived::Answered);
            }
            to_grpc_request(session.req_header_mut(), grpc_content_type);
            ctx.web = Some(WebCall::grpc_web(form, http1, cors));
            Ok(Arrived::GrpcWeb)
        }
        Arrival::Rest => {
            let table = transcoder.expect("classified as REST");
            rest_call(session, ctx, &table, cors, http1).await
        }
    }
}

async fn rest_call(
    session: &mut Session,
    ctx: &mut CallCtx,
    table: &TranscodeTable,
    cors: CallCors,
    http1: bool,
) -> Result<Arrived> {
    let req = session.req_header();
    let path = req.uri.path().to_string();
    let Some(matched) = table.find(&req.method, &path) else {
        // Not a call of any service: a plain HTTP answer, not counted as a call.
        ctx.not_grpc = true;
        let (status, code, message) = if table.knows_path(&path) {
            (
                405,
                Code::Unimplemented,
                format!("{} is not allowed on {path}", req.method),
            )
        } else {
            (
                404,
                Code::NotFound,
                format!("no REST route for {} {path}", req.method),
            )
        };
        write_json(
            session,
            status,
            &error_body(code, &message, Vec::new()),
            &cors,
        )
        .await?;
        return Ok(Arrived::Answered);
    };
    // A body must be declared JSON: a form or text/plain body is what a page of any origin
    // may send without a CORS preflight, and it must not reach a service.
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let json_content = content_type
        .as_deref()
        .is_some_and(|ct| ct == "application/json" || ct.ends_with("+json"));
    if content_type.is_some() && !json_content {
        ctx.not_grpc = true;
        let message = "a JSON call's body is application/json";
        let body = error_body(Code::InvalidArgument, message, Vec::new());
        write_json(session, 415, &body, &cors).await?;
        return Ok(Arrived::Answered);
    }
    let query = req.uri.query().map(str::to_string);
    let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let method = &matched.route.method;
    ctx.web = Some(WebCall::json(
        JsonCall::new(
            method.descriptor.output(),
            matched.route.response_body.clone(),
            method.server_streaming(),
            http1,
            MAX_JSON_REPLY,
        ),
        http1,
        cors,
    ));
    // The head becomes the native call's now, so routing, limits and the access log see the
    // gRPC method; the body is read only once the call is admitted.
    let uri = host
        .as_ref()
        .and_then(|host| {
            http::Uri::builder()
                .scheme("http")
                .authority(host.as_bytes())
                .path_and_query(method.grpc_path.as_str())
                .build()
                .ok()
        })
        .or_else(|| method.grpc_path.parse::<http::Uri>().ok())
        .unwrap_or_else(|| http::Uri::from_static("/"));
    let head = session.req_header_mut();
    head.set_method(Method::POST);
    head.set_uri(uri);
    head.remove_header(&http::header::HOST);
    head.remove_header(&http::header::ACCEPT);
    to_grpc_request(head, "application/grpc");
    Ok(Arrived::Json(PendingJson {
        route: matched.route,
        bindings: matched.bindings,
        query,
        json_content,
    }))
}

/// The largest reply rendered as JSON.
const MAX_JSON_REPLY: usize = 16 * 1024 * 1024;

/// Reads an admitted JSON call's body and makes its one framed gRPC message; `None` when the
/// gateway answered instead (a body too large, not JSON, not fitting the message).
pub async fn json_request(
    session: &mut Session,
    ctx: &mut CallCtx,
    pending: PendingJson,
    max_message_size: u32,
    body_timeout: std::time::Duration,
) -> Result<Option<Bytes>> {
    let limit = max_message_size.min(MAX_JSON_BODY) as usize;
    let mut body = BytesMut::new();
    let deadline = tokio::time::Instant::from_std(ctx.body_deadline(body_timeout));
    loop {
        let Ok(read) = tokio::time::timeout_at(deadline, session.read_request_body()).await else {
            let status = ctx.body_timeout_status(body_timeout);
            answer(session, ctx, status).await?;
            return Ok(None);
        };
        let Some(chunk) = read? else { break };
        if body.len() + chunk.len() > limit {
            let status = LocalStatus::new(
                Code::ResourceExhausted,
                format!("a JSON request body may be at most {limit} bytes"),
            );
            answer(session, ctx, status).await?;
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    if !pending.json_content && !body.iter().all(u8::is_ascii_whitespace) {
        let status = LocalStatus::new(
            Code::InvalidArgument,
            "a JSON call's body needs content-type: application/json",
        );
        answer(session, ctx, status).await?;
        return Ok(None);
    }
    let message = match build_request(
        &pending.route,
        &pending.bindings,
        pending.query.as_deref(),
        &body,
    ) {
        Ok(message) => message,
        Err(e) => {
            answer(
                session,
                ctx,
                LocalStatus::new(Code::InvalidArgument, e.to_string()),
            )
            .await?;
            return Ok(None);
        }
    };
    if message.len() > max_message_size as usize {
        let too_large = FrameError::TooLarge {
            length: u32::try_from(message.len()).unwrap_or(u32::MAX),
            limit: max_message_size,
        };
        answer(session, ctx, call::request_body_status(too_large)).await?;
        return Ok(None);
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.extend_from_slice(&message);
    Ok(Some(framed.freeze()))
}

/// The gateway's own status in the call's protocol (the call's `WebCall` is set by now).
async fn answer(session: &mut Session, ctx: &mut CallCtx, status: LocalStatus) -> Result<()> {
    write_local_status(session, ctx, &status).await?;
    ctx.local_status = Some(status);
    Ok(())
}

async fn write_json(
    session: &mut Session,
    status: u16,
    body: &[u8],
    cors: &CallCors,
) -> Result<()> {
    let body = Bytes::copy_from_slice(body);
    write_refusal(session, status, "application/json", body, cors).await
}

async fn write_plain(
    session: &mut Session,
    status: u16,
    message: &str,
    cors: &CallCors,
) -> Result<()> {
    let body = Bytes::from(format!("{message}\n"));
    write_refusal(session, status, "text/plain; charset=utf-8", body, cors).await
}

/// An answer that is not a call's: what the caller sent is read first (`proxy::refusal`), and
/// an allowed origin may read it.
async fn write_refusal(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    cors: &CallCors,
) -> Result<()> {
    crate::proxy::refusal::drain_request_body(session).await;
    let mut head = ResponseHeader::build(status, Some(3))?;
    head.insert_header(http::header::CONTENT_TYPE, content_type)?;
    head.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(origin) = &cors.origin {
        CorsPolicy::decorate(origin, &mut head);
    } else if cors.vary {
        head.append_header(http::header::VARY, "Origin")?;
    }
    session
        .write_response_tasks(vec![
            HttpTask::Header(Box::new(head), false),
            HttpTask::Body(Some(body), true),
        ])
        .await?;
    Ok(())
}
