//! A real ext_authz service: a tonic server of Envoy's `envoy.service.auth.v3.Authorization`,
//! deciding by the call's `x-authz` metadata, so tests see what the gateway asks and does with
//! each answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status;
use tokio_stream::wrappers::TcpListenerStream;

/// What the service saw of the latest check.
#[derive(Debug, Clone, Default)]
pub struct SeenCheck {
    pub path: String,
    pub context: std::collections::HashMap<String, String>,
    pub header_names: Vec<String>,
}

#[derive(Clone, Default)]
struct Service {
    checks: Arc<AtomicU64>,
    last: Arc<Mutex<SeenCheck>>,
}

#[tonic::async_trait]
impl Authorization for Service {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let mut names: Vec<String> = http.headers.keys().cloned().collect();
        names.sort();
        *self.last.lock().unwrap() = SeenCheck {
            path: http.path.clone(),
            context: attributes.context_extensions.clone(),
            header_names: names,
        };
        let decision = http.headers.get("x-authz").cloned().unwrap_or_default();
        let denied = |code: i32| CheckResponse {
            status: Some(Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code }),
                body: "no".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let response = match decision.as_str() {
            "allow" => {
                let who = attributes
                    .context_extensions
                    .get("principal_subject")
                    .cloned()
                    .unwrap_or_else(|| "anonymous".into());
                CheckResponse {
                    status: Some(Status::default()),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                        headers: vec![HeaderValueOption {
                            header: Some(HeaderValue {
                                key: "x-echo-authz".into(),
                                value: format!("checked:{who}"),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })),
                    ..Default::default()
                }
            }
            "unauthenticated" => denied(401),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                denied(403)
            }
            _ => denied(403),
        };
        Ok(tonic::Response::new(response))
    }
}

/// The service on a loopback port, until dropped.
pub struct AuthzServer {
    pub addr: SocketAddr,
    service: Service,
    task: tokio::task::JoinHandle<()>,
}

impl AuthzServer {
    pub async fn start() -> AuthzServer {
        Self::start_on("127.0.0.1:0".parse().expect("an address")).await
    }

    /// `start`, on a given address.
    pub async fn start_on(addr: SocketAddr) -> AuthzServer {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = Service::default();
        let served = service.clone();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(served))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        AuthzServer {
            addr,
            service,
            task,
        }
    }

    pub fn checks(&self) -> u64 {
        self.service.checks.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> SeenCheck {
        self.service.last.lock().unwrap().clone()
    }
}

impl Drop for AuthzServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
