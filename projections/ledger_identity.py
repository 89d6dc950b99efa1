"""Whether the read models were built from this ledger.

The tracking row keeps the position the read models reached and the chain hash of the ledger's event there. The
chain hash commits to every event before it, so if the ledger's event at that position has the same hash, the read
models are a prefix of this very ledger; if it has another hash, or the ledger has no event there, they were built
from another ledger (its database dropped and created again, a restore to an earlier point, a DSN pointing at the
wrong server). Kafka cannot tell: positions restart at 1 in a new ledger, and the projector would drop the new
ledger's events up to the old position as redeliveries, then serve the old ledger's rows.

The projector checks this at start and refuses to run; the refusal is written to the tracking row with the prefix
``LEDGER_MISMATCH``, and the query API answers ``QUERY_LEDGER_MISMATCH`` instead of serving those rows.
"""

from __future__ import annotations

from typing import Any, Final

from ledger.contracts import stored_chain_hash
from projections.bootstrap import NotificationLog

#: The prefix of a tracking row's ``halted_reason`` when the read models are not of this ledger.
LEDGER_MISMATCH: Final = "LEDGER_MISMATCH"

#: What an operator does about it (docs/runbook.md).
REMEDY: Final = ("check that the ledger's DSN is right; if the ledger really was replaced, stop the projector, run "
                 "`razao projections reset` (it drops these read models) and start the projector again: it projects "
                 "this ledger from position 0")


def log_record(log: NotificationLog, position: int) -> tuple[Any, ...] | None:
    """The log's raw record at ``position`` (id, aggregate id, version, topic, state), or None if it has none."""
    select_rows = getattr(log, "select_rows", None)
    if select_rows is not None:
        rows = select_rows(position, 1, position)
    else:
        rows = [(n.id, n.originator_id, n.originator_version, n.topic, n.state)
                for n in log.select_notifications(position, limit=1, stop=position)]
    return tuple(rows[0]) if rows and rows[0][0] == position else None


def chain_hash_at(log: NotificationLog, position: int) -> str | None:
    """The chain hash of the ledger's event at ``position``, or None if the log has no record there."""
    record = log_record(log, position)
    return None if record is None else stored_chain_hash(bytes(record[4]))


def ledger_mismatch(log: NotificationLog, position: int, chain_hash: str) -> str | None:
    """Why read models at ``position`` with ``chain_hash`` cannot be of this ledger, or None when they are."""
    if position == 0:
        return None
    found = chain_hash_at(log, position)
    if found == chain_hash:
        return None
    if found is None:
        head = log.max_notification_id() or 0
        what = f"the ledger has no event at position {position} (it ends at {head})"
    else:
        what = f"the ledger's event there has chain hash {found}"
    return (f"{LEDGER_MISMATCH}: the read models reached log position {position} with chain hash {chain_hash}, but "
            f"{what}: they were built from another ledger")


def is_ledger_mismatch(halted_reason: str | None) -> bool:
    return halted_reason is not None and halted_reason.startswith(LEDGER_MISMATCH)
