//! The L4 proxy: each accepted connection goes, whole, to one endpoint of the listener's
//! upstream. Endpoint choice is the L7 one (region first, smooth WRR, breakers); a failed connect
//! counts against that endpoint's breaker and the next endpoint is tried.

mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::breaker::{Admission, Outcome};
use crate::metrics::{AttemptOutcome, TcpMetrics, TcpOutcome};
use crate::observe::access_log::CallRecord;
use crate::observe::Observers;
use crate::proxy::InFlightCalls;
use crate::routing::{Routing, UpstreamSet};

pub use relay::{relay, RelayEnd, RelayStats};

/// One tcp listener.
pub struct TcpProxy {
    listener: String,
    routing: Arc<Routing>,
    region: Option<String>,
    calls: InFlightCalls,
    /// How long open connections may go on once the listener drains.
    grace: Duration,
    metrics: Option<TcpMetrics>,
    observers: Arc<Observers>,
}

/// What the access log says about one tcp connection.
struct ConnectionSummary<'a> {
    started: Instant,
    peer: Option<String>,
    upstream: &'a str,
    endpoint: Option<std::net::SocketAddr>,
    attempts: u32,
    outcome: TcpOutcome,
    up: u64,
    down: u64,
}

impl TcpProxy {
    pub fn new(
        listener: String,
        routing: Arc<Routing>,
        region: Option<String>,
        calls: InFlightCalls,
        grace: Duration,
        metrics: Option<TcpMetrics>,
        observers: Arc<Observers>,
    ) -> Self {
        Self {
            listener,
            routing,
            region,
            calls,
            grace,
            metrics,
            observers,
        }
    }

    fn finished(&self, c: ConnectionSummary<'_>) {
        if let Some(m) = &self.metrics {
            m.finished(c.outcome);
        }
        let ok = matches!(c.outcome, TcpOutcome::Closed | TcpOutcome::Drained);
        if !self.observers.access_log.wants(ok) {
            return;
        }
        let elapsed = c.started.elapsed();
        self.observers.access_log.write(CallRecord {
            ts: std::time::SystemTime::now() - elapsed,
            listener: self.listener.clone(),
            peer: c.peer,
            method: None,
            route: None,
            upstream: Some(c.upstream.to_string()),
            endpoint: c.endpoint.map(|a| a.to_string()),
            attempts: c.attempts,
            code: None,
            status: Some(c.outcome.as_str()),
            message: None,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            req_bytes: c.up,
            resp_bytes: c.down,
            req_msgs: 0,
            resp_msgs: 0,
            region: self.region.clone(),
            user_agent: None,
            trace_id: None,
            protocol: "tcp",
            principal: None,
            denied: None,
        });
    }
}

/// Why no connection to the upstream could be made.
#[derive(Debug)]
struct NoConnection {
    reason: String,
    attempts: u32,
}

/// Tries endpoints until one accepts the connection, at most `max_attempts` of them.
async fn connect(
    upstream: &UpstreamSet,
    region: Option<&str>,
) -> Result<(TcpStream, std::net::SocketAddr, u32), NoConnection> {
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error = None;
    while (tried.len() as u32) < upstream.max_attempts.max(1) {
        let Some((index, admission)) = upstream.claim(region, &tried) else {
            return Err(NoConnection {
                reason: last_error.unwrap_or_else(|| no_endpoint_reason(upstream)),
                attempts: tried.len() as u32,
            });
        };
        tried.push(index);
        let endpoint = &upstream.endpoints[index];
        let trial = admission == Admission::Trial;
        let _in_flight = endpoint.state.start_attempt();
        let attempt =
            tokio::time::timeout(upstream.connect_timeout, TcpStream::connect(endpoint.addr));
        let error = match attempt.await {
            Ok(Ok(stream)) => {
                endpoint.state.count_attempt(AttemptOutcome::Ok);
                endpoint.state.record(Outcome::Success, trial, true);
                let _ = stream.set_nodelay(true);
                return Ok((stream, endpoint.addr, tried.len() as u32));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {:?}", upstream.connect_timeout),
        };
        endpoint.state.count_attempt(AttemptOutcome::ConnectError);
        upstream.with_ejection_rules(&endpoint.state, |may_open| {
            endpoint.state.record(Outcome::Failure, trial, may_open)
        });
        debug!(upstream = %upstream.name, endpoint = %endpoint.addr, error, "tcp connect failed");
        last_error = Some(format!("{}: {error}", endpoint.addr));
    }
    Err(NoConnection {
        reason: last_error.unwrap_or_else(|| no_endpoint_reason(upstream)),
        attempts: tried.len() as u32,
    })
}

fn no_endpoint_reason(upstream: &UpstreamSet) -> String {
    match &upstream.empty_reason {
        Some(reason) => reason.clone(),
        None if upstream.endpoints.is_empty() => "the upstream has no endpoints".into(),
        None => format!(
            "all {} endpoints are unavailable (breaker open, unhealthy or drained)",
            upstream.endpoints.len()
        ),
    }
}

#[async_trait]
impl ServerApp for TcpProxy {
    async fn process_new(
        self: &Arc<Self>,
        mut downstream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _call = self.calls.enter();
        let started = Instant::now();
        let peer = downstream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(|a| a.to_string()));
        let Some(route) = self.routing.load().tcp_route(&self.listener).cloned() else {
            // Only possible for a moment while a reload removes this listener.
            self.finished(ConnectionSummary {
                started,
                peer,
                upstream: "-",
                endpoint: None,
                attempts: 0,
                outcome: TcpOutcome::NoEndpoint,
                up: 0,
                down: 0,
            });
            return None;
        };
        let upstream = route.upstream;
        let (server, addr, attempts) = match connect(&upstream, self.region.as_deref()).await {
            Ok(connected) => connected,
            Err(e) => {
                warn!(listener = %self.listener, upstream = %upstream.name, reason = %e.reason,
                      "tcp connection refused: no endpoint reachable");
                self.finished(ConnectionSummary {
                    started,
                    peer,
                    upstream: &upstream.name,
                    endpoint: None,
                    attempts: e.attempts,
                    outcome: TcpOutcome::NoEndpoint,
                    up: 0,
                    down: 0,
                });
                // Closing is the only answer L4 has; the log line and metric say why.
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut downstream).await;
                return None;
            }
        };
        let active = self.metrics.as_ref().map(|m| m.active.clone());
        if let Some(a) = &active {
            a.inc();
        }
        let stats = RelayStats::default();
        let end = relay(
            downstream,
            server,
            route.idle_timeout,
            drain_signal(shutdown.clone(), self.grace),
            &stats,
        )
        .await;
        if let Some(a) = &active {
            a.dec();
        }
        let (up, down) = stats.totals();
        if let Some(m) = &self.metrics {
            m.bytes_upstream.inc_by(up);
            m.bytes_downstream.inc_by(down);
        }
        let outcome = match &end {
            RelayEnd::Closed => TcpOutcome::Closed,
            RelayEnd::Idle => TcpOutcome::Idle,
            RelayEnd::Drained => TcpOutcome::Drained,
            RelayEnd::Error(_) => TcpOutcome::Error,
        };
        self.finished(ConnectionSummary {
            started,
            peer,
            upstream: &upstream.name,
            endpoint: Some(addr),
            attempts,
            outcome,
            up,
            down,
        });
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match end {
            RelayEnd::Error(e) => {
                info!(listener = %self.listener, endpoint = %addr, bytes_up = up, bytes_down = down,
                      elapsed_ms, error = %e, "tcp connection ended by an error")
            }
            other => {
                debug!(listener = %self.listener, endpoint = %addr, bytes_up = up, bytes_down = down,
                       elapsed_ms, end = ?other, "tcp connection closed")
            }
        }
        None
    }
}

/// Resolves once the listener has been told to stop and the grace period has passed.
async fn drain_signal(mut shutdown: ShutdownWatch, grace: Duration) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            // The sender is gone: nobody can ask for a drain any more.
            std::future::pending::<()>().await;
        }
    }
    tokio::time::sleep(grace).await;
}
