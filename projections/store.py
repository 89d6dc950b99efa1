"""Applying row changes to Postgres: the live projection's exactly-once batches and the rebuild's bulk load.

``ChangeBuffer`` folds the changes of many events by (table, key) into one net change per row, then writes them
with COPY (new rows) and batched statements (upserts, updates, deletes). The live path and the rebuild share it,
so they can only differ in batch size.

``ProjectionStore.apply`` is the exactly-once step: in one transaction it locks the projection's tracking row,
drops events at or before the tracked position (redeliveries, duplicates), refuses an event whose
``previous_chain_hash`` is not the tracked hash (a gap: an event is missing), applies the rest, moves the tracking
row and notifies listeners. The row lock also serialises two projector instances during a rebalance, so a batch
applied by one is a no-op for the other.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ledger.contracts import GENESIS_CHAIN_HASH, ContractError, IntegrationEvent
from projections.projector import Change, Delete, Insert, Update, Upsert, project
from projections.schema import (
    LIVE_SCHEMA,
    PROJECTION,
    TABLES,
    Table,
    add_constraints,
    create_schema,
    ensure_schema,
    notify_channel,
)

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]


class ProjectionBug(AssertionError):
    """The row changes do not fit the table (an update of a missing row, an insert of an existing one)."""


# ------------------------------------------------------------------------------------------- change buffer

_INSERT, _UPSERT, _UPDATE, _DELETE = "insert", "upsert", "update", "delete"


class ChangeBuffer:
    """Net row changes of many events, keyed by (table, primary key), in first-touched order."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, tuple[Any, ...]], list[Any]] = {}
        #: Rows of append-only tables, in order: they can only be new, so there is nothing to fold.
        self._appended: dict[str, list[tuple[Any, ...]]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self._rows) + sum(len(rows) for rows in self._appended.values())

    def add(self, change: Change) -> None:
        kind, table = type(change), change.table
        if table.append_only:
            assert kind is Insert, f"{table.name} only takes inserts"
            self._appended[table.name].append(change[1])
            return
        key = change[1] if kind is Update or kind is Delete else change[1][: table.key_columns]
        slot = (table.name, key)
        current = self._rows.get(slot)
        if current is None:
            self._rows[slot] = self._fresh(change)
            return
        state = current[0]
        if kind is Insert:
            if state != _DELETE:
                raise ProjectionBug(f"{table.name} {key} inserted twice")
            self._rows[slot] = [_UPSERT, change[1]]
        elif kind is Upsert:
            self._rows[slot] = [_INSERT if state == _INSERT else _UPSERT, change[1]]
        elif kind is Update:
            if state == _DELETE:
                raise ProjectionBug(f"{table.name} {key} updated after its deletion")
            values = change[2]
            if state == _UPDATE:
                current[1].update(values)
            else:
                current[1] = _patched(table, current[1], values)
        elif state == _INSERT:
            del self._rows[slot]  # created and removed within the buffer: the table never sees it
        elif state == _DELETE:
            raise ProjectionBug(f"{table.name} {key} deleted twice")
        else:
            self._rows[slot] = [_DELETE, None]

    @staticmethod
    def _fresh(change: Change) -> list[Any]:
        kind = type(change)
        if kind is Insert:
            return [_INSERT, change[1]]
        if kind is Upsert:
            return [_UPSERT, change[1]]
        if kind is Update:
            return [_UPDATE, dict(change[2])]
        return [_DELETE, None]

    def extend(self, changes: Iterable[Change]) -> None:
        add = self.add
        for change in changes:
            add(change)

    def flush(self, conn: Conn, schema: str) -> None:
        """Writes every net change in the caller's transaction, then empties the buffer."""
        grouped: dict[tuple[str, str], list[tuple[tuple[Any, ...], Any]]] = defaultdict(list)
        for (table_name, key), (state, data) in self._rows.items():
            grouped[(state, table_name)].append((key, data))
        for table in TABLES:  # parents first, which the rebuild's bare tables do not need but readers like
            if table.append_only:
                if self._appended.get(table.name):
                    _copy(conn, schema, table, self._appended[table.name])
            elif rows := grouped.get((_INSERT, table.name)):
                _copy(conn, schema, table, [row for _, row in rows])
        for table in TABLES:
            if rows := grouped.get((_UPSERT, table.name)):
                _upsert(conn, schema, table, [row for _, row in rows])
            if rows := grouped.get((_UPDATE, table.name)):
                _update(conn, schema, table, rows)
            if rows := grouped.get((_DELETE, table.name)):
                _delete(conn, schema, table, [key for key, _ in rows])
        self._rows.clear()
        self._appended.clear()


def _patched(table: Table, row: tuple[Any, ...], values: dict[str, Any]) -> tuple[Any, ...]:
    patched = list(row)
    for column, value in values.items():
        patched[table.columns.index(column)] = value
    return tuple(patched)


def _ident(schema: str, table: Table) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table.name))


def _columns(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _copy(conn: Conn, schema: str, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(_ident(schema, table), _columns(table.columns))
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _upsert(conn: Conn, schema: str, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    others = table.columns[table.key_columns:]
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
        _ident(schema, table), _columns(table.columns), sql.SQL(", ").join(sql.Placeholder() * len(table.columns)),
        _columns(table.key),
        sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in others),
    )
    with conn.cursor() as cur:
        cur.executemany(statement, rows)


def _where_key(table: Table) -> sql.Composed:
    return sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in table.key)


def _update(conn: Conn, schema: str, table: Table, rows: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for key, values in rows:
        columns = tuple(values)
        by_columns[columns].append((*values.values(), *key))
    for columns, params in by_columns.items():
        statement = sql.SQL("UPDATE {} SET {} WHERE {}").format(
            _ident(schema, table), sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns),
            _where_key(table),
        )
        with conn.cursor() as cur:
            cur.executemany(statement, params)
            if cur.rowcount != len(params):
                raise ProjectionBug(f"{len(params) - cur.rowcount} updates of {table.name} found no row")


def _delete(conn: Conn, schema: str, table: Table, keys: Sequence[tuple[Any, ...]]) -> None:
    statement = sql.SQL("DELETE FROM {} WHERE {}").format(_ident(schema, table), _where_key(table))
    with conn.cursor() as cur:
        cur.executemany(statement, keys)
        if cur.rowcount != len(keys):
            raise ProjectionBug(f"{len(keys) - cur.rowcount} deletions from {table.name} found no row")


# --------------------------------------------------------------------------------------------- live store


@dataclass(frozen=True)
class Tracking:
    position: int
    chain_hash: str
    events_applied: int
    halted_reason: str | None
    halted_position: int | None


@dataclass(frozen=True)
class Outcome:
    """What one ``apply`` did. ``gap`` is the first event that did not link to the tracked hash; ``poison`` the
    first event the projector could not turn into rows (with why). Events after either were not looked at."""

    applied: int
    duplicates: int
    position: int
    gap: IntegrationEvent | None = None
    poison: tuple[IntegrationEvent, BaseException] | None = None


class BatchRejected(Exception):
    """The database refused a batch's rows (a constraint, a bad value): some event of it is poison."""


#: Database errors that say "these rows are wrong", as opposed to "the database is unavailable right now".
_DATA_ERRORS = (psycopg.errors.IntegrityError, psycopg.errors.DataError, psycopg.errors.ProgrammingError)


def projector_session(schema: str) -> str:
    """The ``application_name`` of a projector's session on ``schema``: how ``razao projections reset`` tells
    that a projector is still connected to the read models it would drop."""
    return f"razao-projector-{schema}"


class ProjectionStore:
    """The live projection's rows and tracking row in one schema of the read database."""

    def __init__(self, dsn: str, schema: str = LIVE_SCHEMA, projection: str = PROJECTION, *,
                 session: str | None = None) -> None:
        """``session`` names the database session (``application_name``); the default says it is a projector's,
        which ``razao projections reset`` looks for. Short-lived users (a CLI, the query API starting) give their
        own."""
        self.dsn = dsn
        self.session = projector_session(schema) if session is None else session
        self.schema = schema
        self.projection = projection
        self._conn: Conn | None = None
        self._channel = notify_channel(schema)
        self._ident = sql.Identifier(schema)

    @property
    def conn(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, connect_timeout=5, application_name=self.session)
            # Read models are derived data: a commit lost in a crash of the read database takes its tracking row
            # with it (same transaction), so those events are simply applied again from Kafka or a rebuild. No
            # need to wait for the disk on every batch, which is most of a batch's latency.
            self._conn.execute("SET synchronous_commit = off")
            self._conn.commit()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def ensure(self) -> Tracking:
        """Creates the schema and the tracking row if missing, and returns the tracking row."""
        ensure_schema(self.conn, self.schema)
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL("INSERT INTO {}.tracking (projection, position, chain_hash, events_applied) "
                        "VALUES (%s, 0, %s, 0) ON CONFLICT DO NOTHING").format(self._ident),
                (self.projection, GENESIS_CHAIN_HASH),
            )
        return self.tracking()

    def tracking(self) -> Tracking:
        with self.conn.transaction():
            return self._tracking(lock=False)

    def _tracking(self, *, lock: bool) -> Tracking:
        statement = sql.SQL("SELECT position, chain_hash, events_applied, halted_reason, halted_position "
                            "FROM {}.tracking WHERE projection = %s" + (" FOR UPDATE" if lock else "")
                            ).format(self._ident)
        row = self.conn.execute(statement, (self.projection,)).fetchone()
        assert row is not None, f"no tracking row for {self.projection} in {self.schema}: call ensure() first"
        return Tracking(*row)

    def apply(self, events: Sequence[IntegrationEvent]) -> Outcome:
        """Applies what is new in ``events`` exactly once (see the module doc). Raises ``BatchRejected`` when the
        database refuses the rows, and psycopg's ``OperationalError`` when it is unavailable (retry later)."""
        try:
            with self.conn.transaction():
                return self._apply(events)
        except _DATA_ERRORS as exc:
            raise BatchRejected(str(exc)) from exc

    def _apply(self, events: Sequence[IntegrationEvent]) -> Outcome:
        tracked = self._tracking(lock=True)
        position, chain_hash = tracked.position, tracked.chain_hash
        buffer = ChangeBuffer()
        applied = duplicates = 0
        gap: IntegrationEvent | None = None
        poison: tuple[IntegrationEvent, BaseException] | None = None
        for event in events:
            if event.position <= position:
                duplicates += 1
                continue
            if event.previous_chain_hash != chain_hash:
                gap = event
                break
            try:
                buffer.extend(project(event))
            except (AssertionError, ContractError, KeyError, ValueError, TypeError) as exc:
                poison = (event, exc)
                break
            position, chain_hash = event.position, event.chain_hash
            applied += 1
        if applied:
            try:
                buffer.flush(self.conn, self.schema)
            except ProjectionBug as exc:
                raise BatchRejected(str(exc)) from exc
            self.conn.execute(
                sql.SQL("UPDATE {}.tracking SET position = %s, chain_hash = %s, events_applied = events_applied + %s, "
                        "updated_at = now() WHERE projection = %s").format(self._ident),
                (position, chain_hash, applied, self.projection),
            )
            # Delivered at commit, only if it commits: listeners never see a position that is not there.
            self.conn.execute("SELECT pg_notify(%s, %s)", (self._channel, str(position)))
        return Outcome(applied, duplicates, position, gap, poison)

    def halt(self, reason: str, position: int | None) -> None:
        """Records why the projection stopped (shown by the query API's health and `razao projections status`)."""
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL("UPDATE {}.tracking SET halted_reason = %s, halted_position = %s, updated_at = now() "
                        "WHERE projection = %s").format(self._ident),
                (reason[:2000], position, self.projection),
            )

    def clear_halt(self) -> None:
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL("UPDATE {}.tracking SET halted_reason = NULL, halted_position = NULL "
                        "WHERE projection = %s AND halted_reason IS NOT NULL").format(self._ident),
                (self.projection,),
            )


# ------------------------------------------------------------------------------------------- bulk loading


class BulkLoader:
    """Loads a fresh schema from events in log order, in large flushes, for a rebuild.

    The tables start bare (primary keys only); ``finish`` adds the foreign keys and indexes (validating every
    reference once) and writes the tracking row, all in the caller's transaction so a failed rebuild leaves nothing.
    """

    def __init__(self, conn: Conn, schema: str, flush_events: int, projection: str = PROJECTION) -> None:
        self.conn = conn
        self.schema = schema
        self.flush_events = flush_events
        self.projection = projection
        self.buffer = ChangeBuffer()
        self.pending = 0
        self.events = 0
        self.position = 0
        self.chain_hash = GENESIS_CHAIN_HASH
        self._flusher: threading.Thread | None = None
        self._flush_error: BaseException | None = None
        create_schema(conn, schema, constraints=False, replace=True)

    def add(self, event: IntegrationEvent) -> None:
        assert event.position > self.position, f"event at {event.position} after {self.position}"
        assert event.previous_chain_hash == self.chain_hash, f"chain broken before position {event.position}"
        self.buffer.extend(project(event))
        self.position, self.chain_hash = event.position, event.chain_hash
        self.events += 1
        self.pending += 1
        if self.pending >= self.flush_events:
            self.flush()

    def flush(self) -> None:
        """Writes the buffer on a thread while the caller goes on projecting (one flush at a time: each one
        needs the rows of the one before)."""
        self._join()
        buffer, self.buffer, self.pending = self.buffer, ChangeBuffer(), 0
        self._flusher = threading.Thread(target=self._write, args=(buffer,), name="rebuild-writer", daemon=True)
        self._flusher.start()

    def _write(self, buffer: ChangeBuffer) -> None:
        try:
            buffer.flush(self.conn, self.schema)
        except BaseException as exc:
            self._flush_error = exc

    def _join(self) -> None:
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        if self._flush_error is not None:
            raise self._flush_error

    def finish(self) -> None:
        self.flush()
        self._join()
        add_constraints(self.conn, self.schema)
        insert_tracking(self.conn, self.schema, self.projection, position=self.position, chain_hash=self.chain_hash,
                        events=self.events)


def insert_tracking(conn: Conn, schema: str, projection: str, *, position: int, chain_hash: str, events: int) -> None:
    """The tracking row of a freshly loaded schema: at ``position`` (whose chain hash it is) after ``events``."""
    conn.execute(
        sql.SQL("INSERT INTO {}.tracking (projection, position, chain_hash, events_applied) "
                "VALUES (%s, %s, %s, %s)").format(sql.Identifier(schema)),
        (projection, position, chain_hash, events),
    )
