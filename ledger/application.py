"""The ledger application on ``eventsourcing``: its event store, state rebuild and checkpoints.

The application knows nothing of Postgres: the persistence module comes from its environment
(``PERSISTENCE_MODULE``), wired by ``infra`` at bootstrap. Writes go through ``LedgerWriter`` (group commit,
single writer); this class is the store it writes to and reads back from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Cipher,
    Compressor,
    DatetimeAsISO,
    JSONTranscoder,
    Mapper,
    Notification,
    StoredEvent,
    Transcoder,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic

from ledger.canonical import stored_text
from ledger.events import LedgerCheckpoint, LedgerEvent, PendingTransferResolved, TransferCommitted
from ledger.limits import REBUILD_PAGE_EVENTS_MAX
from ledger.model import Account, LedgerState, PendingTransfer
from ledger.parties import Party
from ledger.pix_state import encode_tables
from ledger.ports import TransferLookup

log = logging.getLogger(__name__)

#: The snapshot-store id under which ledger checkpoints are kept (version = log position).
CHECKPOINT_ID = UUID("0b7c4f5e-1d2a-4c3b-8e9f-a1b2c3d4e5f6")


class LedgerMapper(Mapper[UUID]):
    """The library's mapper, with a shorter path to the very same stored bytes for the ledger's events.

    The library's JSON transcoder calls back into Python for every UUID and datetime it meets (four or five per
    transfer, on the writer's hot path). Here those values are wrapped first, exactly as its transcodings would
    (``{"_type_": "uuid_hex", ...}``, ``{"_type_": "datetime_iso", ...}``), and the state is encoded with the
    transcoder's settings (``ledger.canonical.stored_text``). Anything else (a nested UUID, another type, a
    compressor or cipher) takes the library's path. A test checks both paths give identical bytes for every event type.
    Checkpoints take the same path: their rows are lists of plain values, which orjson encodes in a few
    milliseconds where the standard encoder holds the interpreter lock for tens (10,000 accounts).
    """

    def __init__(self, transcoder: Transcoder, compressor: Compressor | None = None,
                 cipher: Cipher | None = None) -> None:
        super().__init__(transcoder, compressor, cipher)
        self.fast = (
            isinstance(transcoder, JSONTranscoder) and compressor is None and cipher is None
            and isinstance(transcoder.types.get(UUID), UUIDAsHex)
            and isinstance(transcoder.types.get(datetime), DatetimeAsISO)
        )

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        if not self.fast or not isinstance(domain_event, LedgerEvent | LedgerCheckpoint):
            return super().to_stored_event(domain_event)
        cls = type(domain_event)
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        try:
            text = stored_text(state)
        except TypeError:
            return super().to_stored_event(domain_event)
        return StoredEvent(originator_id=originator_id, originator_version=originator_version, topic=get_topic(cls),
                           state=text)


class LedgerApplication(Application[UUID]):
    """The event-sourced ledger. Events are saved by the writer; anyone may read the log."""

    name = "Ledger"
    # Checkpoints use the library's snapshot store.
    is_snapshotting_enabled = True

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=LedgerMapper)

    def append(self, events: Sequence[LedgerEvent], **kwargs: Any) -> list[int]:
        """Stores ``events`` in one transaction of the event store and returns their log positions, in order.

        What ``Application.save`` and ``EventStore.put`` do for events (the mapper, then the recorder), minus what
        the ledger does not use and pays for per event on the writer's hot path: the runtime protocol checks,
        aggregate snapshots, process-notification hooks, and a ``Recording`` and a ``Notification`` object per
        event. ``kwargs`` reach the recorder (the writer passes its fencing epoch).
        """
        stored = list(map(self.mapper.to_stored_event, events))
        positions = self.recorder.insert_events(stored, **kwargs)
        assert positions is not None and len(positions) == len(stored), "the recorder returned no log positions"
        return list(positions)

    def iter_log(self, after: int = 0, upto: int | None = None) -> Iterator[tuple[Notification, LedgerEvent]]:
        """Yields ``(notification, event)`` in log order after ``after`` (exclusive), up to ``upto``."""
        start = after + 1
        while True:
            page = self.recorder.select_notifications(start, limit=REBUILD_PAGE_EVENTS_MAX, stop=upto)
            if not page:
                return
            for n in page:
                event = self.mapper.to_domain_event(n)
                assert isinstance(event, LedgerEvent), f"unexpected event {n.topic} at {n.id}"
                yield n, event
            start = page[-1].id + 1

    def latest_checkpoint(self, upto: int | None = None) -> LedgerCheckpoint | None:
        assert self.snapshots is not None
        found = list(self.snapshots.get(CHECKPOINT_ID, lte=upto, desc=True, limit=1))
        if not found:
            return None
        checkpoint = found[0]
        assert isinstance(checkpoint, LedgerCheckpoint)
        return checkpoint

    def write_checkpoint(self, state: LedgerState) -> LedgerCheckpoint:
        """Saves the whole state at its position so a restart replays only what follows."""
        checkpoint = self.capture_checkpoint(state)()
        self.save_checkpoint(checkpoint)
        return checkpoint

    @staticmethod
    def capture_checkpoint(state: LedgerState,
                           pause: Callable[[], None] | None = None) -> Callable[[], LedgerCheckpoint]:
        """Takes what a checkpoint of ``state`` needs, now, in the thread that owns the state; returns a function
        that builds the checkpoint from it later, on any thread (calling ``pause`` between chunks of work). The PIX
        records are immutable, so they are only copied as tables here (cheap) and encoded by the returned
        function."""
        position, chain_hash = state.position, state.chain_hash
        # Plain tuples now (about 0.3 µs an account); their rows, with ids as text, are built later by ``build``.
        accounts = [a.values() for a in state.accounts.values()]
        pending = [p.row() for p in state.pending.values()]
        parties = [p.row() for p in state.parties.values()]
        pix = state.pix.frozen()

        def build() -> LedgerCheckpoint:
            return LedgerCheckpoint(
                originator_id=CHECKPOINT_ID, originator_version=position, timestamp=datetime.now(UTC),
                position=position, chain_hash=chain_hash, accounts=_account_rows(accounts, pause), pending=pending,
                parties=parties,
                pix=encode_tables(pix, pause),
            )

        return build

    def save_checkpoint(self, checkpoint: LedgerCheckpoint) -> None:
        assert self.snapshots is not None
        self.snapshots.put([checkpoint])

    def load_state(self, *, use_checkpoint: bool = True, upto: int | None = None) -> LedgerState:
        """Rebuilds the ledger state from the store: the latest checkpoint, then every later event.

        Each event's chain hash and balance transitions are re-verified while replaying.
        """
        state = LedgerState()
        checkpoint = self.latest_checkpoint(upto) if use_checkpoint else None
        if checkpoint is not None:
            restore_checkpoint(state, checkpoint)
        count = 0
        for notification, event in self.iter_log(after=state.position, upto=upto):
            state.apply(event, notification.id)
            state.position = notification.id
            count += 1
        state.check_invariants()
        state.trim_index()
        log.info("ledger state loaded: checkpoint=%s, replayed=%d events, position=%d",
                 checkpoint.position if checkpoint else None, count, state.position)
        return state

    def load_transfers(self, lookup: TransferLookup, state: LedgerState, transfer_ids: set[UUID]) -> None:
        """Puts committed transfers the index forgot back into it, with how each pending one ended."""
        by_id: dict[UUID, tuple[TransferCommitted, int]] = {}
        endings: dict[UUID, str] = {}
        for notification_id, stored in lookup.find(transfer_ids):
            event = self.mapper.to_domain_event(stored)
            if isinstance(event, TransferCommitted):
                by_id[event.originator_id] = (event, notification_id)
            elif isinstance(event, PendingTransferResolved):
                endings[event.originator_id] = event.resolution
            else:
                endings[event.originator_id] = "expired"
        for transfer_id, (event, position) in by_id.items():
            if transfer_id not in state.transfers:
                state.remember(event, position, endings.get(transfer_id))


#: Account rows built between two calls of a checkpoint's ``pause``.
CHECKPOINT_ACCOUNTS_CHUNK = 2_000


def _account_rows(values: list[tuple[Any, ...]], pause: Callable[[], None] | None) -> list[list[object]]:
    rows: list[list[object]] = []
    for start in range(0, len(values), CHECKPOINT_ACCOUNTS_CHUNK):
        rows.extend(Account.row_of(v) for v in values[start:start + CHECKPOINT_ACCOUNTS_CHUNK])
        if pause is not None:
            pause()
    return rows


def restore_checkpoint(state: LedgerState, checkpoint: LedgerCheckpoint) -> None:
    state.position = checkpoint.position
    state.chain_hash = checkpoint.chain_hash
    for row in checkpoint.accounts:
        account = Account.from_row(row)
        state.accounts[account.id] = account
    for row in checkpoint.parties:
        state.add_party(Party.from_row(row))
    state.pix.restore(checkpoint.pix)
    for row in checkpoint.pending:
        pending = PendingTransfer.from_row(row)
        state.pending[pending.id] = pending
        if pending.expires_at is not None:
            state.push_expiry(pending)
    # Transfers before the checkpoint are not in memory: unknown keys must now be looked up in the store.
    state.index_complete = False


def ledger_env(extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment the application needs besides persistence settings."""
    env = {"IS_SNAPSHOTTING_ENABLED": "y"}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env
