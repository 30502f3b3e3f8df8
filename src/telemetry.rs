//! Logging and tracing: one `tracing` subscriber with a human-readable or JSON log layer and,
//! when configured, an OpenTelemetry layer exporting spans over OTLP (HTTP/protobuf). Every
//! log line, the access log's (`access_log`) and the subscriber's, goes to standard error
//! through one buffered writer that never blocks a request (`log_sink`); [`Telemetry::shutdown`]
//! writes out what it holds.
//!
//! OTLP is on when `telemetry.otlp_endpoint` is set or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables are;
//! `OTEL_SERVICE_NAME` (else `telemetry.service_name`) names the service. W3C `traceparent` is
//! extracted from client requests ([`extract`]) and injected into upstream requests
//! ([`inject`]); with OTLP off both are no-ops and a client's `traceparent` passes through.
//!
//! The per-request span exists only while spans are exported ([`exporting`]): without OTLP,
//! the access-log line carries every field the span would, and a span would cost the log layer
//! a formatted copy of its fields on every request (what it cost a hit: benches/README.md,
//! "Decisions measured").
//! Warnings logged while a request is handled then carry no request fields of their own.
//!
//! Invariant: nothing wikigate logs or exports carries a credential. Request headers are never
//! recorded; the access log (target `wikigate::access`) and spans name the operation, the route
//! and the caller's label, never a header value.

use std::io::IsTerminal as _;

use http::HeaderMap;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat, TelemetryConfig};
use crate::{access_log, log_sink};

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes what is still queued.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued, stops the exporter and writes out the log lines still
    /// buffered.
    pub(crate) async fn shutdown(self) {
        // Both wait on threads of their own: from a blocking thread, not a worker.
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(provider) = provider {
                let _ = provider.shutdown();
            }
            log_sink::stderr().flush();
        })
        .await;
    }
}

/// Installs the global subscriber (a second call, as in tests, leaves the first in place).
/// `RUST_LOG`, when set, overrides `log.level`. Call it inside the tokio runtime: the OTLP
/// exporter runs on it.
pub(crate) fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, level) = tracing_subscriber::reload::Layer::new(filter);
    // Logs go to stderr, so stdout carries only what a command prints for its user.
    let colour = colour(std::io::stderr().is_terminal());
    let sink = log_sink::stderr().clone();
    let logs = match log.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(colour)
            .with_writer(sink)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(sink)
            .boxed(),
    };
    let provider = otlp_provider(telemetry);
    let otel = provider.as_ref().map(|provider| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing_opentelemetry::layer().with_tracer(provider.tracer("wikigate"))
    });
    let exporting = otel.is_some();
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        let _ = LEVEL.set(level);
        EXPORTING.store(exporting, std::sync::atomic::Ordering::Relaxed);
        access_log::install(log.format, colour, log.redact_paths, log.access);
    }
    Telemetry { provider }
}

/// The installed filter, which a reload replaces (`log.level`).
static LEVEL: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// How a reload's `log.level` was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LevelChange {
    /// In force from now on (the access log turned on or off with it).
    Applied,
    /// `RUST_LOG` is set, and stands over `log.level`.
    Overridden,
    /// No subscriber of wikigate's is installed (an embedding program's is).
    NotInstalled,
}

/// Replaces the log filter with `level` (already validated), unless `RUST_LOG` stands over it.
pub(crate) fn set_level(level: &str) -> LevelChange {
    if std::env::var_os("RUST_LOG").is_some() {
        return LevelChange::Overridden;
    }
    let (Some(handle), Ok(filter)) = (LEVEL.get(), EnvFilter::try_new(level)) else {
        return LevelChange::NotInstalled;
    };
    match handle.reload(filter) {
        Ok(()) => {
            access_log::refresh();
            LevelChange::Applied
        }
        Err(_) => LevelChange::NotInstalled,
    }
}

/// Whether log lines are coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything (no-color.org); files and pipes get plain text.
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// Whether spans are exported (OTLP configured).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans go anywhere but log lines: the request span is made only then, since the
/// access-log line already carries every field it would (and a span costs a formatted copy
/// of its fields per request in the log layer).
pub(crate) fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

fn otlp_provider(config: &TelemetryConfig) -> Option<SdkTracerProvider> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    if config.otlp_endpoint.is_none() && !from_env {
        return None;
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(base) = &config.otlp_endpoint {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let exporter = match exporter.build() {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("wikigate: OTLP export disabled: {e}");
            return None;
        }
    };
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| config.service_name.clone());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build(),
    )
}

/// Makes a client's W3C `traceparent` the parent of `span`.
pub(crate) fn extract(span: &tracing::Span, headers: &HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
}

/// The trace id of `span`'s exported span, 32 hex digits (for the access line); `None` while
/// spans are not exported.
pub(crate) fn trace_id(span: &tracing::Span) -> Option<[u8; 32]> {
    use opentelemetry::trace::{TraceContextExt as _, TraceId};
    if span.is_disabled() {
        return None;
    }
    let id = span.context().span().span_context().trace_id();
    if id == TraceId::INVALID {
        return None;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, byte) in id.to_bytes().iter().enumerate() {
        text[2 * i] = HEX[usize::from(byte >> 4)];
        text[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    Some(text)
}

/// Names the exported span of `span` (once the route is known). tracing-opentelemetry takes
/// `otel.name` only before the span's context exists; this renames it afterwards too.
pub(crate) fn rename(span: &tracing::Span, name: String) {
    use opentelemetry::trace::TraceContextExt as _;
    span.context().span().update_name(name);
}

/// Writes the current span's context into an upstream request's `traceparent`.
pub(crate) fn inject(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers));
    });
}
