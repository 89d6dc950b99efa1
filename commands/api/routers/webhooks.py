"""PSP webhooks: received-Pix notifications (``{"pix": [...]}``), authenticated, validated, stored, answered fast.

In production the proxy terminates mTLS and admits only the PSPs' client certificates (the BCB model); the app
checks, in this order: the PSP in the path is one we have (404), the body's HMAC-SHA256 under that PSP's webhook
secret (``X-Razao-Signature``, 401), the PSP's identity header (``X-Psp-Id`` equal to the path's PSP, 403), then
the body against the spec's ``WebhookPixBody`` with anchored patterns (400 listing every violation; nothing is
stored). A valid notification is stored in the inbox (durably, group-committed) and answered 202; its Pix are
credited only after the PSP confirms each one (``commands.pix_inbox``). No bearer token: PSPs authenticate by
certificate and signature, and the route is not rate limited (a PSP refused would only deliver again).

This is the platform's hottest route (a thousand notifications a second and more), so ``WebhookFastPath`` serves it
as plain ASGI in front of FastAPI's routing, dependency injection and exception middleware, with the same body
limits, problem responses and metrics; the FastAPI route below documents it in OpenAPI and runs the same
``ingest`` should a request ever reach it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Annotated, Final

from fastapi import APIRouter, Path, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands.api.deps import ApiContext, Pix
from commands.api.errors import ApiError, ledger_context, problem_response
from commands.api.limits import BODY_BYTES_MAX
from commands.api.metrics import ApiMetrics
from commands.api.pix_models import WebhookAccepted
from commands.api.routers.common import json_response, problems
from commands.pix_inbox import notified_items
from commands.pix_runtime import PixRuntime
from ledger import errors as ledger_errors
from ledger.pix import (
    END_TO_END_ID_PATTERN,
    PIX_KEY_LENGTH_MAX,
    PIX_TEXT_LENGTH_MAX,
    RECEIVED_TXID_PATTERN,
    VALOR_PATTERN,
    WEBHOOK_PIX_ITEMS_MAX,
    WEBHOOK_PSP_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    InvalidPixPayload,
    Violation,
    validate_webhook_body,
    verify_webhook_signature,
)
from ledger.ports import InboxDelivery

router = APIRouter(tags=["webhooks"])

DELIVERY_HEADER: Final = "X-Razao-Delivery"
DELIVERY_ID_LENGTH_MAX: Final = 64
PREFIX: Final = "/v1/webhooks/psp/"
ROUTE_TEMPLATE: Final = "/v1/webhooks/psp/{psp}/pix"
PSP_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
PspName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="The PSP's name (primary, secondary).")]


async def ingest(pix: PixRuntime, psp: str, headers: Mapping[str, str], body: bytes) -> WebhookAccepted:
    """Authenticates, validates and stores one notification. ``headers`` with lowercase names.

    Raises ``ApiError`` (404 unknown PSP, 401 signature, 403 identity), ``InvalidPixPayload`` (400),
    ``LedgerUnavailable``/``LedgerOverloaded`` (503: the inbox could not store it; the PSP delivers again).
    """
    metrics = pix.metrics
    secret = pix.webhook_secret(psp)
    if secret is None:
        raise ApiError("RESOURCE_NOT_FOUND", f"no PSP named {psp!r}")
    if not verify_webhook_signature(secret, body, headers.get(WEBHOOK_SIGNATURE_HEADER.lower())):
        metrics.webhooks.labels(psp, "signature_invalid").inc()
        raise ApiError("PIX_WEBHOOK_SIGNATURE_INVALID",
                       f"{WEBHOOK_SIGNATURE_HEADER} is not the HMAC-SHA256 of the body under this PSP's secret",
                       headers={"WWW-Authenticate": f'HMAC-SHA256 header="{WEBHOOK_SIGNATURE_HEADER}"'})
    if headers.get(WEBHOOK_PSP_HEADER.lower()) != psp:
        metrics.webhooks.labels(psp, "psp_mismatch").inc()
        raise ApiError("PIX_WEBHOOK_PSP_MISMATCH", f"{WEBHOOK_PSP_HEADER} must name the PSP of this URL ({psp})")
    try:
        document = json.loads(body)
    except ValueError:
        metrics.webhooks.labels(psp, "invalid").inc()
        raise InvalidPixPayload([Violation("", "the body is not valid JSON")]) from None
    try:
        received = validate_webhook_body(document)
    except InvalidPixPayload:
        metrics.webhooks.labels(psp, "invalid").inc()
        raise
    if pix.inbox_writer is None or pix.processor is None:
        raise ApiError("API_NOT_READY", "PIX is not running yet")
    new: set[str] = set()
    if received:
        delivery_id = (headers.get(DELIVERY_HEADER.lower()) or "")[:DELIVERY_ID_LENGTH_MAX] or None
        new = await pix.inbox_writer.append(InboxDelivery(psp, delivery_id, body, notified_items(received)))
    if new:
        pix.processor.wake()
    metrics.webhooks.labels(psp, "accepted").inc()
    metrics.notified.labels(psp, "new").inc(len(new))
    metrics.notified.labels(psp, "duplicate").inc(len(received) - len(new))
    return WebhookAccepted(accepted=len(received), new=len(new))


def _anchored(pattern: re.Pattern[str]) -> str:
    """A ``\\A...\\Z`` pattern of ``ledger.pix`` as JSON Schema writes it (``^...$``, no group names)."""
    return "^" + re.sub(r"\(\?P<\w+>", "(", pattern.pattern.removeprefix("\\A").removesuffix("\\Z")) + "$"


#: The body and headers in OpenAPI, for PSP integrators and for fuzzing: the spec's ``WebhookPixBody`` as
#: ``validate_webhook_body`` enforces it (the route reads the raw body itself, to check its signature first). The
#: rules the spec states only in prose (a positive ``valor``, parts adding up) are enforced but not expressible here.
_WEBHOOK_OPENAPI: Final = {
    "parameters": [
        {"name": WEBHOOK_SIGNATURE_HEADER, "in": "header", "required": True,
         "description": "sha256=<hex HMAC-SHA256 of the body under the PSP's webhook secret>",
         "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}},
        {"name": WEBHOOK_PSP_HEADER, "in": "header", "required": True,
         "description": "The PSP's name, as in the path", "schema": {"type": "string"}},
        {"name": DELIVERY_HEADER, "in": "header", "required": False,
         "description": "The PSP's id of this delivery (logged)",
         "schema": {"type": "string", "maxLength": DELIVERY_ID_LENGTH_MAX}},
    ],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["pix"],
        "properties": {"pix": {"type": "array", "maxItems": WEBHOOK_PIX_ITEMS_MAX, "items": {
            "type": "object", "required": ["endToEndId", "valor", "horario"],
            "properties": {
                "endToEndId": {"type": "string", "pattern": _anchored(END_TO_END_ID_PATTERN)},
                "txid": {"type": "string", "pattern": _anchored(RECEIVED_TXID_PATTERN)},
                "valor": {"type": "string", "pattern": _anchored(VALOR_PATTERN)},
                "chave": {"type": "string", "maxLength": PIX_KEY_LENGTH_MAX},
                "horario": {"type": "string", "format": "date-time"},
                "infoPagador": {"type": "string", "maxLength": PIX_TEXT_LENGTH_MAX},
            }}}}}}}},
}


@router.post(ROUTE_TEMPLATE, status_code=202, response_model=WebhookAccepted,
             responses=problems(400, 401, 403, 404, 413, 415, 503), openapi_extra=_WEBHOOK_OPENAPI,
             summary="Received-Pix notification from a PSP (the spec's webhook callback)")
async def receive_pix(psp: PspName, request: Request, pix: Pix) -> Response:
    """``{"pix": [Pix, ...]}`` as in the BCB spec's ``WebhookPixBody``, signed by the PSP
    (``X-Razao-Signature: sha256=<hex HMAC-SHA256 of the body>``, ``X-Psp-Id``). Answered once stored; a
    notification repeated (at-least-once delivery) is stored once per endToEndId and credits nothing twice."""
    accepted = await ingest(pix, psp, {k.lower(): v for k, v in request.headers.items()}, await request.body())
    return json_response(accepted, status=202)


class WebhookFastPath:
    """Serves ``POST /v1/webhooks/psp/<psp>/pix`` as plain ASGI; everything else goes on to the app (see the module
    docstring). Same answers as the FastAPI route: 202, or a problem from the error table."""

    def __init__(self, app: ASGIApp, context: ApiContext, metrics: ApiMetrics,
                 body_bytes_max: int = BODY_BYTES_MAX) -> None:
        self.app = app
        self.context = context
        self.metrics = metrics
        self.body_bytes_max = body_bytes_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(PREFIX) and path.endswith("/pix") and PSP_PATTERN.fullmatch(path[len(PREFIX):-4]):
                await self._serve(scope, receive, send, path[len(PREFIX):-4])
                return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, psp: str) -> None:
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        response = await self._answer(scope, receive, headers, psp)
        await response(scope, receive, send)
        self.metrics.requests.labels("POST", ROUTE_TEMPLATE, str(response.status_code)).inc()
        self.metrics.latency.labels("POST", ROUTE_TEMPLATE).observe(time.perf_counter() - started)

    async def _answer(self, scope: Scope, receive: Receive, headers: dict[str, str], psp: str) -> Response:
        path = str(scope["path"])
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.body_bytes_max):
            code = "API_BODY_TOO_LARGE" if declared.isdigit() else "API_VALIDATION_FAILED"
            return problem_response(code, f"the body must be at most {self.body_bytes_max} bytes of JSON", path)
        body = await _read_body(receive, self.body_bytes_max)
        if body is None:
            return problem_response("API_BODY_TOO_LARGE", f"the body must be at most {self.body_bytes_max} bytes",
                                    path)
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return problem_response("API_UNSUPPORTED_MEDIA_TYPE", "the body must be application/json", path)
        pix = self.context.pix
        if pix is None or pix.ledger is None:
            return problem_response("API_NOT_READY", "PIX is not running yet", path)
        try:
            accepted = await ingest(pix, psp, headers, body)
        except ApiError as exc:
            return problem_response(exc.code, exc.detail, path, violations=exc.violations, headers=exc.headers,
                                    extra=exc.extra)
        except InvalidPixPayload as exc:
            violations = [{"field": v.path or "body", "message": v.message} for v in exc.violations]
            return problem_response(exc.code, exc.detail, path, violations=violations,
                                    extra=ledger_context(exc.context))
        except ledger_errors.LedgerError as exc:
            return problem_response(exc.code, exc.detail, path, extra=ledger_context(exc.context))
        return json_response(accepted, status=202)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)

