//! Admission: a call's route, its place under the traffic policy, its deadline and the region
//! it prefers, decided once when it arrives, whichever driver then carries it.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};

use crate::auth::{CallFacts as AuthFacts, Credentials};
use crate::grpc::{parse_grpc_timeout, Code, LocalStatus};
use crate::policy::CallFacts;
use crate::routing::{parse_grpc_path, RoutingSnapshot};
use crate::tls::PeerIdentity;

use super::answers::{denial_status, refusal_status};
use super::CallCtx;

/// Settings every gRPC listener shares.
#[derive(Debug, Clone)]
pub struct CallSettings {
    pub region: Option<String>,
    pub region_header: Option<HeaderName>,
}

impl CallSettings {
    /// The caller's stated region if it may state one (`trusted`: it is a trusted source, or
    /// authenticated) and sent one, else the gateway's own.
    pub fn preferred_region(&self, headers: &HeaderMap, trusted: bool) -> Option<String> {
        let stated = self
            .region_header
            .as_ref()
            .filter(|_| trusted)
            .and_then(|name| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty() && v.len() <= 64)
            });
        stated.map(str::to_string).or_else(|| self.region.clone())
    }
}

/// The request as admission sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub listener: &'a str,
    /// `:path`.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub peer: Option<IpAddr>,
    /// The verified client certificate of the connection (mutual TLS).
    pub peer_identity: Option<&'a PeerIdentity>,
    /// The caller's address is in the listener's `trusted_sources`.
    pub trusted_source: bool,
}

impl CallCtx {
    /// Routes the call and admits it under the route's policy, or says why not: `Err` carries
    /// the status to answer with.
    pub fn admit(
        &mut self,
        snapshot: &RoutingSnapshot,
        settings: &CallSettings,
        req: Request<'_>,
    ) -> Result<(), LocalStatus> {
        // Until authentication says more, only the caller's address can make it trusted.
        self.caller_trusted = req.trusted_source;
        let path = req.path;
        let grpc_path = parse_grpc_path(path).ok_or_else(|| {
            LocalStatus::new(Code::Unimplemented, format!("malformed gRPC path {path:?}"))
        })?;
        let route = snapshot
            .routes(req.listener)
            .and_then(|table| {
                // A `match` naming a caller: that route's `auth` says who the caller is.
                let mut principal = |route: &crate::routing::Route| {
                    let auth = route.targets().next()?.auth.as_ref()?;
                    let credentials = Credentials {
                        headers: req.headers,
                        peer: req.peer_identity,
                    };
                    let accepted = auth.identify(credentials)?;
                    Some(format!("{}:{}", accepted.provider, accepted.subject))
                };
                table.find_with(
                    grpc_path.service,
                    grpc_path.method,
                    req.headers,
                    &mut principal,
                )
            })
            .ok_or_else(|| {
                LocalStatus::new(
                    Code::Unimplemented,
                    format!("no route for {path} on listener {:?}", req.listener),
                )
            })?;
        // The traffic policy: rate limit, side of a split, a slot on the upstream.
        let facts = CallFacts {
            headers: req.headers,
            peer: req.peer,
        };
        let admitted = route.admit(facts).map_err(|refusal| {
            let label = route.targets().next().map(|t| &*t.route).unwrap_or("?");
            refusal_status(refusal, label)
        })?;
        self.in_flight_permit = Some(admitted.permit);
        let target = admitted.target;
        target.upstream.count_call();
        let caller_timeout = req.headers.get("grpc-timeout");
        let budget = match caller_timeout {
            Some(value) => Some(parse_grpc_timeout(value.as_bytes()).ok_or_else(|| {
                LocalStatus::new(
                    Code::InvalidArgument,
                    format!(
                        "malformed grpc-timeout header {:?}",
                        String::from_utf8_lossy(value.as_bytes())
                    ),
                )
            })?),
            None => target.timeout,
        };
        // A budget too far in the future to represent is no deadline at all (checked, never a
        // panic on the call path whatever the caller sends).
        self.deadline = budget.and_then(|b| self.started.checked_add(b));
        self.caller_deadline = caller_timeout.is_some();
        // Known methods are resolved now (a lock-free lookup); whether an unknown one gets
        // series of its own waits for the call's answer.
        if let Some(m) = &target.metrics {
            self.method_metrics = m.methods.known(path);
            if self.method_metrics.is_none() {
                self.unlisted_method = Some(path.into());
            }
        }
        self.target = Some(target.clone());
        // Identity headers a caller sent are never believed: removed whatever the route.
        let owned = snapshot.auth.owned_headers();
        self.identity.remove.extend(owned.iter().cloned());
        // Limits keyed by route, peer or header came first: they are cheaper than a
        // signature check, so a flood of forged tokens is limited too.
        if let Some(auth) = &target.auth {
            let credentials = Credentials {
                headers: req.headers,
                peer: req.peer_identity,
            };
            let facts = AuthFacts {
                listener: req.listener,
                route: &target.route,
                service: grpc_path.service,
                method: grpc_path.method,
                peer: req.peer,
            };
            match auth.check(credentials, facts) {
                Ok(accepted) => {
                    // Limits keyed by principal come after authentication named the caller.
                    if route.has_principal_limit() {
                        let who = format!(
                            "{}:{}",
                            accepted.principal.provider, accepted.principal.subject
                        );
                        route
                            .limit_principal(req.headers, &who)
                            .map_err(|refusal| refusal_status(refusal, &target.route))?;
                    }
                    self.identity.remove.extend(accepted.headers.remove);
                    self.identity.set = accepted.headers.set;
                    self.principal = Some(accepted.principal);
                }
                Err(denial) => {
                    self.denied = Some(denial.reason);
                    return Err(denial_status(&denial));
                }
            }
        }
        // Only a trusted source or an authenticated caller chooses its region; anyone else gets
        // the gateway's.
        let trusted = req.trusted_source || self.principal.is_some();
        self.caller_trusted = trusted;
        self.region = settings.preferred_region(req.headers, trusted);
        self.forwarded_for = super::forwarded::forwarded_for(req.headers, req.peer, trusted);
        Ok(())
    }
}
