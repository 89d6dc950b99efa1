"""Postgres adapters for the ledger: the fenced event recorder, the single-writer lease and transfer lookup.

The lease is a session-level advisory lock held on a dedicated connection for as long as the writer lives
(a killed process loses its connection and so its lock). Each acquisition bumps a fencing epoch in
``ledger_writer``; every save re-reads that epoch ``FOR SHARE`` inside its own transaction and refuses to
commit when it is stale. A takeover's epoch bump waits for in-flight saves, and every later save of the old
writer fails: two writers can never both commit.
"""

from __future__ import annotations

import logging
import os
import struct
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlparse
from uuid import UUID

import psycopg
from eventsourcing.persistence import AggregateRecorder, StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder, PostgresFactory
from psycopg import sql
from psycopg.pq import DiagnosticField, ExecStatus
from psycopg.rows import tuple_row

from ledger.ports import WriterBusy, WriterFenced

log = logging.getLogger(__name__)

WRITER_LEASE_NAME = "ledger"
#: Rows per round trip when a starting writer streams the ids of every committed transfer (``originator_ids``).
COMMITTED_IDS_FETCH_ROWS = 50_000
#: Any fixed 64-bit number identifies the advisory lock; this one spells nothing in particular.
WRITER_ADVISORY_LOCK_KEY = 0x52415A414F

_CREATE_WRITER_TABLE = """
CREATE TABLE IF NOT EXISTS ledger_writer (
    name text PRIMARY KEY,
    epoch bigint NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    holder text NOT NULL
);
CREATE OR REPLACE FUNCTION razao_assert_writer_epoch(lease text, expected bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE current_epoch bigint;
BEGIN
    SELECT epoch INTO current_epoch FROM ledger_writer WHERE name = lease FOR SHARE;
    IF current_epoch IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'razao: writer epoch % is stale (current %)', expected, current_epoch
            USING ERRCODE = 'RZ001';
    END IF;
END $$;
"""


#: How many checkpoints the snapshot store keeps, newest first; each new one deletes those beyond (ADR 0018).
CHECKPOINTS_KEPT_DEFAULT = 5
ENV_CHECKPOINTS_KEPT = "RAZAO_LEDGER_CHECKPOINTS_KEPT"
CHECKPOINTS_KEPT_MAX = 1_000
#: The key of ``postgres_env`` that ``LedgerPostgresFactory`` reads it from.
ENV_KEEP = "CHECKPOINTS_KEPT"


def checkpoints_kept(environ: Mapping[str, str] | None = None) -> int:
    """``RAZAO_LEDGER_CHECKPOINTS_KEPT`` (1 to 1,000), else the default; raises ``ValueError`` naming the variable."""
    raw = (os.environ if environ is None else environ).get(ENV_CHECKPOINTS_KEPT) or ""
    if not raw:
        return CHECKPOINTS_KEPT_DEFAULT
    if not raw.isdigit() or not 1 <= int(raw) <= CHECKPOINTS_KEPT_MAX:
        raise ValueError(f"{ENV_CHECKPOINTS_KEPT} must be a whole number from 1 to {CHECKPOINTS_KEPT_MAX}, "
                         f"not {raw!r}")
    return int(raw)


def postgres_env(dsn: str, *, pool_size: int = 4, schema: str = "") -> dict[str, str]:
    """The ``eventsourcing`` environment for a Postgres DSN, using the fenced recorder; the snapshot store keeps
    ``checkpoints_kept()`` checkpoints."""
    url = urlparse(dsn)
    assert url.scheme in ("postgresql", "postgres"), f"not a postgres DSN: {dsn}"
    return {
        "PERSISTENCE_MODULE": f"{__name__}:LedgerPostgresFactory",
        "APPLICATION_RECORDER_TOPIC": f"{__name__}:FencedApplicationRecorder",
        "POSTGRES_DBNAME": url.path.lstrip("/") or "postgres",
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_CONNECT_TIMEOUT": "5",
        # No pre-ping: it costs a round trip per save, and a broken connection fails the save anyway, which
        # the writer answers as an unknown outcome and recovers from by reloading.
        "POSTGRES_PRE_PING": "n",
        # A save waits at most this long for the events table lock before failing (then it is retried).
        "POSTGRES_LOCK_TIMEOUT": "5",
        "CREATE_TABLE": "y",
        "POSTGRES_SCHEMA": schema,
        ENV_KEEP: str(checkpoints_kept()),
    }


class BinaryStateRecorder(PostgresAggregateRecorder):
    """The library's aggregate recorder (the ledger's checkpoints), sending each row's ``state`` as a binary
    parameter.

    The library inserts rows as an array of a composite type, which psycopg dumps as text: every byte of the state
    is escaped, and the dumping holds the interpreter lock. A checkpoint is one state of many megabytes, saved by
    a background thread of the process that hosts the writer; measured on the VM of ADR 0017, its 16 MB insert
    took 1.2-1.4 s and held the lock for stretches of up to 355 ms, so every command waited that long. As one
    row with a binary parameter it takes 156 ms and never holds the lock for more than 5 ms.
    """

    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events", keep: int | None = None) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        assert keep is None or keep >= 1
        self.keep = keep
        table = sql.SQL("{}.{}").format(sql.Identifier(self.datastore.schema or "public"),
                                        sql.Identifier(self.events_table_name))
        self._insert_row = sql.SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) VALUES (%s, %s, %s, %b)").format(table)
        # Everything older than the keep-th newest of the aggregate (nothing while it has fewer: ``< NULL``).
        self._delete_older = sql.SQL(
            "DELETE FROM {0} WHERE originator_id = %(id)s AND originator_version < (SELECT originator_version "
            "FROM {0} WHERE originator_id = %(id)s ORDER BY originator_version DESC OFFSET %(offset)s LIMIT 1)"
        ).format(table)

    def _insert_stored_events(self, curs: Any, stored_events: Sequence[StoredEvent], **_: Any) -> None:
        rows = [(e.originator_id, e.originator_version, e.topic, e.state) for e in stored_events]
        with curs.connection.transaction():  # all rows or none, as the library's one statement
            curs.executemany(self._insert_row, rows)
            # Old checkpoints go in the same transaction as the new one: never fewer than ``keep`` once there were
            # that many, whichever writer (even a fenced-off one) saves.
            if self.keep is not None:
                for originator_id in {e.originator_id for e in stored_events}:
                    curs.execute(self._delete_older, {"id": originator_id, "offset": self.keep - 1})


class LedgerPostgresFactory(PostgresFactory):
    """The library's Postgres persistence, with the aggregate recorder above for the snapshot store, which keeps
    the newest ``CHECKPOINTS_KEPT`` checkpoints (set by ``postgres_env``)."""

    aggregate_recorder_class = BinaryStateRecorder

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        if purpose != "snapshots":
            return super().aggregate_recorder(purpose)
        keep = self.env.get(ENV_KEEP)
        recorder = BinaryStateRecorder(self.datastore, events_table_name=f"{self.env.name.lower() or 'stored'}_"
                                       f"{purpose}", keep=int(keep) if keep else None)
        if self.env_create_table():
            recorder.create_table()
        return recorder


#: Element types of the append function's arrays (``pg_type`` oids) and the formats of its six parameters: the
#: lease name and the epoch as text, the arrays in binary.
_UUID_OID, _INT8_OID, _TEXT_OID, _BYTEA_OID = 2950, 20, 25, 17
_APPEND_FORMATS = [0, 0, 1, 1, 1, 1]
_APPEND_NAME = b"razao_append_events"
_LEASE_NAME = WRITER_LEASE_NAME.encode()
_INT8 = struct.Struct("!q")
_LENGTH = struct.Struct("!i")
_ARRAY_HEADER = struct.Struct("!iiIii")


def binary_array(element_oid: int, elements: Sequence[bytes]) -> bytes:
    """A one-dimensional array without nulls in Postgres's binary format: one dimension, no null bitmap, the
    element type, the length and a lower bound of 1, then each element as its length and its bytes."""
    return b"".join([_ARRAY_HEADER.pack(1, 0, element_oid, len(elements), 1),
                     *(_LENGTH.pack(len(e)) + e for e in elements)])


def _uuid_bytes(value: UUID | str) -> bytes:
    return value.bytes if isinstance(value, UUID) else UUID(value).bytes


def _raise_for(result: Any, pgconn: Any) -> None:
    """Raises psycopg's exception for a failed libpq result (by its SQLSTATE), as ``Cursor.execute`` would."""
    if result.status in (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK):
        return
    message = (result.error_message or pgconn.error_message or b"the append failed").decode(errors="replace")
    sqlstate = result.error_field(DiagnosticField.SQLSTATE)
    error: type[psycopg.Error] = psycopg.OperationalError  # no SQLSTATE: the connection failed
    if sqlstate:
        try:
            error = psycopg.errors.lookup(sqlstate.decode())
        except KeyError:  # a code of our own (the fencing check raises RZ001), as psycopg maps it
            error = psycopg.DatabaseError
    raise error(message.strip())


class FencedApplicationRecorder(PostgresApplicationRecorder):
    """The library's recorder, appending through one server-side function: one round trip per batch.

    ``razao_append_<events table>`` does in one statement, in one transaction, what the library's recorder does
    in a pipeline of six: check the writer's fencing epoch (``FOR SHARE``, so a takeover waits for it), set the
    lock timeout, lock the events table (so notification ids are committed in the order they were issued),
    ``NOTIFY`` the table's channel and insert the rows, returning their notification ids. The rows travel as four
    typed arrays in binary, encoded here (``binary_array``): psycopg's text dumping of arrays escapes every element
    in Python.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The pool's connections the append is prepared on (a new connection prepares it again).
        self._prepared_on: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()

    def create_table(self) -> None:
        super().create_table()
        # Every process that opens the ledger runs this (under the schema set-up lock: commands.bootstrap.
        # open_ledger_app); the function is replaced only when its body differs, so opening is otherwise read-only.
        body = self._append_function_body()
        if self._append_function_source() != body:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute(self._append_function_ddl(body))

    def _append_function_name(self) -> str:
        return f"razao_append_{self.events_table_name}"

    def _append_function(self) -> sql.Composed:
        schema = self.datastore.schema or "public"
        return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(self._append_function_name()))

    def _append_function_source(self) -> str | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute("SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                         "WHERE n.nspname = %s AND p.proname = %s",
                         (self.datastore.schema or "public", self._append_function_name()))
            row = curs.fetchone()
        return None if row is None else str(row["prosrc"])

    def _append_function_body(self) -> str:
        schema = self.datastore.schema or "public"
        table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(self.events_table_name))
        return sql.SQL(
            "\nBEGIN\n"
            "    IF expected_epoch IS NOT NULL THEN\n"
            "        PERFORM razao_assert_writer_epoch(lease, expected_epoch);\n"
            "    END IF;\n"
            "    SET LOCAL lock_timeout = '{lock_timeout}s';\n"
            "    LOCK TABLE {table} IN EXCLUSIVE MODE;\n"
            "    NOTIFY {channel};\n"
            "    RETURN QUERY INSERT INTO {table} (originator_id, originator_version, topic, state)\n"
            "        SELECT * FROM unnest(ids, versions, topics, states) RETURNING notification_id;\n"
            "END "
        ).format(
            lock_timeout=sql.SQL(str(int(self.datastore.lock_timeout))), table=table,
            channel=sql.Identifier(self.channel_name),
        ).as_string(None)

    def _append_function_ddl(self, body: str) -> sql.Composed:
        return sql.SQL(
            "CREATE OR REPLACE FUNCTION {function}(lease text, expected_epoch bigint, ids uuid[], versions bigint[], "
            "topics text[], states bytea[]) RETURNS SETOF bigint LANGUAGE plpgsql AS {body}"
        ).format(function=self._append_function(), body=sql.Literal(body))

    def _append_statement(self) -> bytes:
        statement: bytes | None = getattr(self, "_append", None)
        if statement is None:
            statement = sql.SQL(
                "SELECT notification_id FROM {}($1, $2, $3::uuid[], $4::bigint[], $5::text[], $6::bytea[]) "
                "AS t(notification_id)"
            ).format(self._append_function()).as_string(None).encode()
            self._append = statement
        return statement

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Appends ``stored_events`` in one transaction (``writer_epoch`` fences off a stale writer).

        The statement goes straight to libpq (``PGconn.exec_prepared``), its four arrays already in Postgres's
        binary format: psycopg's own ``execute`` spent about 100-110 µs more of the writer's CPU per call on adapting,
        preparing and waiting in Python (192 against 89 µs a batch of 12, 342 against 230 µs a batch of 64,
        ADR 0019), and libpq waits for the server without holding the interpreter lock."""
        if not stored_events:
            return []
        epoch = kwargs.get("writer_epoch")
        params: list[bytes | None] = [
            _LEASE_NAME,
            None if epoch is None else str(int(epoch)).encode(),
            binary_array(_UUID_OID, [_uuid_bytes(e.originator_id) for e in stored_events]),
            binary_array(_INT8_OID, [_INT8.pack(e.originator_version) for e in stored_events]),
            binary_array(_TEXT_OID, [e.topic.encode() for e in stored_events]),
            binary_array(_BYTEA_OID, [e.state for e in stored_events]),
        ]
        try:
            with self.datastore.get_connection() as conn:
                ids = self._append_rows(conn, params)
        except Exception as exc:
            if "razao: writer epoch" in str(exc):
                raise WriterFenced(str(exc).splitlines()[0]) from exc
            raise
        assert len(ids) == len(stored_events), f"{len(ids)} notification ids for {len(stored_events)} events"
        return ids

    def _append_rows(self, conn: psycopg.Connection[Any], params: list[bytes | None]) -> list[int]:
        """Runs the append on ``conn`` (an autocommit connection of the pool: the function call is the whole
        transaction), preparing it the first time on that connection. A failure raises psycopg's exception for its
        SQLSTATE, which the datastore maps as it maps its own; a connection left broken is discarded by the pool."""
        assert conn.autocommit, "the append must be a transaction of its own"
        pgconn = conn.pgconn
        if conn not in self._prepared_on:
            _raise_for(pgconn.prepare(_APPEND_NAME, self._append_statement()), pgconn)
            self._prepared_on.add(conn)
        # A None parameter is SQL NULL (libpq's convention; psycopg's stubs leave it out).
        result = pgconn.exec_prepared(_APPEND_NAME, params, param_formats=_APPEND_FORMATS,  # type: ignore[arg-type]
                                      result_format=1)
        _raise_for(result, pgconn)
        return [_INT8.unpack(result.get_value(row, 0) or b"")[0] for row in range(result.ntuples)]


def compress_checkpoints_with_lz4(recorder: Any) -> bool:
    """Has Postgres compress the checkpoint table's ``state`` column with lz4 instead of its default pglz, when the
    server was built with lz4; returns whether the column uses lz4.

    A checkpoint is one value of many megabytes (16 MB at 200,000 accounts), which Postgres compresses before
    writing it. pglz took 460-660 ms of the server's CPU for 16 MB on the VM of ADR 0016, lz4 150-190 ms, for the
    same size stored and in the WAL; the writer's commits wait behind that insert. Existing values keep their
    compression; only new checkpoints use lz4. Run under the schema set-up lock (it is DDL, run once).
    """
    schema = recorder.datastore.schema or "public"
    table = recorder.events_table_name
    with recorder.datastore.transaction(commit=True) as curs:
        curs.execute("SELECT 'lz4' = ANY(enumvals) AS lz4 FROM pg_settings WHERE name = 'default_toast_compression'")
        row = curs.fetchone()
        if row is None or not row["lz4"]:
            return False
        curs.execute("SELECT a.attcompression::text AS compression FROM pg_attribute a "
                     "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname = %s AND c.relname = %s AND a.attname = 'state'", (schema, table))
        row = curs.fetchone()
        if row is None:
            return False
        if row["compression"] != "l":
            curs.execute(sql.SQL("ALTER TABLE {}.{} ALTER COLUMN state SET COMPRESSION lz4").format(
                sql.Identifier(schema), sql.Identifier(table)))
    return True


#: Serialises schema set-up (CREATE ... IF NOT EXISTS and CREATE OR REPLACE race in Postgres).
SCHEMA_SETUP_LOCK_KEY = 0x52415A414F + 1


@contextmanager
def schema_setup_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Holds a blocking advisory lock on an autocommit connection while the caller runs DDL."""
    conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_SETUP_LOCK_KEY,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_SETUP_LOCK_KEY,))


@contextmanager
def schema_setup(dsn: str) -> Iterator[None]:
    """``schema_setup_lock`` on a connection of its own, for set-up done through other connections."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn, schema_setup_lock(conn):
        yield


class PostgresWriterLease:
    """The single-writer lease: an advisory lock on its own connection and a fencing epoch."""

    def __init__(self, dsn: str, holder: str) -> None:
        self.dsn = dsn
        self.holder = holder
        self._conn: psycopg.Connection[Any] | None = None
        self.epoch: int | None = None

    def acquire(self) -> int:
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5, keepalives=1, keepalives_idle=5,
                               keepalives_interval=2, keepalives_count=3)
        try:
            # The lock comes before any DDL: writers starting together must see WriterBusy, not a DDL race.
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_ADVISORY_LOCK_KEY,)).fetchone()
            if not row or not row[0]:
                raise WriterBusy("another process owns the ledger writer")
            with schema_setup_lock(conn):
                conn.execute(_CREATE_WRITER_TABLE)
            row = conn.execute(
                "INSERT INTO ledger_writer (name, epoch, holder) VALUES (%s, 1, %s) "
                "ON CONFLICT (name) DO UPDATE SET epoch = ledger_writer.epoch + 1, acquired_at = now(), "
                "holder = EXCLUDED.holder RETURNING epoch",
                (WRITER_LEASE_NAME, self.holder),
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        assert row is not None
        self._conn, self.epoch = conn, int(row[0])
        log.info("ledger writer lease acquired by %s at epoch %d", self.holder, self.epoch)
        return self.epoch

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (WRITER_ADVISORY_LOCK_KEY,))
            except psycopg.Error:
                pass  # closing the connection releases the lock anyway
            self._conn.close()
            self._conn, self.epoch = None, None


class PostgresTransferLookup:
    """Finds transfer events by id with one query per batch: one primary-key probe per id (the key starts with it).

    The shape of the query is forced, not left to the planner's estimates. ``originator_id = ANY(%s)`` was
    planned, on a table with no statistics (autovacuum off, as on the machines here), as a walk of the whole
    ``notification_id`` index to skip a sort: 250-320 ms per batch at a million events, run by every batch after
    any restart from a checkpoint. Here each id is probed on its own inside a subquery that ``OFFSET 0`` keeps
    from being merged into a join, and JIT compilation, which the same inflated estimates trigger (20-48 ms per
    query for a 2 ms probe), is off for this transaction only.
    """

    def __init__(self, recorder: PostgresApplicationRecorder) -> None:
        self.recorder = recorder
        schema = recorder.datastore.schema or "public"
        self.statement = sql.SQL(
            "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state "
            "FROM unnest(%s::uuid[]) AS wanted(id) CROSS JOIN LATERAL ("
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {}.{} WHERE originator_id = wanted.id OFFSET 0) AS e "
            "ORDER BY e.notification_id"
        ).format(sql.Identifier(schema), sql.Identifier(recorder.events_table_name))

    def originator_ids(self, topic: str, upto: int) -> Iterator[UUID]:
        """Streams the ids through a server-side cursor: a long log never sits in memory at once."""
        schema = self.recorder.datastore.schema or "public"
        query = sql.SQL("SELECT originator_id FROM {}.{} WHERE notification_id <= %s AND topic = %s").format(
            sql.Identifier(schema), sql.Identifier(self.recorder.events_table_name))
        with self.recorder.datastore.get_connection() as conn, conn.transaction(), \
                conn.cursor(name="razao_originator_ids", row_factory=tuple_row, binary=True) as curs:
            curs.itersize = COMMITTED_IDS_FETCH_ROWS
            curs.execute(query, (upto, topic))
            for (transfer_id,) in curs:
                yield transfer_id

    def find(self, transfer_ids: Collection[UUID]) -> Sequence[tuple[int, StoredEvent]]:
        with self.recorder.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            curs.execute("SET LOCAL jit = off")
            curs.execute(self.statement, (list(transfer_ids),))
            return [
                (row["notification_id"], StoredEvent(row["originator_id"], row["originator_version"], row["topic"],
                                                     bytes(row["state"])))
                for row in curs.fetchall()
            ]


def check_durability(dsn: str) -> None:
    """Refuses to run the ledger on a server that acknowledges commits before they are durable."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit')"
        ).fetchall())
    if settings.get("fsync") != "on" or settings.get("synchronous_commit") not in ("on", "remote_apply",
                                                                                     "remote_write", "local"):
        raise RuntimeError(f"refusing to run the ledger without durable commits: {settings}")
