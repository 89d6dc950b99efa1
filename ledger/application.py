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

from ledger.canonical import stored_text, stored_text_in_chunks
from ledger.events import LedgerCheckpoint, LedgerEvent, PendingTransferResolved, TransferCommitted
from ledger.index import IdFilter
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
        return self._stored(domain_event, stored_text)

    def checkpoint_to_stored_event(self, checkpoint: LedgerCheckpoint, pause: Callable[[], None]) -> StoredEvent:
        """``to_stored_event(checkpoint)``, byte for byte, with its long row lists encoded in chunks."""
        if not self.fast:
            return super().to_stored_event(checkpoint)
        return self._stored(checkpoint, lambda state: stored_text_in_chunks(
            state, CHECKPOINT_ROW_LISTS, CHECKPOINT_ROWS_CHUNK, pause))

    def _stored(self, event: LedgerEvent | LedgerCheckpoint, encode: Callable[[dict[str, Any]], bytes]) -> StoredEvent:
        """The library's stored event for ``event``, its state encoded by ``encode`` (the library's own path for
        a value ``encode`` refuses with ``TypeError``)."""
        cls = type(event)
        state = dict(vars(event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        try:
            text = encode(state)
        except TypeError:
            return super().to_stored_event(event)
        return StoredEvent(originator_id=originator_id, originator_version=originator_version, topic=get_topic(cls),
                           state=text)


#: The checkpoint's lists with a row per account or party (a million of each on a large ledger).
CHECKPOINT_ROW_LISTS = ("accounts", "parties")
#: Rows encoded (or built) between two calls of a background checkpoint's ``pause``.
CHECKPOINT_ROWS_CHUNK = 2_000


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

    def checkpoint_after(self, position: int) -> LedgerCheckpoint | None:
        """The oldest checkpoint in the snapshot store at a position after ``position``."""
        assert self.snapshots is not None
        found = list(self.snapshots.get(CHECKPOINT_ID, gt=position, limit=1))
        if not found:
            return None
        checkpoint = found[0]
        assert isinstance(checkpoint, LedgerCheckpoint)
        return checkpoint

    def replay_checking_checkpoints(self) -> tuple[LedgerState, list[int]]:
        """The whole log replayed from its start, as ``load_state(use_checkpoint=False)`` does, and every stored
        checkpoint compared with the replayed state as of the checkpoint's position; returns the state and the
        positions of the checkpoints checked.

        A restart trusts the latest checkpoint and replays only what follows it, so a checkpoint that differs from
        the log (a bug in how it was captured, or a changed row) would become the live state unnoticed: the chain
        and the invariants cannot see a balance moved between two accounts inside a checkpoint. Raises
        ``AssertionError`` naming the first checkpoint that differs, or one beyond the log's end."""
        state = LedgerState()
        checked: list[int] = []

        def compare(checkpoint: LedgerCheckpoint) -> None:
            restored = LedgerState()
            restore_checkpoint(restored, checkpoint)
            assert restored.fingerprint() == state.fingerprint(), (
                f"the checkpoint at position {checkpoint.position} differs from the log replayed to that position")
            checked.append(checkpoint.position)

        due = self.checkpoint_after(-1)
        for notification, event in self.iter_log():
            while due is not None and due.position < notification.id:
                compare(due)
                due = self.checkpoint_after(due.position)
            state.apply(event, notification.id)
            state.position = notification.id
        while due is not None:
            assert due.position <= state.position, (
                f"the checkpoint at position {due.position} is beyond the log's end ({state.position})")
            compare(due)
            due = self.checkpoint_after(due.position)
        state.check_invariants()
        return state, checked

    def write_checkpoint(self, state: LedgerState) -> LedgerCheckpoint:
        """Saves the whole state at its position so a restart replays only what follows."""
        checkpoint = self.capture_checkpoint(state)()
        self.save_checkpoint(checkpoint)
        return checkpoint

    @staticmethod
    def capture_checkpoint(state: LedgerState,
                           pause: Callable[[], None] | None = None) -> Callable[[], LedgerCheckpoint]:
        """Takes what a checkpoint of ``state`` needs, now, in the thread that owns the state; returns a function
        that builds the checkpoint from it later, on any thread (calling ``pause`` between chunks of work). Every
        account is copied now; the writer uses ``CheckpointTables``, which copies none on its own thread and rebuilds
        the rows of only what changed since its last capture."""
        return CheckpointTables().capture(state, pause, track=False)

    def save_checkpoint(self, checkpoint: LedgerCheckpoint, pause: Callable[[], None] | None = None) -> None:
        """Stores ``checkpoint`` in the snapshot store. With ``pause``, its account and party rows are encoded in
        chunks with a call of ``pause`` between them (same bytes), so a background thread does not hold the
        interpreter for the whole encoding (1.5 to 1.7 s for a million accounts on the VM of ADR 0016)."""
        assert self.snapshots is not None
        if pause is None or not isinstance(self.mapper, LedgerMapper):
            self.snapshots.put([checkpoint])
            return
        stored = self.mapper.checkpoint_to_stored_event(checkpoint, pause)
        self.snapshots.recorder.insert_events([stored])

    def load_state(self, *, use_checkpoint: bool = True, upto: int | None = None,
                   tables: CheckpointTables | None = None,
                   known_ids: tuple[IdFilter, int] | None = None) -> LedgerState:
        """Rebuilds the ledger state from the store: the latest checkpoint, then every later event.

        Each event's chain hash and balance transitions are re-verified while replaying. ``tables`` (the writer's)
        start from the checkpoint's rows, so the next capture copies only what changed after it. ``known_ids`` is
        a filter holding every transfer id committed up to a position (a writer's, reloading after a failed
        save): when the replay starts at or before that position, the state takes it as its ``committed_ids``,
        adds what it replays, and so knows every committed id without streaming them from the store.
        """
        state = LedgerState()
        checkpoint = self.latest_checkpoint(upto) if use_checkpoint else None
        if checkpoint is not None:
            restore_checkpoint(state, checkpoint)
            if tables is not None:
                tables.seed(state, checkpoint)
        if known_ids is not None and state.position <= known_ids[1]:
            state.committed_ids, state.committed_ids_complete = known_ids[0], True
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


class CheckpointTables:
    """The writer's checkpoints, built from what changed since the last capture rather than from every account.

    Copying every account in the writer thread stalls every command at every checkpoint: 1.1 s for a million
    accounts on the VM of ADR 0016. This keeps the account and party rows of the last capture, so only the
    accounts opened or changed since (which the state lists in ``changed_accounts``) are turned into rows again.
    Parties never change once registered, so only the new ones get rows.

    The writer thread copies nothing: a capture takes the list of changed accounts (or, for a full one, a list of
    every account) by reference, and the build reads each account's fields on its own thread while the writer goes
    on. An account the writer changes before the build is over has its fields as of the capture saved first, by
    the state, on its first change since (``LedgerState.saved_for_build``), and the build takes those (ADR 0017).

    Captures must be built one at a time and in order (the writer captures only when the last build has
    finished). A build that fails makes the next capture a full one.
    """

    def __init__(self) -> None:
        #: Account id (text) -> row, as of the last capture that was built (touched by ``build`` only).
        self._rows: dict[object, list[object]] = {}
        #: Rows of the checkpoint a restarted writer started from, not yet in ``_rows``.
        self._seed_rows: list[list[object]] = []
        self._party_rows: list[list[object]] = []
        self._full_next = True
        #: Ids (text) of the accounts whose rows the last build made again, in order: what a capture cost.
        self.last_rebuilt: list[object] = []

    def seed(self, state: LedgerState, checkpoint: LedgerCheckpoint) -> None:
        """Takes the rows of the checkpoint ``state`` was just restored from as those of the last capture, and
        has the state list its changes from now on, so even the first capture copies only what changed since."""
        assert state.position == checkpoint.position and state.changed_accounts is None, "seeded after replaying"
        self._rows = {}
        self._seed_rows = checkpoint.accounts  # made a table by the first build, off the writer thread
        self._party_rows = list(checkpoint.parties)
        self._full_next = False
        state.changed_accounts = []

    def capture(self, state: LedgerState, pause: Callable[[], None] | None = None, *,
                track: bool = True) -> Callable[[], LedgerCheckpoint]:
        """Takes what a checkpoint of ``state`` needs, now, in the thread that owns the state; returns a function
        that builds the checkpoint later, on any thread, calling ``pause`` between chunks of work. The PIX records
        are immutable, so their tables are only copied here.

        With ``track`` (the writer) the accounts are taken by reference: those changed since the last capture, or
        all of them at the first, after a failed build, or before the state lists its changes; the state saves
        the fields of any of them it changes before the build is over. The state then starts (or goes on)
        listing the accounts it changes, for the next capture. Without ``track`` every account is copied now.
        """
        position, chain_hash = state.position, state.chain_hash
        changed_accounts = state.changed_accounts
        full = self._full_next or changed_accounts is None or not track
        self._full_next = False
        saved: dict[int, tuple[Any, ...]] | None = None
        if not track:
            accounts: list[Any] = [a.values() for a in state.accounts.values()]
        else:
            accounts = list(state.accounts.values()) if full or changed_accounts is None else changed_accounts
            saved = state.saved_for_build = {}
            state.changed_accounts = []
            state.capture_round += 1  # unlists every account, without visiting them
        pending = [p.row() for p in state.pending.values()]
        parties = list(state.parties.values())  # registered parties never change: copying the list is enough
        pix = state.pix.frozen()

        def values_at_capture(account: Account) -> tuple[Any, ...]:
            assert saved is not None
            # Read first, then look for saved fields: the state saves them before it changes anything, so if
            # none were saved by now, nothing changed before or while these were read. (A saved entry's key is
            # the ``id`` of an account alive since the capture: ``accounts`` holds it, so no other has its id.)
            values = account.values()
            return saved.get(id(account), values)

        def build() -> LedgerCheckpoint:
            try:
                if full:
                    # Every account's row is replaced below (accounts are never removed), chunk by chunk: the old
                    # table is not dropped at once, which would free a row per account in one go.
                    self._seed_rows = []
                rows, party_rows, seed_rows = self._rows, self._party_rows, self._seed_rows
                for start in range(0, len(seed_rows), CHECKPOINT_ROWS_CHUNK):
                    rows.update((row[0], row) for row in seed_rows[start:start + CHECKPOINT_ROWS_CHUNK])
                    if pause is not None:
                        pause()
                self._seed_rows = []
                rebuilt: list[object] = []
                for start in range(0, len(accounts), CHECKPOINT_ROWS_CHUNK):
                    for item in accounts[start:start + CHECKPOINT_ROWS_CHUNK]:
                        row = Account.row_of(item if saved is None else values_at_capture(item))
                        rows[row[0]] = row
                        rebuilt.append(row[0])
                    if pause is not None:
                        pause()
                self.last_rebuilt = rebuilt
                if len(party_rows) > len(parties) or (party_rows and party_rows[-1][0] != str(
                        parties[len(party_rows) - 1].id)):
                    party_rows.clear()  # not the parties of the last capture plus new ones: start again
                for start in range(len(party_rows), len(parties), CHECKPOINT_ROWS_CHUNK):
                    party_rows.extend(p.row() for p in parties[start:start + CHECKPOINT_ROWS_CHUNK])
                    if pause is not None:
                        pause()
                return LedgerCheckpoint(
                    originator_id=CHECKPOINT_ID, originator_version=position, timestamp=datetime.now(UTC),
                    position=position, chain_hash=chain_hash, accounts=list(rows.values()), pending=pending,
                    parties=list(party_rows), pix=encode_tables(pix, pause),
                )
            except BaseException:
                self._full_next = True
                raise
            finally:
                if saved is not None and state.saved_for_build is saved:
                    state.saved_for_build = None  # this build is over: the state stops saving fields for it

        return build


def restore_checkpoint(state: LedgerState, checkpoint: LedgerCheckpoint) -> None:
    state.position = state.checkpoint_position = checkpoint.position
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
    # Transfers before the checkpoint are not in memory: unknown keys must now be looked up in the store, and the
    # filter of committed ids knows none of them yet.
    state.index_complete = False
    state.committed_ids_complete = False


def ledger_env(extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment the application needs besides persistence settings."""
    env = {"IS_SNAPSHOTTING_ENABLED": "y"}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env
