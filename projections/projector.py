"""The ledger projector: a pure function from one integration event to the row changes it makes.

No I/O and no reads: every value comes from the event (its post-state balances included), so the same function
serves the live Kafka consumer and a rebuild from the event store, and a test can check one against the other.
A type or version it does not know raises ``UnknownEventType``/``UnsupportedEventVersion`` (the consumer stops).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple

from ledger.contracts import (
    AccountClosedV1,
    AccountOpenedV1,
    Balance,
    DepositRequestedV1,
    IntegrationEvent,
    PartyRegisteredV1,
    PendingTransferExpiredV1,
    PendingTransferResolvedV1,
    PixReceivedV1,
    PixRefundConcludedV1,
    PixRefundRequestedV1,
    ReconciliationItemOpenedV1,
    ReconciliationItemResolvedV1,
    TransferCommittedV1,
    UnknownEventType,
    WithdrawalCompletedV1,
    WithdrawalFailedV1,
    WithdrawalRequestedV1,
    is_debit_normal,
)
from projections.schema import ACCOUNTS, BALANCES, ENTRIES, HOLDS, PARTIES, TRANSFERS, Table

Row = tuple[Any, ...]


# Changes are named tuples, not dataclasses: a rebuild makes millions of them and a tuple is the cheapest
# immutable record Python has.
class Insert(NamedTuple):
    """A new row; inserting a row whose key exists is a bug and fails the batch."""

    table: Table
    row: Row


class Upsert(NamedTuple):
    """A whole row that replaces whatever the table has under its key."""

    table: Table
    row: Row


class Update(NamedTuple):
    """New values for some columns of an existing row."""

    table: Table
    key: Row
    values: dict[str, Any]


class Delete(NamedTuple):
    table: Table
    key: Row


Change = Insert | Upsert | Update | Delete

#: What each transfer kind leaves its transfer row as, before any resolution.
STATUS_OF_KIND = {"single": "posted", "pending": "pending", "post_pending": "posted", "void_pending": "voided"}


def project(event: IntegrationEvent) -> list[Change]:
    """The row changes of one event."""
    handler = _HANDLERS.get(type(event.payload))
    if handler is None:  # pragma: no cover - the contract only builds the payload types listed below
        raise UnknownEventType(f"no projection for {event.type} v{event.version}")
    return handler(event)


def _party(event: IntegrationEvent) -> list[Change]:
    p = event.payload
    assert isinstance(p, PartyRegisteredV1)
    return [Insert(PARTIES, (p.party_id, p.kind, p.wallet_id, event.recorded_at, event.position))]


def _opened(event: IntegrationEvent) -> list[Change]:
    p = event.payload
    assert isinstance(p, AccountOpenedV1)
    return [
        Insert(ACCOUNTS, (p.account_id, p.ledger, p.code, p.flags, p.reference, p.owner_id, is_debit_normal(p.code),
                          event.recorded_at, event.position, None, None)),
        Insert(BALANCES, (p.account_id, 0, 0, 0, 0, event.position, event.recorded_at)),
    ]


def _closed(event: IntegrationEvent) -> list[Change]:
    p = event.payload
    assert isinstance(p, AccountClosedV1)
    values = {"flags": p.flags, "closed_at": event.recorded_at, "closed_position": event.position}
    return [Update(ACCOUNTS, (p.account_id,), values)]


def _balance_rows(event: IntegrationEvent, balances: tuple[Balance, ...]) -> list[Change]:
    return [
        Upsert(BALANCES, (b.account_id, b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted,
                          event.position, event.recorded_at))
        for b in balances
    ]


def _entries(event: IntegrationEvent, transfer_id: str, kind: str, amount: int,
             balances: tuple[Balance, ...]) -> list[Change]:
    debit, credit = balances
    return [
        Insert(ENTRIES, (mine.account_id, event.position, transfer_id, kind, direction, amount, other.account_id,
                         mine.debits_pending, mine.debits_posted, mine.credits_pending, mine.credits_posted,
                         event.recorded_at))
        for mine, other, direction in ((debit, credit, "debit"), (credit, debit, "credit"))
    ]


def _transfer(event: IntegrationEvent) -> list[Change]:
    p = event.payload
    assert isinstance(p, TransferCommittedV1)
    assert [b.account_id for b in p.balances] == [p.debit_account_id, p.credit_account_id], "balances out of order"
    changes: list[Change] = [
        Insert(TRANSFERS, (p.transfer_id, p.key, p.kind, p.ledger, p.code, p.debit_account_id, p.credit_account_id,
                           p.amount_centavos, p.requested_amount_centavos, p.pending_id, p.timeout_s, p.reference,
                           p.linked_batch_id, STATUS_OF_KIND[p.kind], None, None, None, event.recorded_at,
                           event.position)),
        *_balance_rows(event, p.balances),
        *_entries(event, p.transfer_id, p.kind, p.amount_centavos, p.balances),
    ]
    if p.kind == "pending":
        expires_at = event.recorded_at + timedelta(seconds=p.timeout_s) if p.timeout_s else None
        changes.append(Insert(HOLDS, (p.transfer_id, p.debit_account_id, p.credit_account_id, p.amount_centavos,
                                      expires_at, event.recorded_at, event.position)))
    elif p.kind in ("post_pending", "void_pending"):
        # The settling transfer ends the pending one itself, as it does in the ledger's state: the read models as
        # of its position are whole (its balances moved, and the pending transfer is no longer listed among the
        # account's holds), although the pending transfer's own PendingTransferResolved comes one position later,
        # records that position and removes the hold row (where a resolution of anything but an open hold fails).
        assert p.pending_id is not None, "a post or void names its pending transfer"
        changes.append(Update(TRANSFERS, (p.pending_id,), {
            "status": STATUS_OF_KIND[p.kind], "resolved_by": p.transfer_id, "resolved_at": event.recorded_at,
            "resolved_position": event.position}))
    return changes


def _resolved(event: IntegrationEvent) -> list[Change]:
    p = event.payload
    assert isinstance(p, PendingTransferResolvedV1)
    assert p.resolution in ("posted", "voided"), f"unknown resolution {p.resolution!r}"
    return [
        Update(TRANSFERS, (p.pending_id,), {"status": p.resolution, "resolved_by": p.by_transfer_id,
                                            "resolved_at": event.recorded_at, "resolved_position": event.position}),
        Delete(HOLDS, (p.pending_id,)),
    ]


def _expired(event: IntegrationEvent) -> list[Change]:
    p = event.payload
    assert isinstance(p, PendingTransferExpiredV1)
    return [
        Update(TRANSFERS, (p.pending_id,), {"status": "expired", "resolved_by": None,
                                            "resolved_at": event.recorded_at, "resolved_position": event.position}),
        Delete(HOLDS, (p.pending_id,)),
        *_balance_rows(event, p.balances),
        *_entries(event, p.pending_id, "expired", p.amount_centavos, p.balances),
    ]


def _no_rows(_event: IntegrationEvent) -> list[Change]:
    """PIX facts: their money moved by the TransferCommitted events beside them, which this projection already
    turns into rows; the PIX read models (deposits, withdrawals, reconciliation) are a later projection's."""
    return []


_HANDLERS: dict[type, Callable[[IntegrationEvent], list[Change]]] = {
    PartyRegisteredV1: _party,
    AccountOpenedV1: _opened,
    AccountClosedV1: _closed,
    TransferCommittedV1: _transfer,
    PendingTransferResolvedV1: _resolved,
    PendingTransferExpiredV1: _expired,
    **{payload: _no_rows for payload in (
        DepositRequestedV1, PixReceivedV1, ReconciliationItemOpenedV1, ReconciliationItemResolvedV1,
        WithdrawalRequestedV1, WithdrawalCompletedV1, WithdrawalFailedV1, PixRefundRequestedV1, PixRefundConcludedV1,
    )},
}
