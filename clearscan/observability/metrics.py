"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clearscan_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clearscan_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "clearscan_predictions_total",
            "Predictions made",
            ["model", "version", "label"],
            registry=self.registry,
        )
        self.inference = Histogram(
            "clearscan_inference_seconds",
            "Preprocessing + model + explanation time per image",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "clearscan_uploads_rejected_total",
            "Uploads rejected",
            ["status"],
            registry=self.registry,
        )
        self.models_available = Gauge(
            "clearscan_model_available",
            "1 when the model can serve",
            ["model", "version"],
            registry=self.registry,
        )
