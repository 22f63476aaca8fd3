//! Logs, traces and metrics: `tracing` with an OpenTelemetry layer (exported over OTLP
//! when an endpoint is configured), W3C trace context carried across NATS headers and gRPC
//! metadata, and a Prometheus registry served on `/metrics`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

/// Re-exported so services define their own metrics with the same crate.
pub use prometheus_client;

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes what is buffered.
pub struct Telemetry {
    provider: SdkTracerProvider,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry(..)")
    }
}

/// Sets up logging and tracing for a service. Installing the global subscriber happens
/// once per process; later calls (several services in one test process) reuse it.
pub fn init(service: &'static str, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build());
    if !config.otlp_endpoint.is_empty() {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        let filter = EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&config.log_filter))
            .unwrap_or_else(|_| EnvFilter::new("info"));
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let fmt = if config.log_format == "json" {
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).json().with_current_span(true).boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_target(true)
                .compact()
                .boxed()
        };
        let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
        // A test process may have installed a subscriber already; keeping it is fine.
        let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    });
    Ok(Telemetry { provider, metrics: Metrics::new(service) })
}

impl Telemetry {
    /// Flushes buffered spans; call last, after the service has drained.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}

/// Writes the current span's trace context into a carrier (NATS headers, gRPC metadata).
pub fn inject_current(carrier: &mut dyn Injector) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, carrier);
}

/// The current span's trace context as a W3C `traceparent`, if it is in a trace (to
/// continue that trace later, elsewhere).
pub fn current_traceparent() -> Option<String> {
    let mut carrier = std::collections::HashMap::new();
    inject_current(&mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the trace context found in a carrier, if any.
pub fn set_parent_from(span: &tracing::Span, carrier: &dyn Extractor) {
    let cx = TraceContextPropagator::new().extract(carrier);
    let _ = span.set_parent(cx);
}

/// Makes `span` a child of a W3C `traceparent` value, if there is one.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    if let Some(tp) = traceparent {
        set_parent_from(span, &One(tp));
    }
}

/// The current trace id in hex, for error messages a user can quote ("" when none).
pub fn current_trace_id() -> String {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let id = cx.span().span_context().trace_id();
    if id == opentelemetry::trace::TraceId::INVALID { String::new() } else { id.to_string() }
}

/// Reads trace context from HTTP/gRPC headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes trace context into gRPC request metadata.
pub struct MetadataInjector<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// A span for one incoming gRPC request, child of the caller's trace when it sent one.
pub fn grpc_request_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc", otel.name = %request.uri().path(), rpc.method = %request.uri().path());
    set_parent_from(&span, &HeaderExtractor(request.headers()));
    span
}

/// Labels of per-RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

/// Labels of per-stream metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
    pub outcome: String,
}

/// The Prometheus registry of a service, with the metrics every service has.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<RpcLabels, Histogram>,
    pub stream_messages: Family<StreamLabels, Counter>,
    pub stream_seconds: Family<StreamLabels, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Metrics {
    pub fn new(service: &str) -> Self {
        use std::borrow::Cow;
        let mut registry = Registry::with_prefix_and_labels(
            "parley",
            [(Cow::Borrowed("service"), Cow::Owned(service.to_owned()))].into_iter(),
        );
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<RpcLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let stream_messages = Family::<StreamLabels, Counter>::default();
        let stream_seconds =
            Family::<StreamLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("grpc_requests", "gRPC requests by method and status code", rpc_requests.clone());
        registry.register("grpc_request_seconds", "gRPC time to response headers", rpc_seconds.clone());
        registry.register(
            "stream_messages",
            "JetStream messages handled by stream and outcome",
            stream_messages.clone(),
        );
        registry.register("stream_handle_seconds", "Time to handle one JetStream message", stream_seconds.clone());
        Self { registry: Arc::new(Mutex::new(registry)), rpc_requests, rpc_seconds, stream_messages, stream_seconds }
    }

    /// Registers a service-specific metric.
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        // The lock is only contended at startup and by scrapes; poisoning would mean a
        // panic while encoding, after which the registry is still consistent.
        let mut r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        r.register(name, help, metric);
    }

    /// Records one handled stream message.
    pub fn observe_stream(&self, stream: &str, outcome: &str, started: Instant) {
        let labels = StreamLabels { stream: stream.to_owned(), outcome: outcome.to_owned() };
        self.stream_messages.get_or_create(&labels).inc();
        self.stream_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encode metrics");
        out
    }
}

/// A tower layer counting gRPC requests by method and status code and timing them.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Metrics,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, metrics: self.metrics.clone() }
    }
}

/// The service [`RpcMetricsLayer`] wraps around a gRPC server.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(request);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |c| code_name(tonic::Code::from_i32(c)))
                    .to_owned(),
                Err(_) => "TRANSPORT_ERROR".to_owned(),
            };
            let labels = RpcLabels { method, code };
            metrics.rpc_requests.get_or_create(&labels).inc();
            metrics.rpc_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// The canonical upper-case name of a gRPC status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_service_label() {
        let m = Metrics::new("routing");
        m.observe_stream("inbound", "ack", Instant::now());
        let text = m.encode();
        assert!(text.contains("parley_stream_messages_total{"), "{text}");
        assert!(text.contains("service=\"routing\""), "{text}");
        assert!(text.contains("outcome=\"ack\""), "{text}");
    }
}
