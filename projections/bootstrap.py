"""Wiring of the read side: the one module of ``projections`` that imports ``infra`` (nothing connects at import).

It says where the read database is, how to read the ledger's notification log (the event store, for rebuilds:
record by record, or as one binary COPY stream of its raw records), and where the services listen.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import psycopg
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.persistence import OperationalError as PersistenceOperationalError
from eventsourcing.utils import Environment
from psycopg import sql

from infra import bearer_tokens
from infra.kafka_logging import quiet_closed_transport_race
from infra.platform import ServiceSpec
from infra.postgres_store import postgres_env
from infra.probes import kafka_brokers, kafka_endpoint
from infra.processes import free_port, port_is_free
from infra.settings import Settings, database_name, drop_database, ensure_database, load_settings, with_database
from infra.status_server import serve_status
from ledger.contracts import LEDGER_TOPIC

ENV_READ_PG_DSN = "RAZAO_READ_PG_DSN"
ENV_JWT_PUBLIC_KEY_FILE = "RAZAO_JWT_PUBLIC_KEY_FILE"
ENV_QUERY_PORT = "RAZAO_QUERY_PORT"
ENV_PROJECTOR_PORT = "RAZAO_PROJECTOR_PORT"
ENV_LEDGER_TOPIC = "RAZAO_LEDGER_TOPIC"
QUERY_PORT_DEFAULT = 8081
PROJECTOR_PORT_DEFAULT = 9102
#: The name the ledger's event store is created under (its table is ``ledger_events``).
LEDGER_APPLICATION_NAME = "Ledger"

# Infra helpers are re-exported here for the read side's tools (the benchmarks), which reach infra only through
# this module.
__all__ = [
    "RAW_LOG_COLUMNS",
    "LedgerLog",
    "LogRecord",
    "NotificationLog",
    "RawLog",
    "ReadSettings",
    "bearer_tokens",
    "database_name",
    "drop_database",
    "ensure_database",
    "ensure_read_database",
    "free_port",
    "jwt_public_key_files",
    "kafka_reachable",
    "load_read_settings",
    "open_event_store_reader",
    "open_ledger_log",
    "quiet_closed_transport_race",
    "read_dsn_for",
    "serve_status",
    "services",
    "with_database",
]

class NotificationLog(Protocol):
    """What a rebuild needs of the event store: its notification log, in pages (an eventsourcing recorder)."""

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None) -> Any: ...
    def max_notification_id(self) -> int | None: ...


#: The columns of a raw log record and their Postgres types, in the order of ``RawLog.copy_records``'s stream. A
#: binary COPY carries no type names, so whoever loads the stream creates a table with exactly these types.
RAW_LOG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "bigint"), ("originator_id", "uuid"), ("originator_version", "bigint"), ("topic", "text"),
    ("state", "bytea"),
)


class RawLog(NotificationLog, Protocol):
    """A notification log that can also hand over its raw records in bulk (the set-based rebuild's input)."""

    def copy_records(self, after: int, upto: int) -> Iterator[bytes | bytearray | memoryview]:
        """The records with ``after < id <= upto`` as the blocks of one ``COPY ... TO STDOUT (FORMAT BINARY)``
        of ``RAW_LOG_COLUMNS``, in no particular order (each block can go straight into a ``COPY FROM``)."""
        ...

    def copy_select(self, after: int, upto: int, select: Callable[[sql.Composable], sql.Composable],
                    settings: Mapping[str, str] | None = None) -> Iterator[bytes | bytearray | memoryview]:
        """Like ``copy_records``, of the query ``select(records)`` run where the log is (with these planner
        ``settings``): ``records`` is a subquery of the records in the range with the columns of
        ``RAW_LOG_COLUMNS``."""
        ...


@dataclass(frozen=True)
class ReadSettings:
    ledger_dsn: str
    read_dsn: str
    kafka_bootstrap: str
    redis_url: str
    state_dir: Path
    topic: str



def jwt_public_key_files(settings: ReadSettings) -> tuple[Path, ...]:
    """Where the token-verification key is: ``RAZAO_JWT_PUBLIC_KEY_FILE``, else the development key the command
    API keeps under ``<state_dir>/jwt/`` (its current name first)."""
    explicit = os.environ.get(ENV_JWT_PUBLIC_KEY_FILE)
    if explicit:
        return (Path(explicit),)
    keys = settings.state_dir / "jwt"
    return (keys / "ed25519-public.pem", keys / "public.pem")


def read_dsn_for(ledger_dsn: str) -> str:
    """The read database beside the ledger's: ``<ledger database>_read`` on the same server, unless set."""
    return os.environ.get(ENV_READ_PG_DSN) or with_database(ledger_dsn, database_name(ledger_dsn) + "_read")


def load_read_settings(settings: Settings | None = None) -> ReadSettings:
    s = settings or load_settings()
    return ReadSettings(ledger_dsn=s.pg_dsn, read_dsn=read_dsn_for(s.pg_dsn), kafka_bootstrap=s.kafka_bootstrap,
                        redis_url=s.redis_url, state_dir=s.state_dir,
                        topic=os.environ.get(ENV_LEDGER_TOPIC, LEDGER_TOPIC))


def ensure_read_database(read_dsn: str) -> None:
    ensure_database(read_dsn)


class LogRecord(NamedTuple):
    """One record of the notification log, as the contract's ``LogDecoder`` reads it."""

    id: int
    originator_id: str
    originator_version: int
    topic: str
    state: bytes


class LedgerLog:
    """A read-only reader of the ledger's notification log: one plain query per page, or one binary COPY per range
    of raw records (``copy_records``, what the set-based rebuild reads: it is a ``RawLog``).

    The event store's own reader (``select_notifications`` of the eventsourcing recorder) builds a dict and a
    dataclass per row and decodes ids into ``UUID`` objects; a rebuild reads millions of rows, so this one asks
    Postgres for tuples with binary ``bytea`` and text ids. The table is the one the eventsourcing recorder names,
    so the two can never disagree; nothing is created.
    """

    def __init__(self, ledger_dsn: str) -> None:
        """Raises ``psycopg.OperationalError`` when the ledger's database does not answer."""
        # Connected first: a database that does not answer fails here at once, as psycopg's error, rather than
        # after the event store's pool has waited for it.
        self._conn = psycopg.connect(ledger_dsn, autocommit=True, connect_timeout=5,
                                     application_name="razao-ledger-log-reader")
        env = {**postgres_env(ledger_dsn, pool_size=1), "CREATE_TABLE": "n"}
        try:
            factory = InfrastructureFactory.construct(Environment(LEDGER_APPLICATION_NAME, env))
            try:
                recorder = factory.application_recorder()
                table = sql.SQL("{}.{}").format(sql.Identifier(recorder.datastore.schema or "public"),
                                                sql.Identifier(recorder.events_table_name))
            finally:
                factory.close()
        except PersistenceOperationalError as exc:  # it went away in between
            self._conn.close()
            raise psycopg.OperationalError(str(exc)) from exc
        # One lower bound only: with an upper bound too, the planner estimates the range as most of the table and
        # stops walking the notification-id index in order (measured ten times slower). ``stop`` is applied here.
        self._select = sql.SQL(
            "SELECT notification_id, originator_id::text, originator_version, topic, state FROM {} "
            "WHERE notification_id >= %s ORDER BY notification_id LIMIT %s").format(table)
        self._max = sql.SQL("SELECT max(notification_id) FROM {}").format(table)
        # Casts to the declared types (no-ops today), so the binary stream's layout is RAW_LOG_COLUMNS whatever the
        # recorder's DDL becomes; a type that cannot be cast fails here, loudly. No ORDER BY: the reader of the
        # stream orders by id itself, and Postgres can then read a whole range sequentially.
        self._raw_columns = sql.SQL(", ").join(
            sql.SQL("{}::{} AS {}").format(sql.Identifier(source), sql.SQL(pg_type), sql.Identifier(name))
            for source, (name, pg_type) in zip(("notification_id", "originator_id", "originator_version", "topic",
                                                 "state"), RAW_LOG_COLUMNS, strict=True))
        self._table = table
        # A ledger that never wrote has no table yet: its log is empty.
        found = self._conn.execute("SELECT to_regclass(%s)", (table.as_string(self._conn),)).fetchone()
        self._empty = not found or found[0] is None

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None) -> list[LogRecord]:
        return [LogRecord._make(row) for row in self.select_rows(start, limit, stop)]

    def select_rows(self, start: int | None, limit: int, stop: int | None = None) -> list[tuple[Any, ...]]:
        """Like ``select_notifications``, as plain tuples in ``LogRecord`` order (what a rebuild reads)."""
        if self._empty:
            return []
        with self._conn.cursor(binary=True) as cur:
            rows = cur.execute(self._select, (start or 1, limit), prepare=True).fetchall()
        if stop is not None and rows and rows[-1][0] > stop:
            rows = [row for row in rows if row[0] <= stop]
        return rows

    def max_notification_id(self) -> int | None:
        if self._empty:
            return None
        row = self._conn.execute(self._max).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def copy_records(self, after: int, upto: int) -> Iterator[bytes | bytearray | memoryview]:
        """``RawLog.copy_records``: one binary COPY of the range on this reader's connection."""
        return self.copy_select(after, upto, lambda records: sql.SQL("SELECT * FROM {} l").format(records))

    def copy_select(self, after: int, upto: int, select: Callable[[sql.Composable], sql.Composable],
                    settings: Mapping[str, str] | None = None) -> Iterator[bytes | bytearray | memoryview]:
        """``RawLog.copy_select``: one binary COPY of the query on this reader's connection, in a transaction of
        its own that holds the settings."""
        if self._empty or upto <= after:
            return
        records = sql.SQL("(SELECT {} FROM {} WHERE notification_id > {} AND notification_id <= {})").format(
            self._raw_columns, self._table, sql.Literal(after), sql.Literal(upto))
        statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(select(records))
        with self._conn.transaction(), self._conn.cursor() as cur:
            for name, value in (settings or {}).items():
                cur.execute("SELECT set_config(%s, %s, true)", (name, value))
            with cur.copy(statement) as copy:
                yield from copy

    def close(self) -> None:
        self._conn.close()


def kafka_reachable(bootstrap: str) -> bool:
    return bool(kafka_brokers(kafka_endpoint(bootstrap)))


def open_event_store_reader(ledger_dsn: str) -> tuple[NotificationLog, Any]:
    """The event store's own reader of the log (the eventsourcing recorder) and its closer: the baseline that
    `razao bench-read rebuild` compares a rebuild with."""
    env = {**postgres_env(ledger_dsn, pool_size=1), "CREATE_TABLE": "n"}
    factory = InfrastructureFactory.construct(Environment(LEDGER_APPLICATION_NAME, env))
    return factory.application_recorder(), factory.close


def open_ledger_log(ledger_dsn: str) -> LedgerLog:
    """A read-only handle on the ledger's notification log (close it when done). Creates no table."""
    return LedgerLog(ledger_dsn)


def _port(variable: str, default: int) -> int:
    """The port named in the environment, else the default when it is free, else any free port."""
    if os.environ.get(variable):
        return int(os.environ[variable])
    return default if port_is_free("127.0.0.1", default) else free_port("127.0.0.1")


def services(settings: Settings) -> list[ServiceSpec]:
    """The projector and the query API, for `razao up` (the `razao.services` entry point)."""
    projector_port = _port(ENV_PROJECTOR_PORT, PROJECTOR_PORT_DEFAULT)
    query_port = _port(ENV_QUERY_PORT, QUERY_PORT_DEFAULT)
    return [
        ServiceSpec(name="projector", argv=(sys.executable, "-m", "projections.consumer", "--port",
                                            str(projector_port)),
                    health_url=f"http://127.0.0.1:{projector_port}/health"),
        ServiceSpec(name="query-api", argv=(sys.executable, "-m", "projections.api", "--port", str(query_port)),
                    health_url=f"http://127.0.0.1:{query_port}/health"),
    ]
