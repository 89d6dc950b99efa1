"""PIX for customers and staff: deposits, withdrawals, received Pix and their devoluções, reconciliation.

Deposits and withdrawals follow the API's idempotency rules (ADR 0006): the ledger key is ``<sub>:<key>``; the
deposit's txid and the withdrawal's payment id are derived from it, so a retry reuses the same charge and can never
send a second payment. Responses of writes are rendered from the ledger's record as it was written, so a replay is
byte-identical; the ``GET`` routes show how things stand now. Customers see and act on their own wallet only;
anything else is answered like a missing object.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path
from starlette.responses import Response

from commands.api.auth import Principal
from commands.api.deps import (
    Depositor,
    IdempotencyKey,
    Ledger,
    Pix,
    PixReader,
    ReceivedReader,
    Reconciler,
    Refunder,
    Withdrawer,
)
from commands.api.errors import ApiError
from commands.api.gateway import LedgerGateway
from commands.api.pix_models import (
    END_TO_END_ID_PATTERN,
    AssignIn,
    AssignOut,
    DepositCreated,
    DepositIn,
    DepositOut,
    PspReportOut,
    ReceivedOut,
    ReconciliationItemsOut,
    ReconciliationRunIn,
    ReconciliationRunOut,
    RefundCreated,
    RefundIn,
    RefundOut,
    WithdrawalCreated,
    WithdrawalIn,
    WithdrawalOut,
)
from commands.api.routers.accounts import visible_account
from commands.api.routers.common import READ_PROBLEMS, WRITE_PROBLEMS, json_response, ledger_key, problems
from commands.pix_reconcile import reconcile
from ledger.money import format_amount, parse_amount
from ledger.parties import wallet_id_for_party
from ledger.pix import parse_pix_key
from ledger.pix_flows import (
    AssignReceivedPix,
    DepositResult,
    PixSnapshot,
    ReadPix,
    ReceivedPixNotFound,
    ReceivedResult,
    RefundResult,
    RequestDeposit,
    RequestRefund,
    RequestWithdrawal,
    WithdrawalResult,
    deposit_txid,
)
from ledger.pix_state import Deposit, Received, Refund, Withdrawal, deposit_id_for_key

router = APIRouter(tags=["pix"])

PSP_PROBLEMS = {**WRITE_PROBLEMS, **problems(503)}
PSP_PROBLEMS[502] = {"model": WRITE_PROBLEMS[400]["model"], "description": "The PSP refused or misbehaved"}
EndToEndId = Annotated[str, Path(pattern=END_TO_END_ID_PATTERN, description="The Pix's endToEndId.")]
#: What the charge asks the payer (``solicitacaoPagador``).
PAYER_REQUEST = "Depósito na carteira Razão"


async def _wallet_for(ledger: LedgerGateway, principal: Principal, named: UUID | None) -> UUID:
    """A customer's own wallet (naming another answers 404); staff must name one, which must exist."""
    if principal.is_customer:
        own = wallet_id_for_party(principal.party_id)
        # Another wallet answers like a missing one; the own one must exist (no charge for a wallet that is not).
        await visible_account(ledger, principal, named if named is not None else own, wallets_only=True)
        return own
    if named is None:
        raise ApiError("API_VALIDATION_FAILED", "staff must name the wallet",
                       violations=[{"field": "wallet_id", "message": "required for staff"}])
    await visible_account(ledger, principal, named, wallets_only=True)
    return named


def _not_found(what: str, identifier: object) -> ApiError:
    return ApiError("RESOURCE_NOT_FOUND", f"{what} {identifier} does not exist")


def _may_see(principal: Principal, wallet_id: UUID) -> bool:
    return not principal.is_customer or wallet_id == wallet_id_for_party(principal.party_id)


# ---- deposits ---------------------------------------------------------------------------------------------------


def deposit_created(deposit: Deposit) -> DepositCreated:
    assert deposit.position is not None
    return DepositCreated(
        id=deposit.id, wallet_id=deposit.wallet_id, valor=format_amount(deposit.amount_centavos), txid=deposit.txid,
        psp=deposit.psp, pix_copia_e_cola=deposit.pix_copia_e_cola, location=deposit.location,
        created_at=deposit.charge_created_at,
        expires_at=deposit.charge_created_at + timedelta(seconds=deposit.expires_in_s), position=deposit.position)


@router.post("/v1/deposits", status_code=201, response_model=DepositCreated, responses=PSP_PROBLEMS,
             summary="Ask to deposit by PIX: a charge (cob) and its BR Code to pay")
async def create_deposit(body: DepositIn, principal: Depositor, key: IdempotencyKey, ledger: Ledger,
                         pix: Pix) -> Response:
    """Creates a charge with a txid derived from the Idempotency-Key at the first PSP whose breaker admits work,
    records the deposit, and returns the BR Code (``pix_copia_e_cola``). A Pix paying it (same txid, same PSP,
    exactly ``valor``) is credited to the wallet once the PSP confirms it; any other Pix goes to suspense."""
    wallet_id = await _wallet_for(ledger, principal, body.wallet_id)
    namespaced = ledger_key(principal, key)
    amount = parse_amount(body.valor)
    expires_in_s = body.expires_in_s or pix.options.deposit_expiry_s
    deposit_id = deposit_id_for_key(namespaced)
    snapshot: PixSnapshot = await ledger.execute(ReadPix(deposits=(deposit_id,)))
    existing = snapshot.deposits.get(deposit_id)
    if existing is not None:  # a retry: the ledger replays it (or names the field that differs), no new charge
        command = RequestDeposit(namespaced, wallet_id, amount, expires_in_s, existing.txid, existing.psp,
                                 existing.pix_copia_e_cola, existing.location, existing.charge_created_at)
    else:
        txid = deposit_txid(namespaced)
        charge = await asyncio.to_thread(pix.gateway.create_charge, txid, amount, expires_in_s=expires_in_s,
                                         payer_request=PAYER_REQUEST)
        command = RequestDeposit(namespaced, wallet_id, amount, expires_in_s, txid, charge.psp,
                                 charge.pix_copia_e_cola, charge.location, charge.created_at)
    result: DepositResult = await ledger.execute(command)
    return json_response(deposit_created(result.deposit), status=201, replayed=result.replayed,
                         location=f"/v1/deposits/{result.deposit.id}")


@router.get("/v1/deposits/{deposit_id}", response_model=DepositOut, responses=READ_PROBLEMS,
            summary="A deposit and whether it was paid")
async def read_deposit(deposit_id: UUID, principal: PixReader, ledger: Ledger) -> Response:
    snapshot: PixSnapshot = await ledger.execute(ReadPix(deposits=(deposit_id,)))
    deposit = snapshot.deposits.get(deposit_id)
    if deposit is None or not _may_see(principal, deposit.wallet_id):
        raise _not_found("deposit", deposit_id)
    created = deposit_created(deposit)
    status: Literal["ACTIVE", "PAID", "EXPIRED"]
    if deposit.paid_by is not None:
        status = "PAID"
    elif datetime.now(UTC) > created.expires_at:
        status = "EXPIRED"
    else:
        status = "ACTIVE"
    out = DepositOut(**created.model_dump(), status=status, end_to_end_id=deposit.paid_by)
    return json_response(out, status=200)


# ---- withdrawals -------------------------------------------------------------------------------------------------


def _withdrawal_fields(w: Withdrawal) -> dict[str, object]:
    return {"id": w.id, "wallet_id": w.wallet_id, "valor": format_amount(w.amount_centavos),
            "pix_key_type": w.pix_key_type, "pix_key": w.pix_key, "payment_id": w.payment_id, "hold_id": w.hold_id,
            "requested_at": w.requested_at}


@router.post("/v1/withdrawals", status_code=202, response_model=WithdrawalCreated, responses=WRITE_PROBLEMS,
             summary="Withdraw by PIX to a Pix key")
async def create_withdrawal(body: WithdrawalIn, principal: Withdrawer, key: IdempotencyKey, ledger: Ledger,
                            pix: Pix) -> Response:
    """Holds ``valor`` on the wallet and sends it to the key (validated as in DICT: CPF/CNPJ check digits, e-mail,
    +phone, EVP) through a PSP, under a payment id derived from the Idempotency-Key. The hold is posted when the
    PSP confirms, released when the payment definitely failed; an unknown outcome keeps it until the PSP says.
    Answered 202: ``GET /v1/withdrawals/{id}`` follows it."""
    wallet_id = await _wallet_for(ledger, principal, body.wallet_id)
    pix_key = parse_pix_key(body.pix_key, body.pix_key_type)
    command = RequestWithdrawal(ledger_key(principal, key), wallet_id, parse_amount(body.valor), pix_key.value,
                                str(pix_key.type))
    result: WithdrawalResult = await ledger.execute(command)
    withdrawal = result.withdrawal
    if pix.payouts is not None:
        pix.payouts.follow_withdrawal(withdrawal.id)
    assert withdrawal.position is not None
    out = WithdrawalCreated(**_withdrawal_fields(withdrawal), status="PROCESSING",  # type: ignore[arg-type]
                            position=withdrawal.position)
    return json_response(out, status=202, replayed=result.replayed, location=f"/v1/withdrawals/{withdrawal.id}")


@router.get("/v1/withdrawals/{withdrawal_id}", response_model=WithdrawalOut, responses=READ_PROBLEMS,
            summary="A withdrawal and how it stands")
async def read_withdrawal(withdrawal_id: UUID, principal: PixReader, ledger: Ledger) -> Response:
    snapshot: PixSnapshot = await ledger.execute(ReadPix(withdrawals=(withdrawal_id,)))
    w = snapshot.withdrawals.get(withdrawal_id)
    if w is None or not _may_see(principal, w.wallet_id):
        raise _not_found("withdrawal", withdrawal_id)
    out = WithdrawalOut(**_withdrawal_fields(w), status=w.status, psp=w.psp,  # type: ignore[arg-type]
                        end_to_end_id=w.end_to_end_id, reason=w.reason, settled_at=w.settled_at)
    return json_response(out, status=200)


# ---- received Pix, devoluções, reconciliation ---------------------------------------------------------------------


def refund_out(r: Refund) -> RefundOut:
    return RefundOut(id=r.id, refund_id=r.refund_id, end_to_end_id=r.end_to_end_id,
                     valor=format_amount(r.amount_centavos), status=r.status,  # type: ignore[arg-type]
                     return_id=r.return_id, reason=r.reason, hold_id=r.hold_id, source_account_id=r.source_account_id,
                     descricao=r.description, requested_by=r.requested_by, requested_at=r.requested_at,
                     settled_at=r.settled_at)


def received_out(received: Received, snapshot: PixSnapshot) -> ReceivedOut:
    refunds = [snapshot.refunds[i] for i in received.refund_ids if i in snapshot.refunds]
    committed = sum(r.amount_centavos for r in refunds if r.status != "NAO_REALIZADO")
    return ReceivedOut(
        end_to_end_id=received.end_to_end_id, psp=received.psp, txid=received.txid,
        valor=format_amount(received.amount_centavos), horario=received.processed_at,
        credited_at=received.credited_at, source=received.source,  # type: ignore[arg-type]
        credit_account_id=received.credit_account_id, deposit_id=received.deposit_id,
        suspense_reason=received.suspense_reason, reconciliation=received.item,  # type: ignore[arg-type]
        refundable=format_amount(received.amount_centavos - committed), devolucoes=[refund_out(r) for r in refunds])


@router.get("/v1/pix/{end_to_end_id}", response_model=ReceivedOut, responses=READ_PROBLEMS,
            summary="A received Pix: where it was credited, its devoluções")
async def read_received(end_to_end_id: EndToEndId, _principal: ReceivedReader, ledger: Ledger) -> Response:
    snapshot: PixSnapshot = await ledger.execute(ReadPix(received=(end_to_end_id,)))
    received = snapshot.received.get(end_to_end_id)
    if received is None:
        raise ReceivedPixNotFound(f"no Pix {end_to_end_id} was received", end_to_end_id=end_to_end_id)
    return json_response(received_out(received, snapshot), status=200)


@router.post("/v1/pix/{end_to_end_id}/refunds", status_code=202, response_model=RefundCreated,
             responses=WRITE_PROBLEMS, summary="Return a received Pix, in full or in part (devolução)")
async def request_refund(end_to_end_id: EndToEndId, body: RefundIn, principal: Refunder,  # noqa: PLR0917
                         key: IdempotencyKey, ledger: Ledger, pix: Pix) -> Response:
    """Within 90 days of the Pix, never more than what is left of it (devoluções not refused count). The amount
    is held on the account the Pix was credited to (the wallet, or suspense) and the devolução is asked of the PSP
    that received it, then followed: ``DEVOLVIDO`` posts the hold, ``NAO_REALIZADO`` releases it."""
    command = RequestRefund(ledger_key(principal, key), end_to_end_id, parse_amount(body.valor), body.descricao,
                            principal.sub)
    result: RefundResult = await ledger.execute(command)
    refund = result.refund
    if pix.payouts is not None:
        pix.payouts.follow_refund(refund.id)
    assert refund.position is not None
    out = RefundCreated(id=refund.id, refund_id=refund.refund_id, end_to_end_id=refund.end_to_end_id,
                        valor=format_amount(refund.amount_centavos), status="EM_PROCESSAMENTO", hold_id=refund.hold_id,
                        source_account_id=refund.source_account_id, requested_at=refund.requested_at,
                        position=refund.position)
    return json_response(out, status=202, replayed=result.replayed)


@router.post("/v1/pix/{end_to_end_id}/assign", status_code=201, response_model=AssignOut, responses=WRITE_PROBLEMS,
             summary="Move a Pix parked in suspense to a wallet (closes its reconciliation item)")
async def assign_received(end_to_end_id: EndToEndId, body: AssignIn, principal: Refunder, key: IdempotencyKey,
                          ledger: Ledger) -> Response:
    await visible_account(ledger, principal, body.wallet_id, wallets_only=True)
    result: ReceivedResult = await ledger.execute(AssignReceivedPix(ledger_key(principal, key), end_to_end_id,
                                                                    body.wallet_id))
    received = result.received
    assert received.assigned_centavos is not None
    out = AssignOut(end_to_end_id=received.end_to_end_id, wallet_id=received.credit_account_id,
                    valor=format_amount(received.assigned_centavos), reconciliation="assigned")
    return json_response(out, status=201, replayed=result.replayed)


@router.get("/v1/reconciliation/items", response_model=ReconciliationItemsOut, responses=READ_PROBLEMS,
            summary="Received Pix parked in suspense, waiting for a person")
async def reconciliation_items(_principal: ReceivedReader, ledger: Ledger) -> Response:
    snapshot: PixSnapshot = await ledger.execute(ReadPix(open_items=True))
    items = sorted(snapshot.received.values(), key=lambda r: r.credited_at)
    return json_response(ReconciliationItemsOut(items=[received_out(r, snapshot) for r in items]), status=200)


@router.post("/v1/reconciliation/runs", status_code=200, response_model=ReconciliationRunOut,
             responses=problems(400, 401, 403, 429, 503),
             summary="Compare the PSPs' received Pix with the ledger and credit what is missing")
async def run_reconciliation(body: ReconciliationRunIn, _principal: Reconciler, ledger: Ledger,
                             pix: Pix) -> Response:
    """Idempotent by nature (a Pix is credited once whatever runs), so no Idempotency-Key is needed."""
    report = await reconcile(ledger, pix.gateway, pix.psps, body.inicio, body.fim, pix.metrics)
    out = ReconciliationRunOut(inicio=report.start, fim=report.end, repaired=report.repaired,
                               psps={name: PspReportOut(**r.to_json()) for name, r in report.psps.items()})
    return json_response(out, status=200)
