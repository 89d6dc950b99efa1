"""Prometheus metrics of the API, in a registry of its own (one per app, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class ApiMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    rate_limited: Counter
    rate_limit_fallbacks: Counter
    rate_limit_degraded: Gauge
    replays: Counter


def build_metrics() -> ApiMetrics:
    registry = CollectorRegistry(auto_describe=True)
    return ApiMetrics(
        registry=registry,
        requests=Counter("razao_api_requests", "HTTP requests served", ["method", "route", "status"],
                         registry=registry),
        latency=Histogram("razao_api_request_duration_seconds", "Time to answer a request", ["method", "route"],
                          buckets=LATENCY_BUCKETS_S, registry=registry),
        rate_limited=Counter("razao_api_rate_limited", "Requests refused by a rate limit", ["scope"],
                             registry=registry),
        rate_limit_fallbacks=Counter(
            "razao_api_rate_limit_fallbacks", "Switches to the in-process limiter because Redis failed",
            registry=registry),
        rate_limit_degraded=Gauge("razao_api_rate_limit_degraded",
                                  "1 while rate limits are kept in process (Redis unreachable)", registry=registry),
        replays=Counter("razao_api_idempotent_replays", "Requests answered from an earlier one with the same key",
                        ["route"], registry=registry),
    )


class CallbackCollector(Collector):
    """Exports values read at scrape time (writer statistics, token cache counters)."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, str, float]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        for name, (kind, help_text, value) in self.read().items():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, help_text, value=value)
