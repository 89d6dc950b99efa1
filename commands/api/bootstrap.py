"""Wiring of the command API: the one place that builds the app, its ledger writer and its clients.

``create_app(settings, runtime)`` builds everything that does not connect (token verifier, rate limiter,
metrics, routes); the lifespan then starts the ledger writer (taking the Postgres writer lease and rebuilding
the state) before the server accepts connections, and stops it after the last request. Nothing connects at
import time, nor in ``create_app``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from commands.api.auth import verifier_for
from commands.api.deps import ApiContext
from commands.api.errors import EXCEPTION_HANDLERS, PROBLEM_MEDIA_TYPE
from commands.api.limits import IDEMPOTENCY_KEY_LENGTH_MAX
from commands.api.metrics import CallbackCollector, build_metrics
from commands.api.middleware import EdgeMiddleware
from commands.api.ratelimit import RateLimiter
from commands.api.routers import accounts, holds, ops, parties, pix, transfers, webhooks
from commands.api.settings import ApiSettings
from commands.bootstrap import LedgerRuntime, build_ledger
from commands.pix_metrics import BreakerCollector, build_pix_metrics
from commands.pix_runtime import PixRuntime
from infra.settings import load_settings

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
DESCRIPTION = """The write side of Razão over HTTP.

Every request carries `Authorization: Bearer <JWT>`; every POST that moves money or creates something carries an
`Idempotency-Key`: a retry with the same key and body returns the original status and body (with
`Idempotent-Replayed: true`), the same key with another body answers 409. Amounts are PIX `valor` strings
(`"110.00"`). Errors are `application/problem+json` (RFC 9457) with a stable `code`.
"""


def load_api_settings() -> ApiSettings:
    """The API's settings, with server addresses and the state directory resolved by ``infra.settings``."""
    infra = load_settings()
    return ApiSettings(pg_dsn=infra.pg_dsn, redis_url=infra.redis_url, state_dir=infra.state_dir)


def create_app(settings: ApiSettings, runtime: LedgerRuntime | None = None) -> FastAPI:
    """The FastAPI app. ``runtime`` (not started) is for tests and tools; by default the lifespan builds one on
    ``settings.pg_dsn``. Raises ``UnsafeConfiguration`` for development credentials outside development."""
    metrics = build_metrics()
    context = ApiContext(settings=settings, verifier=verifier_for(settings), limiter=RateLimiter(settings, metrics),
                         metrics=metrics, pix=_pix_runtime(settings, metrics.registry))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Checkpoints are built and saved off the writer thread: a large state would otherwise stall every answer.
        ledger_runtime = runtime or await asyncio.to_thread(build_ledger, settings.pg_dsn, start=False,
                                                            checkpoint_in_background=True)
        try:
            await asyncio.to_thread(ledger_runtime.writer.start)
        except BaseException:
            await asyncio.to_thread(ledger_runtime.app.close)
            raise
        from commands.api.gateway import LedgerGateway

        context.ledger = LedgerGateway(ledger_runtime.writer)
        try:
            if context.pix is not None:
                await context.pix.start(context.ledger)
            await context.limiter.start()
        except BaseException:
            await _stop(context, ledger_runtime)
            raise
        log.info("command API ready: ledger at position %d, rate limits in %s",
                 context.ledger.position(), context.limiter.backend)
        try:
            yield
        finally:
            await _stop(context, ledger_runtime)

    app = FastAPI(title="Razão command API", version=API_VERSION, description=DESCRIPTION, lifespan=lifespan,
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url="/redoc",
                  exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
    app.state.api = context
    for router in (parties.router, accounts.router, transfers.router, holds.router, ops.router):
        app.include_router(router)
    if context.pix is not None:
        app.include_router(pix.router)
        app.include_router(webhooks.router)
    app.add_middleware(EdgeMiddleware, metrics=metrics)
    if context.pix is not None:  # outermost: the webhook skips the rest of the stack (routers/webhooks.py)
        app.add_middleware(webhooks.WebhookFastPath, context=context, metrics=metrics)
    metrics.registry.register(CallbackCollector(lambda: _runtime_metrics(context)))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _pix_runtime(settings: ApiSettings, registry: Any) -> PixRuntime | None:
    """The PIX side when enabled (``RAZAO_PIX_ENABLED``): options now, adapters when the lifespan starts it."""
    if not settings.pix_enabled:
        return None
    from commands.pix_bootstrap import pix_adapters, pix_options

    runtime = PixRuntime(pix_options(settings), build_pix_metrics(registry), lambda: pix_adapters(settings))
    registry.register(BreakerCollector(runtime.breaker_states, runtime.pending))
    return runtime


async def _stop(context: ApiContext, ledger_runtime: LedgerRuntime) -> None:
    """Stops what runs, in reverse order: PIX (it submits to the ledger), the limiter, then the ledger writer."""
    if context.pix is not None:
        await context.pix.stop()
    context.ledger = None
    await context.limiter.close()
    await asyncio.to_thread(ledger_runtime.close)


def _runtime_metrics(context: ApiContext) -> dict[str, tuple[str, str, float]]:
    values: dict[str, tuple[str, str, float]] = {
        "razao_api_token_cache_hits": ("counter", "Tokens found verified in the cache", context.verifier.hits),
        "razao_api_token_cache_misses": ("counter", "Tokens verified by signature", context.verifier.misses),
    }
    if context.ledger is not None:
        stats = context.ledger.writer.stats()
        values.update({
            "razao_ledger_writer_batches": ("counter", "Group-commit batches", stats.batches),
            "razao_ledger_writer_commands": ("counter", "Commands decided", stats.commands),
            "razao_ledger_writer_events": ("counter", "Events committed", stats.events),
            "razao_ledger_position": ("gauge", "Event-log position of the writer", stats.position),
        })
    return values


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, made exact: problem responses as application/problem+json, and the Idempotency-Key
    marked required (with its pattern) where the route requires it (the route answers 400 itself if not)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    key_schema = {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_LENGTH_MAX,
                  "pattern": f"^[!-~]{{1,{IDEMPOTENCY_KEY_LENGTH_MAX}}}$"}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "header" and parameter.get("name") == "Idempotency-Key":
                    parameter["schema"] = dict(key_schema)
                    parameter["required"] = not path.endswith("/close")
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    app.openapi_schema = schema
    return schema
