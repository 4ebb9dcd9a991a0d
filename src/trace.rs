//! Traces (OpenTelemetry): one trace per job, from the submit request through the queue to the
//! worker and back. A job's trace context travels as a W3C `traceparent`: in the submit request
//! (honoured), in the job row and in the AMQP message headers, so a redelivered or retried job
//! continues its trace.
//!
//! Spans are exported over OTLP/HTTP (protobuf) only when the standard variables ask for it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; also
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_HEADERS`...). Otherwise no
//! provider is installed: the global tracer is the no-op one, and the callers skip the work of
//! building attributes (see [`enabled`]).

use opentelemetry::propagation::TextMapPropagator;
pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::{Context, KeyValue};

use opentelemetry::global;
use opentelemetry::trace::{TraceContextExt, Tracer};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

/// The instrumentation scope of every span.
const SCOPE: &str = "meshroom-svc";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The tracer of the provider `init` set: made once, not on every span (`global::tracer` locks
/// the global provider and allocates a boxed tracer each time).
static TRACER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracer> = std::sync::OnceLock::new();

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry exporter: {0}")]
pub struct TraceError(String);

/// The installed exporter, flushed and stopped by [`Tracing::shutdown`].
#[derive(Debug, Default)]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

/// Installs the OTLP exporter when the standard variables ask for one; `role` names the service
/// when `OTEL_SERVICE_NAME` does not (`meshroom-svc-serve`, `-work`, `-all-in-one`).
pub fn init(role: &str) -> Result<Tracing, TraceError> {
    init_from(role, |k| std::env::var(k).ok())
}

fn init_from(role: &str, var: impl Fn(&str) -> Option<String>) -> Result<Tracing, TraceError> {
    let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(Tracing::default());
    }
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(Tracing::default());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| TraceError(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(format!("meshroom-svc-{role}"));
    }
    // The sampler comes from OTEL_TRACES_SAMPLER (and _ARG), read by the SDK; default: parent
    // based, always on.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    global::set_text_map_propagator(TraceContextPropagator::new());
    global::set_tracer_provider(provider.clone());
    let _ = TRACER.set(opentelemetry::trace::TracerProvider::tracer(&provider, SCOPE));
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Tracing {
        provider: Some(provider),
    })
}

impl Tracing {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still buffered, then stops the exporter.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.shutdown() {
                log::warn!("OpenTelemetry: spans not all sent at shutdown: {e}");
            }
        }
    }
}

/// Whether spans go anywhere: callers skip building attributes when not.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The context a `traceparent` names (an empty one for none or a malformed one).
pub fn parent(traceparent: Option<&str>) -> Context {
    let Some(tp) = traceparent.filter(|_| enabled()) else {
        return Context::new();
    };
    let carrier = HashMap::from([("traceparent".to_string(), tp.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` of a context's span; `None` when it has no valid span (tracing off).
/// Written here rather than through the propagator's map: it is on every submit's path.
pub fn traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        let flags = sc.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED;
        format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), flags.to_u8())
    })
}

/// The trace id of a `traceparent` (its second field), for log lines.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|t| t.len() == 32)
}

/// Starts a span under `parent`, now; the returned context carries it (end it with [`end`]).
pub fn start(name: &'static str, kind: SpanKind, parent: &Context, attributes: Vec<KeyValue>) -> Context {
    start_at(name, kind, parent, attributes, None)
}

/// Starts a span under `parent` at `at` (now when `None`).
pub fn start_at(
    name: &'static str,
    kind: SpanKind,
    parent: &Context,
    attributes: Vec<KeyValue>,
    at: Option<SystemTime>,
) -> Context {
    let (true, Some(tracer)) = (enabled(), TRACER.get()) else {
        return parent.clone();
    };
    let mut builder = tracer.span_builder(name).with_kind(kind).with_attributes(attributes);
    if let Some(at) = at {
        builder = builder.with_start_time(at);
    }
    parent.with_span(builder.start_with_context(tracer, parent))
}

/// Ends the span of `cx` (now, or at `at`), marked as an error with `error` when given.
pub fn end(cx: &Context, error: Option<&str>, at: Option<SystemTime>) {
    if !enabled() {
        return;
    }
    let span = cx.span();
    if let Some(e) = error {
        span.set_status(opentelemetry::trace::Status::error(e.to_string()));
    }
    match at {
        Some(at) => span.end_with_timestamp(at),
        None => span.end(),
    }
}

/// Marks a moment of the span of `cx` (an event: far cheaper than a span of its own).
pub fn event(cx: &Context, name: &'static str) {
    if enabled() {
        cx.span().add_event(name, Vec::new());
    }
}

/// A whole span at once, from `start` to `end` (for work timed elsewhere: engine nodes).
pub fn record(name: &'static str, parent: &Context, attributes: Vec<KeyValue>, start: SystemTime, end_at: SystemTime) {
    if !enabled() {
        return;
    }
    let cx = start_at(name, SpanKind::Internal, parent, attributes, Some(start));
    end(&cx, None, Some(end_at));
}

/// The attributes naming a job (none when tracing is off: nothing is built).
pub fn job(job: &crate::jobs::Job) -> Vec<KeyValue> {
    if !enabled() {
        return Vec::new();
    }
    vec![
        KeyValue::new("meshroom.job.id", job.id.to_string()),
        KeyValue::new("meshroom.tenant", job.tenant.clone()),
        KeyValue::new("meshroom.pipeline", job.pipeline.clone()),
        KeyValue::new("meshroom.images", job.image_count() as i64),
    ]
}

/// Adds attributes to the span of `cx`.
pub fn annotate(cx: &Context, attributes: Vec<KeyValue>) {
    if enabled() {
        let span = cx.span();
        for kv in attributes {
            span.set_attribute(kv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_endpoint_installs_nothing() {
        let t = init_from("serve", |_| None).unwrap();
        assert!(!t.exporting());
        let blank = init_from("serve", |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| " ".into())).unwrap();
        assert!(!blank.exporting());
        // No span, no traceparent: nothing is recorded in rows or messages.
        let cx = start("accept", SpanKind::Server, &Context::new(), vec![]);
        assert_eq!(traceparent(&cx), None);
    }

    #[test]
    fn a_traceparent_names_its_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id("garbage"), None);
        let carrier = HashMap::from([("traceparent".to_string(), tp.to_string())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        assert_eq!(traceparent(&cx).as_deref(), Some(tp));
        // Not sampled upstream: the flag travels on as it came.
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let carrier = HashMap::from([("traceparent".to_string(), unsampled.to_string())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        assert_eq!(traceparent(&cx).as_deref(), Some(unsampled));
    }
}
