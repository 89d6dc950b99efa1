"""The one table from error codes to HTTP, and the RFC 9457 ``application/problem+json`` bodies.

Every ledger operating error (``ledger.errors.ALL_ERRORS``) and every API error has a row: its status and a
short title. A test asserts the table covers every ledger code, so a new ledger error cannot reach a client
as a 500. Problem bodies carry ``type`` (``urn:razao:problem:<code>``), ``title``, ``status``, ``detail``,
``code`` and ``instance``, plus ``violations`` for invalid requests and the error's context (ids, amounts as
``valor`` strings) under API field names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ledger import errors as ledger_errors
from ledger.money import format_amount
from ledger.pix import InvalidPixPayload

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    status: int
    title: str


#: Ledger operating errors. Malformed requests 400; missing objects 404; state conflicts 409; domain refusals
#: 422; the ledger not able to answer now 503 with Retry-After (retrying with the same key is safe).
LEDGER_ERRORS: dict[str, ErrorSpec] = {
    "LEDGER_INVALID_REQUEST": ErrorSpec(400, "Invalid request"),
    "LEDGER_AMOUNT_MUST_BE_POSITIVE": ErrorSpec(400, "Amount must be positive"),
    "LEDGER_AMOUNT_TOO_LARGE": ErrorSpec(400, "Amount too large"),
    "LEDGER_BATCH_TOO_LARGE": ErrorSpec(400, "Batch too large"),
    "LEDGER_ACCOUNT_NOT_FOUND": ErrorSpec(404, "Account not found"),
    "LEDGER_PENDING_TRANSFER_NOT_FOUND": ErrorSpec(404, "Hold not found"),
    "LEDGER_ACCOUNT_EXISTS": ErrorSpec(409, "Account already exists"),
    "LEDGER_PARTY_EXISTS": ErrorSpec(409, "Party already registered"),
    "LEDGER_IDEMPOTENCY_CONFLICT": ErrorSpec(409, "Idempotency key reused with a different request"),
    "LEDGER_PENDING_TRANSFER_NOT_PENDING": ErrorSpec(409, "Transfer is not a hold"),
    "LEDGER_PENDING_TRANSFER_ALREADY_POSTED": ErrorSpec(409, "Hold already posted"),
    "LEDGER_PENDING_TRANSFER_ALREADY_VOIDED": ErrorSpec(409, "Hold already voided"),
    "LEDGER_PENDING_TRANSFER_EXPIRED": ErrorSpec(409, "Hold expired"),
    "LEDGER_ACCOUNT_CLOSED": ErrorSpec(422, "Account closed"),
    "LEDGER_ACCOUNT_BALANCE_NOT_ZERO": ErrorSpec(422, "Account balance is not zero"),
    "LEDGER_ACCOUNTS_MUST_BE_DIFFERENT": ErrorSpec(422, "Debit and credit accounts must differ"),
    "LEDGER_LEDGER_MISMATCH": ErrorSpec(422, "Currency ledgers differ"),
    "LEDGER_INSUFFICIENT_FUNDS": ErrorSpec(422, "Insufficient funds"),
    "LEDGER_EXCEEDS_DEBITS": ErrorSpec(422, "Credit exceeds the account's debits"),
    "LEDGER_OVERFLOW": ErrorSpec(422, "Balance overflow"),
    "LEDGER_EXCEEDS_PENDING_AMOUNT": ErrorSpec(422, "Amount exceeds the hold"),
    "LEDGER_LINKED_TRANSFER_FAILED": ErrorSpec(422, "Linked transfer failed"),
    "LEDGER_LINKED_BATCH_FAILED": ErrorSpec(422, "Linked batch refused"),
    "LEDGER_UNAVAILABLE": ErrorSpec(503, "Ledger unavailable"),
    "LEDGER_OVERLOADED": ErrorSpec(503, "Ledger overloaded"),
    "LEDGER_WRITER_BUSY": ErrorSpec(503, "Ledger writer owned by another process"),
    "LEDGER_WRITER_FENCED": ErrorSpec(503, "Ledger writer fenced off"),
}

#: Errors of the HTTP layer itself.
API_ERRORS: dict[str, ErrorSpec] = {
    "API_VALIDATION_FAILED": ErrorSpec(400, "Request validation failed"),
    "IDEMPOTENCY_KEY_REQUIRED": ErrorSpec(400, "Idempotency-Key header required"),
    "IDEMPOTENCY_KEY_INVALID": ErrorSpec(400, "Idempotency-Key header invalid"),
    "AUTH_TOKEN_MISSING": ErrorSpec(401, "Authentication required"),
    "AUTH_TOKEN_INVALID": ErrorSpec(401, "Invalid token"),
    "AUTH_FORBIDDEN": ErrorSpec(403, "Forbidden"),
    "RESOURCE_NOT_FOUND": ErrorSpec(404, "Not found"),
    "API_METHOD_NOT_ALLOWED": ErrorSpec(405, "Method not allowed"),
    "API_BODY_TOO_LARGE": ErrorSpec(413, "Request body too large"),
    "API_UNSUPPORTED_MEDIA_TYPE": ErrorSpec(415, "Unsupported media type"),
    "API_RATE_LIMITED": ErrorSpec(429, "Too many requests"),
    "API_INTERNAL_ERROR": ErrorSpec(500, "Internal error"),
    "API_NOT_READY": ErrorSpec(503, "Service not ready"),
}

#: PIX errors (ledger.pix, ledger.pix_flows, the gateway port, and the webhook's own checks). Malformed keys,
#: payloads and amounts 400; unknown Pix 404; a PSP that refuses or misbehaves 502; a PSP that does not answer 503
#: (retry with the same key: a charge is made idempotently by its txid).
PIX_ERRORS: dict[str, ErrorSpec] = {
    "PIX_INVALID_KEY": ErrorSpec(400, "Invalid Pix key"),
    "PIX_INVALID_PAYLOAD": ErrorSpec(400, "Pix payload violates the spec"),
    "PIX_WEBHOOK_SIGNATURE_INVALID": ErrorSpec(401, "Webhook signature invalid"),
    "PIX_WEBHOOK_PSP_MISMATCH": ErrorSpec(403, "Webhook PSP identity mismatch"),
    "PIX_RECEIVED_NOT_FOUND": ErrorSpec(404, "Received Pix not found"),
    "PIX_WITHDRAWAL_NOT_FOUND": ErrorSpec(404, "Withdrawal not found"),
    "PIX_REFUND_NOT_FOUND": ErrorSpec(404, "Devolução not found"),
    "PIX_ALREADY_SETTLED": ErrorSpec(409, "Already settled"),
    "PIX_NOT_IN_SUSPENSE": ErrorSpec(409, "Pix not in suspense"),
    "PIX_REFUND_IN_PROGRESS": ErrorSpec(409, "Devolução in progress"),
    "PIX_PAYMENT_ID_CONFLICT": ErrorSpec(409, "Payment id used for another payment"),
    "PIX_REFUND_EXCEEDS_ORIGINAL": ErrorSpec(422, "Devolução exceeds the original Pix"),
    "PIX_REFUND_WINDOW_CLOSED": ErrorSpec(422, "Devolução window closed"),
    "PIX_GATEWAY_ERROR": ErrorSpec(502, "PSP error"),
    "PIX_PSP_NOT_FOUND": ErrorSpec(502, "PSP does not know the object"),
    "PIX_PSP_REJECTED": ErrorSpec(502, "PSP refused the request"),
    "PIX_PSP_UNAVAILABLE": ErrorSpec(503, "PSP unavailable"),
}

ERROR_TABLE: dict[str, ErrorSpec] = {**LEDGER_ERRORS, **API_ERRORS, **PIX_ERRORS}
assert not LEDGER_ERRORS.keys() & API_ERRORS.keys()
assert not (LEDGER_ERRORS.keys() | API_ERRORS.keys()) & PIX_ERRORS.keys()

_RETRYABLE = frozenset({"LEDGER_UNAVAILABLE", "LEDGER_OVERLOADED", "LEDGER_WRITER_BUSY", "LEDGER_WRITER_FENCED",
                        "API_NOT_READY", "PIX_PSP_UNAVAILABLE"})

#: Ledger field names as the API calls them (the ledger speaks centavos and pending transfers).
API_FIELD_NAMES: dict[str, str] = {
    "amount_centavos": "valor",
    "pending_id": "hold_id",
    "key": "Idempotency-Key",
    "payload": "body",
    "flags": "code",
    "timeout_s": "timeout_s",
}
_RESERVED = frozenset({"type", "title", "status", "detail", "code", "instance", "violations"})


def api_field(ledger_field: str) -> str:
    return API_FIELD_NAMES.get(ledger_field, ledger_field)


def problem_type(code: str) -> str:
    return f"urn:razao:problem:{code.lower().replace('_', '-')}"


class ApiError(Exception):
    """An error the API raises itself; rendered from the table like a ledger error."""

    def __init__(
        self, code: str, detail: str, *, violations: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None, **extra: Any,
    ) -> None:
        assert code in ERROR_TABLE, code
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.violations = list(violations) if violations is not None else None
        self.headers = dict(headers or {})
        self.extra = extra


def problem_body(
    code: str, detail: str, instance: str, *, violations: Sequence[Mapping[str, str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The RFC 9457 document of an error code, from the table (a code missing from it becomes a 500)."""
    spec = ERROR_TABLE.get(code)
    if spec is None:  # a code missing from the table is a bug: never let it reach the client as itself
        log.error("error code %s has no row in the API error table", code)
        code, spec, detail, extra = "API_INTERNAL_ERROR", API_ERRORS["API_INTERNAL_ERROR"], "internal error", None
    body: dict[str, Any] = {"type": problem_type(code), "title": spec.title, "status": spec.status,
                            "detail": detail, "code": code, "instance": instance}
    body.update((k, v) for k, v in (extra or {}).items() if k not in _RESERVED)
    if violations is not None:
        body["violations"] = list(violations)
    return body


def problem_response(
    code: str, detail: str, instance: str, *, violations: Sequence[Mapping[str, str]] | None = None,
    headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None,
) -> Response:
    body = problem_body(code, detail, instance, violations=violations, extra=extra)
    code, status = body["code"], body["status"]
    all_headers = dict(headers or {})
    if code in _RETRYABLE:
        all_headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", 'Bearer realm="razao-api"')
    return Response(json.dumps(body, separators=(",", ":")).encode(), status_code=status,
                    headers=all_headers, media_type=PROBLEM_MEDIA_TYPE)


def ledger_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger error's context under API names: amounts as ``valor`` strings, keys without their namespace."""
    out: dict[str, Any] = {}
    for name, value in context.items():
        if name == "field":
            out["field"] = api_field(str(value))
        elif name == "key":
            out["idempotency_key"] = client_key(str(value))
        elif name == "results" and isinstance(value, list):
            out["results"] = [ledger_context(r) | _code_detail(r) for r in value if isinstance(r, Mapping)]
        elif name.endswith("_centavos") and isinstance(value, int):
            out["valor" if name == "amount_centavos" else name.removesuffix("_centavos")] = format_amount(value)
        elif name == "pending_id":
            out["hold_id"] = value
        elif name not in ("code", "detail"):
            out[name] = value
    return out


def _code_detail(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("code", "detail") if k in result}


def client_key(namespaced_key: str) -> str:
    """The client's Idempotency-Key inside a ledger key ``sub:key`` (a subject never holds a colon)."""
    return namespaced_key.split(":", 1)[-1]


def ledger_problem(exc: ledger_errors.LedgerError, request: Request) -> Response:
    extra = ledger_context(exc.context)
    detail = exc.detail
    if isinstance(exc, InvalidPixPayload):  # every violation, with its path in the document
        violations = [{"field": v.path or "body", "message": v.message} for v in exc.violations]
        return problem_response(exc.code, detail, request.url.path, violations=violations, extra=extra)
    if isinstance(exc, ledger_errors.IdempotencyConflict):
        field = extra.get("field", "body")
        extra.setdefault("field", field)
        extra.pop("idempotency_key", None)
        key = request.headers.get("idempotency-key", "")
        detail = (f"Idempotency-Key {key!r} was already used outside this batch" if field == "Idempotency-Key"
                  else f"Idempotency-Key {key!r} was already used for a different request: {field} differs")
    return problem_response(exc.code, detail, request.url.path, extra=extra)


def violation_field(loc: Sequence[Any]) -> str:
    """``("body", "transfers", 0, "valor")`` -> ``transfers[0].valor``; headers by their HTTP name."""
    if not loc:
        return "body"
    where, rest = str(loc[0]), list(loc[1:])
    if where == "header" and rest:
        return "-".join(part.capitalize() for part in str(rest[0]).split("-"))
    if where == "body" and (not rest or isinstance(rest[0], int)):
        return "body"  # a JSON syntax error carries a character offset, not a field
    text = ""
    for part in rest:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or where


def validation_violations(exc: RequestValidationError) -> list[dict[str, str]]:
    violations = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            message = "the body is not valid JSON"
        violations.append({"field": violation_field(error.get("loc", ())), "message": message})
    return violations or [{"field": "body", "message": "invalid request"}]


async def handle_ledger_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ledger_errors.LedgerError)
    return ledger_problem(exc, request)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return problem_response(exc.code, exc.detail, request.url.path, violations=exc.violations,
                            headers=exc.headers, extra=exc.extra)


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response("API_VALIDATION_FAILED", "the request is not valid; see violations",
                            request.url.path, violations=validation_violations(exc))


_HTTP_CODES = {404: "RESOURCE_NOT_FOUND", 405: "API_METHOD_NOT_ALLOWED", 413: "API_BODY_TOO_LARGE",
               415: "API_UNSUPPORTED_MEDIA_TYPE", 400: "API_VALIDATION_FAILED"}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code)
    if code is None:
        log.warning("HTTP %d raised without an API code: %s", exc.status_code, exc.detail)
        code = "API_VALIDATION_FAILED" if exc.status_code < 500 else "API_INTERNAL_ERROR"
    detail = {"RESOURCE_NOT_FOUND": "no such resource", "API_METHOD_NOT_ALLOWED": "method not allowed here"}.get(
        code, "the request cannot be served")
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
    return problem_response(code, detail, request.url.path, headers=headers)


EXCEPTION_HANDLERS = {
    ledger_errors.LedgerError: handle_ledger_error,
    ApiError: handle_api_error,
    RequestValidationError: handle_validation_error,
    StarletteHTTPException: handle_http_exception,
}
