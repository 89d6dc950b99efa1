"""In-memory implementations of the ledger's ports, for unit tests and the Python-only demo.

They pass the same contract tests as the Postgres adapters (``tests/integration/test_ports_contract.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Notification, StoredEvent

from ledger.errors import WriterBusy


class InMemoryWriterLease:
    """A process-local lease: one holder at a time, a new epoch per acquisition."""

    _lock = threading.Lock()
    _held: set[str] = set()
    _epochs: dict[str, int] = {}

    def __init__(self, name: str = "ledger") -> None:
        self.name = name
        self.epoch: int | None = None

    def acquire(self) -> int:
        with self._lock:
            if self.name in self._held:
                raise WriterBusy(f"the ledger writer lease {self.name!r} is held by another writer")
            self._held.add(self.name)
            self.epoch = self._epochs.get(self.name, 0) + 1
            self._epochs[self.name] = self.epoch
            return self.epoch

    def release(self) -> None:
        with self._lock:
            if self.epoch is not None:
                self._held.discard(self.name)
                self.epoch = None


class RecorderTransferLookup:
    """Looks transfers up by scanning the recorder's notification log (fine for small in-memory stores)."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        self.recorder = recorder

    def find(self, transfer_ids: Collection[UUID]) -> Sequence[tuple[int, StoredEvent]]:
        wanted = set(transfer_ids)
        return [(n.id, n) for n in self._notifications() if n.originator_id in wanted]

    def originator_ids(self, topic: str, upto: int) -> Iterator[UUID]:
        for n in self._notifications():
            if n.id > upto:
                return
            if n.topic == topic:
                yield n.originator_id  # type: ignore[misc]  # the ledger's aggregates have UUID ids

    def _notifications(self) -> Iterator[Notification]:
        start = 1
        while True:
            page = self.recorder.select_notifications(start, limit=1000)
            if not page:
                return
            yield from page
            start = page[-1].id + 1
