//! What a finished call leaves behind, all fed by its context in one place: the log line of a
//! call the gateway answered, the per-method metrics, the status page's traffic, the trace's
//! spans and the access log line.

use pingora::proxy::Session;
use tracing::{debug, info};

use super::GrpcProxy;
use crate::grpc::Code;
use crate::proxy::call::CallCtx;

impl GrpcProxy {
    pub(super) fn report(&self, session: &Session, ctx: &mut CallCtx, code: Code) {
        let elapsed = ctx.started.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let path = session.req_header().uri.path();
        if let Some(reason) = ctx.denied {
            if let (Some(metrics), Some(target)) = (&self.metrics, &ctx.target) {
                metrics
                    .auth()
                    .denied
                    .with_label_values(&[self.listener.as_str(), &target.route, reason.label()])
                    .inc();
            }
            if let Some(suppressed) = self.denial_log.take_turn() {
                let message = ctx.local_status.as_ref().map(|s| s.message.as_str());
                info!(
                    listener = %self.listener, path, reason = reason.label(),
                    message = message.unwrap_or_default(), denials_not_logged = suppressed,
                    "call refused by the route's auth (a few lines a second at most)"
                );
            }
        } else if let Some(status) = ctx
            .local_status
            .as_ref()
            .filter(|s| s.code != Code::Cancelled)
        {
            // Callers decide how many of these there are: a few lines a second at most.
            if let Some(suppressed) = self.answer_log.take_turn() {
                info!(
                    listener = %self.listener, path, upstream = ctx.upstream_name(), code = %code,
                    attempts = ctx.tried.len(), elapsed_ms, message = %status.message,
                    answers_not_logged = suppressed,
                    "call answered by the gateway (a few lines a second at most)"
                );
            }
        } else {
            debug!(
                listener = %self.listener, path, upstream = ctx.upstream_name(), code = %code,
                attempts = ctx.tried.len(), elapsed_ms, "call finished"
            );
        }
        if ctx.not_grpc {
            // A refused non-gRPC request, a CORS preflight, a path no REST route knows: not a
            // call of any method, so not counted as one.
            return;
        }
        if let Some(route) = ctx.target.as_ref().and_then(|t| t.metrics.as_ref()) {
            route.traffic.record(code == Code::Ok, elapsed);
            route.upstream_traffic.record(code == Code::Ok, elapsed);
        }
        match (&ctx.finished_method_metrics(), &self.metrics) {
            (Some(method), _) => method.call_finished(
                code,
                ctx.protocol(),
                elapsed.as_secs_f64(),
                ctx.frames.messages,
                ctx.resp_frames.messages,
            ),
            (None, Some(metrics)) if ctx.target.is_none() => {
                metrics.unrouted_call(&self.listener, code, ctx.protocol())
            }
            (None, _) => {}
        }
        let logged = self.observers.access_log.wants(code == Code::Ok);
        let traced = ctx.trace.as_ref().is_some_and(|t| t.is_recording());
        if !logged && !traced {
            return;
        }
        let req = session.req_header();
        let peer = session.client_addr().map(|a| a.to_string());
        let user_agent = req.headers.get(http::header::USER_AGENT);
        let record = ctx.access_record(&self.listener, req.uri.path(), user_agent, peer, code);
        if let Some(trace) = ctx.trace.take() {
            trace.finish(&record, authority(req));
        }
        if logged {
            self.observers.access_log.write(record);
        }
    }
}

/// The host and port the caller addressed (`:authority`), for the span's `server.address`.
fn authority(req: &pingora::http::RequestHeader) -> Option<(&str, Option<u16>)> {
    let authority = req.uri.authority()?;
    Some((authority.host(), authority.port_u16()))
}
