"""Ports: what the ledger needs from infrastructure, as Protocols. Adapters live in ``infra/``."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol
from uuid import UUID

from eventsourcing.persistence import StoredEvent

# Errors an adapter raises through a port; re-exported so adapters depend on ports only.
from ledger.errors import LedgerUnavailable, WriterBusy, WriterFenced

__all__ = ["LedgerUnavailable", "TransferLookup", "WriterBusy", "WriterFenced", "WriterLease"]


class WriterLease(Protocol):
    """Exclusive ownership of the ledger writer, so a second writer process can never corrupt it.

    ``acquire`` returns a fencing epoch that increases with every acquisition; every save carries it, and the
    store refuses a save whose epoch is no longer current (a writer that lost its lease cannot commit).
    """

    def acquire(self) -> int:
        """Takes the lease or raises ``WriterBusy``."""
        ...

    def release(self) -> None: ...


class TransferLookup(Protocol):
    """Finds committed transfer events by transfer id, when the in-memory index no longer has them."""

    def find(self, transfer_ids: Collection[UUID]) -> Sequence[tuple[int, StoredEvent]]:
        """Every stored event of those transfer aggregates, each with its notification id (log position)."""
        ...
