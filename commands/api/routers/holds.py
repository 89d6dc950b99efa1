"""Holds (two-phase transfers): reserve, then post in full or in part, or void."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body
from starlette.responses import Response

from commands.api.deps import IdempotencyKey, Ledger, Mover
from commands.api.models import HoldIn, HoldPostIn, HoldVoidIn, TransferOut
from commands.api.routers.common import WRITE_PROBLEMS, json_response, ledger_key, transfer_out
from ledger.model import CreateTransfer, TransferResult
from ledger.money import parse_amount

router = APIRouter(prefix="/v1/holds", tags=["holds"])


@router.post("", status_code=201, response_model=TransferOut, responses=WRITE_PROBLEMS,
             summary="Reserve an amount (a pending transfer)")
async def create_hold(body: HoldIn, principal: Mover, key: IdempotencyKey, ledger: Ledger) -> Response:
    """The amount leaves the debit account's available balance until the hold is posted, voided or times out
    (``timeout_s``; 0 = never). The hold's ``id`` is what post and void name."""
    command = CreateTransfer(ledger_key(principal, key), body.debit_account_id, body.credit_account_id,
                             parse_amount(body.valor), kind="pending", timeout_s=body.timeout_s,
                             code=int(body.code), reference=body.reference)
    result: TransferResult = await ledger.execute(command)
    return json_response(transfer_out(result), status=201, replayed=result.replayed)


@router.post("/{hold_id}/post", status_code=201, response_model=TransferOut, responses=WRITE_PROBLEMS,
             summary="Settle a hold, in full or in part")
async def post_hold(hold_id: UUID, principal: Mover, key: IdempotencyKey, ledger: Ledger,
                    body: Annotated[HoldPostIn | None, Body()] = None) -> Response:
    """Moves ``valor`` (the whole hold when omitted) and releases the rest."""
    body = body or HoldPostIn()
    amount = parse_amount(body.valor) if body.valor is not None else None
    command = CreateTransfer(ledger_key(principal, key), None, None, amount, kind="post_pending",
                             pending_id=hold_id, reference=body.reference)
    result: TransferResult = await ledger.execute(command)
    return json_response(transfer_out(result), status=201, replayed=result.replayed)


@router.post("/{hold_id}/void", status_code=201, response_model=TransferOut, responses=WRITE_PROBLEMS,
             summary="Release a hold without moving money")
async def void_hold(hold_id: UUID, principal: Mover, key: IdempotencyKey, ledger: Ledger,
                    body: Annotated[HoldVoidIn | None, Body()] = None) -> Response:
    body = body or HoldVoidIn()
    command = CreateTransfer(ledger_key(principal, key), None, None, None, kind="void_pending", pending_id=hold_id,
                             reference=body.reference)
    result: TransferResult = await ledger.execute(command)
    return json_response(transfer_out(result), status=201, replayed=result.replayed)
