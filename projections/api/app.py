"""Wiring of the query API: ``create_app`` builds the one ``QueryContext`` (pool, hub, verifier, limiter, cursors)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import ConnectionPool
from starlette.responses import JSONResponse, Response

from projections.api import problems
from projections.api.auth import TokenVerifier
from projections.api.cursor import Cursors
from projections.api.deps import QueryContext
from projections.api.hub import Hub
from projections.api.metrics import MetricsMiddleware, build_metrics
from projections.api.present import valor
from projections.api.queries import Queries, Row, signed
from projections.api.ratelimit import RateLimiter
from projections.api.routers import accounts, audit, parties, stream, transfers
from projections.limits import (
    QUERY_POOL_CONNECTIONS_MAX,
    QUERY_STATEMENT_TIMEOUT_MS,
    RATE_LIMIT_REQUESTS_MAX,
    RATE_LIMIT_WINDOW_S,
)
from projections.schema import LIVE_SCHEMA

log = logging.getLogger("razao.query")


def balance_change(row: Row) -> dict[str, Any]:
    """One statement entry as an SSE event: the account's balances right after the change."""
    s = signed(row["debit_normal"], row["debits_pending"], row["debits_posted"], row["credits_pending"],
               row["credits_posted"])
    return {"account_id": str(row["account_id"]), "position": row["position"],
            "recorded_at": row["recorded_at"].isoformat(), "transfer_id": str(row["transfer_id"]),
            "kind": row["kind"], "direction": row["direction"], "valor": valor(row["amount_centavos"]),
            "posted": valor(s.posted), "pending": valor(s.pending), "available": valor(s.available)}


def create_app(read_dsn: str, *, public_key_files: tuple[Path, ...], cursor_secret: bytes,
               redis_url: str | None, schema: str = LIVE_SCHEMA,
               rate_limit_requests_max: int = RATE_LIMIT_REQUESTS_MAX, rate_limit_prefix: str = "razao-query"
               ) -> FastAPI:
    """The query API over ``schema`` of the read database. Nothing connects until the app starts."""
    pool: ConnectionPool[Any] = ConnectionPool(
        read_dsn, min_size=1, max_size=QUERY_POOL_CONNECTIONS_MAX, open=False, name="razao-query",
        # Every request is one read-only snapshot: a page and the balance beside it always agree.
        kwargs={"options": f"-c default_transaction_read_only=on -c statement_timeout={QUERY_STATEMENT_TIMEOUT_MS}"
                           " -c default_transaction_isolation=repeatable\\ read",
                "application_name": "razao-query-api"},
    )
    hub = Hub(read_dsn, schema, balance_change)
    limiter = RateLimiter(redis_url, rate_limit_requests_max, RATE_LIMIT_WINDOW_S, rate_limit_prefix) \
        if redis_url else None
    ctx = QueryContext(pool, Queries(schema), hub, TokenVerifier(public_key_files), Cursors(cursor_secret), limiter)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=True, timeout=10)
        hub.start()
        try:
            yield
        finally:
            hub.stop()
            pool.close()
            if limiter is not None:
                limiter.close()

    app = FastAPI(title="Razão query API", version="1", lifespan=lifespan,
                  description="Read-only: balances, statements, transfers, holds, audits, real-time balances.")
    app.state.ctx = ctx
    problems.install(app)
    for module in (accounts, parties, transfers, audit, stream):
        app.include_router(module.router)
    metrics = build_metrics(lambda: hub.position, lambda: 1.0 if hub.halted_reason else 0.0,
                            lambda: float(hub.subscribers))
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    def prometheus() -> Response:
        """Prometheus text (no token, like /health: bind the port privately in production)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", tags=["ops"])
    def health() -> Response:
        """Up and connected; ``position`` is how far the read models are; a halted projection shows here."""
        body = {"status": "ok" if hub.connected else "starting", "position": hub.position,
                "projection_halted": hub.halted_reason}
        return JSONResponse(body, status_code=200 if hub.connected else 503)

    return app
