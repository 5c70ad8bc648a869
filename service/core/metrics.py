"""Every Prometheus metric of the service, on a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)


class Metrics:
    """The service's metrics, registered on ``self.registry`` (never the global default registry).

    Attributes:
        requests: requests by endpoint (route template), model and status code.
        request_latency: seconds from the first byte in to the response start, by endpoint.
        queue_wait: seconds a request chunk spent queued before its batch started, by model.
        batch_size: samples per executed batch, by model and direction (``encode``/``decode``).
        inference_time: seconds per executed batch on the device, by model and operation (direction).
        device_out_of_memory: device out-of-memory errors by model and outcome: ``split`` (a batch halved and
            retried), ``refused`` (a single item did not fit: its requests got 503).
        queue_depth: samples admitted and not yet on the device, by model.
        samples_generated: samples returned by ``/sample`` and ``/sample.png``, by model.
        model_info: 1 per loaded model, labelled with its card's identity.
        model_ready: 1 when the model is verified and warmed up, else 0.
        model_reloads: versions that began to serve (``added``, ``replaced``), folders ``removed``, and new
            artifacts refused (``failed``: checksum, contract, warm-up, a symlink out of ``MODEL_DIR``), by model.
        drift_items: items in the model's drift window (read from the window at each scrape, like the three below).
        drift_p_value: the window's typicality p-value against the card's reference scores.
        drift_bits_per_dim: the window's mean bits/dim.
        drift_flag_rate: the fraction of the window's items the default score flags at ``ANOMALY_FPR``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "realnvp_requests_total",
            "HTTP requests by endpoint, model and status code.",
            ("endpoint", "model", "status"),
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "realnvp_request_latency_seconds",
            "HTTP request latency by endpoint.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "realnvp_queue_wait_seconds",
            "Time a request spent queued before its batch started.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "realnvp_batch_size_samples",
            "Samples per executed batch.",
            ("model", "direction"),
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.inference_time = Histogram(
            "realnvp_inference_seconds",
            "Device time per executed batch.",
            ("model", "operation"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.device_out_of_memory = Counter(
            "realnvp_device_out_of_memory_total",
            "Device out-of-memory errors: batches split and retried (split), single items refused with 503 (refused).",
            ("model", "outcome"),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "realnvp_queue_depth_samples",
            "Samples admitted and not yet handed to the device.",
            ("model",),
            registry=self.registry,
        )
        self.samples_generated = Counter(
            "realnvp_samples_generated_total",
            "Samples drawn by /sample and /sample.png.",
            ("model",),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "realnvp_model_info",
            "Loaded models (value 1) and their card identity.",
            ("model", "version", "flow_type", "data_kind", "dimension", "sha256"),
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "realnvp_model_ready",
            "1 when the model is checksum-verified and warmed up, else 0.",
            ("model",),
            registry=self.registry,
        )
        self.model_reloads = Counter(
            "realnvp_model_reloads_total",
            "Model folders loaded, replaced, removed or refused (by start-up, polling or POST /admin/reload).",
            ("model", "outcome"),
            registry=self.registry,
        )
        self._add_drift_gauges()

    def _add_drift_gauges(self) -> None:
        # a method of its own: __init__ stays under the 80-line limit of tests/test_architecture.py
        drift = ("model",)
        self.drift_items = Gauge(
            "realnvp_drift_window_items", "Items in the drift window.", drift, registry=self.registry
        )
        self.drift_p_value = Gauge(
            "realnvp_drift_typicality_p_value",
            "Typicality p-value of the drift window against the card's reference scores (NaN under 2 items).",
            drift,
            registry=self.registry,
        )
        self.drift_bits_per_dim = Gauge(
            "realnvp_drift_mean_bits_per_dim", "Mean bits/dim of the drift window.", drift, registry=self.registry
        )
        self.drift_flag_rate = Gauge(
            "realnvp_drift_flag_rate",
            "Fraction of the drift window flagged by the default anomaly score at ANOMALY_FPR.",
            drift,
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
