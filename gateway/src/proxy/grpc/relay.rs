//! The second driver of the call core: the gateway's own relay, for the calls pingora's phases
//! cannot carry. pingora proxies a call to one upstream at a time, so a hedged call (a route's
//! `hedge`, gRPC's A6) is carried here; so is every JSON call (`proxy/web`), whose answer must
//! be held until its status is known to choose the HTTP status.
//!
//! The request is read whole (at most 64 KiB; a JSON call's one message is already at hand).
//! Each attempt is a future in the call's own task, raced with the others: the first to
//! receive response headers wins and is relayed inline, the others are dropped, which resets
//! their streams with CANCEL. No task and no channel per call.
//!
//! Every decision is the call core's, as on pingora's path: the endpoint claimed through the
//! dial gate, the attempt's headers and span, the verdict on its end, a resend after a failure
//! the backend never saw, a status retry (`retry`), the CANCELLED -> DEADLINE_EXCEEDED mapping
//! and the gateway's own answers. With a `hedge`, the next attempt starts `delay` after the
//! latest (or at once after a failure), within `max_attempts`, the deadline and the upstream's
//! retry budget.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::http::v2::client::Http2Session;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, Result};

use super::failure;
use crate::breaker::Outcome;
use crate::config::MAX_RETRY_BUFFER;
use crate::endpoint::DialTicket;
use crate::grpc::{encode_grpc_message, Code, FrameError, LocalStatus};
use crate::metrics::AttemptOutcome;
use crate::proxy::call::{self, Attempt, CallCtx, DialWait, Resend, StatusFacts};

/// How a relayed call ended, for `request_filter`.
pub(super) enum Relayed {
    /// The winner's response went to the caller (its status is in `ctx.upstream_status`).
    Answered,
    /// The gateway answers itself (no attempt answered, deadline, request too large).
    Local(LocalStatus),
}

/// What a relayed call's request body must fit: the listener's message size, and
/// `request_body_timeout` for the time to read it whole.
pub(super) struct BodyLimits {
    pub max_message_size: u32,
    pub timeout: std::time::Duration,
}

/// An attempt that received its response headers.
struct Answered {
    h2: Box<Http2Session>,
    header: Box<ResponseHeader>,
    /// The headers ended the stream (a trailers-only answer).
    end: bool,
    peer: Box<HttpPeer>,
}

/// How an attempt's future ends: answered, or failed (`connecting`: no connection was made).
type AttemptEnd = (usize, std::result::Result<Answered, (bool, Box<Error>)>);

pub(super) async fn relay(
    connector: &Arc<Connector>,
    session: &mut Session,
    ctx: &mut CallCtx,
    header: RequestHeader,
    limits: BodyLimits,
    body: Option<Vec<Bytes>>,
) -> Result<Relayed> {
    let body = match read_body(session, ctx, body, limits).await? {
        Ok(body) => body,
        Err(status) => return Ok(Relayed::Local(status)),
    };
    let Some(target) = ctx.target.clone() else {
        return Ok(Relayed::Local(LocalStatus::new(
            Code::Internal,
            "the call was not routed",
        )));
    };
    let upstream = target.upstream;
    let policy = target.hedge;
    // The claims of the attempts started so far, by attempt number (taken when one ends).
    let mut claims: Vec<Option<Attempt>> = Vec::new();
    let mut racing = FuturesUnordered::new();
    let mut next = Some(Resend::First);
    let mut may_hedge = policy.is_some();
    let mut latest = Instant::now();
    let deadline = ctx.deadline;

    let winner = loop {
        if racing.is_empty() {
            // Nothing in flight: the first attempt, or every one so far failed or was held
            // back (the next goes at once, as a hedge would, with the budget's consent).
            let why = match (&policy, next.take()) {
                (_, Some(why)) => why,
                (Some(policy), None) if may_hedge => {
                    let allowed = upstream
                        .retry_budget()
                        .is_none_or(|budget| policy.may_send(ctx.remaining(), budget));
                    if !allowed {
                        return Ok(Relayed::Local(ctx.no_endpoint_status()));
                    }
                    Resend::Hedge
                }
                _ => return Ok(Relayed::Local(ctx.no_endpoint_status())),
            };
            match start(connector, ctx, &header, &body, why, &mut claims) {
                Ok(attempt) => racing.push(attempt),
                Err(status) => return Ok(Relayed::Local(status)),
            }
            latest = Instant::now();
            continue;
        }
        let due = match &policy {
            Some(policy) if may_hedge => policy.next_due(ctx.tried.len() as u32, latest, true),
            _ => None,
        };
        tokio::select! {
            Some((i, end)) = racing.next() => match end {
                Ok(answered) => {
                    match held_back_for_retry(ctx, &answered, policy.is_some()) {
                        Some(wait) => {
                            ctx.attempt = claims[i].take();
                            let code = ctx.upstream_status.unwrap_or(Code::Unknown);
                            ctx.hold_back_for_retry(code, wait);
                            ctx.pending_retry = None;
                            release(connector, answered).await;
                            tokio::time::sleep(wait).await;
                            next = Some(Resend::Status);
                        }
                        None => break (i, answered),
                    }
                }
                Err((connecting, e)) => {
                    let failure = failure::read(&e, connecting);
                    if let Some(attempt) = claims[i].take() {
                        if connecting {
                            attempt.endpoint.dial.connect_failed();
                        }
                        let verdict = ctx.failure_verdict(&failure);
                        ctx.end_attempt(attempt, verdict.map(|_| Outcome::Failure), verdict);
                        ctx.note_failure(&failure);
                    }
                    // Without a hedge, another attempt only after a failure the backend never
                    // saw (the whole request is at hand).
                    if policy.is_none() && ctx.resend_after(&failure, true) {
                        next = Some(Resend::Unprocessed);
                    }
                }
            },
            _ = sleep_until(due), if due.is_some() => {
                let Some(policy) = &policy else { continue };
                let allowed = upstream
                    .retry_budget()
                    .is_none_or(|budget| policy.may_send(ctx.remaining(), budget));
                if !allowed {
                    upstream.note_budget_exhausted();
                    may_hedge = false;
                    continue;
                }
                match start(connector, ctx, &header, &body, Resend::Hedge, &mut claims) {
                    Ok(attempt) => {
                        racing.push(attempt);
                        latest = Instant::now();
                    }
                    Err(_) => may_hedge = false, // no other endpoint can take it
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                // The attempts still racing are cancelled (dropped): no verdict on them, and a
                // half-open trial's slot goes back.
                for cancelled in claims.iter_mut().filter_map(Option::take) {
                    ctx.end_attempt(cancelled, None, None);
                }
                return Ok(Relayed::Local(ctx.deadline_status()));
            }
        }
    };
    // The others lose: their streams are cancelled (dropped), their claims released.
    drop(racing);
    let (i, answered) = winner;
    ctx.attempt = claims[i].take();
    for lost in claims.iter_mut().filter_map(Option::take) {
        ctx.end_attempt(lost, None, None);
    }
    ctx.endpoint = ctx.attempt.as_ref().map(|a| a.endpoint.addr);
    relay_answer(connector, session, ctx, answered).await
}

/// The request body as the backend must see it, checked against the listener's limit; `Err`
/// is the status a body that does not fit is answered with.
async fn read_body(
    session: &mut Session,
    ctx: &mut CallCtx,
    body: Option<Vec<Bytes>>,
    limits: BodyLimits,
) -> Result<std::result::Result<Vec<Bytes>, LocalStatus>> {
    let max_message_size = limits.max_message_size;
    let body = match body {
        Some(body) => Some(body),
        None => {
            let deadline = ctx.body_deadline(limits.timeout);
            match read_whole_request(session, deadline).await? {
                WholeBody::Read(chunks) => Some(chunks),
                WholeBody::TooLarge => None,
                WholeBody::TimedOut => return Ok(Err(ctx.body_timeout_status(limits.timeout))),
            }
        }
    };
    let Some(body) = body else {
        return Ok(Err(LocalStatus::new(
            Code::ResourceExhausted,
            format!(
                "hedged routes take requests of at most {} KiB",
                MAX_RETRY_BUFFER / 1024
            ),
        )));
    };
    // A gRPC-Web text body is base64: the backend gets it decoded (as on pingora's path,
    // where request_body_filter does it).
    let body = match ctx.web.as_mut() {
        Some(web) => match decoded(web, body) {
            Ok(body) => body,
            Err(reason) => return Ok(Err(LocalStatus::new(Code::InvalidArgument, reason))),
        },
        None => body,
    };
    // Checked and counted as on pingora's path (the listener's max_message_size, the access
    // log, the message metrics).
    for (i, chunk) in body.iter().enumerate() {
        let last = i + 1 == body.len();
        if let Err(e @ FrameError::TooLarge { .. }) = ctx.frames.feed(chunk, last, max_message_size)
        {
            return Ok(Err(call::request_body_status(e)));
        }
    }
    Ok(Ok(body))
}

/// A trailers-only answer the route's `retry` sends again instead of relaying (never on a
/// hedged route: a hedge is its retry policy): the wait before the next attempt.
fn held_back_for_retry(
    ctx: &mut CallCtx,
    answered: &Answered,
    hedged: bool,
) -> Option<std::time::Duration> {
    if hedged || !answered.end {
        return None;
    }
    let headers = &answered.header.headers;
    let code = Code::from_header(headers.get("grpc-status")?.as_bytes());
    let facts = StatusFacts {
        pushback: headers.get("grpc-retry-pushback-ms").map(|v| v.as_bytes()),
        copy_truncated: false,
    };
    let wait = ctx.retry_on_status(code, facts)?;
    ctx.upstream_status = Some(code);
    Some(wait)
}

/// Relays the winner's answer to the caller, inline: headers, messages as they come, trailers.
async fn relay_answer(
    connector: &Arc<Connector>,
    session: &mut Session,
    ctx: &mut CallCtx,
    answered: Answered,
) -> Result<Relayed> {
    let Answered {
        mut h2,
        mut header,
        end,
        peer,
    } = answered;
    ctx.response_started = true;
    if let Some(value) = header.headers.get("grpc-status") {
        let code = Code::from_header(value.as_bytes());
        if let Some(status) = ctx.status_seen(code) {
            header.insert_header("grpc-status", status.code.header_value())?;
            header.insert_header("grpc-message", encode_grpc_message(&status.message))?;
        }
    }
    respond(session, ctx, HttpTask::Header(header, end)).await?;
    if end {
        release_h2(connector, h2, &peer).await;
        return Ok(Relayed::Answered);
    }
    let deadline = ctx.deadline;
    loop {
        let chunk = tokio::select! {
            chunk = h2.read_response_body() => chunk?,
            _ = sleep_until(deadline), if deadline.is_some() => return Ok(answer_expired(ctx)),
        };
        let Some(data) = chunk else { break };
        let _ = ctx.resp_frames.feed(&data, false, u32::MAX);
        respond(session, ctx, HttpTask::Body(Some(data), false)).await?;
    }
    let trailers = tokio::select! {
        trailers = h2.read_trailers() => trailers?,
        _ = sleep_until(deadline), if deadline.is_some() => return Ok(answer_expired(ctx)),
    };
    let last = match trailers {
        Some(mut trailers) => {
            if let Some(value) = trailers.get("grpc-status") {
                let code = Code::from_header(value.as_bytes());
                if let Some(status) = ctx.status_seen(code) {
                    trailers.extend(status.trailers());
                }
            }
            HttpTask::Trailer(Some(Box::new(trailers)))
        }
        None => HttpTask::Body(Some(Bytes::new()), true),
    };
    respond(session, ctx, last).await?;
    release_h2(connector, h2, &peer).await;
    Ok(Relayed::Answered)
}

/// The caller's deadline ran out while the answer was being relayed: its budget ran out, not
/// the backend's health (pingora's path gives no verdict either).
fn answer_expired(ctx: &mut CallCtx) -> Relayed {
    ctx.finish_attempt(None, Some(AttemptOutcome::Timeout));
    Relayed::Local(ctx.deadline_status())
}

/// Writes one task of the winner's answer, translated for a gRPC-Web or JSON caller.
async fn respond(session: &mut Session, ctx: &mut CallCtx, task: HttpTask) -> Result<()> {
    let tasks = match ctx.web.as_mut() {
        Some(web) => {
            let tasks = web.shape(task);
            if let Some(status) = web.replaced_status() {
                // The caller got the gateway's status (a reply JSON cannot carry): count that.
                ctx.local_status = Some(status);
            }
            tasks
        }
        None => vec![task],
    };
    if !tasks.is_empty() {
        session.write_response_tasks(tasks).await?;
    }
    Ok(())
}

/// The request body as the backend must see it (a gRPC-Web text body decoded).
fn decoded(
    web: &mut crate::proxy::web::WebCall,
    chunks: Vec<Bytes>,
) -> std::result::Result<Vec<Bytes>, String> {
    let last = chunks.len();
    let mut out = Vec::with_capacity(last.max(1));
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut body = Some(chunk);
        web.request_body(&mut body, i + 1 == last)?;
        out.extend(body);
    }
    if last == 0 {
        let mut body = None;
        web.request_body(&mut body, true)?;
        out.extend(body);
    }
    Ok(out)
}

/// A relayed call's request body, read whole before any attempt.
enum WholeBody {
    Read(Vec<Bytes>),
    /// Larger than a relayed call may keep.
    TooLarge,
    /// Not all there by its deadline: the caller stopped sending.
    TimedOut,
}

async fn read_whole_request(
    session: &mut Session,
    deadline: std::time::Instant,
) -> Result<WholeBody> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut chunks = Vec::new();
    let mut size = 0usize;
    loop {
        let Ok(read) = tokio::time::timeout_at(deadline, session.read_request_body()).await else {
            return Ok(WholeBody::TimedOut);
        };
        let Some(chunk) = read? else { break };
        size += chunk.len();
        if size > MAX_RETRY_BUFFER as usize {
            return Ok(WholeBody::TooLarge);
        }
        chunks.push(chunk);
    }
    Ok(WholeBody::Read(chunks))
}

/// Starts the next attempt, on an endpoint the core claims for it: the attempt's future, to be
/// raced with the others, and its claim kept in `claims` under its number.
fn start<'a>(
    connector: &'a Connector,
    ctx: &mut CallCtx,
    header: &RequestHeader,
    body: &'a [Bytes],
    why: Resend,
    claims: &mut Vec<Option<Attempt>>,
) -> std::result::Result<impl Future<Output = AttemptEnd> + 'a, LocalStatus> {
    let (claimed, mut attempt) = ctx.claim(why)?;
    let dial_wait = ctx.dial_turn(&claimed, &mut attempt);
    let ticket = attempt.dial.take();
    let endpoint = claimed.endpoint();
    let peer = endpoint.peer.for_attempt(ctx.remaining());
    let mut header = header.clone();
    // An HTTP/1.1 caller's target has no authority: its `Host` is the backend's :authority
    // (pingora's h2 client refuses a Host that differs from it).
    let host = header.remove_header(&http::header::HOST);
    let attempt_headers = ctx.attempt_headers();
    for name in attempt_headers.to_remove() {
        header.remove_header(name);
    }
    for (name, value) in attempt_headers.to_set() {
        header
            .insert_header(name, value)
            .map_err(|_| LocalStatus::new(Code::Internal, "attempt header refused"))?;
    }
    // The :scheme and :authority of the backend's request (pingora's own path does the same).
    let authority = header
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| host.and_then(|h| h.to_str().ok().map(str::to_string)))
        .unwrap_or_else(|| endpoint.addr.to_string());
    let path = header
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = http::Uri::builder()
        .scheme(if peer.is_tls() { "https" } else { "http" })
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        header.set_uri(uri);
    }
    let number = claims.len();
    claims.push(Some(attempt));
    Ok(attempt_stream(
        connector, peer, header, body, dial_wait, ticket, number,
    ))
}

/// One attempt's stream: wait for a dial in flight if told to, connect (or reuse), send the
/// whole request, read the response headers.
async fn attempt_stream(
    connector: &Connector,
    peer: Box<HttpPeer>,
    header: RequestHeader,
    body: &[Bytes],
    dial_wait: Option<DialWait>,
    ticket: Option<DialTicket>,
    number: usize,
) -> AttemptEnd {
    if let Some(wait) = dial_wait {
        wait.settled().await;
    }
    let session = match connector.get_http_session(&*peer).await {
        Ok((session, _reused)) => session,
        // The ticket, dropped unsettled, turns the gate cold: the next call dials.
        Err(e) => return (number, Err((true, e))),
    };
    if let Some(ticket) = ticket {
        ticket.connected();
    }
    let outcome = async {
        let ClientSession::H2(mut h2) = session else {
            return Err(Error::explain(
                ErrorType::InvalidH2,
                "the backend does not speak HTTP/2",
            ));
        };
        h2.read_timeout = peer.options.read_timeout;
        h2.write_request_header(Box::new(header), body.is_empty())?;
        for (i, chunk) in body.iter().enumerate() {
            h2.write_request_body(chunk.clone(), i + 1 == body.len())
                .await?;
        }
        h2.read_response_header().await?;
        let header = h2
            .response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidH2, "no response header"))?;
        let end = h2.response_finished();
        Ok(Answered {
            h2: Box::new(h2),
            header: Box::new(header),
            end,
            peer,
        })
    }
    .await;
    (number, outcome.map_err(|e| (false, e)))
}

/// A finished stream's connection goes back to the pool.
async fn release(connector: &Connector, answered: Answered) {
    release_h2(connector, answered.h2, &answered.peer).await;
}

async fn release_h2(connector: &Connector, h2: Box<Http2Session>, peer: &HttpPeer) {
    connector
        .release_http_session(ClientSession::H2(*h2), peer, peer.idle_timeout())
        .await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
