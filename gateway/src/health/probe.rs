//! One endpoint's probe loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tracing::{debug, info, warn};

use crate::config::{HealthSettings, UpstreamTls};
use crate::endpoint::EndpointState;
use crate::routing::Routing;

pub struct Target {
    pub upstream: String,
    pub state: Arc<EndpointState>,
    pub settings: HealthSettings,
    pub tls: Option<UpstreamTls>,
    pub routing: Arc<Routing>,
}

/// Consecutive probe results and the verdict they lead to.
struct Verdicts {
    good: u32,
    bad: u32,
}

pub async fn run(target: Target) {
    let settings = &target.settings;
    // Spread first probes over one interval: no lockstep across endpoints.
    let spread = settings.interval.mul_f64(rand::random::<f64>());
    tokio::time::sleep(spread).await;
    let channel = match channel(&target) {
        Ok(c) => c,
        Err(e) => {
            warn!(upstream = %target.upstream, endpoint = %target.state.addr, error = %e, "cannot set up health probes");
            return;
        }
    };
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: settings.service.clone(),
    };
    let mut verdicts = Verdicts { good: 0, bad: 0 };
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watch: Option<tonic::Streaming<HealthCheckResponse>> = None;
    let mut watch_supported = true;
    let mut next_watch_try = Instant::now();
    loop {
        if watch.is_none() && watch_supported && Instant::now() >= next_watch_try {
            match tokio::time::timeout(settings.timeout, client.watch(request.clone())).await {
                Ok(Ok(stream)) => watch = Some(stream.into_inner()),
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    debug!(endpoint = %target.state.addr, "Health/Watch unimplemented: polling Check only");
                    watch_supported = false;
                }
                _ => next_watch_try = Instant::now() + settings.interval,
            }
        }
        tokio::select! {
            _ = ticker.tick() => {
                let ok = check(&mut client, &request, settings.timeout).await;
                observe(&target, &mut verdicts, ok, false);
            }
            message = next_message(&mut watch) => match message {
                Some(serving) => observe(&target, &mut verdicts, serving, !serving),
                None => {
                    watch = None;
                    next_watch_try = Instant::now() + settings.interval;
                }
            },
        }
    }
}

/// Applies one probe result; `at_once` (a Watch saying NOT_SERVING) skips the threshold.
fn observe(target: &Target, verdicts: &mut Verdicts, ok: bool, at_once: bool) {
    let state = &target.state;
    state.count_probe(ok);
    let settings = &target.settings;
    if ok {
        verdicts.good += 1;
        verdicts.bad = 0;
        if !state.healthy() && verdicts.good >= settings.healthy_after {
            info!(upstream = %target.upstream, endpoint = %state.addr, good = verdicts.good, "endpoint healthy again");
            state.set_probe_health(true, true);
        }
        return;
    }
    verdicts.bad += 1;
    verdicts.good = 0;
    if state.healthy() && (at_once || verdicts.bad >= settings.unhealthy_after) {
        warn!(upstream = %target.upstream, endpoint = %state.addr, failed = verdicts.bad,
              watch = at_once, "endpoint unhealthy");
        let snapshot = target.routing.load_full();
        match snapshot.upstream(&target.upstream) {
            Some(upstream) => {
                upstream.with_ejection_cap(|may_open| state.set_probe_health(false, may_open))
            }
            None => state.set_probe_health(false, true),
        }
    }
}

async fn check(
    client: &mut HealthClient<Channel>,
    request: &HealthCheckRequest,
    timeout: Duration,
) -> bool {
    match tokio::time::timeout(timeout, client.check(request.clone())).await {
        Ok(Ok(response)) => response.into_inner().status == ServingStatus::Serving as i32,
        _ => false,
    }
}

/// The next Watch status (true = SERVING); `None` when there is no stream or it ended.
async fn next_message(watch: &mut Option<tonic::Streaming<HealthCheckResponse>>) -> Option<bool> {
    match watch {
        Some(stream) => match stream.message().await {
            Ok(Some(response)) => Some(response.status == ServingStatus::Serving as i32),
            _ => None,
        },
        None => std::future::pending().await,
    }
}

fn channel(target: &Target) -> Result<Channel, tonic::transport::Error> {
    let addr = target.state.addr;
    let settings = &target.settings;
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(settings.timeout)
        .tcp_nodelay(true);
    if let Some(tls) = &target.tls {
        let mut config = ClientTlsConfig::new().domain_name(if tls.server_name.is_empty() {
            addr.ip().to_string()
        } else {
            tls.server_name.clone()
        });
        if let Some(ca) = &tls.ca {
            if let Ok(pem) = std::fs::read(ca) {
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
        } else {
            config = config.with_enabled_roots();
        }
        if let Some((cert, key)) = &tls.identity {
            // Validation checked both files; a file gone since then fails the probe's handshake.
            if let (Ok(cert), Ok(key)) = (std::fs::read(cert), std::fs::read(key)) {
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
        }
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint.connect_lazy())
}
