"""Transfers, linked batches and bulk transfers: money moving between accounts, with the ledger's semantics and
errors."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from commands.api.auth import Principal
from commands.api.deps import Context, IdempotencyKey, Ledger, Mover, Payer
from commands.api.errors import ApiError, api_field, ledger_context, problem_body
from commands.api.gateway import LedgerGateway
from commands.api.models import BatchIn, BatchOut, BulkIn, BulkItemOut, BulkOut, TransferIn, TransferOut
from commands.api.routers.common import (
    WALLET_CODES,
    WRITE_PROBLEMS,
    account_not_found,
    json_response,
    ledger_key,
    transfer_out,
)
from ledger import errors as ledger_errors
from ledger.chart import TransferCode
from ledger.model import CreateLinkedTransfers, CreateTransfer, CreateTransfers, TransferResult
from ledger.money import parse_amount
from ledger.parties import wallet_id_for_party

router = APIRouter(tags=["transfers"])


def _command(principal: Principal, key: str, body: TransferIn, index: int | None = None) -> CreateTransfer:
    return CreateTransfer(ledger_key(principal, key, index), body.debit_account_id, body.credit_account_id,
                          parse_amount(body.valor), code=int(body.code), reference=body.reference)


async def check_customer_transfer(ledger: LedgerGateway, principal: Principal, body: TransferIn) -> None:
    """A customer pays only from their own wallet, only to another customer's wallet, only as code 1.

    Any other debit or credit account answers exactly like a missing one (no existence leak). Account codes and
    owners never change, so this check cannot go stale before the ledger decides.
    """
    own_wallet = wallet_id_for_party(principal.party_id)
    if body.debit_account_id != own_wallet:
        raise account_not_found(body.debit_account_id)
    if body.code != TransferCode.INTERNAL:
        raise ApiError("AUTH_FORBIDDEN", "customers may only make internal transfers (code 1)")
    if body.credit_account_id == own_wallet:
        return  # the ledger refuses it with LEDGER_ACCOUNTS_MUST_BE_DIFFERENT
    credit = (await ledger.accounts(body.credit_account_id)).get(body.credit_account_id)
    if credit is None or credit.code not in WALLET_CODES:
        raise account_not_found(body.credit_account_id)


@router.post("/v1/transfers", status_code=201, response_model=TransferOut, responses=WRITE_PROBLEMS,
             summary="Move money from one account to another")
async def create_transfer(body: TransferIn, principal: Payer, key: IdempotencyKey, ledger: Ledger) -> Response:
    """Operators and services move money between any accounts; investors and borrowers only from their own
    wallet to another customer's wallet. A refused transfer records nothing: the same key may be retried."""
    if principal.is_customer:
        await check_customer_transfer(ledger, principal, body)
    result: TransferResult = await ledger.execute(_command(principal, key, body))
    return json_response(transfer_out(result), status=201, replayed=result.replayed)


@router.post("/v1/transfer-batches", status_code=201, response_model=BatchOut, responses=WRITE_PROBLEMS,
             summary="Commit linked transfers: all or none")
async def create_batch(body: BatchIn, principal: Mover, key: IdempotencyKey, ledger: Ledger, context: Context,
                       ) -> Response:
    """Transfers committed together, in order (each sees the ones before it), or not at all. Member ``i`` is
    stored under the key ``<Idempotency-Key>:i``. A refusal (422 ``LEDGER_LINKED_BATCH_FAILED``) lists the
    result of every member in ``results``. Each member counts against the caller's money rate limit."""
    command = CreateLinkedTransfers(tuple(_command(principal, key, t, i) for i, t in enumerate(body.transfers)))
    await context.limiter.charge(principal, len(body.transfers) - 1)
    try:
        results: list[TransferResult] = await ledger.execute(command)
    except ledger_errors.IdempotencyConflict as exc:
        raise _batch_conflict(exc) from None
    outs = [transfer_out(r) for r in results]
    return json_response(BatchOut(transfers=outs, position=max(o.position for o in outs)), status=201,
                         replayed=all(r.replayed for r in results))


@router.post("/v1/bulk-transfers", status_code=200, response_model=BulkOut, responses=WRITE_PROBLEMS,
             summary="Commit independent transfers: each on its own")
async def create_bulk(body: BulkIn, principal: Mover, key: IdempotencyKey, ledger: Ledger, *, request: Request,
                      context: Context) -> Response:
    """Many transfers in one request, each decided on its own and in order (each sees the ones before it), as
    TigerBeetle's ``create_transfers``: one refusal never affects the others. Member ``i`` is stored under the key
    ``<Idempotency-Key>:i``, so retrying the request replays what was committed and decides again what was
    refused. The answer is 200 with one result per transfer: ``status`` 201 and the ``transfer``, or the status
    and ``problem`` the transfer would have got alone. Sending many transfers per request costs the ledger far
    less per transfer than one request each (docs/benchmarks.md). Each transfer counts against the caller's money
    rate limit; a request over it is refused whole (429), and nothing of it is decided."""
    command = CreateTransfers(tuple(_command(principal, key, t, i) for i, t in enumerate(body.transfers)))
    await context.limiter.charge(principal, len(body.transfers) - 1)
    outcomes: list[TransferResult | ledger_errors.LedgerError] = await ledger.execute(command)
    results = [_bulk_item(i, outcome, request.url.path) for i, outcome in enumerate(outcomes)]
    committed = [r.transfer for r in results if r.transfer is not None]
    out = BulkOut(results=results, committed=len(committed), refused=len(results) - len(committed),
                  position=max((t.position for t in committed), default=None))
    return json_response(out, status=200)


def _bulk_item(index: int, outcome: TransferResult | ledger_errors.LedgerError, instance: str) -> BulkItemOut:
    if not isinstance(outcome, ledger_errors.LedgerError):
        return BulkItemOut(index=index, status=201, replayed=outcome.replayed, transfer=transfer_out(outcome))
    extra = ledger_context(outcome.context)
    if isinstance(outcome, ledger_errors.IdempotencyConflict):
        extra.pop("idempotency_key", None)
        extra["field"] = f"transfers[{index}].{api_field(str(outcome.context.get('field', 'payload')))}"
    problem = problem_body(outcome.code, outcome.detail, instance, extra=extra)
    return BulkItemOut(index=index, status=problem["status"], problem=problem)


def _batch_conflict(exc: ledger_errors.IdempotencyConflict) -> ledger_errors.IdempotencyConflict:
    """Names the member that differs (``transfers[2].valor``), or the batch itself when its shape changed."""
    member_key = str(exc.context.get("key", ""))
    field = str(exc.context.get("field", "payload"))
    index = member_key.rpartition(":")[2]
    named = "transfers" if field == "key" or not index.isdigit() else f"transfers[{index}].{api_field(field)}"
    return ledger_errors.IdempotencyConflict(exc.detail, field=named)
