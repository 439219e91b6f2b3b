//! OpenTelemetry export of Catga's spans (cargo feature `otel`, off by
//! default): `catga.send`, `catga.publish`, `catga.handle` and
//! `catga.saga.step` become OpenTelemetry spans with exactly the ids that
//! travel in `traceparent`, so the spans that several processes export for
//! one request form one tree in the collector. Spans of the program's own
//! (`tracing` spans inside a handler) are their children.
//!
//! Exported over OTLP/HTTP with protobuf (no gRPC), by a batch processor on
//! a thread of its own, configured by the standard variables:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! (export is on when one of them is set), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME` (default: `CATGA_SERVICE`),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`.
//!
//! [`Catga::run`](crate::Catga::run) and [`Builder::run`](crate::Builder::run)
//! add the layer to the subscriber they install when the program has none,
//! and flush the export when they stop. A program with its own subscriber
//! adds `otel::layer()` to it and calls `otel::shutdown()` before it exits.

use crate::trace::TraceContext;

/// Make `span` the OpenTelemetry span of `trace`: its span id, and the
/// parent `trace` names (none: a root of `trace`'s trace id). Nothing
/// without the feature, or while no exporter is installed.
#[inline]
pub(crate) fn adopt(span: &tracing::Span, trace: &TraceContext) {
    #[cfg(feature = "otel")]
    export::adopt(span, trace);
    #[cfg(not(feature = "otel"))]
    let _ = (span, trace);
}

#[cfg(feature = "otel")]
pub use export::{Error, layer, layer_from_env, shutdown};

/// Flush and stop the export, if there is one (at the end of `run`).
pub(crate) fn stop() {
    #[cfg(feature = "otel")]
    export::shutdown();
}

#[cfg(feature = "otel")]
mod export {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, OnceLock};

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
    };
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
    use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

    use crate::trace::TraceContext;

    /// Why the exporter could not be set up.
    #[derive(Debug, thiserror::Error)]
    #[error("OpenTelemetry export: {0}")]
    pub struct Error(String);

    /// Whether spans are exported (a provider is installed): `adopt` does
    /// nothing until then.
    static ON: AtomicBool = AtomicBool::new(false);
    /// The installed provider, flushed and shut down by [`shutdown`].
    static PROVIDER: OnceLock<Mutex<Option<SdkTracerProvider>>> = OnceLock::new();

    thread_local! {
        /// The ids the next span built on this thread takes (set by `adopt`
        /// around building it), read by [`CatgaIds`].
        static NEXT: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
    }

    /// The SDK's id generator: the ids `adopt` names for a Catga span, random
    /// ones for any other span.
    #[derive(Debug, Default)]
    struct CatgaIds(RandomIdGenerator);

    impl IdGenerator for CatgaIds {
        fn new_trace_id(&self) -> TraceId {
            match NEXT.get() {
                Some((trace, _)) => TraceId::from_bytes(trace.to_be_bytes()),
                None => self.0.new_trace_id(),
            }
        }

        fn new_span_id(&self) -> SpanId {
            match NEXT.get() {
                Some((_, span)) => SpanId::from_bytes(span.to_be_bytes()),
                None => self.0.new_span_id(),
            }
        }
    }

    /// The tracing layer that exports spans over OTLP/HTTP (protobuf),
    /// configured by the `OTEL_EXPORTER_OTLP_*` variables; `None` when
    /// neither `OTEL_EXPORTER_OTLP_ENDPOINT` nor
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    pub fn layer_from_env<S>() -> Result<Option<OpenTelemetryLayer<S, SdkTracer>>, Error>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        layer().map(Some)
    }

    /// The tracing layer that exports spans over OTLP/HTTP (protobuf),
    /// configured by the `OTEL_EXPORTER_OTLP_*` variables (the endpoint
    /// defaults to `http://localhost:4318`). Install it once per process;
    /// call [`shutdown`] before the process exits.
    pub fn layer<S>() -> Result<OpenTelemetryLayer<S, SdkTracer>, Error>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let exporter =
            opentelemetry_otlp::SpanExporter::builder().with_http().build().map_err(|e| Error(e.to_string()))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none()
            && let Ok(service) = std::env::var("CATGA_SERVICE")
        {
            resource = resource.with_service_name(service);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(CatgaIds::default())
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("catga");
        let slot = PROVIDER.get_or_init(|| Mutex::new(None));
        if let Some(previous) = slot.lock().unwrap_or_else(|e| e.into_inner()).replace(provider) {
            let _ = previous.shutdown();
        }
        ON.store(true, Ordering::Release);
        Ok(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    /// Export what is still buffered and stop exporting (waits for the
    /// export, bounded by `OTEL_EXPORTER_OTLP_TIMEOUT`). Idempotent.
    pub fn shutdown() {
        ON.store(false, Ordering::Release);
        let provider = PROVIDER.get().and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(provider) = provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "OpenTelemetry export: the last spans could not be exported");
        }
    }

    pub(super) fn adopt(span: &tracing::Span, trace: &TraceContext) {
        if !ON.load(Ordering::Acquire) || span.is_disabled() {
            return;
        }
        let trace_id = trace.trace_id().as_u128();
        let parent = match trace.parent_span_id() {
            Some(parent) => {
                let state = trace.tracestate().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
                let parent = SpanContext::new(
                    TraceId::from_bytes(trace_id.to_be_bytes()),
                    SpanId::from_bytes(parent.as_u64().to_be_bytes()),
                    TraceFlags::new(trace.flags()),
                    true,
                    state,
                );
                opentelemetry::Context::new().with_remote_span_context(parent)
            }
            // A root: no parent, and the trace id the generator hands out.
            None => opentelemetry::Context::new(),
        };
        if span.set_parent(parent).is_err() {
            return;
        }
        // Build the span now, on this thread, so the generator hands it
        // these ids.
        NEXT.set(Some((trace_id, trace.span_id().as_u64())));
        let _ = span.context();
        NEXT.set(None);
    }
}
