//! pingora services for the configured listeners.

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::v2::server::default_h2_options;
use pingora::proxy::{http_proxy_service_with_name, HttpProxy};
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use super::StartError;
use crate::config::{Config, ListenerConfig};
use crate::proxy::grpc::{CallSettings, GrpcProxy};
use crate::proxy::InFlightCalls;
use crate::routing::Routing;

/// Concurrent streams a caller may open on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Per-stream receive window: large enough that a 4 MiB message does not crawl in 64 KiB steps.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;

/// pingora panics inside a service runtime when a bind fails, leaving a gateway that runs without
/// its listener. Try every address first so that case is a clean start-up error instead.
pub fn check_bindable(config: &Config) -> Result<(), StartError> {
    let admin = config
        .admin
        .as_ref()
        .map(|a| ("admin".to_string(), a.listen));
    let all = config
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.listen))
        .chain(admin);
    for (name, listen) in all {
        std::net::TcpListener::bind(listen).map_err(|source| StartError::Bind {
            listener: name.clone(),
            addr: listen,
            source,
        })?;
    }
    Ok(())
}

pub fn grpc_service(
    server_conf: &Arc<ServerConf>,
    listener: &ListenerConfig,
    routing: Arc<Routing>,
    settings: Arc<CallSettings>,
    calls: InFlightCalls,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) -> Result<Service<HttpProxy<GrpcProxy>>, StartError> {
    let app = GrpcProxy::new(listener.name.clone(), routing, settings, calls, metrics);
    let mut service = http_proxy_service_with_name(
        server_conf,
        app,
        &format!("grpc listener {}", listener.name),
    );
    let logic = service
        .app_logic_mut()
        .expect("a freshly built service has its app logic");
    let mut server_options = HttpServerOptions::default();
    // h2c with prior knowledge; HTTP/1.x still reaches the proxy and gets a clear refusal.
    server_options.h2c = true;
    logic.server_options = Some(server_options);
    let mut h2 = default_h2_options();
    h2.max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    logic.h2_options = Some(h2);

    let addr = listener.listen.to_string();
    match &listener.tls {
        None => service.add_tcp(&addr),
        Some(tls) => {
            let tls_error = |reason: String| StartError::Tls {
                listener: listener.name.clone(),
                reason,
            };
            let cert = tls
                .cert
                .to_str()
                .ok_or_else(|| tls_error("certificate path is not UTF-8".into()))?;
            let key = tls
                .key
                .to_str()
                .ok_or_else(|| tls_error("key path is not UTF-8".into()))?;
            let mut settings =
                TlsSettings::intermediate(cert, key).map_err(|e| tls_error(e.to_string()))?;
            // gRPC clients over TLS negotiate "h2"; http/1.1 stays allowed only to be refused clearly.
            settings.enable_h2();
            service.add_tls_with_settings(&addr, None, settings);
        }
    }
    Ok(service)
}
