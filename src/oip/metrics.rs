//! Prometheus metrics of the inference requests (`uminfer serve --grpc ...
//! --metrics ADDR`), served as OpenMetrics text on `GET /metrics` by a small
//! HTTP/1 listener (axum) on its own port.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `uminfer_inference_success_total` | counter | `model`, `mode` |
//! | `uminfer_inference_failure_total` | counter | `model`, `mode`, `code` (gRPC status code, e.g. `InvalidArgument`) |
//! | `uminfer_inference_duration_seconds` | histogram of successful requests, receipt to answer | `model`, `mode` |
//! | `uminfer_inference_in_flight` | gauge | none |
//! | `uminfer_inference_tensor_bytes_copied_total` | counter of tensor bytes the server copied for successful requests (unaligned or typed input data; 0 when every tensor is read and written in place) | `model`, `mode` |
//!
//! Every `ModelInfer` call and every request of a `ModelStreamInfer` stream
//! counts once. A request naming no served model counts with `model` and
//! `mode` empty (client-chosen names would make the label set unbounded).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The content type of the OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A served model and its execution mode.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The model name (empty for a request naming no served model).
    pub model: String,
    /// The session mode (`cpu`, `gpu-managed-graph`, ...).
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    model: String,
    mode: String,
    code: String,
}

type Latency = Family<ModelLabels, Histogram, fn() -> Histogram>;

/// The request metrics of one server.
pub struct Metrics {
    registry: Registry,
    success: Family<ModelLabels, Counter>,
    failure: Family<FailureLabels, Counter>,
    duration: Latency,
    in_flight: Gauge,
    copied: Family<ModelLabels, Counter>,
}

/// Latency buckets: 25 µs doubling to about 0.8 s (16 buckets).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(25e-6, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("uminfer_inference");
        let (success, failure) = (Family::default(), Family::default());
        let duration: Latency = Family::new_with_constructor(latency_histogram);
        let in_flight = Gauge::default();
        let copied = Family::default();
        registry.register("success", "Inference requests answered", success.clone());
        registry.register("failure", "Inference requests refused or failed, by gRPC status code", failure.clone());
        registry.register("duration_seconds", "Time from receipt to answer of successful inference requests", duration.clone());
        registry.register("in_flight", "Inference requests being handled now", in_flight.clone());
        registry.register("tensor_bytes_copied", "Tensor bytes the server copied for successful requests (unaligned or typed input data)", copied.clone());
        Self { registry, success, failure, duration, in_flight, copied }
    }
}

impl Metrics {
    /// Counts a request as in flight until the returned guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Records a successful request that took `took`, for which `copied`
    /// tensor bytes were copied.
    pub fn success(&self, labels: &ModelLabels, took: Duration, copied: usize) {
        self.success.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(took.as_secs_f64());
        self.copied.get_or_create(labels).inc_by(copied as u64);
    }

    /// Records a refused or failed request.
    pub fn failure(&self, labels: &ModelLabels, code: tonic::Code) {
        let labels = FailureLabels { model: labels.model.clone(), mode: labels.mode.clone(), code: format!("{code:?}") };
        self.failure.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A request in flight; decrements the gauge when dropped.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `/metrics` HTTP service (any other path is 404).
pub fn router(metrics: std::sync::Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()))),
    )
}
