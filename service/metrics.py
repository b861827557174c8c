"""Prometheus metrics, in a registry of their own per app (several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServiceMetrics:
    """Every metric the service exports at ``GET /metrics``.

    - ``ser_http_requests_total{method,route,status}`` and ``ser_http_request_duration_seconds{method,route}``
    - ``ser_predictions_total{endpoint,outcome}``: one per utterance; outcome is ``ok`` or the error_type
    - ``ser_prediction_stage_seconds{stage}``: decode, queue, inference and total, per utterance
    - ``ser_batch_size`` and ``ser_batch_inference_seconds``: per model call
    - ``ser_queue_depth`` / ``ser_queue_capacity``, ``ser_http_requests_in_flight``, ``ser_model_ready``
    - ``ser_model_info{name,version,backbone,...}``
    - ``ser_sessions`` (client sessions held) and ``ser_session_evictions_total{reason}`` (capacity,
      expired)
    - ``ser_uncertain_predictions_total{reason}``: predictions flagged uncertain, by reason
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "ser_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "ser_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("ser_http_requests_in_flight", "HTTP requests being handled", registry=r)
        self.predictions = Counter(
            "ser_predictions",
            "Utterances handled, by endpoint and outcome (ok, or the error_type)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.stage_latency = Histogram(
            "ser_prediction_stage_seconds",
            "Per-utterance time in each stage: decode, queue, inference, total",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ser_batch_size", "Utterances per model call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_latency = Histogram(
            "ser_batch_inference_seconds", "Time of one model call", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "ser_queue_depth", "Utterances admitted for the model: being decoded or waiting", registry=r
        )
        self.queue_capacity = Gauge("ser_queue_capacity", "Most utterances admitted at once", registry=r)
        self.ready = Gauge("ser_model_ready", "1 once the model is loaded and warmed up", registry=r)
        self.model_info = Info("ser_model", "The bundle being served", registry=r)
        self.sessions = Gauge("ser_sessions", "Client sessions whose statistics are held", registry=r)
        self.session_evictions = Counter(
            "ser_session_evictions",
            "Client sessions dropped: capacity (the store was full) or expired (unused too long)",
            ["reason"],
            registry=r,
        )
        self.uncertain = Counter(
            "ser_uncertain_predictions",
            "Predictions flagged uncertain, by reason (out_of_distribution, low_confidence)",
            ["reason"],
            registry=r,
        )

        self.streams = Gauge("ser_streams", "Live streams open on /v1/stream", registry=r)
        self.jobs = Gauge("ser_jobs", "Long-recording jobs in the job store, by state", ["state"], registry=r)
        self.audio_processed = Counter(
            "ser_timeline_audio_seconds",
            "Seconds of audio analysed into timelines, by route (timeline: POST /v1/timeline; jobs; stream)",
            ["route"],
            registry=r,
        )

    def track_jobs(self, counts: Callable[[], dict[str, int]], states: tuple[str, ...]) -> None:
        """Report ``counts()[state]`` for every state at each scrape."""

        def count_of(state: str) -> Callable[[], float]:
            return lambda: float(counts().get(state, 0))

        for state in states:
            self.jobs.labels(state).set_function(count_of(state))

    def track_queue(self, depth: Callable[[], float], capacity: int) -> None:
        self.queue_depth.set_function(depth)
        self.queue_capacity.set(capacity)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)
