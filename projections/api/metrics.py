"""Prometheus metrics of the query API (``GET /metrics``), in a registry of its own per app.

Requests are counted and timed per method, route template and status by a plain ASGI middleware (a server-sent
event stream counts when its headers are sent). Gauges read at scrape time say how far the read models are, whether
the projection is halted, and how many clients follow the real-time stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class QueryMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram


def build_metrics(position: Callable[[], float], halted: Callable[[], float],
                  subscribers: Callable[[], float]) -> QueryMetrics:
    registry = CollectorRegistry(auto_describe=True)
    Gauge("razao_query_projection_position", "Log position the read models have reached, as this API sees it",
          registry=registry).set_function(position)
    Gauge("razao_query_projection_halted", "1 while the projection is stopped on a poison event",
          registry=registry).set_function(halted)
    Gauge("razao_query_stream_subscribers", "Clients following GET /v1/stream", registry=registry
          ).set_function(subscribers)
    return QueryMetrics(
        registry=registry,
        requests=Counter("razao_query_requests", "HTTP requests served", ["method", "route", "status"],
                         registry=registry),
        latency=Histogram("razao_query_request_duration_seconds", "Time to answer a request (to its headers for a "
                          "stream)", ["method", "route"], buckets=LATENCY_BUCKETS_S, registry=registry),
    )


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (``unmatched`` for no route)."""

    def __init__(self, app: ASGIApp, metrics: QueryMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "timed": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                self._observe(scope, state, started)
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self._observe(scope, state, started)

    def _observe(self, scope: Scope, state: dict[str, Any], started: float) -> None:
        if state["timed"]:
            return
        state["timed"] = True
        template = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"] if template != "unmatched" else "other"
        self.metrics.requests.labels(method, template, str(state["status"])).inc()
        self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
