//! Hedged calls (a route's `hedge`, gRPC's A6). pingora proxies a call to one upstream at a
//! time, so a hedged call is carried here instead: the request is read whole (at most 64 KiB),
//! each attempt is a task with its own HTTP/2 stream from the gateway's hedging connector, and
//! the first attempt to send response headers is relayed; the others are dropped, which resets
//! their streams with CANCEL. When an attempt has no response headers `delay` after it started
//! (or failed before answering), the next goes to another endpoint, within `max_attempts`, the
//! deadline and the upstream's retry budget.
//!
//! JSON calls (`proxy/web`) are carried here too, with their one translated message and no
//! hedge: pingora's filters cannot hold a unary answer back until its status is known, which
//! JSON needs to choose the HTTP status. Without a hedge, a failed attempt is followed by
//! another only when the backend certainly did not process it (as on pingora's path). Every
//! answer is written through the call's `WebCall`, if it has one.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ctx::{Attempt, CallCtx};
use super::status::{Code, LocalStatus};
use crate::breaker::Outcome;
use crate::config::MAX_RETRY_BUFFER;
use crate::metrics::AttemptOutcome;
use crate::policy::HedgePolicy;

/// What an attempt's task reports.
enum Event {
    Header(Box<ResponseHeader>, bool),
    Body(Bytes, bool),
    Trailers(Box<HeaderMap>),
    Failed(Box<Error>),
}

/// How a hedged call ended, for `request_filter`.
pub(super) enum Relayed {
    /// The winner's response went to the caller (its status is in `ctx.upstream_status`).
    Answered,
    /// The gateway answers itself (no attempt answered, deadline, request too large).
    Local(LocalStatus),
}

/// One attempt in flight: its task, and its endpoint's claim (in-flight count, breaker trial).
struct Running {
    task: JoinHandle<()>,
    attempt: Option<Attempt>,
    endpoint: std::net::SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping the task drops its stream: h2 resets it with CANCEL.
        self.task.abort();
    }
}

pub(super) async fn relay(
    connector: &Arc<Connector>,
    session: &mut Session,
    ctx: &mut CallCtx,
    policy: Option<&HedgePolicy>,
    upstream_header: RequestHeader,
    max_message_size: u32,
    body: Option<Vec<Bytes>>,
) -> Result<Relayed> {
    let body = match body {
        Some(body) => Some(body),
        None => read_whole_request(session).await?,
    };
    // A gRPC-Web text body is base64: the backend gets it decoded (as on pingora's path,
    // where request_body_filter does it).
    let body = match (body, ctx.web.as_mut()) {
        (Some(chunks), Some(web)) => match decoded(web, chunks) {
            Ok(chunks) => Some(chunks),
            Err(reason) => {
                return Ok(Relayed::Local(LocalStatus::new(
                    Code::InvalidArgument,
                    reason,
                )))
            }
        },
        (body, _) => body,
    };
    let Some(body) = body else {
        return Ok(Relayed::Local(LocalStatus::new(
            Code::ResourceExhausted,
            format!(
                "hedged routes take requests of at most {} KiB",
                MAX_RETRY_BUFFER / 1024
            ),
        )));
    };
    // Checked and counted as on pingora's path (the listener's max_message_size, the access
    // log, the message metrics).
    for (i, chunk) in body.iter().enumerate() {
        if let Err(super::FrameError::TooLarge { length, limit }) =
            ctx.frames
                .feed(chunk, i + 1 == body.len(), max_message_size)
        {
            return Ok(Relayed::Local(LocalStatus::new(
                Code::ResourceExhausted,
                format!(
                    "request message of {length} bytes is larger than this listener's \
                     max_message_size ({limit} bytes)"
                ),
            )));
        }
    }
    let body = Arc::new(body);
    let target = ctx.target.clone().expect("routed before relay");
    let upstream = target.upstream.clone();
    let (events_tx, mut events) = mpsc::channel::<(usize, Event)>(32);
    let mut running: Vec<Option<Running>> = Vec::new();
    let mut latest = Instant::now();
    let mut winner: Option<usize> = None;
    let mut may_hedge = policy.is_some();
    // Without a hedge: another attempt only after a failure the backend never saw.
    let mut may_resend = false;
    let max_attempts = policy.map_or_else(
        || {
            target
                .retry
                .as_ref()
                .map_or(upstream.max_attempts, |r| r.max_attempts())
        },
        HedgePolicy::max_attempts,
    );
    let deadline = ctx.deadline;

    loop {
        let live = running.iter().flatten().count();
        if winner.is_none() && live == 0 {
            // Nothing in flight: the first attempt, or every one so far failed (the next goes
            // at once, as a hedge would, with the budget's consent).
            let first = ctx.tried.is_empty();
            let another = !first
                && (ctx.tried.len() as u32) < max_attempts
                && match policy {
                    Some(policy) => {
                        may_hedge
                            && upstream
                                .retry_budget()
                                .is_none_or(|budget| policy.may_send(ctx.remaining(), budget))
                    }
                    None => std::mem::take(&mut may_resend) && !ctx.deadline_passed(),
                };
            if !first && !another {
                return Ok(Relayed::Local(no_answer(ctx)));
            }
            match start(connector, ctx, &upstream_header, &body, &events_tx) {
                Some(r) => running.push(Some(r)),
                None => return Ok(Relayed::Local(no_answer(ctx))),
            }
            latest = Instant::now();
            continue;
        }
        let due = match policy {
            Some(policy) if winner.is_none() && may_hedge => {
                policy.next_due(ctx.tried.len() as u32, latest, true)
            }
            _ => None,
        };
        tokio::select! {
            Some((i, event)) = events.recv() => {
                match (winner, event) {
                    (None, Event::Header(header, end)) => {
                        winner = Some(i);
                        // The others lose: their streams are cancelled, their claims released.
                        for (j, slot) in running.iter_mut().enumerate() {
                            if j != i {
                                if let Some(mut lost) = slot.take() {
                                    finish(ctx, &mut lost, None, None);
                                }
                            }
                        }
                        let won = running[i].as_mut().expect("a live attempt answered");
                        ctx.endpoint = Some(won.endpoint);
                        ctx.attempt = won.attempt.take();
                        ctx.response_started = true;
                        if let Some(value) = header.headers.get("grpc-status") {
                            ctx.upstream_status = Some(Code::from_header(value.as_bytes()));
                        }
                        respond(session, ctx, HttpTask::Header(header, end)).await?;
                        if end {
                            return Ok(Relayed::Answered);
                        }
                    }
                    (None, Event::Failed(e)) => {
                        may_resend = super::failure::certainly_unprocessed(&e);
                        if let Some(mut failed) = running[i].take() {
                            ctx.last_failure = Some(format!(
                                "{}: {}",
                                failed.endpoint,
                                super::failure::describe(&e)
                            ));
                            finish(ctx, &mut failed, Some(Outcome::Failure), Some(AttemptOutcome::Reset));
                        }
                    }
                    (Some(w), Event::Body(data, end)) if w == i => {
                        let _ = ctx.resp_frames.feed(&data, false, u32::MAX);
                        respond(session, ctx, HttpTask::Body(Some(data), end)).await?;
                        if end {
                            return Ok(Relayed::Answered);
                        }
                    }
                    (Some(w), Event::Trailers(trailers)) if w == i => {
                        if let Some(value) = trailers.get("grpc-status") {
                            ctx.upstream_status = Some(Code::from_header(value.as_bytes()));
                        }
                        respond(session, ctx, HttpTask::Trailer(Some(trailers))).await?;
                        return Ok(Relayed::Answered);
                    }
                    (Some(w), Event::Failed(e)) if w == i => {
                        // The response had begun: end the caller's stream with an error.
                        return Err(e);
                    }
                    _ => {} // a loser's late event
                }
            }
            _ = sleep_until(due), if due.is_some() => {
                let Some(policy) = policy else { continue };
                let budget_allows = upstream
                    .retry_budget()
                    .is_none_or(|budget| policy.may_send(ctx.remaining(), budget));
                if !budget_allows {
                    upstream.note_budget_exhausted();
                    may_hedge = false;
                    continue;
                }
                match start(connector, ctx, &upstream_header, &body, &events_tx) {
                    Some(r) => {
                        if let Some(m) = &target.metrics {
                            m.hedge();
                        }
                        running.push(Some(r));
                        latest = Instant::now();
                    }
                    None => may_hedge = false, // no other endpoint can take it
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                if winner.is_some() {
                    // The answer had begun: the caller's budget ran out, not the backend's
                    // health (pingora's path gives no verdict either).
                    ctx.finish_attempt(None, Some(AttemptOutcome::Timeout));
                }
                return Ok(Relayed::Local(LocalStatus::new(
                    Code::DeadlineExceeded,
                    format!(
                        "deadline exceeded after {} ms waiting for upstream {:?} ({} hedged attempts)",
                        ctx.started.elapsed().as_millis(),
                        ctx.upstream_name(),
                        ctx.tried.len()
                    ),
                )));
            }
        }
    }
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

/// The request body, whole, or `None` when it is larger than a hedged call may keep.
async fn read_whole_request(session: &mut Session) -> Result<Option<Vec<Bytes>>> {
    let mut chunks = Vec::new();
    let mut size = 0usize;
    while let Some(chunk) = session.read_request_body().await? {
        size += chunk.len();
        if size > MAX_RETRY_BUFFER as usize {
            return Ok(None);
        }
        chunks.push(chunk);
    }
    Ok(Some(chunks))
}

/// Starts an attempt on an endpoint the call has not tried; `None` when none is left.
fn start(
    connector: &Arc<Connector>,
    ctx: &mut CallCtx,
    header: &RequestHeader,
    body: &Arc<Vec<Bytes>>,
    events: &mpsc::Sender<(usize, Event)>,
) -> Option<Running> {
    let target = ctx.target.clone()?;
    let upstream = &target.upstream;
    let (index, admission) = upstream.claim(ctx.region.as_deref(), &ctx.tried)?;
    let endpoint = &upstream.endpoints[index];
    let number = ctx.tried.len();
    ctx.tried.push(index);
    let mut header = header.clone();
    // An HTTP/1.1 caller's target has no authority: its `Host` is the backend's :authority
    // (pingora's h2 client refuses a Host that differs from it).
    let host = header.remove_header(&http::header::HOST);
    if number > 0 {
        let _ = header.insert_header("grpc-previous-rpc-attempts", number.to_string());
    }
    if let Some(remaining) = ctx.remaining() {
        let _ = header.insert_header("grpc-timeout", super::format_grpc_timeout(remaining));
    }
    let peer = endpoint.peer.for_attempt(ctx.remaining());
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
    let task = tokio::spawn(attempt(
        connector.clone(),
        peer,
        header,
        body.clone(),
        number,
        events.clone(),
    ));
    Some(Running {
        task,
        attempt: Some(Attempt::new(
            endpoint.state.clone(),
            admission == crate::breaker::Admission::Trial,
        )),
        endpoint: endpoint.addr,
    })
}

/// Ends an attempt that did not win: its breaker sees `outcome` (none: cancelled by the gateway).
fn finish(
    ctx: &mut CallCtx,
    running: &mut Running,
    outcome: Option<Outcome>,
    counted_as: Option<AttemptOutcome>,
) {
    running.task.abort();
    let previous = ctx.attempt.take();
    ctx.attempt = running.attempt.take();
    ctx.finish_attempt(outcome, counted_as);
    ctx.attempt = previous;
}

fn no_answer(ctx: &CallCtx) -> LocalStatus {
    let message = match &ctx.last_failure {
        Some(last) => format!(
            "upstream {:?}: no hedged attempt answered after {} attempt{}; last error: {last}",
            ctx.upstream_name(),
            ctx.tried.len(),
            if ctx.tried.len() == 1 { "" } else { "s" }
        ),
        None => format!("upstream {:?}: no usable endpoint", ctx.upstream_name()),
    };
    LocalStatus::new(Code::Unavailable, message)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One attempt's stream: send the whole request, then report the response as it comes.
async fn attempt(
    connector: Arc<Connector>,
    peer: Box<HttpPeer>,
    header: RequestHeader,
    body: Arc<Vec<Bytes>>,
    index: usize,
    events: mpsc::Sender<(usize, Event)>,
) {
    let outcome = async {
        let (session, _reused) = connector.get_http_session(&*peer).await?;
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
        let response = h2
            .response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidH2, "no response header"))?;
        let end = h2.response_finished();
        if events
            .send((index, Event::Header(Box::new(response), end)))
            .await
            .is_err()
            || end
        {
            return Ok(());
        }
        while let Some(data) = h2.read_response_body().await? {
            if events
                .send((index, Event::Body(data, false)))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        let last = match h2.read_trailers().await? {
            Some(trailers) => Event::Trailers(Box::new(trailers)),
            None => Event::Body(Bytes::new(), true),
        };
        let _ = events.send((index, last)).await;
        connector
            .release_http_session(ClientSession::H2(h2), &*peer, peer.idle_timeout())
            .await;
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = events.send((index, Event::Failed(e))).await;
    }
}
