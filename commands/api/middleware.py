"""The edge of every request, as plain ASGI (cheaper than ``BaseHTTPMiddleware`` on the hot path).

- bodies: at most ``BODY_BYTES_MAX`` (413 before the route runs, whether or not Content-Length was sent), and a
  non-empty body must be JSON (415);
- a catch-all: an unexpected exception is logged with its traceback and answered with a generic 500 problem
  that leaks nothing (a bug, always: every expected failure has its own code);
- metrics: count and latency per method, route template and status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands.api.errors import problem_response
from commands.api.limits import BODY_BYTES_MAX
from commands.api.metrics import ApiMetrics

log = logging.getLogger(__name__)

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics, body_bytes_max: int = BODY_BYTES_MAX) -> None:
        self.app = app
        self.metrics = metrics
        self.body_bytes_max = body_bytes_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "sent": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["sent"] = message["status"], True
                if (b"idempotent-replayed", b"true") in message.get("headers", ()):
                    state["replayed"] = True
            await send(message)

        try:
            if scope["method"] in _BODY_METHODS:
                body_receive = await self._read_body(scope, receive, tracking_send)
                if body_receive is None:
                    return
                receive = body_receive
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope.get("path", ""))
            if not state["sent"]:
                await self._problem(scope, tracking_send, "API_INTERNAL_ERROR", "internal error")
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if template != "unmatched" else "other"
            self.metrics.requests.labels(method, template, str(state["status"])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
            if state.get("replayed"):
                self.metrics.replays.labels(template).inc()

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The whole body, bounded, replayed to the app; ``None`` when a problem was already answered."""
        headers = _headers(scope)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.body_bytes_max):
            code = "API_BODY_TOO_LARGE" if declared.isdigit() else "API_VALIDATION_FAILED"
            await self._problem(scope, send, code, f"the body must be at most {self.body_bytes_max} bytes of JSON")
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.body_bytes_max:
                await self._problem(scope, send, "API_BODY_TOO_LARGE",
                                    f"the body must be at most {self.body_bytes_max} bytes of JSON")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not _is_json(headers.get("content-type", "")):
            await self._problem(scope, send, "API_UNSUPPORTED_MEDIA_TYPE", "the body must be application/json")
            return None
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: wait for the disconnect, as the server would say it
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    @staticmethod
    async def _problem(scope: Scope, send: Send, code: str, detail: str) -> None:
        response = problem_response(code, detail, str(scope.get("path", "")))
        await response(scope, _no_receive, send)


def _headers(scope: Scope) -> MutableMapping[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


AsgiCallable = Callable[[Scope, Receive, Send], Awaitable[None]]
