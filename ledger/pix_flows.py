"""PIX flows in the ledger (ADR 0009): deposits, received Pix, withdrawals, devoluções, reconciliation items.

Each flow is a ledger command, decided by the single writer in its group commit like a transfer, and committed as
the ``TransferCommitted`` events that move its money plus one PIX event that records the fact (``ledger.events``,
"PIX events"), applied by ``LedgerState.apply`` (``ledger.pix_state``). Pure: no I/O. What talks to PSPs (creating
charges, confirming received Pix, sending payments, asking for devoluções) is outside the ledger; it calls these
commands before and after, with what the PSP answered.

- ``RequestDeposit``: records a deposit intent for a charge already created at a PSP (its txid is derived from the
  deposit id, so from the idempotency key).
- ``CreditReceivedPix``: a Pix confirmed with its PSP, credited exactly once per endToEndId: PIX settlement → the
  wallet of the deposit with the same txid, PSP and amount, or → suspense with a reconciliation item.
- ``RequestWithdrawal`` / ``SettleWithdrawal``: a hold wallet → settlement, then posted (the PSP confirmed) or
  voided (definitely not paid).
- ``RequestRefund`` / ``SettleRefund``: a devolução of a received Pix (≤ what is left of it, within 90 days): a hold
  on the account it was credited to, then posted (``DEVOLVIDO``) or voided (``NAO_REALIZADO``).
- ``AssignReceivedPix``: a Pix parked in suspense is moved to a wallet by an operator; its item is resolved.

Transfer keys made here start with ``pix/`` (``pix/in:<e2eid>``): an API key is ``<sub>:<key>`` and a subject holds
no ``/``, so no client key can ever collide with them.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal, TypeVar
from uuid import UUID

from ledger import errors
from ledger.chart import AccountCode, TransferCode
from ledger.command_types import CreateTransfer
from ledger.events import (
    DepositRequested,
    LedgerEvent,
    PixReceived,
    PixRefundConcluded,
    PixRefundRequested,
    ReconciliationItemOpened,
    ReconciliationItemResolved,
    WithdrawalCompleted,
    WithdrawalFailed,
    WithdrawalRequested,
)
from ledger.limits import IDEMPOTENCY_KEY_LENGTH_MAX
from ledger.model import Decider, LedgerState, chain_next
from ledger.money import check_amount
from ledger.pix import (
    PIX_REFUND_WINDOW,
    PIX_TEXT_LENGTH_MAX,
    PIX_VALOR_CENTAVOS_MAX,
    RefundExceedsOriginal,
    RefundWindowClosed,
    format_horario,
    format_valor,
    is_valid_end_to_end_id,
    is_valid_received_txid,
    is_valid_txid,
    parse_pix_key,
    pix_id_for,
)
from ledger.pix_state import (
    ITEM_ASSIGNED,
    ITEM_OPEN,
    ITEM_REFUNDED,
    REFUND_IN_PROGRESS,
    REFUND_REFUSED,
    REFUND_RETURNED,
    SETTLEMENT_ACCOUNT_ID,
    SUSPENSE_ACCOUNT_ID,
    WITHDRAWAL_COMPLETED,
    WITHDRAWAL_FAILED,
    WITHDRAWAL_PROCESSING,
    Deposit,
    Received,
    Refund,
    Withdrawal,
    deposit_id_for_key,
    received_id_for,
    reconciliation_id_for,
    refund_id_for_key,
    withdrawal_id_for_key,
)

# ---- limits ---------------------------------------------------------------------------------------------------

#: A PSP name as the gateway knows it (``primary``, ``secondary``).
PSP_NAME_LENGTH_MAX: Final = 32
#: A charge's lifetime, as the API accepts it (the BCB spec's ``calendario.expiracao`` is seconds, unbounded).
DEPOSIT_EXPIRY_S_MAX: Final = 30 * 24 * 3600
#: A BR Code and a charge location, as a PSP returns them (EMV payloads are at most 512 characters).
BR_CODE_LENGTH_MAX: Final = 512
LOCATION_LENGTH_MAX: Final = 200
#: Why a payment or a devolução failed, as stored.
REASON_LENGTH_MAX: Final = 200
#: Records one ``ReadPix`` of open work or open items returns.
READ_RECORDS_MAX: Final = 10_000

SUSPENSE_REASONS: Final = ("NO_TXID", "UNKNOWN_TXID", "PSP_MISMATCH", "TXID_ALREADY_PAID", "AMOUNT_MISMATCH",
                           "WALLET_CLOSED")
RECEIVED_SOURCES: Final = ("webhook", "reconciliation")
WALLET_CODES: Final = frozenset({int(AccountCode.INVESTOR_WALLET), int(AccountCode.BORROWER_WALLET)})

# ---- errors ---------------------------------------------------------------------------------------------------


class ReceivedPixNotFound(errors.LedgerError):
    """No Pix with this endToEndId was credited by the ledger."""

    code = "PIX_RECEIVED_NOT_FOUND"


class WithdrawalNotFound(errors.LedgerError):
    code = "PIX_WITHDRAWAL_NOT_FOUND"


class RefundNotFound(errors.LedgerError):
    code = "PIX_REFUND_NOT_FOUND"


class AlreadySettled(errors.LedgerError):
    """A withdrawal or devolução already ended, with another outcome than the one now reported."""

    code = "PIX_ALREADY_SETTLED"


class NotInSuspense(errors.LedgerError):
    """The received Pix is not parked in suspense with an open reconciliation item."""

    code = "PIX_NOT_IN_SUSPENSE"


class RefundInProgress(errors.LedgerError):
    """A devolução of this Pix has not ended yet: wait for it before assigning the rest."""

    code = "PIX_REFUND_IN_PROGRESS"


#: Every operating error of the PIX flows, by code (``ledger.pix.PIX_ERRORS`` holds the validation ones).
PIX_FLOW_ERRORS: Final[dict[str, type[errors.LedgerError]]] = {
    cls.code: cls
    for cls in (ReceivedPixNotFound, WithdrawalNotFound, RefundNotFound, AlreadySettled, NotInSuspense,
                RefundInProgress)
}

# ---- commands -------------------------------------------------------------------------------------------------


def _hash(*values: object) -> str:
    return hashlib.sha256("|".join(str(v) for v in values).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RequestDeposit:
    """Record a deposit intent for a charge created at ``psp``. Idempotent by ``key`` (wallet, amount and expiry
    are the request; the charge's details are what the PSP answered). ``txid`` must be ``deposit_txid(key)``."""

    key: str
    wallet_id: UUID
    amount_centavos: int
    expires_in_s: int
    txid: str
    psp: str
    pix_copia_e_cola: str
    location: str
    charge_created_at: datetime

    @property
    def deposit_id(self) -> UUID:
        return deposit_id_for_key(self.key)

    def payload_hash(self) -> str:
        return _hash("deposit", self.wallet_id, self.amount_centavos, self.expires_in_s)


def deposit_txid(key: str) -> str:
    """The txid of the charge of a deposit: derived from its key, so a retried request reuses the same charge."""
    return pix_id_for(deposit_id_for_key(key))


@dataclass(frozen=True, slots=True)
class CreditReceivedPix:
    """Credit a Pix that its PSP confirmed (``GET /pix/{e2eid}`` or its list). Idempotent by ``end_to_end_id``."""

    end_to_end_id: str
    psp: str
    amount_centavos: int
    processed_at: datetime
    txid: str | None
    source: Literal["webhook", "reconciliation"] = "webhook"

    @property
    def transfer_key(self) -> str:
        return f"pix/in:{self.end_to_end_id}"


@dataclass(frozen=True, slots=True)
class RequestWithdrawal:
    """Hold ``amount_centavos`` on ``wallet_id`` to send it to a Pix key. Idempotent by ``key``."""

    key: str
    wallet_id: UUID
    amount_centavos: int
    pix_key: str
    pix_key_type: str | None = None

    @property
    def withdrawal_id(self) -> UUID:
        return withdrawal_id_for_key(self.key)

    def payload_hash(self) -> str:
        key = parse_pix_key(self.pix_key, self.pix_key_type)
        return _hash("withdrawal", self.wallet_id, self.amount_centavos, key.type, key.value)


def payment_id_for(withdrawal_id: UUID) -> str:
    """The PSP's idempotency id (``idEnvio``) of a withdrawal's payment: stable, so it can never be paid twice."""
    return pix_id_for(withdrawal_id)


@dataclass(frozen=True, slots=True)
class SettleWithdrawal:
    """End a withdrawal with what its PSP said: ``CONFIRMED`` posts the hold, ``FAILED`` voids it. Idempotent."""

    withdrawal_id: UUID
    outcome: Literal["CONFIRMED", "FAILED"]
    psp: str
    end_to_end_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RequestRefund:
    """Hold ``amount_centavos`` of a received Pix for a devolução. Idempotent by ``key``."""

    key: str
    end_to_end_id: str
    amount_centavos: int
    description: str | None
    requested_by: str

    @property
    def refund_uuid(self) -> UUID:
        return refund_id_for_key(self.key)

    def payload_hash(self) -> str:
        return _hash("refund", self.end_to_end_id, self.amount_centavos, self.description)


@dataclass(frozen=True, slots=True)
class SettleRefund:
    """End a devolução with its final status at the PSP: ``DEVOLVIDO`` posts the hold, ``NAO_REALIZADO`` voids it."""

    refund_uuid: UUID
    status: Literal["DEVOLVIDO", "NAO_REALIZADO"]
    return_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AssignReceivedPix:
    """Move a Pix parked in suspense (what is left of it after devoluções) to a wallet and close its item."""

    key: str
    end_to_end_id: str
    wallet_id: UUID


PixCommand = (RequestDeposit | CreditReceivedPix | RequestWithdrawal | SettleWithdrawal | RequestRefund
              | SettleRefund | AssignReceivedPix)
PIX_COMMANDS: Final = (RequestDeposit, CreditReceivedPix, RequestWithdrawal, SettleWithdrawal, RequestRefund,
                       SettleRefund, AssignReceivedPix)


@dataclass(frozen=True, slots=True)
class ReadPix:
    """A consistent read of PIX records, served by the writer between batches. ``open_work`` adds every
    withdrawal and devolução still in progress; ``open_items`` every received Pix with an open reconciliation item
    (each at most ``READ_RECORDS_MAX``). A received Pix comes with its devoluções."""

    deposits: tuple[UUID, ...] = ()
    received: tuple[str, ...] = ()
    withdrawals: tuple[UUID, ...] = ()
    refunds: tuple[UUID, ...] = ()
    open_work: bool = False
    open_items: bool = False


@dataclass(frozen=True, slots=True)
class PixSnapshot:
    """Copies of PIX records (unknown ids are left out) and the log position they were read at."""

    deposits: dict[UUID, Deposit]
    received: dict[str, Received]
    withdrawals: dict[UUID, Withdrawal]
    refunds: dict[UUID, Refund]
    position: int


# ---- results --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DepositResult:
    deposit: Deposit
    replayed: bool


@dataclass(frozen=True, slots=True)
class ReceivedResult:
    received: Received
    replayed: bool


@dataclass(frozen=True, slots=True)
class WithdrawalResult:
    withdrawal: Withdrawal
    replayed: bool


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund: Refund
    replayed: bool


Builder = Callable[[dict[UUID, int]], Any]
T = TypeVar("T")
R = TypeVar("R", Deposit, Received, Withdrawal, Refund)

# ---- deciding ---------------------------------------------------------------------------------------------------


def read(state: LedgerState, query: ReadPix) -> PixSnapshot:
    pix = state.pix
    deposits = {i: replace(pix.deposits[i]) for i in query.deposits if i in pix.deposits}
    received = {e: replace(pix.received[e]) for e in query.received if e in pix.received}
    withdrawals = {i: replace(pix.withdrawals[i]) for i in query.withdrawals if i in pix.withdrawals}
    refunds = {i: replace(pix.refunds[i]) for i in query.refunds if i in pix.refunds}
    if query.open_work:
        for withdrawal in _first(pix.open_withdrawals()):
            withdrawals[withdrawal.id] = replace(withdrawal)
        for refund in _first(pix.open_refunds()):
            refunds[refund.id] = replace(refund)
    if query.open_items:
        for item in _first(pix.open_items()):
            received[item.end_to_end_id] = replace(item)
    for item in list(received.values()):
        for refund_id in item.refund_ids:
            refunds.setdefault(refund_id, replace(pix.refunds[refund_id]))
    return PixSnapshot(deposits, received, withdrawals, refunds, state.position)


def _first(records: Iterable[T]) -> list[T]:
    return list(itertools.islice(records, READ_RECORDS_MAX))


def replay(state: LedgerState, command: PixCommand) -> Any:
    """The original result when this command was already carried out with the same request; else ``None``.

    Raises ``IdempotencyConflict`` naming the differing field, or ``AlreadySettled``.
    """
    pix = state.pix
    if isinstance(command, RequestDeposit):
        deposit = pix.deposits.get(command.deposit_id)
        if deposit is None:
            return None
        if deposit.payload_hash != command.payload_hash():
            field = next((name for name, asked, have in (
                ("wallet_id", command.wallet_id, deposit.wallet_id),
                ("amount_centavos", command.amount_centavos, deposit.amount_centavos),
                ("expires_in_s", command.expires_in_s, deposit.expires_in_s)) if asked != have), "payload")
            raise errors.IdempotencyConflict(f"key {command.key!r} was already used for another deposit",
                                             field=field, key=command.key)
        return DepositResult(replace(deposit), True)
    if isinstance(command, CreditReceivedPix):
        received = pix.received.get(command.end_to_end_id)
        if received is None:
            return None
        for name, asked, have in (("psp", command.psp, received.psp),
                                  ("amount_centavos", command.amount_centavos, received.amount_centavos),
                                  ("txid", command.txid, received.txid)):
            if asked != have:
                raise errors.IdempotencyConflict(
                    f"Pix {command.end_to_end_id} was credited with another {name}", field=name,
                    end_to_end_id=command.end_to_end_id)
        return ReceivedResult(replace(received), True)
    if isinstance(command, RequestWithdrawal):
        withdrawal = pix.withdrawals.get(command.withdrawal_id)
        if withdrawal is None:
            return None
        if withdrawal.payload_hash != command.payload_hash():
            field = next((name for name, asked, have in (
                ("wallet_id", command.wallet_id, withdrawal.wallet_id),
                ("amount_centavos", command.amount_centavos, withdrawal.amount_centavos))
                if asked != have), "pix_key")
            raise errors.IdempotencyConflict(f"key {command.key!r} was already used for another withdrawal",
                                             field=field, key=command.key)
        return WithdrawalResult(replace(withdrawal), True)
    if isinstance(command, SettleWithdrawal):
        withdrawal = pix.withdrawals.get(command.withdrawal_id)
        if withdrawal is None or withdrawal.status == WITHDRAWAL_PROCESSING:
            return None
        done = WITHDRAWAL_COMPLETED if command.outcome == "CONFIRMED" else WITHDRAWAL_FAILED
        if withdrawal.status != done:
            raise AlreadySettled(f"withdrawal {withdrawal.id} already ended as {withdrawal.status}",
                                 withdrawal_id=str(withdrawal.id), status=withdrawal.status)
        return WithdrawalResult(replace(withdrawal), True)
    if isinstance(command, RequestRefund):
        refund = pix.refunds.get(command.refund_uuid)
        if refund is None:
            return None
        if refund.payload_hash != command.payload_hash():
            field = next((name for name, asked, have in (
                ("end_to_end_id", command.end_to_end_id, refund.end_to_end_id),
                ("amount_centavos", command.amount_centavos, refund.amount_centavos))
                if asked != have), "description")
            raise errors.IdempotencyConflict(f"key {command.key!r} was already used for another devolução",
                                             field=field, key=command.key)
        return RefundResult(replace(refund), True)
    if isinstance(command, SettleRefund):
        refund = pix.refunds.get(command.refund_uuid)
        if refund is None or refund.status == REFUND_IN_PROGRESS:
            return None
        if refund.status != command.status:
            raise AlreadySettled(f"devolução {refund.refund_id} already ended as {refund.status}",
                                 refund_id=refund.refund_id, status=refund.status)
        return RefundResult(replace(refund), True)
    received = pix.received.get(command.end_to_end_id)
    if received is not None and received.item == ITEM_ASSIGNED and received.credit_account_id == command.wallet_id:
        return ReceivedResult(replace(received), True)
    return None


def with_position(state: LedgerState, result: Any) -> Any:
    """A replayed result with its record's log position as the state knows it now (a replay decided in the batch
    that wrote the original learns the position only after that batch committed)."""
    pix = state.pix
    if isinstance(result, DepositResult) and result.deposit.id in pix.deposits:
        return replace(result, deposit=replace(result.deposit, position=pix.deposits[result.deposit.id].position))
    if isinstance(result, WithdrawalResult) and result.withdrawal.id in pix.withdrawals:
        position = pix.withdrawals[result.withdrawal.id].position
        return replace(result, withdrawal=replace(result.withdrawal, position=position))
    if isinstance(result, RefundResult) and result.refund.id in pix.refunds:
        return replace(result, refund=replace(result.refund, position=pix.refunds[result.refund.id].position))
    if isinstance(result, ReceivedResult) and result.received.end_to_end_id in pix.received:
        position = pix.received[result.received.end_to_end_id].position
        return replace(result, received=replace(result.received, position=position))
    return result


def decide(decider: Decider, command: PixCommand, now: datetime) -> tuple[list[LedgerEvent], Builder]:
    """Validates a new PIX command and returns its events, already applied to the state (the caller holds the undo
    journal), and how to build its result once the batch committed. Raises a typed ``LedgerError``."""
    if isinstance(command, RequestDeposit):
        return _request_deposit(decider, command, now)
    if isinstance(command, CreditReceivedPix):
        return _credit_received(decider, command, now)
    if isinstance(command, RequestWithdrawal):
        return _request_withdrawal(decider, command, now)
    if isinstance(command, SettleWithdrawal):
        return _settle_withdrawal(decider, command, now)
    if isinstance(command, RequestRefund):
        return _request_refund(decider, command, now)
    if isinstance(command, SettleRefund):
        return _settle_refund(decider, command, now)
    return _assign(decider, command, now)


def _commit(decider: Decider, transfer: CreateTransfer, now: datetime) -> list[LedgerEvent]:
    events = decider.transfer(transfer, now)
    for event in events:
        decider.state.apply(event, verify_chain=False)
    return events


def _fact(decider: Decider, cls: type[LedgerEvent], originator_id: UUID, version: int,
          body: dict[str, Any]) -> LedgerEvent:
    state = decider.state
    chain = chain_next(state.chain_hash, cls.__name__, originator_id, version, body)
    event = cls(originator_id=originator_id, originator_version=version, chain_hash=chain, **body)
    state.apply(event, verify_chain=False)
    return event


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= IDEMPOTENCY_KEY_LENGTH_MAX or not key.isprintable():
        raise errors.InvalidRequest(
            f"idempotency key must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} printable characters", field="key")


def _check_text(value: str | None, name: str, length_max: int) -> None:
    if value is not None and (not isinstance(value, str) or len(value) > length_max or not value.isprintable()):
        raise errors.InvalidRequest(f"{name} must be at most {length_max} printable characters", field=name)


def _check_psp(psp: str) -> None:
    if not isinstance(psp, str) or not 0 < len(psp) <= PSP_NAME_LENGTH_MAX or not psp.isidentifier():
        raise errors.InvalidRequest("psp must be a PSP name such as 'primary'", field="psp")


def _check_pix_amount(amount_centavos: int) -> None:
    check_amount(amount_centavos)
    if amount_centavos > PIX_VALOR_CENTAVOS_MAX:
        raise errors.AmountTooLarge(f"a Pix carries at most {format_valor(PIX_VALOR_CENTAVOS_MAX)}",
                                    amount_centavos=amount_centavos)


def _customer_wallet(state: LedgerState, wallet_id: UUID) -> None:
    account = state.account(wallet_id)
    if account.code not in WALLET_CODES:
        raise errors.AccountNotFound(f"account {wallet_id} is not a customer wallet", account_id=str(wallet_id))
    if account.closed:
        raise errors.AccountClosed(f"account {wallet_id} is closed", account_id=str(wallet_id))


def _aware(moment: datetime, name: str) -> None:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise errors.InvalidRequest(f"{name} must be an aware date-time", field=name)


def _request_deposit(decider: Decider, cmd: RequestDeposit, now: datetime) -> tuple[list[LedgerEvent], Builder]:
    _check_key(cmd.key)
    _check_pix_amount(cmd.amount_centavos)
    _check_psp(cmd.psp)
    _aware(cmd.charge_created_at, "charge_created_at")
    if type(cmd.expires_in_s) is not int or not 0 < cmd.expires_in_s <= DEPOSIT_EXPIRY_S_MAX:
        raise errors.InvalidRequest(f"expires_in_s must be 1 to {DEPOSIT_EXPIRY_S_MAX}", field="expires_in_s")
    if not is_valid_txid(cmd.txid) or cmd.txid != deposit_txid(cmd.key):
        raise errors.InvalidRequest("txid must be the one derived from the deposit's key", field="txid")
    _check_text(cmd.pix_copia_e_cola, "pix_copia_e_cola", BR_CODE_LENGTH_MAX)
    _check_text(cmd.location, "location", LOCATION_LENGTH_MAX)
    _customer_wallet(decider.state, cmd.wallet_id)
    deposit_id = cmd.deposit_id
    _check_free(decider.state, deposit_id)
    body: dict[str, Any] = {
        "timestamp": now, "key": cmd.key, "payload_hash": cmd.payload_hash(), "wallet_id": cmd.wallet_id,
        "amount_centavos": cmd.amount_centavos, "expires_in_s": cmd.expires_in_s, "txid": cmd.txid,
        "psp": cmd.psp, "pix_copia_e_cola": cmd.pix_copia_e_cola, "location": cmd.location,
        "charge_created_at": cmd.charge_created_at,
    }
    event = _fact(decider, DepositRequested, deposit_id, 1, body)
    deposit = replace(decider.state.pix.deposits[deposit_id])
    return [event], lambda positions: DepositResult(_positioned(deposit, positions, deposit_id), False)


def _check_free(state: LedgerState, aggregate_id: UUID) -> None:
    if aggregate_id in state.accounts or aggregate_id in state.parties or aggregate_id in state.transfers:
        raise errors.InvalidRequest("this key maps to an id already in use; choose another key", field="key")


def _positioned(record: R, positions: dict[UUID, int], aggregate_id: UUID) -> R:
    """The record with the log position its batch gave it (a record built before the commit has none yet)."""
    position = positions.get(aggregate_id)
    return record if position is None else replace(record, position=position)


def suspense_reason(state: LedgerState, cmd: CreditReceivedPix) -> tuple[str | None, Deposit | None]:
    """Why this Pix cannot be credited to a wallet (and the deposit it names, if any)."""
    pix = state.pix
    if cmd.txid is None:
        return "NO_TXID", None
    deposit_id = pix.deposits_by_txid.get(cmd.txid)
    if deposit_id is None:
        return "UNKNOWN_TXID", None
    deposit = pix.deposits[deposit_id]
    if deposit.psp != cmd.psp:
        return "PSP_MISMATCH", deposit
    if deposit.paid_by is not None:
        return "TXID_ALREADY_PAID", deposit
    if deposit.amount_centavos != cmd.amount_centavos:
        return "AMOUNT_MISMATCH", deposit
    if state.account(deposit.wallet_id).closed:
        return "WALLET_CLOSED", deposit
    return None, deposit


def _credit_received(decider: Decider, cmd: CreditReceivedPix,
                     now: datetime) -> tuple[list[LedgerEvent], Builder]:
    if not is_valid_end_to_end_id(cmd.end_to_end_id):
        raise errors.InvalidRequest("not an endToEndId", field="end_to_end_id")
    _check_pix_amount(cmd.amount_centavos)
    _check_psp(cmd.psp)
    _aware(cmd.processed_at, "processed_at")
    if cmd.txid is not None and not is_valid_received_txid(cmd.txid):
        raise errors.InvalidRequest("txid must be 1 to 35 letters or digits", field="txid")
    if cmd.source not in RECEIVED_SOURCES:
        raise errors.InvalidRequest(f"source must be one of {', '.join(RECEIVED_SOURCES)}", field="source")
    state = decider.state
    reason, deposit = suspense_reason(state, cmd)
    credit_account_id = deposit.wallet_id if reason is None and deposit is not None else SUSPENSE_ACCOUNT_ID
    transfer = CreateTransfer(cmd.transfer_key, SETTLEMENT_ACCOUNT_ID, credit_account_id, cmd.amount_centavos,
                              code=int(TransferCode.PIX_DEPOSIT), reference=f"pix:{cmd.end_to_end_id}")
    events = _commit(decider, transfer, now)
    body: dict[str, Any] = {
        "timestamp": now, "end_to_end_id": cmd.end_to_end_id, "psp": cmd.psp, "txid": cmd.txid,
        "amount_centavos": cmd.amount_centavos, "processed_at": cmd.processed_at, "source": cmd.source,
        "transfer_id": transfer.transfer_id, "credit_account_id": credit_account_id,
        "deposit_id": deposit.id if deposit is not None else None, "suspense_reason": reason,
    }
    received_id = received_id_for(cmd.end_to_end_id)
    events.append(_fact(decider, PixReceived, received_id, 1, body))
    if reason is not None:
        item: dict[str, Any] = {"timestamp": now, "end_to_end_id": cmd.end_to_end_id, "reason": reason,
                                "amount_centavos": cmd.amount_centavos, "account_id": SUSPENSE_ACCOUNT_ID}
        events.append(_fact(decider, ReconciliationItemOpened, reconciliation_id_for(cmd.end_to_end_id), 1, item))
    received = replace(state.pix.received[cmd.end_to_end_id])
    return events, lambda positions: ReceivedResult(_positioned(received, positions, received_id), False)


def _request_withdrawal(decider: Decider, cmd: RequestWithdrawal,
                        now: datetime) -> tuple[list[LedgerEvent], Builder]:
    _check_key(cmd.key)
    key = parse_pix_key(cmd.pix_key, cmd.pix_key_type)
    _check_pix_amount(cmd.amount_centavos)
    state = decider.state
    _customer_wallet(state, cmd.wallet_id)
    withdrawal_id = cmd.withdrawal_id
    _check_free(state, withdrawal_id)
    hold = CreateTransfer(f"pix/out:{withdrawal_id}", cmd.wallet_id, SETTLEMENT_ACCOUNT_ID, cmd.amount_centavos,
                          kind="pending", code=int(TransferCode.PIX_WITHDRAWAL),
                          reference=f"withdrawal:{withdrawal_id}")
    events = _commit(decider, hold, now)
    body: dict[str, Any] = {
        "timestamp": now, "key": cmd.key, "payload_hash": cmd.payload_hash(), "wallet_id": cmd.wallet_id,
        "amount_centavos": cmd.amount_centavos, "pix_key_type": str(key.type), "pix_key": key.value,
        "payment_id": payment_id_for(withdrawal_id), "hold_id": hold.transfer_id,
    }
    events.append(_fact(decider, WithdrawalRequested, withdrawal_id, 1, body))
    withdrawal = replace(state.pix.withdrawals[withdrawal_id])
    return events, lambda positions: WithdrawalResult(_positioned(withdrawal, positions, withdrawal_id), False)


def _settle_withdrawal(decider: Decider, cmd: SettleWithdrawal,
                       now: datetime) -> tuple[list[LedgerEvent], Builder]:
    state = decider.state
    withdrawal = state.pix.withdrawals.get(cmd.withdrawal_id)
    if withdrawal is None:
        raise WithdrawalNotFound(f"withdrawal {cmd.withdrawal_id} not found", withdrawal_id=str(cmd.withdrawal_id))
    _check_psp(cmd.psp)
    _check_text(cmd.reason, "reason", REASON_LENGTH_MAX)
    if cmd.end_to_end_id is not None and not is_valid_end_to_end_id(cmd.end_to_end_id):
        raise errors.InvalidRequest("not an endToEndId", field="end_to_end_id")
    confirmed = cmd.outcome == "CONFIRMED"
    if cmd.outcome not in ("CONFIRMED", "FAILED"):
        raise errors.InvalidRequest("outcome must be CONFIRMED or FAILED", field="outcome")
    suffix = "post" if confirmed else "void"
    settle = CreateTransfer(f"pix/out-{suffix}:{withdrawal.id}", None, None, None,
                            kind="post_pending" if confirmed else "void_pending", pending_id=withdrawal.hold_id,
                            code=int(TransferCode.PIX_WITHDRAWAL), reference=f"withdrawal:{withdrawal.id}")
    events = _commit(decider, settle, now)
    body: dict[str, Any] = {"timestamp": now, "psp": cmd.psp, "transfer_id": settle.transfer_id}
    if confirmed:
        body["end_to_end_id"] = cmd.end_to_end_id
        events.append(_fact(decider, WithdrawalCompleted, withdrawal.id, 2, body))
    else:
        body["reason"] = cmd.reason or "FAILED"
        events.append(_fact(decider, WithdrawalFailed, withdrawal.id, 2, body))
    settled = replace(state.pix.withdrawals[withdrawal.id])
    return events, lambda _: WithdrawalResult(settled, False)


def _request_refund(decider: Decider, cmd: RequestRefund, now: datetime) -> tuple[list[LedgerEvent], Builder]:
    _check_key(cmd.key)
    _check_text(cmd.description, "description", PIX_TEXT_LENGTH_MAX)
    _check_text(cmd.requested_by, "requested_by", IDEMPOTENCY_KEY_LENGTH_MAX)
    state = decider.state
    received = state.pix.received.get(cmd.end_to_end_id)
    if received is None:
        raise ReceivedPixNotFound(f"no Pix {cmd.end_to_end_id} was received", end_to_end_id=cmd.end_to_end_id)
    _check_pix_amount(cmd.amount_centavos)
    refundable = state.pix.refundable_centavos(received)
    if cmd.amount_centavos > refundable:
        raise RefundExceedsOriginal(
            f"at most {format_valor(refundable)} of this Pix may still be returned",
            end_to_end_id=received.end_to_end_id, refundable_centavos=refundable,
            amount_centavos=cmd.amount_centavos)
    deadline = received.processed_at + PIX_REFUND_WINDOW
    if now > deadline:
        raise RefundWindowClosed("a devolução must be requested within 90 days of the Pix",
                                 end_to_end_id=received.end_to_end_id, deadline=format_horario(deadline))
    refund_uuid = cmd.refund_uuid
    _check_free(state, refund_uuid)
    hold = CreateTransfer(f"pix/refund:{refund_uuid}", received.credit_account_id, SETTLEMENT_ACCOUNT_ID,
                          cmd.amount_centavos, kind="pending", code=int(TransferCode.PIX_REFUND),
                          reference=f"pix:{received.end_to_end_id}")
    events = _commit(decider, hold, now)
    body: dict[str, Any] = {
        "timestamp": now, "key": cmd.key, "payload_hash": cmd.payload_hash(),
        "end_to_end_id": received.end_to_end_id, "psp": received.psp, "refund_id": pix_id_for(refund_uuid),
        "amount_centavos": cmd.amount_centavos, "hold_id": hold.transfer_id,
        "source_account_id": received.credit_account_id, "description": cmd.description,
        "requested_by": cmd.requested_by,
    }
    events.append(_fact(decider, PixRefundRequested, refund_uuid, 1, body))
    refund = replace(state.pix.refunds[refund_uuid])
    return events, lambda positions: RefundResult(_positioned(refund, positions, refund_uuid), False)


def _settle_refund(decider: Decider, cmd: SettleRefund, now: datetime) -> tuple[list[LedgerEvent], Builder]:
    state = decider.state
    refund = state.pix.refunds.get(cmd.refund_uuid)
    if refund is None:
        raise RefundNotFound(f"devolução {cmd.refund_uuid} not found", refund_uuid=str(cmd.refund_uuid))
    if cmd.status not in (REFUND_RETURNED, REFUND_REFUSED):
        raise errors.InvalidRequest("status must be DEVOLVIDO or NAO_REALIZADO", field="status")
    _check_text(cmd.reason, "reason", REASON_LENGTH_MAX)
    _check_text(cmd.return_id, "return_id", 35)
    returned = cmd.status == REFUND_RETURNED
    suffix = "post" if returned else "void"
    settle = CreateTransfer(f"pix/refund-{suffix}:{refund.id}", None, None, None,
                            kind="post_pending" if returned else "void_pending", pending_id=refund.hold_id,
                            code=int(TransferCode.PIX_REFUND), reference=f"pix:{refund.end_to_end_id}")
    events = _commit(decider, settle, now)
    body: dict[str, Any] = {"timestamp": now, "status": cmd.status, "return_id": cmd.return_id,
                            "reason": cmd.reason, "transfer_id": settle.transfer_id}
    events.append(_fact(decider, PixRefundConcluded, refund.id, 2, body))
    received = state.pix.received[refund.end_to_end_id]
    if returned and received.item == ITEM_OPEN and (
        state.pix.returned_centavos(received) == received.amount_centavos
    ):
        resolved: dict[str, Any] = {"timestamp": now, "resolution": ITEM_REFUNDED, "wallet_id": None,
                                    "amount_centavos": received.amount_centavos, "transfer_id": None}
        events.append(_fact(decider, ReconciliationItemResolved, reconciliation_id_for(received.end_to_end_id), 2,
                            resolved))
    settled = replace(state.pix.refunds[refund.id])
    return events, lambda _: RefundResult(settled, False)


def _assign(decider: Decider, cmd: AssignReceivedPix, now: datetime) -> tuple[list[LedgerEvent], Builder]:
    _check_key(cmd.key)
    state = decider.state
    received = state.pix.received.get(cmd.end_to_end_id)
    if received is None:
        raise ReceivedPixNotFound(f"no Pix {cmd.end_to_end_id} was received", end_to_end_id=cmd.end_to_end_id)
    if received.item != ITEM_OPEN:
        raise NotInSuspense(f"Pix {cmd.end_to_end_id} has no open reconciliation item",
                            end_to_end_id=cmd.end_to_end_id)
    if any(r.status == REFUND_IN_PROGRESS for r in state.pix.refunds_of(received)):
        raise RefundInProgress("a devolução of this Pix is still in progress", end_to_end_id=cmd.end_to_end_id)
    _customer_wallet(state, cmd.wallet_id)
    amount = state.pix.refundable_centavos(received)
    if amount <= 0:  # pragma: no cover - a Pix returned in full has its item resolved already
        raise NotInSuspense(f"nothing of Pix {cmd.end_to_end_id} is left in suspense")
    transfer = CreateTransfer(f"pix/assign:{cmd.end_to_end_id}", SUSPENSE_ACCOUNT_ID, cmd.wallet_id, amount,
                              code=int(TransferCode.PIX_DEPOSIT), reference=f"pix:{cmd.end_to_end_id}")
    events = _commit(decider, transfer, now)
    body: dict[str, Any] = {"timestamp": now, "resolution": ITEM_ASSIGNED, "wallet_id": cmd.wallet_id,
                            "amount_centavos": amount, "transfer_id": transfer.transfer_id}
    events.append(_fact(decider, ReconciliationItemResolved, reconciliation_id_for(cmd.end_to_end_id), 2, body))
    assigned = replace(state.pix.received[cmd.end_to_end_id])
    return events, lambda _: ReceivedResult(assigned, False)
