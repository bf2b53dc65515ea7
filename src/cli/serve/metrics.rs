//! `GET /metrics`: Prometheus' text format (OpenMetrics), through `prometheus-client`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A request's route, setup and answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `/embed`, `/predict`, ….
    pub endpoint: String,
    /// The setup as sinew writes it (`-` for none or one that did not parse).
    pub setup: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// Everything `/metrics` reports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds from arrival to answer.
    pub latency: Family<RequestLabels, Histogram>,
    /// Requests waiting for the model.
    pub queue_size: Gauge,
    /// Requests whose client hung up before the model reached them.
    pub dropped: Counter,
    /// Texts per forward pass.
    pub batch_texts: Histogram,
    /// Padded tokens (texts × longest) per forward pass.
    pub batch_tokens: Histogram,
    /// Adapters in memory.
    pub adapters_loaded: Gauge,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    /// All metrics at zero, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let queue_size = Gauge::default();
        let dropped = Counter::default();
        let batch_texts = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let batch_tokens = Histogram::new(exponential_buckets(16.0, 2.0, 14));
        let adapters_loaded = Gauge::default();
        registry.register(
            "sinew_requests",
            "Requests answered, by endpoint, setup and status",
            requests.clone(),
        );
        registry.register(
            "sinew_request_duration_seconds",
            "Seconds from a request's arrival to its answer",
            latency.clone(),
        );
        registry.register(
            "sinew_queue_size",
            "Requests waiting for the model",
            queue_size.clone(),
        );
        registry.register(
            "sinew_queue_dropped",
            "Requests dropped from the queue because their client hung up",
            dropped.clone(),
        );
        registry.register(
            "sinew_batch_texts",
            "Texts per forward pass",
            batch_texts.clone(),
        );
        registry.register(
            "sinew_batch_tokens",
            "Padded tokens (texts x longest) per forward pass",
            batch_tokens.clone(),
        );
        registry.register(
            "sinew_adapters_loaded",
            "Adapters in memory",
            adapters_loaded.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            queue_size,
            dropped,
            batch_texts,
            batch_tokens,
            adapters_loaded,
        }
    }

    /// Counts one answered request.
    pub fn answered(&self, labels: RequestLabels, seconds: f64) {
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
