"""Helpers shared by the routers: rendering ledger results deterministically, and not-found answers."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel
from starlette.responses import Response

from commands.api.auth import Principal
from commands.api.errors import client_key
from commands.api.models import TRANSFER_KIND_NAMES, Problem, TransferOut
from ledger import errors as ledger_errors
from ledger.chart import AccountCode
from ledger.model import TransferResult
from ledger.money import format_amount

REPLAYED_HEADER = "Idempotent-Replayed"
WALLET_CODES = frozenset({int(AccountCode.INVESTOR_WALLET), int(AccountCode.BORROWER_WALLET)})


def ledger_key(principal: Principal, key: str, index: int | None = None) -> str:
    """The ledger's key for a client's key: namespaced by principal (and by position in a batch)."""
    return f"{principal.sub}:{key}" if index is None else f"{principal.sub}:{key}:{index}"


def json_response(model: BaseModel, *, status: int, replayed: bool = False, location: str | None = None) -> Response:
    """The response for a write: rendered only from the ledger's result, so a replay is byte-identical."""
    headers = {}
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    if location is not None:
        headers["Location"] = location
    return Response(model.model_dump_json().encode(), status_code=status, headers=headers,
                    media_type="application/json")


def transfer_out(result: TransferResult) -> TransferOut:
    assert result.position is not None, "a committed transfer always has its log position"
    return TransferOut(
        id=result.id, idempotency_key=client_key(result.key), kind=TRANSFER_KIND_NAMES[result.kind],  # type: ignore[arg-type]
        debit_account_id=result.debit_account_id, credit_account_id=result.credit_account_id,
        valor=format_amount(result.amount_centavos), hold_id=result.pending_id, timestamp=result.timestamp,
        position=result.position,
    )


def account_not_found(account_id: UUID) -> ledger_errors.AccountNotFound:
    """Exactly what the ledger says for an account that does not exist; also said for one the caller may not
    see, so that existence never leaks (OWASP API1)."""
    return ledger_errors.AccountNotFound(f"account {account_id} does not exist", account_id=str(account_id))


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can give (media type fixed in ``openapi``)."""
    descriptions = {
        400: "Invalid request (see violations) or missing/invalid Idempotency-Key", 401: "Missing or invalid token",
        403: "The role may not do this", 404: "Not found (also for objects the caller may not see)",
        409: "Conflict: idempotency key reused with another body, duplicate, or hold already settled",
        413: "Body too large", 415: "Body is not JSON", 422: "Refused by the ledger (e.g. insufficient funds)",
        429: "Rate limited (Retry-After)", 503: "Ledger unavailable or overloaded (Retry-After)",
    }
    return {status: {"model": Problem, "description": descriptions[status]} for status in statuses}


READ_PROBLEMS = problems(400, 401, 403, 404, 429, 503)
WRITE_PROBLEMS = problems(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
