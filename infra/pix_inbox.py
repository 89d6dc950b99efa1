"""The PIX webhook inbox in Postgres (``ledger.ports.PixInbox``, ADR 0009).

Two tables: ``pix_webhook_deliveries`` keeps every accepted webhook POST as it arrived (raw body, PSP, delivery id)
for audit; ``pix_inbox`` has one row per endToEndId, inserted with ``ON CONFLICT DO NOTHING``, so the fifth
delivery of a Pix costs one index probe and changes nothing. A row stays ``received`` until the inbox processor has
confirmed the Pix with its PSP and the ledger has credited it (or decided it cannot be).

``append`` stores many deliveries in one transaction (the caller group-commits webhook POSTs), with ``unnest`` so the
statement count does not grow with the batch. Every method raises ``LedgerUnavailable`` when Postgres cannot be
reached, so the webhook is answered 503 and the PSP delivers it again.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from ledger.ports import InboxDelivery, InboxEntry, LedgerUnavailable, NotifiedPix

T = TypeVar("T")

#: Rows ``due`` returns at most, whatever is asked.
DUE_ROWS_MAX: Final = 5_000
#: A failure note as stored.
NOTE_LENGTH_MAX: Final = 500
#: Rows one pruning statement deletes at most: short statements, so the webhooks' inserts never wait long.
PRUNE_BATCH_ROWS: Final = 10_000

DDL: Final = (
    """CREATE TABLE IF NOT EXISTS pix_webhook_deliveries (
        id uuid PRIMARY KEY,
        psp text NOT NULL,
        delivery_id text,
        pix_count integer NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        body bytea NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pix_inbox (
        end_to_end_id text PRIMARY KEY,
        psp text NOT NULL,
        valor_centavos bigint NOT NULL,
        horario timestamptz NOT NULL,
        txid text,
        delivery uuid NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        status text NOT NULL DEFAULT 'received',
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        note text,
        done_at timestamptz)""",
    "CREATE INDEX IF NOT EXISTS pix_inbox_due ON pix_inbox (next_attempt_at) WHERE status = 'received'",
    # What `prune` looks for, oldest first, without reading the whole table for each batch (the waiting rows that
    # keep a delivery are few: they are found through pix_inbox_due's rows).
    "CREATE INDEX IF NOT EXISTS pix_inbox_done ON pix_inbox (done_at) WHERE status <> 'received'",
    "CREATE INDEX IF NOT EXISTS pix_webhook_deliveries_received ON pix_webhook_deliveries (received_at)",
)


class PostgresPixInbox:
    """``PixInbox`` on Postgres. Thread safe (a connection pool); nothing connects before the first call."""

    def __init__(self, dsn: str, *, pool_size_max: int = 4, connect_timeout_s: int = 5) -> None:
        self._pool = ConnectionPool(dsn, min_size=1, max_size=pool_size_max, open=False, timeout=connect_timeout_s,
                                    kwargs={"autocommit": True, "connect_timeout": connect_timeout_s})
        self._opened = False
        self._open_lock = threading.Lock()

    def close(self) -> None:
        if self._opened:
            self._pool.close()

    def ensure_schema(self) -> None:
        def create(conn: Any) -> None:
            with conn.transaction():
                # Two processes starting at once must not race on CREATE TABLE IF NOT EXISTS.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('razao:pix_inbox:ddl'))")
                for statement in DDL:
                    conn.execute(statement)

        self._run(create)

    def append(self, deliveries: Sequence[InboxDelivery]) -> set[str]:
        if not deliveries:
            return set()
        # Rows travel as one JSON document each (parsed by Postgres in C): adapting Python lists element by element
        # cost more CPU than the whole insert at a thousand webhooks a second.
        records: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for delivery in deliveries:
            delivery_uuid = str(uuid.uuid4())
            records.append({"id": delivery_uuid, "psp": delivery.psp, "delivery_id": delivery.delivery_id,
                            "pix_count": len(delivery.items), "body": base64.b64encode(delivery.body).decode()})
            rows.extend({"e": pix.end_to_end_id, "p": delivery.psp, "v": pix.amount_centavos,
                         "h": pix.processed_at.isoformat(), "t": pix.txid, "d": delivery_uuid}
                        for pix in delivery.items)

        def append(conn: Any) -> set[str]:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO pix_webhook_deliveries (id, psp, delivery_id, pix_count, body) "
                    "SELECT id, psp, delivery_id, pix_count, decode(body, 'base64') "
                    "FROM jsonb_to_recordset(%s::jsonb) AS r(id uuid, psp text, delivery_id text, pix_count integer, "
                    "body text)", (json.dumps(records),))
                if not rows:
                    return set()
                inserted = conn.execute(
                    "INSERT INTO pix_inbox (end_to_end_id, psp, valor_centavos, horario, txid, delivery) "
                    "SELECT e, p, v, h, t, d FROM jsonb_to_recordset(%s::jsonb) "
                    "AS r(e text, p text, v bigint, h timestamptz, t text, d uuid) "
                    "ON CONFLICT (end_to_end_id) DO NOTHING RETURNING end_to_end_id", (json.dumps(rows),)).fetchall()
                return {str(row[0]) for row in inserted}

        return self._run(append)

    def due(self, limit: int) -> list[InboxEntry]:
        limit = max(1, min(limit, DUE_ROWS_MAX))
        rows = self._run(lambda conn: conn.execute(
            "SELECT end_to_end_id, psp, valor_centavos, horario, txid, attempts FROM pix_inbox "
            "WHERE status = 'received' AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT %s",
            (limit,)).fetchall())
        return [InboxEntry(str(r[1]), NotifiedPix(str(r[0]), int(r[2]), r[3], r[4]), int(r[5])) for r in rows]

    def finish(self, outcomes: Sequence[tuple[str, str, str | None]]) -> None:
        if not outcomes:
            return
        rows = [{"e": e, "s": status, "n": None if note is None else note[:NOTE_LENGTH_MAX]}
                for e, status, note in outcomes]
        self._run(lambda conn: conn.execute(
            "UPDATE pix_inbox SET status = u.s, note = u.n, done_at = now(), attempts = attempts + 1 "
            "FROM jsonb_to_recordset(%s::jsonb) AS u(e text, s text, n text) WHERE end_to_end_id = u.e",
            (json.dumps(rows),)))

    def retry(self, retries: Sequence[tuple[str, str, float]]) -> None:
        if not retries:
            return
        rows = [{"e": e, "n": note[:NOTE_LENGTH_MAX], "d": delay_s} for e, note, delay_s in retries]
        self._run(lambda conn: conn.execute(
            "UPDATE pix_inbox SET attempts = attempts + 1, note = u.n, "
            "next_attempt_at = now() + make_interval(secs => u.d) "
            "FROM jsonb_to_recordset(%s::jsonb) AS u(e text, n text, d float8) WHERE end_to_end_id = u.e",
            (json.dumps(rows),)))

    def prune(self, done_before: datetime, *, deliveries_before: datetime | None = None) -> tuple[int, int]:
        """Deletes the inbox rows finished (credited, suspense, invalid, conflict) before ``done_before`` and, with
        ``deliveries_before``, the raw deliveries received before it that no waiting row came from; returns how
        many of each. Rows still waiting are never touched.

        Safe at any age: a Pix delivered again after its row is gone is stored anew, confirmed again, and the
        ledger, which keeps every received Pix by endToEndId, answers that it was credited already.
        """
        rows = self._delete_in_batches(
            "DELETE FROM pix_inbox WHERE end_to_end_id IN (SELECT end_to_end_id FROM pix_inbox "
            "WHERE status <> 'received' AND done_at < %s LIMIT %s)", done_before)
        deliveries = 0 if deliveries_before is None else self._delete_in_batches(
            "DELETE FROM pix_webhook_deliveries WHERE id IN (SELECT d.id FROM pix_webhook_deliveries d "
            "WHERE d.received_at < %s AND NOT EXISTS (SELECT 1 FROM pix_inbox i WHERE i.delivery = d.id "
            "AND i.status = 'received') LIMIT %s)", deliveries_before)
        return rows, deliveries

    def _delete_in_batches(self, statement: str, before: datetime) -> int:
        deleted = 0
        while True:
            count = self._run(lambda conn: conn.execute(statement, (before, PRUNE_BATCH_ROWS)).rowcount)
            deleted += count
            if count < PRUNE_BATCH_ROWS:
                return deleted

    def pending_count(self) -> int:
        row = self._run(lambda conn: conn.execute(
            "SELECT count(*) FROM pix_inbox WHERE status = 'received'").fetchone())
        return int(row[0])

    def status_of(self, end_to_end_id: str) -> dict[str, Any] | None:
        """One row, for tools and tests: status, attempts, note."""
        row = self._run(lambda conn: conn.execute(
            "SELECT status, attempts, note, psp FROM pix_inbox WHERE end_to_end_id = %s",
            (end_to_end_id,)).fetchone())
        return None if row is None else {"status": row[0], "attempts": row[1], "note": row[2], "psp": row[3]}

    def _run(self, work: Callable[[Any], T]) -> T:
        if not self._opened:
            with self._open_lock:
                if not self._opened:
                    self._pool.open()
                    self._opened = True
        try:
            with self._pool.connection() as conn:
                return work(conn)
        except psycopg.OperationalError as exc:
            raise LedgerUnavailable(f"PIX inbox unavailable: {exc}") from exc
