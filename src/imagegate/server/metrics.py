"""Prometheus metrics, in a registry of the app's own (two apps in one process never clash)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from imagegate.request import Attempt

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class Metrics:
    """Every series the server exports."""

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "imagegate_requests",
            "Generations finished, by the provider that served them and the outcome",
            ["provider", "outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "imagegate_attempts",
            "Attempts on each provider, by outcome (ok, error, skipped, cancelled)",
            ["provider", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "imagegate_request_duration_seconds",
            "Time from start to end of a generation, all attempts included",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempt_latency = Histogram(
            "imagegate_attempt_duration_seconds",
            "Time of one attempt on one provider",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker_open = Gauge(
            "imagegate_breaker_open",
            "1 while a provider's circuit breaker is open",
            ["provider"],
            registry=r,
        )
        self.queue_depth = Gauge("imagegate_queue_depth", "Jobs waiting to start", registry=r)
        self.jobs = Gauge("imagegate_jobs", "Jobs in the store, by status", ["status"], registry=r)
        self.images = Counter(
            "imagegate_images", "Images made, by provider", ["provider"], registry=r
        )
        self.cost = Counter(
            "imagegate_cost",
            "Cost of the images made (cost_per_image), by provider",
            ["provider"],
            registry=r,
        )
        self.key_requests = Counter(
            "imagegate_key_requests",
            "Requests by managed key name ('-' for admin keys), by outcome: admitted, "
            "rate_limit_exceeded, insufficient_quota, route_not_allowed",
            ["key", "outcome"],
            registry=r,
        )
        self.key_images = Counter(
            "imagegate_key_images",
            "Images answered to synchronous requests (OpenAI, A1111), by key name",
            ["key"],
            registry=r,
        )
        self.key_cost = Counter(
            "imagegate_key_cost",
            "Cost of the images answered to synchronous requests, by key name",
            ["key"],
            registry=r,
        )

    def finished(
        self,
        provider: str | None,
        outcome: str,
        attempts: list[Attempt],
        elapsed_s: float,
        *,
        images: int = 0,
        cost: float = 0.0,
    ) -> None:
        """Count one finished generation and its attempts."""
        label = provider or "none"
        child = self._child
        child(self.requests, label, outcome).inc()
        child(self.latency, label).observe(elapsed_s)
        for attempt in attempts:
            child(self.attempts, attempt.provider, attempt.outcome).inc()
            if attempt.outcome != "skipped":
                child(self.attempt_latency, attempt.provider).observe(attempt.elapsed_s)
        if images:
            child(self.images, label).inc(images)
            child(self.cost, label).inc(cost)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: every request looks up the same few (the labels
        are provider names and outcomes, a bounded set)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(
        self, *, breakers: Mapping[str, bool], queue_depth: int, jobs: Mapping[str, int]
    ) -> bytes:
        """The exposition text, with the point-in-time gauges set first."""
        for name, is_open in breakers.items():
            self.breaker_open.labels(name).set(1 if is_open else 0)
        self.queue_depth.set(queue_depth)
        for status in JOB_STATUSES:
            self.jobs.labels(status).set(jobs.get(status, 0))
        return generate_latest(self.registry)
