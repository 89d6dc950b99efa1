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
from typing import ClassVar
from uuid import UUID

from eventsourcing.domain import DomainEvent

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

    #: v2 added ``parties`` and the owner column of account rows.
    class_version = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, object]) -> None:
        state["parties"] = []
        accounts = state["accounts"]
        assert isinstance(accounts, list)
        state["accounts"] = [[*row, None] for row in accounts]


#: Every event type a reader of the ledger log may meet, by class name.
EVENT_TYPES: dict[str, type[LedgerEvent]] = {
    cls.__name__: cls
    for cls in (
        PartyRegistered, AccountOpened, AccountClosed, TransferCommitted, PendingTransferResolved,
        PendingTransferExpired,
    )
}
