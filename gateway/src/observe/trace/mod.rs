//! OpenTelemetry tracing of calls: W3C trace context in (`traceparent`, parent-based sampling)
//! and out (the upstream's parent is the gateway's span), one server span per call and one
//! child per attempt when a call was retried, exported over OTLP/gRPC off the call path
//! (`export.rs`). Reconfigured by reload; off (and free) without `[tracing]`.

mod call;
mod export;

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

pub use call::{AttemptTiming, CallTrace, SamplingTrust};
pub use export::{ExportStartError, SpanCounters, QUEUE_SPANS};

use crate::config::TracingConfig;

struct Active {
    config: TracingConfig,
    tracer: SdkTracer,
    /// Reports the exporter thread's end (it sends what is queued first).
    finished: Mutex<Option<std_mpsc::Receiver<()>>>,
}

/// Tracing set up for a new config, not yet in use (see `Tracing::prepare`).
pub struct Prepared(Option<Arc<Active>>);

/// The process's tracing, shared by every listener; one atomic load per call when it is off.
pub struct Tracing {
    current: ArcSwapOption<Active>,
    counters: SpanCounters,
}

impl Tracing {
    pub fn new(counters: SpanCounters) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            counters,
        }
    }

    /// Builds the exporter and sampler `config` names without using them yet. `None` when
    /// tracing already runs exactly so.
    pub fn prepare(
        &self,
        config: Option<&TracingConfig>,
    ) -> Result<Option<Prepared>, ExportStartError> {
        let running = self.current.load();
        if running.as_ref().map(|a| &a.config) == config {
            return Ok(None);
        }
        let Some(config) = config else {
            return Ok(Some(Prepared(None)));
        };
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let thread = export::start(
            &config.otlp_endpoint,
            resource.clone(),
            self.counters.clone(),
        )?;
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample,
            ))))
            .with_resource(resource)
            .with_span_processor(thread.processor)
            .build();
        let tracer = provider.tracer("strait");
        Ok(Some(Prepared(Some(Arc::new(Active {
            config: config.clone(),
            tracer,
            finished: Mutex::new(Some(thread.finished)),
        })))))
    }

    /// Puts prepared tracing in place. Calls that started under the old one end their spans
    /// there; its exporter sends them, then stops.
    pub fn commit(&self, prepared: Prepared) {
        self.current.store(prepared.0);
    }

    /// `prepare` and `commit` at once (start-up).
    pub fn apply(&self, config: Option<&TracingConfig>) -> Result<(), ExportStartError> {
        if let Some(prepared) = self.prepare(config)? {
            self.commit(prepared);
        }
        Ok(())
    }

    /// The trace of a call that arrived at `arrived` with `headers`; `None` when tracing is
    /// off. Only a `caller_trusted` caller's `traceparent` decides sampling; anyone else's
    /// calls are kept at the configured ratio.
    pub fn start(
        &self,
        headers: &http::HeaderMap,
        caller_trusted: bool,
        arrived: std::time::SystemTime,
    ) -> Option<CallTrace> {
        let active = self.current.load();
        let active = active.as_ref()?;
        let trust = if caller_trusted {
            SamplingTrust::Caller
        } else {
            SamplingTrust::Ratio(active.config.sample)
        };
        Some(CallTrace::start(&active.tracer, headers, trust, arrived))
    }

    /// At exit: stop tracing and let the exporter send what is queued, waiting at most `bound`.
    pub fn close(&self, bound: Duration) {
        let Some(active) = self.current.swap(None) else {
            return;
        };
        let finished = active
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // The exporter's queue closes when the last tracer handle goes, this one included.
        drop(active);
        if let Some(finished) = finished {
            let _ = finished.recv_timeout(bound);
        }
    }
}
