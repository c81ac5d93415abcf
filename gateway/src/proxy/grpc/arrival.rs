//! The start of every call on pingora's path (`request_filter`): browsers and REST clients
//! become native gRPC (`arrive.rs`), the call's trace starts, the core admits the call, and
//! hedged and JSON calls are handed to the relay.

use pingora::proxy::Session;
use pingora::Result;

use super::answer::{refuse_non_grpc, write_local_status};
use super::arrive::{self, Arrived};
use super::upstream::web_request_headers;
use super::{relay, GrpcProxy};
use crate::proxy::call::{self, CallCtx};
use crate::tls::PeerIdentity;

impl GrpcProxy {
    /// Asks the route's `ext_authz` service (if any) about the call; `Err` is the denial.
    async fn ask_ext_authz(
        &self,
        session: &Session,
        ctx: &mut CallCtx,
    ) -> std::result::Result<(), crate::grpc::LocalStatus> {
        let req = session.req_header();
        let peer_identity = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|tls| tls.extension.get::<PeerIdentity>());
        let check = ctx.ext_authz_check(call::CheckedCall {
            listener: &self.listener,
            path: req.uri.path(),
            authority: req.uri.authority().map(|a| a.as_str()),
            headers: &req.headers,
            peer: session.client_addr().and_then(|a| a.as_inet()).copied(),
            peer_principal: peer_identity.and_then(PeerIdentity::principal),
        });
        let Some(check) = check else {
            return Ok(());
        };
        let verdict = check.service.check(check.request).await;
        ctx.ext_authz_verdict(&check.service, verdict)
    }

    /// `request_filter`: `true` when the call was answered here or by the relay.
    pub(super) async fn begin_call(
        &self,
        session: &mut Session,
        ctx: &mut CallCtx,
    ) -> Result<bool> {
        ctx.call_guard = Some(self.calls.enter());
        if let Some(gauge) = &self.in_flight {
            gauge.inc();
            ctx.in_flight_gauge = Some(gauge.clone());
        }
        // Browsers and REST clients: a preflight is answered; gRPC-Web and JSON become native
        // gRPC here (proxy/web).
        let transcoder = self.routing.load().transcoder(&self.listener).cloned();
        let arrived = arrive::arrive(session, ctx, &self.web, transcoder).await?;
        let pending_json = match arrived {
            Arrived::Answered => return Ok(true),
            Arrived::Json(pending) => Some(pending),
            Arrived::GrpcWeb => None,
            Arrived::Grpc => {
                if refuse_non_grpc(session, ctx).await? {
                    return Ok(true);
                }
                None
            }
        };
        // The span starts now; whether the caller's traceparent may decide its sampling is
        // known only once admission has authenticated it.
        let arrived = std::time::SystemTime::now();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let admitted = {
            // The snapshot is held for admission only, never across an await.
            let snapshot = self.routing.load();
            // The caller's certificate names, read once per connection at the handshake.
            let peer_identity = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|tls| tls.extension.get::<PeerIdentity>());
            let req = session.req_header();
            let trusted_source = peer.is_some_and(|ip| {
                let ip = ip.to_canonical();
                self.trusted_sources.iter().any(|n| n.contains(&ip))
            });
            let request = call::Request {
                listener: &self.listener,
                path: req.uri.path(),
                headers: &req.headers,
                peer,
                peer_identity,
                trusted_source,
            };
            ctx.admit(&snapshot, &self.settings, request)
        };
        ctx.trace = self.observers.tracing.start(
            &session.req_header().headers,
            ctx.caller_trusted,
            arrived,
        );
        if let Err(status) = admitted {
            write_local_status(session, ctx, &status).await?;
            ctx.local_status = Some(status);
            return Ok(true);
        }
        // The route's external authorization service, asked once the caller is admitted.
        if let Err(status) = self.ask_ext_authz(session, ctx).await {
            write_local_status(session, ctx, &status).await?;
            ctx.local_status = Some(status);
            return Ok(true);
        }
        // An admitted JSON call's body becomes its one gRPC message (or a 400 answered here).
        let json_request = match pending_json {
            Some(pending) => {
                match arrive::json_request(
                    session,
                    ctx,
                    pending,
                    self.max_message_size,
                    self.request_body_timeout,
                )
                .await?
                {
                    Some(message) => Some(message),
                    None => return Ok(true),
                }
            }
            None => None,
        };
        let hedged = ctx.target.as_ref().is_some_and(|t| t.hedge.is_some());
        if hedged || json_request.is_some() {
            // Not through pingora's upstream phases: the relay carries hedged and JSON calls.
            let mut header = session.req_header().clone();
            web_request_headers(ctx, &mut header)?;
            let body = json_request.map(|message| vec![message]);
            let relayed = relay::relay(
                &self.relay_connector,
                session,
                ctx,
                header,
                relay::BodyLimits {
                    max_message_size: self.max_message_size,
                    timeout: self.request_body_timeout,
                },
                body,
            )
            .await?;
            if let relay::Relayed::Local(status) = relayed {
                write_local_status(session, ctx, &status).await?;
                ctx.local_status = Some(status);
            }
            return Ok(true);
        }
        Ok(false)
    }
}
