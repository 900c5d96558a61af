//! Logs and traces, set up once per process: structured logs through tracing-subscriber (human
//! or JSON), and — when `[log.otlp] endpoint` is set — OpenTelemetry spans exported over
//! OTLP/HTTP (protobuf) by the SDK's batch processor.
//!
//! Library code only emits `tracing` spans and events; binaries call [`init`]. Tests do not call
//! it, so their output stays quiet unless they opt in. The logs' filter (`[log] filter`, or
//! `RUST_LOG`) does not decide which spans are exported: spans at `info` and up are, with the
//! core's `deliver` spans (`debug`, target `switchyard::delivery`, one per delivered event that
//! carries a sampled trace). With export off no OpenTelemetry layer is installed at all, and the
//! core's trace contexts ([`switchyard_core::trace`]) still flow: what export adds is the
//! [`SpanHook`](switchyard_core::trace::SpanHook) that makes the span ids sent on those of
//! exported spans. The request and socket lifecycle lines are `crate::lifecycle`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use switchyard_core::trace::TraceContext;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogConfig, LogFormat, OtlpConfig};

/// Whether this process exports spans (set once by [`init`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: lets callers skip building what only an exported span shows.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// What [`init`] set up; dropping it flushes and stops the span exporter (keep it until the
/// process's work is done).
#[must_use = "dropping it stops the span export"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("the span exporter did not stop cleanly: {e}");
        }
    }
}

/// Installs the global subscriber: logs filtered by `RUST_LOG` when set, else `config.filter`;
/// and, when `config.otlp.endpoint` is set, the OpenTelemetry layer exporting spans as
/// `service_name` (`config.otlp.service_name` when set). A bad `[log.otlp]` is an error naming
/// the key. Calling it twice is harmless: the second call leaves the first subscriber in place
/// (and exports nothing).
pub fn init(config: &LogConfig, service_name: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match config.format {
        LogFormat::Human => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let Some(url) = config.otlp.traces_url()? else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Telemetry::default());
    };
    let provider = provider(&config.otlp, &url, service_name)?;
    let tracer = provider.tracer("switchyard");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(span_filter());
    if tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_err()
    {
        // Another subscriber is already in place: it will never feed this exporter.
        let _ = provider.shutdown();
        return Ok(Telemetry::default());
    }
    switchyard_core::trace::install_span_hook(span_hook);
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(url = %url, sample_ratio = config.otlp.sample_ratio, "exporting spans over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The spans exported: `info` and up, the core's delivery spans at `debug`; never the HTTP
/// client's and exporter's own (the exporter would otherwise trace its own exports).
fn span_filter() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("switchyard::delivery", LevelFilter::DEBUG)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
        .with_target("reqwest", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
}

/// The tracer provider: a batch processor (a thread of its own, a bounded queue that drops spans
/// when full rather than wait) over the OTLP/HTTP protobuf exporter; new traces sampled at
/// `sample_ratio`, traces a caller started by the caller's flag.
fn provider(
    config: &OtlpConfig,
    url: &str,
    service_name: &str,
) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(Duration::from_millis(config.timeout_ms))
        .build()
        .map_err(|e| anyhow::anyhow!("log.otlp.endpoint: cannot build the exporter: {e}"))?;
    let name = match config.service_name.trim() {
        "" => service_name.to_owned(),
        configured => configured.to_owned(),
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The core's [`SpanHook`](switchyard_core::trace::SpanHook): `span` (not yet entered) becomes
/// a child of `parent`, and its own context is returned — `None` when it is not exported.
fn span_hook(span: &tracing::Span, parent: &TraceContext) -> Option<TraceContext> {
    let _ = span.set_parent(remote(parent));
    context_of(span)
}

/// The OpenTelemetry context of a span of another process (a `traceparent` received).
pub(crate) fn remote(parent: &TraceContext) -> opentelemetry::Context {
    let context = SpanContext::new(
        TraceId::from_bytes(parent.trace_id()),
        SpanId::from_bytes(parent.span_id()),
        TraceFlags::new(parent.flags()),
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(context)
}

/// The trace context of an exported span (starting it), or `None` when it is not exported.
pub(crate) fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    TraceContext::from_parts(
        span_context.trace_id().to_bytes(),
        span_context.span_id().to_bytes(),
        span_context.trace_flags().to_u8(),
    )
}
