//! ext_authz: a route's calls are asked about at an external authorization service speaking
//! Envoy's `envoy.service.auth.v3.Authorization/Check`, so OPA's Envoy plugin and other existing
//! services work unchanged. The request is built and the answer read here; the call core
//! decides what the answer means for the call (`proxy/call/ext_authz.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::transport::{Channel, Endpoint};

use super::Principal;

/// Default time allowed for one check (Envoy's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// Headers an authorization service may add or remove per call.
const MAX_HEADERS: usize = 64;

/// One `[[ext_authz]]` service.
pub struct ExtAuthz {
    pub name: Arc<str>,
    endpoint: Endpoint,
    timeout: Duration,
    /// Allow the call when the service cannot answer (default false: deny).
    pub failure_mode_allow: bool,
    /// Connected on first use, on the runtime of the call that needs it.
    channel: OnceLock<Channel>,
}

impl std::fmt::Debug for ExtAuthz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthz")
            .field("name", &self.name)
            .field("uri", self.endpoint.uri())
            .field("timeout", &self.timeout)
            .field("failure_mode_allow", &self.failure_mode_allow)
            .finish()
    }
}

/// What a check said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, with headers to add to (and names to remove from) the upstream request.
    Allow {
        set: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    },
    /// Denied; `unauthenticated` when the service answered HTTP 401.
    Deny { unauthenticated: bool },
    /// No answer: an error or the timeout.
    Failed(String),
}

/// A call as the check describes it.
#[derive(Debug, Clone, Copy)]
pub struct CheckFacts<'a> {
    pub listener: &'a str,
    pub route: &'a str,
    pub path: &'a str,
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub peer: Option<SocketAddr>,
    pub principal: Option<&'a Principal>,
    /// The client certificate's principal (SAN), on mutual TLS.
    pub peer_principal: Option<&'a str>,
}

impl ExtAuthz {
    /// `uri`: `http://host:port`.
    pub fn new(
        name: &str,
        uri: http::Uri,
        timeout: Duration,
        failure_mode_allow: bool,
    ) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from(uri)
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        Ok(Self {
            name: name.into(),
            endpoint,
            timeout,
            failure_mode_allow,
            channel: OnceLock::new(),
        })
    }

    /// Asks the service about a call, within the timeout.
    pub async fn check(&self, request: CheckRequest) -> Verdict {
        let channel = self
            .channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone();
        let mut client = AuthorizationClient::new(channel);
        match tokio::time::timeout(self.timeout, client.check(request)).await {
            Err(_) => Verdict::Failed(format!("no answer within {:?}", self.timeout)),
            Ok(Err(status)) => Verdict::Failed(format!("{}: {}", status.code(), status.message())),
            Ok(Ok(response)) => read_response(response.into_inner()),
        }
    }
}

/// Envoy's CheckRequest for a call: source peer (address, certificate principal), the HTTP
/// request (method, path, host, headers lower-cased and merged), and `context_extensions`
/// naming the listener, the route and the gateway's principal if one was accepted.
pub fn check_request(facts: &CheckFacts<'_>) -> CheckRequest {
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in facts.headers {
        let Ok(text) = value.to_str() else { continue };
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(text);
            })
            .or_insert_with(|| text.to_string());
    }
    let mut context = HashMap::from([
        ("listener".to_string(), facts.listener.to_string()),
        ("route".to_string(), facts.route.to_string()),
    ]);
    if let Some(p) = facts.principal {
        context.insert("principal_provider".into(), p.provider.to_string());
        context.insert("principal_subject".into(), p.subject.clone());
    }
    let source = Peer {
        address: facts.peer.map(|addr| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..Default::default()
            })),
        }),
        principal: facts.peer_principal.unwrap_or_default().to_string(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: facts.path.to_string(),
                    host: facts.authority.unwrap_or_default().to_string(),
                    scheme: "http".into(),
                    protocol: "HTTP/2".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: context,
            ..Default::default()
        }),
    }
}

/// OK (`status.code` 0 or absent) allows, with the OK response's header changes; anything else
/// denies.
pub fn read_response(response: CheckResponse) -> Verdict {
    let code = response.status.as_ref().map_or(0, |s| s.code);
    match (code, response.http_response) {
        (0, Some(HttpResponse::OkResponse(ok))) => {
            let set = ok
                .headers
                .iter()
                .filter_map(|option| option.header.as_ref())
                .filter_map(|h| {
                    let name =
                        HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?;
                    settable(&name).then_some(())?;
                    Some((name, HeaderValue::try_from(h.value.as_str()).ok()?))
                })
                .take(MAX_HEADERS)
                .collect();
            let remove = ok
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
                .filter(settable)
                .take(MAX_HEADERS)
                .collect();
            Verdict::Allow { set, remove }
        }
        (0, _) => Verdict::Allow {
            set: Vec::new(),
            remove: Vec::new(),
        },
        (_, Some(HttpResponse::DeniedResponse(denied))) => Verdict::Deny {
            unauthenticated: denied.status.is_some_and(|s| s.code == 401),
        },
        // gRPC's UNAUTHENTICATED as the check's own status.
        (code, _) => Verdict::Deny {
            unauthenticated: code == 16,
        },
    }
}

/// Headers an authorization service may change: not pseudo-headers, not gRPC's own, not the
/// ones that carry the call.
fn settable(name: &HeaderName) -> bool {
    let n = name.as_str();
    !(n.starts_with(':')
        || n.starts_with("grpc-")
        || matches!(
            n,
            "content-type" | "te" | "host" | "connection" | "transfer-encoding"
        ))
}
