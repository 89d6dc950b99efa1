"""Rebuilding the read models from the event store alone, and comparing a rebuild with the live models.

A rebuild reads the ledger's notification log (never Kafka) into a schema of the read database that takes the
target's name only when it is complete: a failed rebuild leaves the target as it was and nothing else behind.
``--as-of`` stops at a log position or before the first event recorded after a time (the log is in commit order,
so that is a prefix of it). Two methods build the same rows:

- ``sql`` (the default): the set-based rebuild of ``projections.rebuild_sql`` (ADR 0011). The transfers are decoded
  by the database that holds the log and arrive by binary COPY as typed rows, the other records raw; every table is
  built with ``INSERT ... SELECT``, in a schema of its own (``building_schema``) over several transactions on two
  connections, and the last commit drops the target and renames the built schema to it. No event passes through
  Python. It refuses what the contract refuses, with the contract's errors: a record the SQL finds unfit is decoded
  by ``LogDecoder`` to raise its error, and when the database refuses a value (a state that is not JSON, a field
  of the wrong type) the log is decoded by the contract in order to find the first record it refuses. One rebuild
  into a schema at a time (``RebuildBusy``).
- ``projector``: the reference, in one transaction. Every record is decoded with the same contract the relay uses
  and run through the same pure projector as the live models, and the rows are written by ``BulkLoader`` in large
  flushes. It is the definition the set-based rebuild is tested against, and ``verify`` brings a rebuilt schema
  forward with it.

``verify`` compares a rebuilt schema with the live one at the same log position: it copies the live tables inside
one repeatable-read snapshot (so the live projector keeps running), brings the rebuilt schema forward to exactly
that snapshot's position from the event store, then compares a checksum per table and lists differing rows.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ledger.contracts import GENESIS_CHAIN_HASH, IntegrationEvent, LogDecoder
from projections import rebuild_sql
from projections.bootstrap import NotificationLog
from projections.limits import REBUILD_FLUSH_EVENTS_MAX, REBUILD_PAGE_EVENTS_MAX
from projections.schema import (
    LIVE_SCHEMA,
    PROJECTION,
    TABLES,
    check_schema_name,
    create_schema,
    schema_exists,
)
from projections.store import BulkLoader, Conn, ProjectionBug, ProjectionStore, insert_tracking

#: Rows of each differing table that `verify` prints.
DIFF_ROWS_MAX = 20
#: How a rebuild builds the rows (see the module doc); the first is the default.
METHODS = ("sql", "projector")

#: ``progress(stage, done, total)``: stages in order (``copy``, ``decode``, ``tables``, ``constraints`` for the
#: set-based rebuild; ``project`` for the projector), how far the stage got and where it ends (``None``: unknown);
#: ``group/detail`` names a step within a stage (``tables/entries``), ``done`` then counting the stage's steps.
Progress = Callable[[str, int, int | None], None]

#: What the database says when the set-based rebuild hands it a value the contract would have refused first.
_REFUSALS = (psycopg.errors.DataError, psycopg.errors.IntegrityError, ProjectionBug)


def read_pages(log: NotificationLog, after: int, upto: int | None, page_size: int) -> Iterator[Sequence[Any]]:
    """Pages of the notification log after ``after`` up to ``upto``, fetched one page ahead on a thread.

    The database sends the next page while this thread decodes the current one (psycopg releases the GIL while
    it waits on the network), which is most of what separates a rebuild from a raw read of the log.
    """
    pages: queue.Queue[Sequence[Any] | BaseException | None] = queue.Queue(maxsize=2)
    stop = threading.Event()
    # Rows as tuples in LogRecord order: the fast reader's, or any recorder's records turned into tuples.
    select = getattr(log, "select_rows", None) or (
        lambda start, limit, upto: [(n.id, n.originator_id, n.originator_version, n.topic, n.state)
                                    for n in log.select_notifications(start, limit=limit, stop=upto)])

    def fetch() -> None:
        start = after + 1
        try:
            while not stop.is_set():
                page = select(start, page_size, upto)
                if not page:
                    break
                pages.put(page)
                start = page[-1][0] + 1
            pages.put(None)
        except BaseException as exc:
            pages.put(exc)

    thread = threading.Thread(target=fetch, name="rebuild-reader", daemon=True)
    thread.start()
    try:
        while (item := pages.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                pages.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def iter_events(log: NotificationLog, *, after: int = 0, after_chain_hash: str = GENESIS_CHAIN_HASH,
                upto: int | None = None, until: datetime | None = None,
                page_size: int = REBUILD_PAGE_EVENTS_MAX) -> Iterator[IntegrationEvent]:
    """Integration events of the log after ``after`` (whose chain hash is ``after_chain_hash``), in order, up to
    position ``upto`` and/or the last one recorded at or before ``until``."""
    decode = LogDecoder(after_chain_hash).decode_row
    for page in read_pages(log, after, upto, page_size):
        for row in page:
            event = decode(*row)
            if until is not None and event.recorded_at > until:
                return
            yield event


class RebuildBusy(RuntimeError):
    """Another set-based rebuild into the same schema holds it."""


@dataclass(frozen=True)
class RebuildResult:
    schema: str
    position: int
    events: int
    seconds: float
    method: str = METHODS[0]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _quiet(_stage: str, _done: int, _total: int | None) -> None:
    pass


def rebuild(read_dsn: str, log: NotificationLog, schema: str, *, upto: int | None = None,
            until: datetime | None = None, progress: Progress | None = None, method: str = METHODS[0],
            flush_events: int = REBUILD_FLUSH_EVENTS_MAX) -> RebuildResult:
    """Replaces ``schema`` with the read models built from the log (as of ``upto``/``until``), in one transaction.

    Raises the contract's ``UnknownEventType``/``UnsupportedEventVersion``/``MalformedEvent`` for the first record
    it refuses (before ``upto``/``until``), with either method; nothing of the schema is left then.
    """
    check_schema_name(schema)
    if schema == LIVE_SCHEMA:
        raise ValueError("a rebuild never writes into the live schema; rebuild elsewhere and compare")
    if method not in METHODS:
        raise ValueError(f"unknown rebuild method {method!r} (one of {', '.join(METHODS)})")
    report = progress or _quiet
    started = time.perf_counter()
    head = log.max_notification_id() or 0
    last = head if upto is None else min(head, upto)
    if method == "projector":
        position, events = _rebuild_projector(read_dsn, log, schema, upto=last, until=until, progress=report,
                                              flush_events=flush_events)
    else:
        position, events = _rebuild_sql(read_dsn, log, schema, upto=last, until=until, progress=report)
    return RebuildResult(schema, position, events, time.perf_counter() - started, method)


def _rebuild_projector(read_dsn: str, log: NotificationLog, schema: str, *, upto: int, until: datetime | None,
                       progress: Progress, flush_events: int) -> tuple[int, int]:
    with psycopg.connect(read_dsn, application_name="razao-rebuild") as conn:
        loader = BulkLoader(conn, schema, flush_events)
        progress("project", 0, upto)
        for event in iter_events(log, upto=upto, until=until):
            loader.add(event)
            if loader.events % 1000 == 0:
                progress("project", event.position, upto)
        loader.finish()
        conn.commit()
    progress("project", upto, upto)
    return loader.position, loader.events


def _rebuild_sql(read_dsn: str, log: NotificationLog, schema: str, *, upto: int, until: datetime | None,
                 progress: Progress) -> tuple[int, int]:
    try:
        return _build_sql(read_dsn, log, schema, upto=upto, until=until, progress=progress)
    except _REFUSALS:
        # The projector path would have stopped at the first record the contract refuses, with the contract's
        # error: decode the log as it does to raise that error (this is the slow path, taken only on failure).
        prefix_end = _decoded_prefix(log, upto, until)
        if until is None or prefix_end >= upto:
            raise  # every record fits the contract: the failure is the database's (a foreign key, a duplicate)
    # The records were staged up to `upto` and only cut at `until` after parsing; the one at fault lies after the
    # prefix, which the projector path never reads. Build exactly the prefix.
    return _build_sql(read_dsn, log, schema, upto=prefix_end, until=None, progress=progress)


def _decoded_prefix(log: NotificationLog, upto: int, until: datetime | None) -> int:
    """Decodes the log like the projector path (raising the contract's error for the first record it refuses);
    returns the position of the last record of the prefix."""
    position = 0
    for event in iter_events(log, upto=upto, until=until):
        position = event.position
    return position


def _build_sql(read_dsn: str, log: NotificationLog, schema: str, *, upto: int, until: datetime | None,
               progress: Progress) -> tuple[int, int]:
    """The set-based rebuild, built in a schema of its own on two connections (one per core of a small database
    server) and swapped in for ``schema`` by the last commit; any failure drops what was built."""
    building = rebuild_sql.building_schema(schema)
    with _connect(read_dsn) as conn, _connect(read_dsn) as helper:
        held = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"razao-rebuild:{schema}",)).fetchone()
        if not (held and held[0]):
            raise RebuildBusy(f"another rebuild into {schema!r} is running; wait for it or rebuild elsewhere")
        conn.commit()
        try:
            create_schema(conn, building, constraints=False, replace=True)
            rebuild_sql.load_log(conn, log, building, upto, progress)
            built, keys = rebuild_sql.stage(conn, log, building, until=until, progress=progress)
            conn.commit()
            rebuild_sql.run_steps((conn, helper), rebuild_sql.steps(building, keys), progress)
            rebuild_sql.finish(conn, building, keys, progress)
            insert_tracking(conn, building, PROJECTION, position=built.position, chain_hash=built.chain_hash,
                            events=built.events)
            progress("constraints/commit", 4, 5)
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(building),
                                                                        sql.Identifier(schema)))
            conn.commit()
        except BaseException:
            _drop_quietly(read_dsn, conn, building)
            raise
    progress("constraints/done", 5, 5)
    return built.position, built.events


def _connect(read_dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(read_dsn, application_name="razao-rebuild")
    conn.execute("SET jit = off")  # compiling these one-off statements costs more than it saves
    conn.execute("SET maintenance_work_mem = '256MB'")  # index builds sort in memory
    # The steps already run side by side on the two connections: parallel index builds would only add the
    # workers' sorted runs written to temporary files and merged again.
    conn.execute("SET max_parallel_maintenance_workers = 0")
    try:  # index builds log whole pages: compressed, a third less WAL to write (a superuser's setting; optional)
        conn.execute("SET wal_compression = lz4")
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidParameterValue):
        conn.rollback()
    conn.commit()
    return conn


def _drop_quietly(read_dsn: str, conn: psycopg.Connection[Any], building: str) -> None:
    """Drops the half-built schema after a failure (on a new connection if the failure broke this one). A process
    killed before it could is cleaned up by the next rebuild of the same schema."""
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(building))
    try:
        conn.rollback()
        conn.execute(drop)
        conn.commit()
    except psycopg.Error:
        with suppress(psycopg.Error), psycopg.connect(read_dsn, autocommit=True,
                                                      application_name="razao-rebuild") as fresh:
            fresh.execute(drop)


def catch_up(read_dsn: str, log: NotificationLog, schema: str, upto: int) -> int:
    """Applies to ``schema`` (already built) the log's events after its tracked position up to ``upto``."""
    store = ProjectionStore(read_dsn, schema)
    try:
        tracked = store.tracking()
        batch: list[IntegrationEvent] = []
        for event in iter_events(log, after=tracked.position, after_chain_hash=tracked.chain_hash, upto=upto):
            batch.append(event)
            if len(batch) >= 1000:
                _apply_all(store, batch)
        if batch:
            _apply_all(store, batch)
        return store.tracking().position
    finally:
        store.close()


def _apply_all(store: ProjectionStore, batch: list[IntegrationEvent]) -> None:
    outcome = store.apply(batch)
    if outcome.gap is not None or outcome.poison is not None:
        raise AssertionError(f"catching up {store.schema} stopped: {outcome}")
    batch.clear()


# ------------------------------------------------------------------------------------------------- verify


@dataclass
class TableDiff:
    table: str
    live_rows: int
    rebuilt_rows: int
    live_checksum: str
    rebuilt_checksum: str
    only_live: list[str] = field(default_factory=list)
    only_rebuilt: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.live_checksum == self.rebuilt_checksum and self.live_rows == self.rebuilt_rows


@dataclass
class Verification:
    position: int
    tables: list[TableDiff]

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


def _checksum(conn: Conn, relation: sql.Composable, order: Sequence[str]) -> tuple[int, str]:
    statement = sql.SQL("SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {})), '') FROM {} t").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in order), relation)
    row = conn.execute(statement).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def table_checksums(conn: Conn, schema: str) -> dict[str, tuple[int, str]]:
    """Row count and MD5 over every row (in primary-key order) of each read-model table of ``schema``."""
    return {t.name: _checksum(conn, sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(t.name)), t.key)
            for t in TABLES}


def verify(read_dsn: str, log: NotificationLog, rebuilt: str, live: str = LIVE_SCHEMA) -> Verification:
    """Compares ``rebuilt`` with ``live`` at the live schema's position (see the module doc).

    Raises ``ValueError`` when the rebuilt schema is missing or ahead of the live one.
    """
    check_schema_name(rebuilt)
    with psycopg.connect(read_dsn, autocommit=True, application_name="razao-verify") as conn:
        if not schema_exists(conn, rebuilt):
            raise ValueError(f"schema {rebuilt!r} does not exist: run `razao projections rebuild --into {rebuilt}`")
        if not schema_exists(conn, live):
            raise ValueError(f"there are no live read models ({live!r}) to compare with: the projector has not run "
                             "against this read database")
        # One snapshot of the live models, copied so the comparison needs no lock on the live projector.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            row = conn.execute(sql.SQL("SELECT position FROM {}.tracking WHERE projection = %s").format(
                sql.Identifier(live)), (PROJECTION,)).fetchone()
            position = int(row[0]) if row else 0
            for t in TABLES:
                conn.execute(sql.SQL("CREATE TEMP TABLE {} AS SELECT * FROM {}.{}").format(
                    sql.Identifier(f"snapshot_{t.name}"), sql.Identifier(live), sql.Identifier(t.name)))
        conn.isolation_level = None
        rebuilt_at = ProjectionStore(read_dsn, rebuilt)
        try:
            rebuilt_position = rebuilt_at.tracking().position
        finally:
            rebuilt_at.close()
        if rebuilt_position > position:
            raise ValueError(f"the rebuilt schema is at position {rebuilt_position}, ahead of the live one "
                             f"({position}): the live projection is behind; wait for it and verify again")
        if rebuilt_position < position:
            catch_up(read_dsn, log, rebuilt, position)
        tables = [_compare(conn, t.name, t.key, rebuilt) for t in TABLES]
    return Verification(position, tables)


def _compare(conn: Conn, table: str, key: Sequence[str], rebuilt: str) -> TableDiff:
    snapshot = sql.Identifier(f"snapshot_{table}")
    rebuilt_table = sql.SQL("{}.{}").format(sql.Identifier(rebuilt), sql.Identifier(table))
    live_rows, live_sum = _checksum(conn, snapshot, key)
    rebuilt_rows, rebuilt_sum = _checksum(conn, rebuilt_table, key)
    diff = TableDiff(table, live_rows, rebuilt_rows, live_sum, rebuilt_sum)
    if not diff.equal:
        for left, right, into in ((snapshot, rebuilt_table, diff.only_live), (rebuilt_table, snapshot,
                                                                               diff.only_rebuilt)):
            rows = conn.execute(sql.SQL("SELECT t::text FROM (SELECT * FROM {} EXCEPT SELECT * FROM {}) t LIMIT {}")
                                .format(left, right, sql.Literal(DIFF_ROWS_MAX))).fetchall()
            into.extend(str(r[0]) for r in rows)
    return diff
