"""The ledger's PIX records, evolved only by PIX events (ADR 0009). Pure: no I/O.

``PixState`` lives inside ``LedgerState`` (as ``state.pix``) and is changed only by ``LedgerState.apply``, through
``PixState.apply``, live and on rebuild alike, under the same undo journal. It knows every deposit asked for (by id
and by txid), every received Pix (by endToEndId), every withdrawal and every devolução, with their status. The
flows that decide on them are in ``ledger.pix_flows``.

Identities are UUIDv5 of what identifies the thing (an idempotency key, an endToEndId), so a retry can never create
a second one, and the store's unique (originator_id, originator_version) key guards it too.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, TypeVar
from uuid import UUID

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

#: Namespace of every PIX identity (deposits, received Pix, withdrawals, devoluções, reconciliation items, accounts).
PIX_NAMESPACE: Final = UUID("9b2f6d41-0c7e-5a83-b1d4-6e5f8a2c3b90")

#: The platform's PIX settlement account (its money at the PSPs) and the suspense account for Pix that match no
#: deposit. Well-known ids: the API process opens them at start (opening is idempotent by id).
SETTLEMENT_ACCOUNT_ID: Final = uuid.uuid5(PIX_NAMESPACE, "account:pix-settlement")
SUSPENSE_ACCOUNT_ID: Final = uuid.uuid5(PIX_NAMESPACE, "account:pix-suspense")

#: Statuses of a withdrawal (``PROCESSING`` while its hold is open).
WITHDRAWAL_PROCESSING: Final = "PROCESSING"
WITHDRAWAL_COMPLETED: Final = "COMPLETED"
WITHDRAWAL_FAILED: Final = "FAILED"
#: Statuses of a devolução: the spec's.
REFUND_IN_PROGRESS: Final = "EM_PROCESSAMENTO"
REFUND_RETURNED: Final = "DEVOLVIDO"
REFUND_REFUSED: Final = "NAO_REALIZADO"
#: Reconciliation item states of a received Pix in suspense (``None`` for a Pix credited to its wallet).
ITEM_OPEN: Final = "open"
ITEM_ASSIGNED: Final = "assigned"
ITEM_REFUNDED: Final = "refunded"


def deposit_id_for_key(key: str) -> UUID:
    return uuid.uuid5(PIX_NAMESPACE, f"deposit:{key}")


def withdrawal_id_for_key(key: str) -> UUID:
    return uuid.uuid5(PIX_NAMESPACE, f"withdrawal:{key}")


def refund_id_for_key(key: str) -> UUID:
    return uuid.uuid5(PIX_NAMESPACE, f"refund:{key}")


def received_id_for(end_to_end_id: str) -> UUID:
    """The aggregate id of a received Pix: one per endToEndId, so it can be credited once."""
    return uuid.uuid5(PIX_NAMESPACE, f"received:{end_to_end_id}")


def reconciliation_id_for(end_to_end_id: str) -> UUID:
    return uuid.uuid5(PIX_NAMESPACE, f"reconciliation:{end_to_end_id}")


# ---- records --------------------------------------------------------------------------------------------------
# Immutable: a change replaces the record in its table (and the undo journal puts the old one back), so copying the
# tables (C-speed) is a consistent snapshot for a checkpoint built off the writer thread, and records can leave the
# writer as they are. ``position`` is the log position of the event that created the record.


@dataclass(frozen=True, slots=True)
class Deposit:
    id: UUID
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
    requested_at: datetime
    paid_by: str | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class Received:
    end_to_end_id: str
    psp: str
    txid: str | None
    amount_centavos: int
    processed_at: datetime
    credited_at: datetime
    source: str
    transfer_id: UUID
    #: Where the money is now: the wallet, or suspense (and then the wallet it was assigned to).
    credit_account_id: UUID
    deposit_id: UUID | None
    suspense_reason: str | None
    item: str | None = None
    #: What an assignment moved from suspense to ``credit_account_id`` (None unless assigned).
    assigned_centavos: int | None = None
    refund_ids: list[UUID] = field(default_factory=list)
    position: int | None = None


@dataclass(frozen=True, slots=True)
class Withdrawal:
    id: UUID
    key: str
    payload_hash: str
    wallet_id: UUID
    amount_centavos: int
    pix_key_type: str
    pix_key: str
    payment_id: str
    hold_id: UUID
    requested_at: datetime
    status: str = WITHDRAWAL_PROCESSING
    psp: str | None = None
    end_to_end_id: str | None = None
    reason: str | None = None
    settled_at: datetime | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class Refund:
    id: UUID
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
    requested_at: datetime
    status: str = REFUND_IN_PROGRESS
    return_id: str | None = None
    reason: str | None = None
    settled_at: datetime | None = None
    position: int | None = None


Record = Deposit | Received | Withdrawal | Refund
R = TypeVar("R", Deposit, Received, Withdrawal, Refund)
Undo = Callable[[Callable[[], None]], None]


def _encode(value: object) -> object:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_encode(item) for item in value]
    return value


_DECODERS: Final[dict[str, Callable[[Any], Any]]] = {
    "UUID": UUID,
    "UUID | None": lambda v: None if v is None else UUID(v),
    "datetime": datetime.fromisoformat,
    "datetime | None": lambda v: None if v is None else datetime.fromisoformat(v),
    "list[UUID]": lambda v: [UUID(item) for item in v],
}


def record_row(record: Record) -> list[object]:
    """A record as a list of JSON values (for checkpoints), in field order."""
    return [_encode(getattr(record, f.name)) for f in dataclasses.fields(record)]


def record_from_row(kind: type[R], row: list[Any]) -> R:
    values = []
    for f, value in zip(dataclasses.fields(kind), row, strict=True):
        decode = _DECODERS.get(str(f.type))
        values.append(decode(value) if decode is not None else value)
    return kind(*values)


@dataclass(frozen=True, slots=True)
class PixTables:
    deposits: dict[UUID, Deposit]
    received: dict[str, Received]
    withdrawals: dict[UUID, Withdrawal]
    refunds: dict[UUID, Refund]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _text(value: UUID | None) -> str | None:
    return None if value is None else str(value)


# Rows in field order (``record_from_row`` reads them back). Written out per kind: a checkpoint encodes every record
# the ledger holds, and the generic ``record_row`` costs several times more per record.
def _deposit_row(d: Deposit) -> list[object]:
    return [str(d.id), d.key, d.payload_hash, str(d.wallet_id), d.amount_centavos, d.expires_in_s, d.txid, d.psp,
            d.pix_copia_e_cola, d.location, d.charge_created_at.isoformat(), d.requested_at.isoformat(), d.paid_by,
            d.position]


def _received_row(r: Received) -> list[object]:
    return [r.end_to_end_id, r.psp, r.txid, r.amount_centavos, r.processed_at.isoformat(), r.credited_at.isoformat(),
            r.source, str(r.transfer_id), str(r.credit_account_id), _text(r.deposit_id), r.suspense_reason, r.item,
            r.assigned_centavos, [str(i) for i in r.refund_ids], r.position]


def _withdrawal_row(w: Withdrawal) -> list[object]:
    return [str(w.id), w.key, w.payload_hash, str(w.wallet_id), w.amount_centavos, w.pix_key_type, w.pix_key,
            w.payment_id, str(w.hold_id), w.requested_at.isoformat(), w.status, w.psp, w.end_to_end_id, w.reason,
            _iso(w.settled_at), w.position]


def _refund_row(r: Refund) -> list[object]:
    return [str(r.id), r.key, r.payload_hash, r.end_to_end_id, r.psp, r.refund_id, r.amount_centavos, str(r.hold_id),
            str(r.source_account_id), r.description, r.requested_by, r.requested_at.isoformat(), r.status,
            r.return_id, r.reason, _iso(r.settled_at), r.position]


def pix_rows(tables: PixTables) -> dict[str, list[list[object]]]:
    return {
        "deposits": [_deposit_row(d) for d in tables.deposits.values()],
        "received": [_received_row(r) for r in tables.received.values()],
        "withdrawals": [_withdrawal_row(w) for w in tables.withdrawals.values()],
        "refunds": [_refund_row(r) for r in tables.refunds.values()],
    }


#: Records encoded per step when a checkpoint is built in the background (between steps, other threads run).
CHECKPOINT_CHUNK_RECORDS: Final = 500


def encode_tables(tables: PixTables, pause: Callable[[], None] | None = None) -> dict[str, str]:
    """The records as checkpoint text: per kind, the JSON of its rows, zlib-compressed, base64. Built in chunks,
    calling ``pause`` between them, so a background thread gives the interpreter back often; and the event store's
    own JSON encoding then handles four compact strings instead of a million small values (which it would encode in
    one go, holding the interpreter for a noticeable time on a large ledger)."""
    encoders: tuple[tuple[str, Callable[[Any], list[object]], dict[Any, Any]], ...] = (
        ("deposits", _deposit_row, tables.deposits), ("received", _received_row, tables.received),
        ("withdrawals", _withdrawal_row, tables.withdrawals), ("refunds", _refund_row, tables.refunds))
    encoded: dict[str, str] = {}
    for kind, row_of, table in encoders:
        records = list(table.values())
        parts: list[str] = []
        for start in range(0, len(records), CHECKPOINT_CHUNK_RECORDS):
            text = json.dumps([row_of(r) for r in records[start:start + CHECKPOINT_CHUNK_RECORDS]],
                              separators=(",", ":"))
            parts.append(text[1:-1])
            if pause is not None:
                pause()
        encoded[kind] = base64.b64encode(zlib.compress(("[" + ",".join(parts) + "]").encode(), 1)).decode()
    return encoded


def decode_tables(encoded: dict[str, str]) -> dict[str, list[list[Any]]]:
    rows: dict[str, list[list[Any]]] = {}
    for kind, text in encoded.items():
        rows[kind] = json.loads(zlib.decompress(base64.b64decode(text)))
    return rows


def _drop(table: dict[UUID, Any], key: UUID) -> None:
    del table[key]


class PixState:
    """Every PIX record of the ledger. Not thread safe: owned by the writer, like ``LedgerState``."""

    def __init__(self) -> None:
        self.deposits: dict[UUID, Deposit] = {}
        self.deposits_by_txid: dict[str, UUID] = {}
        self.received: dict[str, Received] = {}
        self.received_ids: dict[UUID, str] = {}
        self.items: dict[UUID, str] = {}
        self.withdrawals: dict[UUID, Withdrawal] = {}
        self.refunds: dict[UUID, Refund] = {}

    # ---- evolve -----------------------------------------------------------------------------------------------
    def apply(self, event: LedgerEvent, position: int | None, undo: Undo) -> None:
        """Applies one PIX event (the only mutator). ``undo`` records how to revert each change (the journal)."""
        if isinstance(event, DepositRequested):
            self._deposit_requested(event, position, undo)
        elif isinstance(event, PixReceived):
            self._received(event, position, undo)
        elif isinstance(event, ReconciliationItemOpened):
            assert event.originator_version == 1 and event.originator_id not in self.items
            received = self.received[event.end_to_end_id]
            assert received.suspense_reason is not None and received.item is None
            self.items[event.originator_id] = event.end_to_end_id
            undo(lambda: _drop(self.items, event.originator_id))
            self._set(self.received, event.end_to_end_id, undo, item=ITEM_OPEN)
        elif isinstance(event, ReconciliationItemResolved):
            assert event.originator_version == 2
            e2eid = self.items[event.originator_id]
            assert self.received[e2eid].item == ITEM_OPEN, "a reconciliation item is resolved once"
            if event.resolution == ITEM_ASSIGNED:
                assert event.wallet_id is not None
                self._set(self.received, e2eid, undo, item=ITEM_ASSIGNED, credit_account_id=event.wallet_id,
                          assigned_centavos=event.amount_centavos)
            else:
                assert event.resolution == ITEM_REFUNDED
                self._set(self.received, e2eid, undo, item=ITEM_REFUNDED)
        elif isinstance(event, WithdrawalRequested):
            assert event.originator_version == 1 and event.originator_id not in self.withdrawals
            self.withdrawals[event.originator_id] = Withdrawal(
                event.originator_id, event.key, event.payload_hash, event.wallet_id, event.amount_centavos,
                event.pix_key_type, event.pix_key, event.payment_id, event.hold_id, event.timestamp,
                position=position,
            )
            undo(lambda: _drop(self.withdrawals, event.originator_id))
        elif isinstance(event, WithdrawalCompleted | WithdrawalFailed):
            withdrawal = self.withdrawals[event.originator_id]
            assert event.originator_version == 2 and withdrawal.status == WITHDRAWAL_PROCESSING
            if isinstance(event, WithdrawalCompleted):
                self._set(self.withdrawals, withdrawal.id, undo, status=WITHDRAWAL_COMPLETED, psp=event.psp,
                          end_to_end_id=event.end_to_end_id, settled_at=event.timestamp)
            else:
                self._set(self.withdrawals, withdrawal.id, undo, status=WITHDRAWAL_FAILED, psp=event.psp,
                          reason=event.reason, settled_at=event.timestamp)
        elif isinstance(event, PixRefundRequested):
            self._refund_requested(event, position, undo)
        elif isinstance(event, PixRefundConcluded):
            refund = self.refunds[event.originator_id]
            assert event.originator_version == 2 and refund.status == REFUND_IN_PROGRESS
            assert event.status in (REFUND_RETURNED, REFUND_REFUSED)
            self._set(self.refunds, refund.id, undo, status=event.status, return_id=event.return_id,
                      reason=event.reason, settled_at=event.timestamp)
        else:  # pragma: no cover - LedgerState.apply dispatches only PIX events here
            raise AssertionError(f"not a PIX event: {type(event).__name__}")

    def _deposit_requested(self, event: DepositRequested, position: int | None, undo: Undo) -> None:
        assert event.originator_version == 1 and event.originator_id not in self.deposits
        assert event.txid not in self.deposits_by_txid, "a txid belongs to one deposit"
        self.deposits[event.originator_id] = Deposit(
            event.originator_id, event.key, event.payload_hash, event.wallet_id, event.amount_centavos,
            event.expires_in_s, event.txid, event.psp, event.pix_copia_e_cola, event.location,
            event.charge_created_at, event.timestamp, position=position,
        )
        self.deposits_by_txid[event.txid] = event.originator_id

        def forget() -> None:
            del self.deposits[event.originator_id]
            del self.deposits_by_txid[event.txid]

        undo(forget)

    def _received(self, event: PixReceived, position: int | None, undo: Undo) -> None:
        assert event.originator_version == 1 and event.end_to_end_id not in self.received, "a Pix is credited once"
        self.received[event.end_to_end_id] = Received(
            event.end_to_end_id, event.psp, event.txid, event.amount_centavos, event.processed_at, event.timestamp,
            event.source, event.transfer_id, event.credit_account_id, event.deposit_id, event.suspense_reason,
            position=position,
        )
        self.received_ids[event.originator_id] = event.end_to_end_id

        def forget() -> None:
            del self.received[event.end_to_end_id]
            del self.received_ids[event.originator_id]

        undo(forget)
        if event.suspense_reason is None:
            assert event.deposit_id is not None, "a Pix credited to a wallet pays a deposit"
            deposit = self.deposits[event.deposit_id]
            assert deposit.paid_by is None and deposit.wallet_id == event.credit_account_id
            self._set(self.deposits, deposit.id, undo, paid_by=event.end_to_end_id)

    def _refund_requested(self, event: PixRefundRequested, position: int | None, undo: Undo) -> None:
        assert event.originator_version == 1 and event.originator_id not in self.refunds
        received = self.received[event.end_to_end_id]
        self.refunds[event.originator_id] = Refund(
            event.originator_id, event.key, event.payload_hash, event.end_to_end_id, event.psp, event.refund_id,
            event.amount_centavos, event.hold_id, event.source_account_id, event.description, event.requested_by,
            event.timestamp, position=position,
        )
        undo(lambda: _drop(self.refunds, event.originator_id))
        self._set(self.received, received.end_to_end_id, undo, refund_ids=[*received.refund_ids, event.originator_id])

    @staticmethod
    def _set(table: dict[Any, Any], key: Any, undo: Undo, **changes: object) -> None:
        """Replaces a record by a changed copy (records are never changed in place: see ``frozen``)."""
        old = table[key]
        table[key] = replace(old, **changes)

        def revert() -> None:
            table[key] = old

        undo(revert)

    def set_position(self, originator_id: UUID, position: int) -> None:
        """Records the log position of the event that created a record (after its batch committed)."""
        tables: tuple[dict[UUID, Any], ...] = (self.deposits, self.withdrawals, self.refunds)
        for table in tables:
            if originator_id in table:
                table[originator_id] = replace(table[originator_id], position=position)
                return
        e2eid = self.received_ids.get(originator_id)
        if e2eid is not None:
            self.received[e2eid] = replace(self.received[e2eid], position=position)

    # ---- queries ----------------------------------------------------------------------------------------------
    def refunds_of(self, received: Received) -> list[Refund]:
        return [self.refunds[refund_id] for refund_id in received.refund_ids]

    def refundable_centavos(self, received: Received) -> int:
        """What a new devolução may still return: the Pix less every devolução not refused."""
        committed = sum(r.amount_centavos for r in self.refunds_of(received) if r.status != REFUND_REFUSED)
        return received.amount_centavos - committed

    def returned_centavos(self, received: Received) -> int:
        return sum(r.amount_centavos for r in self.refunds_of(received) if r.status == REFUND_RETURNED)

    def open_withdrawals(self) -> Iterator[Withdrawal]:
        return (w for w in self.withdrawals.values() if w.status == WITHDRAWAL_PROCESSING)

    def open_refunds(self) -> Iterator[Refund]:
        return (r for r in self.refunds.values() if r.status == REFUND_IN_PROGRESS)

    def open_items(self) -> Iterator[Received]:
        return (self.received[e2eid] for e2eid in self.items.values() if self.received[e2eid].item == ITEM_OPEN)

    def check_invariants(self, open_holds: Collection[UUID]) -> None:
        """Asserts what must always hold between PIX records and the ledger (a failure is a bug): a withdrawal or
        devolução in progress has its hold open, an ended one does not; a paid deposit names a credited Pix."""
        for w in self.withdrawals.values():
            assert (w.status == WITHDRAWAL_PROCESSING) == (w.hold_id in open_holds), f"withdrawal {w.id} hold"
        for r in self.refunds.values():
            assert (r.status == REFUND_IN_PROGRESS) == (r.hold_id in open_holds), f"devolução {r.id} hold"
        for d in self.deposits.values():
            assert d.paid_by is None or self.received[d.paid_by].deposit_id == d.id, f"deposit {d.id} payment"

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def frozen(self) -> PixTables:
        """A consistent snapshot of every record, cheap enough for the writer thread (records are immutable, so
        copying the tables is enough); ``pix_rows`` turns it into checkpoint rows anywhere, later."""
        return PixTables(dict(self.deposits), dict(self.received), dict(self.withdrawals), dict(self.refunds))

    def rows(self) -> dict[str, list[list[object]]]:
        """Every record as rows per kind, for ``LedgerCheckpoint.pix``."""
        return pix_rows(self.frozen())

    def restore(self, encoded: dict[str, str]) -> None:
        """Loads the records of a checkpoint (``encode_tables``) into an empty state."""
        assert not (self.deposits or self.received or self.withdrawals or self.refunds)
        rows = decode_tables(encoded)
        for row in rows.get("deposits", []):
            deposit = record_from_row(Deposit, row)
            self.deposits[deposit.id] = deposit
            self.deposits_by_txid[deposit.txid] = deposit.id
        for row in rows.get("received", []):
            received = record_from_row(Received, row)
            self.received[received.end_to_end_id] = received
            self.received_ids[received_id_for(received.end_to_end_id)] = received.end_to_end_id
            if received.item is not None:
                self.items[reconciliation_id_for(received.end_to_end_id)] = received.end_to_end_id
        for row in rows.get("withdrawals", []):
            withdrawal = record_from_row(Withdrawal, row)
            self.withdrawals[withdrawal.id] = withdrawal
        for row in rows.get("refunds", []):
            refund = record_from_row(Refund, row)
            self.refunds[refund.id] = refund

    def fingerprint(self) -> tuple[object, ...]:
        rows = self.rows()
        return tuple(sorted(repr(row) for row in rows[kind]) for kind in sorted(rows))
