//! The first step of a browser or REST call (`request_filter`): answer a CORS preflight, or
//! turn the request into the native gRPC request the rest of the gateway handles.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, Version};
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::Result;

use super::cors::{CorsPolicy, Preflight};
use super::grpc_web::to_grpc_request;
use super::json::{error_body, JsonCall};
use super::{Arrival, WebCall, WebSettings};
use crate::grpc::Code;
use crate::proxy::grpc::{CallCtx, LocalStatus};
use crate::transcode::{build_request, TranscodeTable};

/// What `request_filter` does next.
pub enum Arrived {
    /// Native gRPC: its own checks (HTTP/2, content type, POST) apply.
    Grpc,
    /// gRPC-Web, now in native form: routed as usual.
    GrpcWeb,
    /// JSON, now a native request with this one framed message: carried by the relay.
    Json(Bytes),
    /// The gateway answered (preflight, refusal, a JSON body that does not fit).
    Answered,
}

pub async fn arrive(
    session: &mut Session,
    ctx: &mut CallCtx,
    settings: &WebSettings,
    transcoder: Option<Arc<TranscodeTable>>,
    max_message_size: u32,
) -> Result<Arrived> {
    let req = session.req_header();
    let origin = settings.cors.as_ref().and_then(|c| c.allow(req));
    let http1 = req.version != Version::HTTP_2;
    match settings.classify(req, transcoder.is_some()) {
        Arrival::Native => Ok(Arrived::Grpc),
        Arrival::Preflight => {
            ctx.not_grpc = true;
            let cors = settings.cors.as_ref().expect("classified as a preflight");
            match cors.preflight(req) {
                Preflight::Allowed(head) => {
                    session
                        .write_response_tasks(vec![HttpTask::Header(head, true)])
                        .await?;
                }
                Preflight::Refused(reason) => {
                    write_plain(session, 403, &reason, None).await?;
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
                write_plain(session, 405, "gRPC-Web calls use POST", origin).await?;
                return Ok(Arrived::Answered);
            }
            to_grpc_request(session.req_header_mut(), grpc_content_type);
            ctx.web = Some(WebCall::grpc_web(form, http1, origin));
            Ok(Arrived::GrpcWeb)
        }
        Arrival::Rest => {
            let table = transcoder.expect("classified as REST");
            rest_call(session, ctx, &table, max_message_size, origin, http1).await
        }
    }
}

async fn rest_call(
    session: &mut Session,
    ctx: &mut CallCtx,
    table: &TranscodeTable,
    max_message_size: u32,
    origin: Option<HeaderValue>,
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
            origin,
        )
        .await?;
        return Ok(Arrived::Answered);
    };
    let route = matched.route;
    let query = req.uri.query().map(str::to_string);
    let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let method = &route.method;
    ctx.web = Some(WebCall::json(
        JsonCall::new(
            method.descriptor.output(),
            route.response_body.clone(),
            method.server_streaming(),
            http1,
        ),
        origin.clone(),
    ));
    // The JSON, whole: a request that does not fit the message never reaches the backend.
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > max_message_size as usize {
            let status = LocalStatus::new(
                Code::ResourceExhausted,
                format!("request body larger than this listener's max_message_size ({max_message_size} bytes)"),
            );
            answer(session, ctx, status).await?;
            return Ok(Arrived::Answered);
        }
        body.extend_from_slice(&chunk);
    }
    let message = match build_request(route, &matched.bindings, query.as_deref(), &body) {
        Ok(message) => message,
        Err(e) => {
            answer(
                session,
                ctx,
                LocalStatus::new(Code::InvalidArgument, e.to_string()),
            )
            .await?;
            return Ok(Arrived::Answered);
        }
    };
    if message.len() > max_message_size as usize {
        let status = LocalStatus::new(
            Code::ResourceExhausted,
            format!(
                "request message of {} bytes is larger than this listener's max_message_size ({max_message_size} bytes)",
                message.len()
            ),
        );
        answer(session, ctx, status).await?;
        return Ok(Arrived::Answered);
    }
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
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.extend_from_slice(&message);
    Ok(Arrived::Json(framed.freeze()))
}

/// The gateway's own status in the call's protocol.
async fn answer(session: &mut Session, ctx: &mut CallCtx, status: LocalStatus) -> Result<()> {
    if let Some(web) = ctx.web.as_mut() {
        let tasks = web.local_answer(&status, false);
        session.write_response_tasks(tasks).await?;
    }
    ctx.local_status = Some(status);
    Ok(())
}

async fn write_json(
    session: &mut Session,
    status: u16,
    body: &[u8],
    origin: Option<HeaderValue>,
) -> Result<()> {
    let mut head = ResponseHeader::build(status, Some(3))?;
    head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    head.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(origin) = &origin {
        CorsPolicy::decorate(origin, &mut head);
    }
    session
        .write_response_tasks(vec![
            HttpTask::Header(Box::new(head), false),
            HttpTask::Body(Some(Bytes::copy_from_slice(body)), true),
        ])
        .await?;
    Ok(())
}

async fn write_plain(
    session: &mut Session,
    status: u16,
    message: &str,
    origin: Option<HeaderValue>,
) -> Result<()> {
    let body = Bytes::from(format!("{message}\n"));
    let mut head = ResponseHeader::build(status, Some(3))?;
    head.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    head.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(origin) = &origin {
        CorsPolicy::decorate(origin, &mut head);
    }
    session
        .write_response_tasks(vec![
            HttpTask::Header(Box::new(head), false),
            HttpTask::Body(Some(body), true),
        ])
        .await?;
    Ok(())
}
