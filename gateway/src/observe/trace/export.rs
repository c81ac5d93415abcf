//! Spans leave the process here: the SDK hands each finished, sampled span to `QueueProcessor`,
//! which only queues it (a full queue drops and counts it); one exporter thread sends what
//! queued in batches over OTLP/gRPC. A collector that is slow or down costs the calls nothing.
//!
//! Not the SDK's own `BatchSpanProcessor`: its drops are only logged, never counted, and its
//! thread cannot drive tonic without a runtime of ours. The exporter itself is the SDK's.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Spans waiting for the exporter; beyond this, spans are dropped (and counted).
pub const QUEUE_SPANS: usize = 8192;
/// Spans in one export request.
const MAX_BATCH: usize = 512;
/// How long spans gather after the first one arrives: one wake-up of the exporter per period
/// however many calls end in it.
const GATHER: Duration = Duration::from_millis(200);
/// One export request may take this long before its spans count as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning per this period about a collector that fails.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What became of finished spans (`strait_trace_spans_total{result}`).
#[derive(Debug, Clone, Default)]
pub struct SpanCounters {
    pub exported: Option<prometheus::IntCounter>,
    pub queue_full: Option<prometheus::IntCounter>,
    pub export_failed: Option<prometheus::IntCounter>,
}

impl SpanCounters {
    pub fn from_metrics(metrics: Option<&crate::metrics::Metrics>) -> Self {
        let with = |result: &str| metrics.map(|m| m.trace_spans.with_label_values(&[result]));
        Self {
            exported: with("exported"),
            queue_full: with("queue_full"),
            export_failed: with("export_failed"),
        }
    }
}

fn add(counter: &Option<prometheus::IntCounter>, n: usize) {
    if let Some(c) = counter {
        c.inc_by(n as u64);
    }
}

/// The SDK's span processor: queues, never waits.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    counters: SpanCounters,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            add(&self.counters.queue_full, 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    /// The exporter thread ends on its own once the last sender (this processor) is dropped,
    /// after sending what is queued.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The exporter thread of one `[tracing]` configuration; `finished` reports its end.
pub struct ExportThread {
    pub processor: QueueProcessor,
    pub finished: std_mpsc::Receiver<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportStartError {
    #[error("cannot start the span exporter thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot build the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Starts the thread that sends spans to `endpoint`, with `resource` on every batch.
pub fn start(
    endpoint: &str,
    resource: Resource,
    counters: SpanCounters,
) -> Result<ExportThread, ExportStartError> {
    let (queue, spans) = mpsc::channel(QUEUE_SPANS);
    let (done, finished) = std_mpsc::channel();
    let (built, build_result) = std_mpsc::channel();
    let thread_counters = counters.clone();
    let endpoint_name = endpoint.to_string();
    // The runtime and the exporter are made on the thread itself: a reload runs inside the
    // control task's runtime, where another cannot be entered.
    std::thread::Builder::new()
        .name("strait-otlp".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = built.send(Err(e.to_string()));
                    return;
                }
            };
            // tonic's channel starts its connection task on the runtime it is built in.
            let mut exporter = match runtime.block_on(async { build_exporter(&endpoint_name) }) {
                Ok(exporter) => exporter,
                Err(reason) => {
                    let _ = built.send(Err(reason));
                    return;
                }
            };
            exporter.set_resource(&resource);
            let _ = built.send(Ok(()));
            runtime.block_on(export_loop(
                exporter,
                spans,
                thread_counters,
                &endpoint_name,
            ));
            let _ = done.send(());
        })
        .map_err(ExportStartError::Thread)?;
    let started = build_result
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "the exporter thread did not start".to_string())
        .and_then(|r| r);
    started.map_err(|reason| ExportStartError::Exporter {
        endpoint: endpoint.to_string(),
        reason,
    })?;
    Ok(ExportThread {
        processor: QueueProcessor { queue, counters },
        finished,
    })
}

fn build_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT);
    if endpoint.starts_with("https://") {
        builder =
            builder.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
    }
    builder.build().map_err(|e| e.to_string())
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    counters: SpanCounters,
    endpoint: &str,
) {
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut failing = false;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Ends when every sender is gone (the config was replaced or the gateway stops) and the
    // queue is empty.
    while let Some(first) = spans.recv().await {
        batch.push(first);
        tokio::time::sleep(GATHER).await;
        loop {
            while batch.len() < MAX_BATCH {
                match spans.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
            // A full batch: more may be queued behind it.
            let more = batch.len() == MAX_BATCH;
            let count = batch.len();
            match exporter.export(std::mem::take(&mut batch)).await {
                Ok(()) => {
                    add(&counters.exported, count);
                    if failing {
                        info!(endpoint, "the OTLP collector accepts spans again");
                        failing = false;
                    }
                }
                Err(error) => {
                    add(&counters.export_failed, count);
                    failing = true;
                    let now = tokio::time::Instant::now();
                    if last_warning.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                        last_warning = Some(now);
                        warn!(endpoint, spans = count, %error,
                              "could not export spans to the OTLP collector (counted in strait_trace_spans_total{{result=\"export_failed\"}})");
                    }
                }
            }
            if !more {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
    use opentelemetry::InstrumentationScope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    fn span(n: u128) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(n),
                SpanId::from(n as u64),
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "bench.Echo/Unary".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::default(),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (queue, mut spans) = mpsc::channel(2);
        let full = prometheus::IntCounter::new("full", "test").unwrap();
        let processor = QueueProcessor {
            queue,
            counters: SpanCounters {
                queue_full: Some(full.clone()),
                ..Default::default()
            },
        };
        for n in 1..=5 {
            processor.on_end(span(n));
        }
        assert_eq!(full.get(), 3);
        let kept: Vec<u128> = std::iter::from_fn(|| spans.try_recv().ok())
            .map(|s| u128::from_be_bytes(s.span_context.trace_id().to_bytes()))
            .collect();
        assert_eq!(kept, vec![1, 2], "the oldest are kept, in order");
    }
}
