"""How read rows look on the wire: amounts as PIX-style strings (``"110.00"``), ids and times as text, and the
ETag / If-None-Match handshake every GET supports."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from fastapi import Request
from starlette.responses import Response

from projections.api.queries import Row, signed

CURRENCY_BY_LEDGER = {986: "BRL"}
POSITION_HEADER = "Razao-Position"


def valor(centavos: int) -> str:
    """Integer centavos as the API's decimal string; never a float."""
    sign = "-" if centavos < 0 else ""
    whole, cents = divmod(abs(centavos), 100)
    return f"{sign}{whole}.{cents:02d}"


def _text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return None if value is None else str(value)


def balances_of(row: Row) -> dict[str, Any]:
    s = signed(row["debit_normal"], row["debits_pending"], row["debits_posted"], row["credits_pending"],
               row["credits_posted"])
    return {"posted": valor(s.posted), "pending": valor(s.pending), "available": valor(s.available),
            "debits_pending_centavos": row["debits_pending"], "debits_posted_centavos": row["debits_posted"],
            "credits_pending_centavos": row["credits_pending"], "credits_posted_centavos": row["credits_posted"]}


def account_body(row: Row) -> dict[str, Any]:
    return {
        "account_id": str(row["account_id"]), "owner_id": _text(row["owner_id"]), "code": row["code"],
        "ledger": row["ledger"], "currency": CURRENCY_BY_LEDGER.get(row["ledger"]), "reference": row["reference"],
        "normal_side": "debit" if row["debit_normal"] else "credit", "closed": row["closed_at"] is not None,
        "opened_at": _text(row["opened_at"]), "balance": {**balances_of(row), "position": row["balance_position"],
                                                          "changed_at": _text(row["changed_at"])},
    }


def entry_body(row: Row, debit_normal: bool) -> dict[str, Any]:
    after = signed(debit_normal, row["debits_pending"], row["debits_posted"], row["credits_pending"],
                   row["credits_posted"])
    return {
        "position": row["position"], "recorded_at": _text(row["recorded_at"]),
        "transfer_id": str(row["transfer_id"]), "kind": row["kind"], "direction": row["direction"],
        "valor": valor(row["amount_centavos"]), "code": row.get("code"), "reference": row.get("reference"),
        "counterparty_account_id": str(row["counterparty_account_id"]),
        "balance_after": {"posted": valor(after.posted), "pending": valor(after.pending),
                          "available": valor(after.available)},
    }


def transfer_body(row: Row) -> dict[str, Any]:
    requested = row["requested_amount_centavos"]
    return {
        "transfer_id": str(row["transfer_id"]), "key": row["key"], "kind": row["kind"], "status": row["status"],
        "code": row["code"], "ledger": row["ledger"], "debit_account_id": str(row["debit_account_id"]),
        "credit_account_id": str(row["credit_account_id"]), "valor": valor(row["amount_centavos"]),
        "requested_valor": None if requested is None else valor(requested),
        "pending_id": _text(row["pending_id"]), "timeout_s": row["timeout_s"], "reference": row["reference"],
        "linked_batch_id": _text(row["linked_batch_id"]), "resolved_by": _text(row["resolved_by"]),
        "resolved_at": _text(row["resolved_at"]), "recorded_at": _text(row["recorded_at"]),
        "position": row["position"],
    }


def hold_body(row: Row) -> dict[str, Any]:
    return {
        "transfer_id": str(row["transfer_id"]), "key": row["key"], "code": row["code"],
        "reference": row["reference"], "debit_account_id": str(row["debit_account_id"]),
        "credit_account_id": str(row["credit_account_id"]), "valor": valor(row["amount_centavos"]),
        "expires_at": _text(row["expires_at"]), "created_at": _text(row["created_at"]), "position": row["position"],
    }


def respond(request: Request, body: dict[str, Any], position: int) -> Response:
    """JSON with a strong ETag over the body; ``If-None-Match`` on the same body answers 304 without it."""
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    etag = f'"{hashlib.sha256(payload).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", POSITION_HEADER: str(position)}
    match = request.headers.get("if-none-match")
    if match and etag in {tag.strip().removeprefix("W/") for tag in match.split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(payload, media_type="application/json", headers=headers)
