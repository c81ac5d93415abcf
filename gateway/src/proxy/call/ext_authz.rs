//! A route's `ext_authz`: what the call core asks the external authorization service, and
//! what its answer means for the call. The asking itself (an await) is the driver's.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::auth::{check_request, CheckFacts, DenyReason, ExtAuthz, Verdict};
use crate::grpc::{Code, LocalStatus};

use super::CallCtx;

/// What a driver needs to ask the service.
pub struct ExtAuthzCheck {
    pub service: Arc<ExtAuthz>,
    pub request: envoy_types::pb::envoy::service::auth::v3::CheckRequest,
}

/// The call as the check describes it.
#[derive(Debug, Clone, Copy)]
pub struct CheckedCall<'a> {
    pub listener: &'a str,
    pub path: &'a str,
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub peer: Option<SocketAddr>,
    pub peer_principal: Option<&'a str>,
}

impl CallCtx {
    /// The check to make before the call goes upstream, if its route has `ext_authz`.
    pub fn ext_authz_check(&self, call: CheckedCall<'_>) -> Option<ExtAuthzCheck> {
        let target = self.target.as_ref()?;
        let service = target.ext_authz.clone()?;
        let request = check_request(&CheckFacts {
            listener: call.listener,
            route: &target.route,
            path: call.path,
            authority: call.authority,
            headers: call.headers,
            peer: call.peer,
            principal: self.principal.as_deref(),
            peer_principal: call.peer_principal,
        });
        Some(ExtAuthzCheck { service, request })
    }

    /// The service's verdict: headers it adds join the call's identity headers; a denial (or
    /// no answer, unless the service is `failure_mode_allow`) is the status to answer with.
    pub fn ext_authz_verdict(
        &mut self,
        service: &ExtAuthz,
        verdict: Verdict,
    ) -> Result<(), LocalStatus> {
        match verdict {
            Verdict::Allow { set, remove } => {
                self.identity.remove.extend(remove);
                // What the service sets replaces what the caller sent.
                self.identity
                    .remove
                    .extend(set.iter().map(|(name, _)| name.clone()));
                self.identity.set.extend(set);
                Ok(())
            }
            Verdict::Deny { unauthenticated } => {
                self.denied = Some(DenyReason::ExtAuthz);
                let code = if unauthenticated {
                    Code::Unauthenticated
                } else {
                    Code::PermissionDenied
                };
                Err(LocalStatus::new(
                    code,
                    "the authorization service does not allow this call",
                ))
            }
            Verdict::Failed(reason) if service.failure_mode_allow => {
                tracing::debug!(service = %service.name, %reason, "ext_authz failed; allowed (failure_mode_allow)");
                Ok(())
            }
            Verdict::Failed(reason) => {
                tracing::debug!(service = %service.name, %reason, "ext_authz failed; denied");
                self.denied = Some(DenyReason::ExtAuthzError);
                Err(LocalStatus::new(
                    Code::PermissionDenied,
                    "the authorization service could not be asked; denied",
                ))
            }
        }
    }
}
