"""The one table from query-API error codes to HTTP, and the RFC 9457 ``application/problem+json`` bodies.

Bad input is always a typed 4xx (never a 500): validation errors of FastAPI, unknown routes and methods, and every
``Problem`` raised by a route map here. Anything else is a bug: a generic 500 whose details go to the log only.
(The command API has its own table in ``commands/api/errors.py``; the import rules keep the two apart.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("razao.query")

PROBLEM_MEDIA_TYPE = "application/problem+json"

#: code -> (status, title)
QUERY_ERRORS: dict[str, tuple[int, str]] = {
    "QUERY_INVALID_REQUEST": (400, "Invalid request"),
    "QUERY_INVALID_CURSOR": (400, "Invalid cursor"),
    "QUERY_UNAUTHENTICATED": (401, "Authentication required"),
    "QUERY_FORBIDDEN": (403, "Not allowed"),
    "QUERY_ACCOUNT_NOT_FOUND": (404, "Account not found"),
    "QUERY_PARTY_NOT_FOUND": (404, "Party not found"),
    "QUERY_TRANSFER_NOT_FOUND": (404, "Transfer not found"),
    "QUERY_NOT_FOUND": (404, "Not found"),
    "QUERY_METHOD_NOT_ALLOWED": (405, "Method not allowed"),
    "QUERY_RATE_LIMITED": (429, "Too many requests"),
    "QUERY_INTERNAL_ERROR": (500, "Internal error"),
    "QUERY_PROJECTION_BEHIND": (503, "The read models have not reached the requested position yet"),
    "QUERY_LEDGER_MISMATCH": (503, "The read models were built from another ledger"),
    "QUERY_UNAVAILABLE": (503, "Temporarily unavailable"),
}


class Problem(Exception):
    """An error a route answers with; ``extra`` fields are added to the body, ``headers`` to the response."""

    def __init__(self, code: str, detail: str, *, extra: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        assert code in QUERY_ERRORS, code
        super().__init__(detail)
        self.code, self.detail = code, detail
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def problem_response(code: str, detail: str, instance: str, *, extra: Mapping[str, Any] | None = None,
                     headers: Mapping[str, str] | None = None) -> Response:
    status, title = QUERY_ERRORS[code]
    body = {"type": f"urn:razao:problem:{code.lower().replace('_', '-')}", "title": title, "status": status,
            "detail": detail, "code": code, "instance": instance, **(extra or {})}
    return Response(json.dumps(body, separators=(",", ":")).encode(), status_code=status,
                    media_type=PROBLEM_MEDIA_TYPE, headers=dict(headers or {}))


def install(app: FastAPI) -> None:
    """Registers the handlers that turn every failure into a problem response."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc.code, exc.detail, request.url.path, extra=exc.extra, headers=exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        violations = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "request",
                       "message": str(e.get("msg", "invalid"))} for e in exc.errors()]
        return problem_response("QUERY_INVALID_REQUEST", "the request does not match the API", request.url.path,
                                extra={"violations": violations})

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            return problem_response("QUERY_METHOD_NOT_ALLOWED", "this API only reads (GET)", request.url.path,
                                    headers={"Allow": "GET"})
        if exc.status_code == 404:
            return problem_response("QUERY_NOT_FOUND", "no such route", request.url.path)
        code = "QUERY_INVALID_REQUEST" if 400 <= exc.status_code < 500 else "QUERY_INTERNAL_ERROR"
        return problem_response(code, str(exc.detail), request.url.path)

    async def on_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response("QUERY_INTERNAL_ERROR", "internal error", request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
