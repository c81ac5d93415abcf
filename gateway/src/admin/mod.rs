//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/upstreams` (JSON), `POST /reload`
//! and `/` (a self-contained status page). Served by pingora as its own service, apart from the
//! data path.

pub mod client;
mod page;
mod view;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::discovery::etcd::{DiscoveryStatus, RejectReason};
use crate::metrics::{breaker_state_value, Metrics};
use crate::routing::Routing;
pub use view::{GatewayView, UpstreamView};

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub routing: Arc<Routing>,
    pub discovery: Option<Arc<DiscoveryStatus>>,
    /// Log lines dropped because stderr did not keep up.
    pub log_drops: crate::logging::LogDrops,
    /// This gateway's registration under `[etcd] members_prefix`, with `[etcd]`.
    pub membership: Option<Arc<crate::discovery::members::MembershipStatus>>,
    pub dns: Arc<crate::discovery::dns::DnsStatus>,
    /// Set once pingora runs its services (listeners bound).
    pub running: Arc<AtomicBool>,
    /// Set when a graceful shutdown starts.
    pub draining: Arc<AtomicBool>,
    pub reload: crate::control::ReloadHandle,
    pub supervisor: crate::background::Supervisor,
    /// The xDS server's clients, with `[xds]`.
    pub xds: Option<Arc<crate::xds::XdsClients>>,
    /// The running config, for `[admin] token_file`'s token (re-read by every reload).
    pub control: Arc<crate::control::ControlPlane>,
}

impl AdminApp {
    /// Why the gateway is not ready, or `None` when it is.
    fn not_ready_reason(&self) -> Option<String> {
        if self.draining.load(Ordering::Acquire) {
            return Some("shutting down: draining calls".into());
        }
        if !self.running.load(Ordering::Acquire) {
            return Some("listeners are not running yet".into());
        }
        let down = self.supervisor.down_tasks();
        if !down.is_empty() {
            return Some(format!(
                "background task {} failed and is restarting",
                down.join(", ")
            ));
        }
        if let Some(waiting) = self.jwks_waiting() {
            return Some(waiting);
        }
        match &self.discovery {
            Some(status) if !status.synced_once() => Some(format!(
                "waiting for the first etcd sync{}",
                status
                    .last_error()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )),
            _ => None,
        }
    }

    /// `ready`, plus a `warning:` line for each thing that is wrong without stopping the
    /// gateway from serving (a cluster membership that cannot divide limits as meant).
    fn ready_text(&self) -> String {
        let mut text = String::from("ready\n");
        let config = self.control.config();
        if let (Some(status), Some(etcd)) = (&self.membership, &config.etcd) {
            for warning in status.warnings(&etcd.members_prefix) {
                text.push_str(&format!("warning: {warning}\n"));
            }
        }
        text
    }

    /// A `jwks_url` provider that has no keys yet: its routes refuse every caller.
    fn jwks_waiting(&self) -> Option<String> {
        let snapshot = self.routing.load();
        let waiting = snapshot.auth.iter().find_map(|provider| {
            let crate::auth::Provider::Jwt(jwt) = provider.as_ref() else {
                return None;
            };
            let crate::auth::KeySource::Remote(source) = jwt.keys() else {
                return None;
            };
            if source.current().is_some() {
                return None;
            }
            let status = source.status();
            Some(format!(
                "waiting for the first JWKS of auth provider {:?}{}",
                jwt.name(),
                status
                    .last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ))
        });
        waiting
    }

    /// Every endpoint but the probes needs the admin token when `[admin] token_file` is set:
    /// `Authorization: Bearer TOKEN`, compared in constant time.
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = self.control.config().admin_token.clone() else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| {
                let v = v.as_bytes();
                let (scheme, rest) = v.split_at_checked(7)?;
                scheme
                    .eq_ignore_ascii_case(b"bearer ")
                    .then(|| rest.trim_ascii())
            })
            .unwrap_or_default();
        use subtle::ConstantTimeEq;
        bool::from(presented.ct_eq(&token.0))
    }

    fn view(&self) -> GatewayView {
        view::gateway_view(
            &self.routing.load_full(),
            self.discovery.as_deref(),
            Some(&self.dns),
            Some(&self.metrics),
            self.xds.as_deref(),
            self.not_ready_reason(),
        )
    }

    /// Fills the gauges that describe state, right before a scrape.
    fn refresh_gauges(&self, view: &GatewayView) {
        let m = &self.metrics;
        m.sweep_departed_endpoints(std::time::Instant::now());
        m.breaker_state.reset();
        m.endpoints.reset();
        m.staleness.reset();
        for upstream in &view.upstreams {
            let mut by_state = std::collections::BTreeMap::from([
                ("usable", 0),
                ("open", 0),
                ("half_open", 0),
                ("unhealthy", 0),
                ("drained", 0),
            ]);
            for e in &upstream.endpoints {
                *by_state.entry(e.summary_state()).or_default() += 1;
                if let Ok(addr) = e.addr.parse() {
                    m.breaker_state
                        .with_label_values(&[&upstream.name, &m.endpoint_label(addr)])
                        .set(breaker_state_value(e.breaker_state));
                }
            }
            for (state, n) in by_state {
                m.endpoints
                    .with_label_values(&[&upstream.name, state])
                    .set(n);
            }
            if let Some(stale) = upstream.staleness_seconds {
                m.staleness.with_label_values(&[&upstream.name]).set(stale);
            }
        }
        m.dns_addresses.reset();
        for (name, status) in self.dns.all() {
            m.dns_addresses
                .with_label_values(&[&name])
                .set(status.addresses as i64);
            for outcome in crate::discovery::dns::Outcome::ALL {
                let c = m
                    .dns_resolutions
                    .with_label_values(&[&name, outcome.as_str()]);
                c.inc_by(status.count(outcome).saturating_sub(c.get()));
            }
        }
        let dropped = self.log_drops.count();
        m.log_lines_dropped
            .inc_by(dropped.saturating_sub(m.log_lines_dropped.get()));
        if let Some(status) = &self.membership {
            m.cluster_registered.set(i64::from(status.registered()));
            m.cluster_foreign.set(i64::from(status.foreign()));
        }
        if let Some(status) = &self.discovery {
            m.etcd_connected.set(i64::from(status.connected()));
            let applied = m.discovery_events.with_label_values(&["applied"]);
            applied.inc_by(status.applied().saturating_sub(applied.get()));
            let mut rejected_total = 0;
            for reason in RejectReason::ALL {
                let n = status.rejected(reason);
                rejected_total += n;
                let c = m.discovery_rejected.with_label_values(&[reason.as_str()]);
                c.inc_by(n.saturating_sub(c.get()));
            }
            let rejected = m.discovery_events.with_label_values(&["rejected"]);
            rejected.inc_by(rejected_total.saturating_sub(rejected.get()));
        }
    }
}

impl AdminApp {
    /// `POST /reload`: 200 with what changed, or 422 with why the running config stayed.
    async fn reload(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        if session.req_header().method != http::Method::POST {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                text,
                b"use POST /reload\n".to_vec(),
            );
        }
        match self.reload.reload().await {
            Ok(report) => respond(StatusCode::OK, text, format!("{report}\n").into_bytes()),
            Err(reason) => respond(
                StatusCode::UNPROCESSABLE_ENTITY,
                text,
                format!("{reason}\n").into_bytes(),
            ),
        }
    }
}

impl AdminApp {
    /// The test-only fault hook (`STRAIT_TEST_HOOKS=1`): `POST /test/panic?task=NAME`.
    fn test_panic(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        let task = session
            .req_header()
            .uri
            .query()
            .and_then(|q| q.strip_prefix("task="))
            .unwrap_or("");
        if session.req_header().method != http::Method::POST || !self.supervisor.hooks().fire(task)
        {
            return respond(StatusCode::NOT_FOUND, text, b"not found\n".to_vec());
        }
        tracing::warn!(task, "test hook: making a background task panic");
        respond(
            StatusCode::OK,
            text,
            format!("{task} told to panic\n").into_bytes(),
        )
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        if !matches!(path.as_str(), "/healthz" | "/readyz") && !self.authorized(session) {
            let mut answer = respond(
                StatusCode::UNAUTHORIZED,
                "text/plain; charset=utf-8",
                b"this admin endpoint needs the admin token: Authorization: Bearer TOKEN\n"
                    .to_vec(),
            );
            answer.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"strait-admin\""),
            );
            return answer;
        }
        if path == "/reload" {
            return self.reload(session).await;
        }
        if path == "/test/panic" {
            return self.test_panic(session);
        }
        match path.as_str() {
            "/metrics" => {
                let view = self.view();
                self.refresh_gauges(&view);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render().into_bytes(),
                )
            }
            "/healthz" => respond(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                b"ok\n".to_vec(),
            ),
            "/readyz" => match self.not_ready_reason() {
                None => respond(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    self.ready_text().into_bytes(),
                ),
                Some(reason) => respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("not ready: {reason}\n").into_bytes(),
                ),
            },
            "/upstreams" => {
                let body = serde_json::to_vec_pretty(&self.view()).expect("the view serialises");
                respond(StatusCode::OK, "application/json", body)
            }
            "/" => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::render(&self.view()).into_bytes(),
            ),
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                b"not found: try /, /metrics, /healthz, /readyz, /upstreams, POST /reload\n"
                    .to_vec(),
            ),
        }
    }
}
