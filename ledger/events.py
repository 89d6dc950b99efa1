"""The ledger's domain events: the immutable facts stored in the event store.

Each event is a public, versioned schema (documented in ``docs/events.md``). A field change bumps
``class_version`` and adds an ``upcast_vN_vN+1`` static method; a rename is registered with
``eventsourcing.utils.register_topic``. Events carry the post-state of every account they touch
(``*_after`` = ``[debits_pending, debits_posted, credits_pending, credits_posted]``) so that nobody
downstream ever needs to read state back, and a ``chain_hash`` linking each event to the one before it
in commit order, so an auditor can verify the whole log offline.

Aggregates: an account (``AccountOpened`` v1, ``AccountClosed`` v2) and a transfer (``TransferCommitted``
v1; a pending transfer gets one more event, ``PendingTransferResolved`` or ``PendingTransferExpired``, v2).
The unique (originator_id, originator_version) key of the store therefore guarantees, even against a
rogue second writer, that a transfer key is committed once and a pending transfer is settled once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar
from uuid import UUID

from eventsourcing.domain import DomainEvent
from eventsourcing.utils import get_topic

#: Balances of one account after an event: [debits_pending, debits_posted, credits_pending, credits_posted].
Balances = list[int]


@dataclass(frozen=True)
class LedgerEvent(DomainEvent):
    """Base of all ledger events.

    ``chain_fields_added`` names fields added in a later class version: when such a field is ``None`` (as in the
    upcast of an event written before it existed) it is left out of the chain hash, so old events still verify.
    """

    chain_hash: str
    chain_fields_added: ClassVar[frozenset[str]] = frozenset()


@dataclass(frozen=True)
class AccountOpened(LedgerEvent):
    """An account was opened on a currency ledger, with its kind (``code``), flags and owning party, if any."""

    ledger: int
    code: int
    flags: int
    reference: str
    owner_id: UUID | None

    #: v2 added ``owner_id``; older events upcast to ``None``, which the chain hash leaves out.
    class_version = 2
    chain_fields_added: ClassVar[frozenset[str]] = frozenset({"owner_id"})

    @staticmethod
    def upcast_v1_v2(state: dict[str, object]) -> None:
        state["owner_id"] = None


@dataclass(frozen=True)
class PartyRegistered(LedgerEvent):
    """An investor or borrower was registered (their wallet's ``AccountOpened`` follows in the same commit).

    Holds personal data (LGPD): see docs/adr/0003 for how erasure requests are handled.
    """

    key: str
    payload_hash: str
    kind: str
    name: str
    document: str
    email: str
    phone: str
    wallet_id: UUID


@dataclass(frozen=True)
class AccountClosed(LedgerEvent):
    """An account was closed at zero balance; it accepts no more transfers."""

    flags: int


@dataclass(frozen=True)
class TransferCommitted(LedgerEvent):
    """A transfer was committed.

    ``kind`` is ``single``, ``pending``, ``post_pending`` or ``void_pending``. For a post or void,
    ``pending_id`` names the pending transfer, the accounts are the pending transfer's, and
    ``requested_amount_centavos`` is what the client asked (``None`` = the full pending amount) while
    ``amount_centavos`` is what moved. ``payload_hash`` is the SHA-256 of the canonical request and is
    what the idempotency check compares first.
    """

    key: str
    payload_hash: str
    kind: str
    ledger: int
    code: int
    debit_account_id: UUID
    credit_account_id: UUID
    amount_centavos: int
    requested_amount_centavos: int | None
    pending_id: UUID | None
    timeout_s: int
    reference: str
    linked_batch_id: UUID | None
    debit_after: Balances
    credit_after: Balances


@dataclass(frozen=True)
class PendingTransferResolved(LedgerEvent):
    """A pending transfer was posted or voided by the transfer ``by_transfer_id`` (``resolution``)."""

    resolution: str
    by_transfer_id: UUID
    amount_centavos: int


@dataclass(frozen=True)
class PendingTransferExpired(LedgerEvent):
    """A pending transfer reached its timeout unresolved; its reserved amounts were released."""

    debit_account_id: UUID
    credit_account_id: UUID
    amount_centavos: int
    debit_after: Balances
    credit_after: Balances


@dataclass(frozen=True)
class LedgerCheckpoint(DomainEvent):
    """A snapshot of the whole in-memory ledger state at a log position (``originator_version``).

    Stored in the snapshot store, never in the event log: it is derived data that lets a restart replay only
    the tail of the log. ``accounts`` and ``pending`` are lists of plain rows.
    """

    position: int
    chain_hash: str
    accounts: list[list[object]]
    pending: list[list[object]]
    parties: list[list[object]]
    #: PIX records (deposits, received Pix, withdrawals, devoluções) per kind, as compressed JSON rows
    #: (``ledger.pix_state.encode_tables``).
    pix: dict[str, str]

    #: v2 added ``parties`` and the owner column of account rows; v3 added ``pix``.
    class_version = 3

    @staticmethod
    def upcast_v1_v2(state: dict[str, object]) -> None:
        state["parties"] = []
        accounts = state["accounts"]
        assert isinstance(accounts, list)
        state["accounts"] = [[*row, None] for row in accounts]

    @staticmethod
    def upcast_v2_v3(state: dict[str, object]) -> None:
        state["pix"] = {}


# ----------------------------------------------------------------------------------------------------------------
# PIX events (ADR 0009, docs/events.md "PIX events"). Money moves only by the ``TransferCommitted`` events committed
# with them (which carry the accounts' post-states); these record the PIX facts around that money: a deposit asked
# for, a Pix received and where it was credited, a withdrawal and its end, a devolução and its end, a reconciliation
# item. Aggregates: a deposit, a received Pix, a withdrawal and a devolução (v1 when they begin, v2 when they end), a
# reconciliation item (v1 opened, v2 resolved). Their ids are UUIDv5 of their identity (``ledger.pix_flows``), so
# the store's unique (originator_id, originator_version) key also guarantees one credit per endToEndId.


@dataclass(frozen=True)
class DepositRequested(LedgerEvent):
    """A customer asked to deposit ``amount_centavos`` into ``wallet_id``: a charge (cob) with ``txid`` was created at
    ``psp`` and its BR Code (``pix_copia_e_cola``) shown. A Pix with this txid, from this PSP, of this amount, is
    credited to the wallet; any other goes to suspense."""

    key: str
    payload_hash: str
    wallet_id: UUID
    amount_centavos: int
    expires_in_s: int
    txid: str
    psp: str
    pix_copia_e_cola: str
    location: str
    charge_created_at: datetime


@dataclass(frozen=True)
class PixReceived(LedgerEvent):
    """A Pix confirmed with the PSP that received it was credited, once (aggregate id from its ``end_to_end_id``).

    ``credit_account_id`` is the wallet of the deposit with the same txid, PSP and amount, or the suspense account
    with ``suspense_reason`` (``NO_TXID``, ``UNKNOWN_TXID``, ``PSP_MISMATCH``, ``TXID_ALREADY_PAID``,
    ``AMOUNT_MISMATCH``, ``WALLET_CLOSED``). ``processed_at`` is the PSP's ``horario``; ``source`` is ``webhook`` or
    ``reconciliation``; ``transfer_id`` is the credit committed with it."""

    end_to_end_id: str
    psp: str
    txid: str | None
    amount_centavos: int
    processed_at: datetime
    source: str
    transfer_id: UUID
    credit_account_id: UUID
    deposit_id: UUID | None
    suspense_reason: str | None


@dataclass(frozen=True)
class ReconciliationItemOpened(LedgerEvent):
    """A received Pix was parked in suspense and needs a person: assign it to a wallet or return it (devolução)."""

    end_to_end_id: str
    reason: str
    amount_centavos: int
    account_id: UUID


@dataclass(frozen=True)
class ReconciliationItemResolved(LedgerEvent):
    """A reconciliation item was closed: ``assigned`` (moved to ``wallet_id`` by ``transfer_id``) or ``refunded``
    (returned to the payer in full by devoluções)."""

    resolution: str
    wallet_id: UUID | None
    amount_centavos: int
    transfer_id: UUID | None


@dataclass(frozen=True)
class WithdrawalRequested(LedgerEvent):
    """A customer asked to send ``amount_centavos`` from ``wallet_id`` to a Pix key; the amount is held by the pending
    transfer ``hold_id`` (committed with this event) until the PSP confirms or refuses the payment ``payment_id``.

    ``pix_key`` is personal data (a CPF, e-mail or phone): see ADR 0003 and ADR 0009."""

    key: str
    payload_hash: str
    wallet_id: UUID
    amount_centavos: int
    pix_key_type: str
    pix_key: str
    payment_id: str
    hold_id: UUID


@dataclass(frozen=True)
class WithdrawalCompleted(LedgerEvent):
    """The PSP confirmed the payment: the hold was posted by ``transfer_id`` (committed with this event)."""

    psp: str
    end_to_end_id: str | None
    transfer_id: UUID


@dataclass(frozen=True)
class WithdrawalFailed(LedgerEvent):
    """The payment definitely did not happen (refused by the PSP, or never sent): the hold was voided by
    ``transfer_id``."""

    psp: str
    reason: str
    transfer_id: UUID


@dataclass(frozen=True)
class PixRefundRequested(LedgerEvent):
    """A devolução of ``amount_centavos`` of the received Pix ``end_to_end_id`` was asked of ``psp`` under
    ``refund_id``; the amount is held on ``source_account_id`` (the wallet or suspense it was credited to) by the
    pending transfer ``hold_id`` until the devolução ends."""

    key: str
    payload_hash: str
    end_to_end_id: str
    psp: str
    refund_id: str
    amount_centavos: int
    hold_id: UUID
    source_account_id: UUID
    description: str | None
    requested_by: str


@dataclass(frozen=True)
class PixRefundConcluded(LedgerEvent):
    """A devolução reached a final status: ``DEVOLVIDO`` (the hold was posted) or ``NAO_REALIZADO`` (voided), by
    ``transfer_id``. ``return_id`` is the PSP's ``rtrId``."""

    status: str
    return_id: str | None
    reason: str | None
    transfer_id: UUID


#: The PIX event types, by class name (a reader that does not follow PIX can recognise and skip exactly these).
PIX_EVENT_TYPES: dict[str, type[LedgerEvent]] = {
    cls.__name__: cls
    for cls in (
        DepositRequested, PixReceived, ReconciliationItemOpened, ReconciliationItemResolved, WithdrawalRequested,
        WithdrawalCompleted, WithdrawalFailed, PixRefundRequested, PixRefundConcluded,
    )
}

#: Every event type a reader of the ledger log may meet, by class name.
EVENT_TYPES: dict[str, type[LedgerEvent]] = {
    **{
        cls.__name__: cls
        for cls in (
            PartyRegistered, AccountOpened, AccountClosed, TransferCommitted, PendingTransferResolved,
            PendingTransferExpired,
        )
    },
    **PIX_EVENT_TYPES,
}

#: How the store names a committed transfer's event (``eventsourcing``'s topic of the class).
TRANSFER_COMMITTED_TOPIC: str = get_topic(TransferCommitted)
