//! Remote JWKS: each `jwks_url` is fetched over HTTPS when the gateway starts and refreshed in
//! the background (Cache-Control `max-age`, else `jwks_refresh`); a token naming a `kid` the set
//! lacks asks for one early refresh, at most once per `EARLY_REFRESH_EVERY`. A fetch that fails
//! keeps the last good set and is retried within seconds. Sources live in `JwksRegistry`, kept
//! across reloads (a provider whose URL did not change keeps its keys), and one loop
//! (`refresh_loop`, a supervised background task) fetches whichever are due.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::keys::KeySet;
use crate::metrics::AuthMetrics;

/// A JWKS larger than this is refused unread.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// An unknown `kid` refetches the set at most this often.
pub const EARLY_REFRESH_EVERY: Duration = Duration::from_secs(30);
/// A `max-age` below this is raised to it (a JWKS endpoint cannot make the gateway poll it
/// hot).
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Failed fetches are retried after 1, 2, 4 ... seconds, at most this long.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// Where a provider's keys are fetched from, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwksSpec {
    /// The `[[auth]]` provider (the metrics' label).
    pub provider: String,
    /// `https://host[:port]/path`.
    pub url: String,
    /// CA bundle the endpoint's certificate must chain to (default: the system's roots).
    pub ca: Option<PathBuf>,
    pub refresh: Duration,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("jwks_url {0:?} is not an https:// URL with a host")]
    Url(String),
    #[error("jwks_ca: {0}")]
    Ca(#[from] crate::tls::TlsError),
    #[error("no trusted roots: {0}")]
    Roots(String),
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Keys(#[from] super::keys::KeySetError),
}

/// What operators see of a source (`/readyz`, `/upstreams`).
#[derive(Debug, Clone, Default)]
pub struct JwksStatus {
    pub keys: usize,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Schedule {
    next_due: Instant,
    failures: u32,
    last_early: Option<Instant>,
    status: JwksStatus,
}

pub struct JwksSource {
    spec: JwksSpec,
    host: String,
    port: u16,
    path: String,
    tls: Arc<rustls::ClientConfig>,
    keys: ArcSwapOption<KeySet>,
    generation: AtomicU64,
    schedule: Mutex<Schedule>,
    /// The registry's: wakes the refresh loop.
    kick: Arc<Notify>,
    metrics: Option<AuthMetrics>,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksSource")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl JwksSource {
    fn new(
        spec: JwksSpec,
        kick: Arc<Notify>,
        metrics: Option<AuthMetrics>,
    ) -> Result<Self, JwksError> {
        let (host, port, path) = split_https_url(&spec.url)?;
        crate::tls::install_crypto_provider();
        let roots = match &spec.ca {
            Some(ca) => crate::tls::load_roots(ca)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(JwksError::Roots(
                        "the system has no CA certificates; set jwks_ca".into(),
                    ));
                }
                roots
            }
        };
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        if let Some(m) = &metrics {
            m.jwks_keys.with_label_values(&[&spec.provider]).set(0);
        }
        Ok(Self {
            spec,
            host,
            port,
            path,
            tls: Arc::new(tls),
            keys: ArcSwapOption::empty(),
            generation: AtomicU64::new(1),
            schedule: Mutex::new(Schedule {
                next_due: Instant::now(),
                failures: 0,
                last_early: None,
                status: JwksStatus::default(),
            }),
            kick,
            metrics,
        })
    }

    pub fn spec(&self) -> &JwksSpec {
        &self.spec
    }

    /// The last good key set; `None` until the first good fetch.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub fn status(&self) -> JwksStatus {
        self.schedule.lock().status.clone()
    }

    /// A token named a key the set lacks: refetch now, unless that was done less than
    /// `EARLY_REFRESH_EVERY` ago (a caller sending made-up `kid`s cannot make the gateway hammer
    /// the endpoint).
    pub fn unknown_kid(&self) {
        let now = Instant::now();
        let mut schedule = self.schedule.lock();
        if schedule
            .last_early
            .is_some_and(|at| now.duration_since(at) < EARLY_REFRESH_EVERY)
        {
            return;
        }
        schedule.last_early = Some(now);
        schedule.next_due = now;
        drop(schedule);
        self.kick.notify_one();
    }

    fn next_due(&self) -> Instant {
        self.schedule.lock().next_due
    }

    /// Fetches the set once and publishes it if it is good and new.
    pub async fn refresh(&self) {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.spec.timeout, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err(JwksError::Timeout(self.spec.timeout)),
        };
        let outcome = outcome.and_then(|(body, max_age)| {
            let generation = self.generation.fetch_add(1, Ordering::Relaxed);
            Ok((KeySet::from_jwks(&body, generation)?, max_age))
        });
        let provider = self.spec.provider.as_str();
        let mut schedule = self.schedule.lock();
        match outcome {
            Ok((set, max_age)) => {
                let unchanged = self
                    .keys
                    .load()
                    .as_deref()
                    .is_some_and(|current| current.same_keys(&set));
                let count = set.len();
                if !unchanged {
                    // A new generation: tokens cached under the old set are verified again.
                    self.keys.store(Some(Arc::new(set)));
                    info!(provider, keys = count, "JWKS fetched");
                }
                let wait = max_age
                    .unwrap_or(self.spec.refresh)
                    .clamp(MIN_REFRESH, self.spec.refresh.max(MIN_REFRESH));
                schedule.next_due = started + wait;
                schedule.failures = 0;
                schedule.status = JwksStatus {
                    keys: count,
                    last_success: Some(SystemTime::now()),
                    last_error: None,
                };
                if let Some(m) = &self.metrics {
                    let result = if unchanged { "unchanged" } else { "ok" };
                    m.jwks_fetches.with_label_values(&[provider, result]).inc();
                    m.jwks_keys.with_label_values(&[provider]).set(count as i64);
                    let unix = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    m.jwks_last_success
                        .with_label_values(&[provider])
                        .set(unix.as_secs_f64());
                }
            }
            Err(e) => {
                schedule.failures = schedule.failures.saturating_add(1);
                let retry = Duration::from_secs(1u64 << schedule.failures.min(5)).min(MAX_RETRY);
                schedule.next_due = Instant::now() + retry;
                schedule.status.last_error = Some(e.to_string());
                warn!(
                    provider,
                    url = %self.spec.url,
                    error = %e,
                    retry_in = ?retry,
                    keys_kept = schedule.status.keys,
                    "JWKS fetch failed; the last good keys stay"
                );
                if let Some(m) = &self.metrics {
                    m.jwks_fetches.with_label_values(&[provider, "error"]).inc();
                }
            }
        }
    }

    /// One GET over a fresh HTTPS connection: the body (at most `MAX_JWKS_BYTES`) and the
    /// response's `max-age`.
    async fn fetch(&self) -> Result<(Bytes, Option<Duration>), JwksError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(JwksError::Connect)?;
        let server_name = rustls_pki_types::ServerName::try_from(self.host.clone())
            .map_err(|_| JwksError::Url(self.spec.url.clone()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(JwksError::Tls)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| JwksError::Http(e.to_string()))?;
        let connection = tokio::spawn(connection);
        let authority = if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let request = http::Request::get(self.path.as_str())
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "strait")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| JwksError::Http(e.to_string()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| JwksError::Http(e.to_string()))?;
            if response.status() != http::StatusCode::OK {
                return Err(JwksError::Status(response.status().as_u16()));
            }
            let max_age = response
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(max_age);
            let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| JwksError::Http(e.to_string()))?
                .to_bytes();
            Ok((body, max_age))
        }
        .await;
        connection.abort();
        result
    }
}

/// `max-age=N` of a Cache-Control value (`no-store`/`no-cache` give none).
pub fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|n| n.trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// `https://host[:port]/path` → (host, port, path).
fn split_https_url(url: &str) -> Result<(String, u16, String), JwksError> {
    let bad = || JwksError::Url(url.to_string());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let uri: http::uri::Authority = authority.parse().map_err(|_| bad())?;
    if uri.host().is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let host = uri.host().trim_start_matches('[').trim_end_matches(']');
    Ok((
        host.to_string(),
        uri.port_u16().unwrap_or(443),
        path.to_string(),
    ))
}

/// Every remote JWKS the running config uses. A source lives as long as a provider holds it;
/// a reload that keeps a provider's spec gets the same source back, keys and all.
#[derive(Debug, Default)]
pub struct JwksRegistry {
    sources: Mutex<Vec<Weak<JwksSource>>>,
    kick: Arc<Notify>,
    metrics: Option<AuthMetrics>,
}

impl JwksRegistry {
    pub fn with_metrics(metrics: Option<AuthMetrics>) -> Self {
        Self {
            metrics,
            ..Default::default()
        }
    }

    /// The source for `spec`: the live one if there is one, else a new one, due at once.
    pub fn source_for(&self, spec: &JwksSpec) -> Result<Arc<JwksSource>, JwksError> {
        let mut sources = self.sources.lock();
        sources.retain(|s| s.strong_count() > 0);
        if let Some(live) = sources
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.spec == *spec)
        {
            return Ok(live);
        }
        let source = Arc::new(JwksSource::new(
            spec.clone(),
            self.kick.clone(),
            self.metrics.clone(),
        )?);
        sources.push(Arc::downgrade(&source));
        drop(sources);
        self.kick.notify_one();
        Ok(source)
    }

    pub fn live(&self) -> Vec<Arc<JwksSource>> {
        self.sources
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

/// Fetches each source when it is due, for as long as the process runs.
pub async fn refresh_loop(registry: Arc<JwksRegistry>) {
    loop {
        let sources = registry.live();
        let now = Instant::now();
        let due = sources.iter().filter(|s| s.next_due() <= now);
        futures_util::future::join_all(due.map(|s| s.refresh())).await;
        let next = sources
            .iter()
            .map(|s| s.next_due())
            .min()
            .unwrap_or(now + Duration::from_secs(60))
            .max(Instant::now() + Duration::from_millis(10));
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = registry.kick.notified() => {}
        }
    }
}
