"""`razao projections rebuild|verify|status`: the auditor's tools for the read models.

- ``rebuild [--as-of POSITION|TIME] [--into SCHEMA] [--method sql|projector]`` replays the event store (never
  Kafka) into a schema of the read database, with a progress bar per stage. The default method builds the tables
  inside Postgres from the log's raw records (set-based); ``projector`` runs every event through the live
  projector's code (the reference, about half as fast).
- ``verify [--schema SCHEMA]`` compares that schema with the live one at the live position, by checksum per table,
  and prints every difference (exit status 1 when there is one).
- ``status`` shows the live projection's position and whether it is halted.
- ``reset`` drops the live read models, only when they were built from another ledger (``LEDGER_MISMATCH``,
  ``projections.ledger_identity``), so that the projector projects this ledger from position 0.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from tqdm import tqdm

from ledger.contracts import ContractError
from projections.bootstrap import ensure_read_database, load_read_settings, open_ledger_log
from projections.ledger_identity import LEDGER_MISMATCH, ledger_mismatch
from projections.rebuild import METHODS, RebuildBusy, rebuild, verify
from projections.schema import LIVE_SCHEMA, REBUILD_SCHEMA, check_schema_name, schema_exists
from projections.store import ProjectionBug, ProjectionStore, projector_session


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("projections", help="rebuild, verify and inspect the read models")
    sub = parser.add_subparsers(dest="projections_command", required=True)
    build = sub.add_parser("rebuild", help="replay the event store into a schema of the read database")
    build.add_argument("--as-of", metavar="POSITION|TIME",
                       help="stop at this log position, or at the last event recorded at or before this RFC 3339 "
                            "time (with an offset)")
    build.add_argument("--into", metavar="SCHEMA", default=REBUILD_SCHEMA,
                       help=f"schema to (re)create (default {REBUILD_SCHEMA}; never {LIVE_SCHEMA})")
    build.add_argument("--method", choices=METHODS, default=METHODS[0],
                       help="sql: build the tables in Postgres from the raw log (default); projector: run every "
                            "event through the live projector's code (the reference)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=_cli_rebuild)
    check = sub.add_parser("verify", help="compare a rebuilt schema with the live read models")
    check.add_argument("--schema", default=REBUILD_SCHEMA, help=f"the rebuilt schema (default {REBUILD_SCHEMA})")
    check.set_defaults(func=_cli_verify)
    status = sub.add_parser("status", help="the live projection's position and state")
    status.set_defaults(func=_cli_status)
    reset = sub.add_parser("reset", help="drop the live read models, when they were built from another ledger",
                           description="Drops the live read models only if they are not of this ledger (the chain "
                                       "hash at their position is not the ledger's there: LEDGER_MISMATCH). Stop "
                                       "the projector first; started again, it projects this ledger from 0.")
    reset.set_defaults(func=_cli_reset)


def parse_as_of(text: str | None) -> tuple[int | None, datetime | None]:
    """``--as-of``: a log position (digits) or an RFC 3339 time with an offset; raises ``ValueError``."""
    if text is None:
        return None, None
    if text.isdigit():
        return int(text), None
    instant = datetime.fromisoformat(text)
    if instant.tzinfo is None:
        raise ValueError("a time needs an offset (e.g. 2026-11-29T12:00:00-03:00)")
    return None, instant


def _cli_rebuild(args: argparse.Namespace) -> int:
    try:
        upto, until = parse_as_of(args.as_of)
        schema = check_schema_name(args.into)
        if schema == LIVE_SCHEMA:
            raise ValueError("a rebuild never writes into the live schema")
    except ValueError as exc:
        print(f"razao: error: {exc}", file=sys.stderr)
        return 2
    settings = load_read_settings()
    ensure_read_database(settings.read_dsn)
    log = open_ledger_log(settings.ledger_dsn)
    try:
        with StageBars(f"rebuild {schema}", disable=args.no_progress) as bars:
            result = rebuild(settings.read_dsn, log, schema, upto=upto, until=until, progress=bars.progress,
                             method=args.method)
    except (ContractError, ProjectionBug) as exc:  # the log does not make read models: nothing was written
        print(f"razao: error: the rebuild of {schema} stopped, nothing was written: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    except RebuildBusy as exc:
        print(f"razao: error: {exc}", file=sys.stderr)
        return 1
    finally:
        log.close()
    print(f"rebuilt {result.schema}: {result.events} events up to position {result.position} in "
          f"{result.seconds:.2f} s ({result.events_per_s:,.0f} events/s, method {result.method})")
    return 0


class StageBars:
    """One progress bar per stage of a rebuild, on stderr (each closed when the next one starts), showing the step
    a stage is at (``tables/entries``: the ``tables`` bar, at ``entries``)."""

    def __init__(self, title: str, *, disable: bool) -> None:
        self.title, self.disable = title, disable
        self.stage: str | None = None
        self.bar: tqdm[Any] | None = None

    def progress(self, stage: str, done: int, total: int | None) -> None:
        group, _, detail = stage.partition("/")
        if group != self.stage:
            self.close()
            unit = "pos" if group in ("copy", "project") else "step"
            self.stage = group
            self.bar = tqdm(total=total, unit=unit, desc=f"{self.title}: {group}", disable=self.disable,
                            file=sys.stderr)
        assert self.bar is not None
        if total is not None and self.bar.total != total:
            self.bar.total = total
        if detail:
            self.bar.set_postfix_str(detail)
        self.bar.update(max(0, done - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _cli_verify(args: argparse.Namespace) -> int:
    settings = load_read_settings()
    log = open_ledger_log(settings.ledger_dsn)
    try:
        result = verify(settings.read_dsn, log, check_schema_name(args.schema))
    except ValueError as exc:
        print(f"razao: error: {exc}", file=sys.stderr)
        return 2
    finally:
        log.close()
    print(f"compared {args.schema} with {LIVE_SCHEMA} at log position {result.position}")
    for table in result.tables:
        mark = "equal" if table.equal else "DIFFERENT"
        print(f"  {table.table:<10} {mark:<9} live {table.live_rows:>9} rows {table.live_checksum[:12] or '-':<12} "
              f"rebuilt {table.rebuilt_rows:>9} rows {table.rebuilt_checksum[:12] or '-'}")
        for row in table.only_live:
            print(f"    only live:    {row}")
        for row in table.only_rebuilt:
            print(f"    only rebuilt: {row}")
    print("read models VERIFIED" if result.equal else "read models DIFFER from the event store")
    return 0 if result.equal else 1


def _cli_status(_args: argparse.Namespace) -> int:
    settings = load_read_settings()
    ensure_read_database(settings.read_dsn)
    store = ProjectionStore(settings.read_dsn, LIVE_SCHEMA, session="razao-cli")
    log = open_ledger_log(settings.ledger_dsn)
    try:
        tracking = store.ensure()
        head = log.max_notification_id() or 0
    finally:
        store.close()
        log.close()
    state = f"HALTED: {tracking.halted_reason}" if tracking.halted_reason else "running"
    print(f"projection {LIVE_SCHEMA}: position {tracking.position} of {head} (lag {head - tracking.position} "
          f"positions), {tracking.events_applied} events applied, {state}")
    return 0


def _projector_sessions(conn: psycopg.Connection[Any]) -> list[str]:
    """The read database's sessions of projectors of the live read models (``pid@client``), other than this one.

    A projector dropped under would fail its next batch and, restarted by its supervisor, project from position
    0 while an operator may still be deciding; it must be stopped first. Its store connects under a name of its
    own (``projector_session``), which is what is looked for here."""
    rows = conn.execute(
        "SELECT pid, coalesce(host(client_addr), 'local') FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
        (projector_session(LIVE_SCHEMA),),
    ).fetchall()
    return [f"{pid}@{client}" for pid, client in rows]


def _cli_reset(_args: argparse.Namespace) -> int:
    settings = load_read_settings()
    ensure_read_database(settings.read_dsn)
    log = open_ledger_log(settings.ledger_dsn)
    try:
        with psycopg.connect(settings.read_dsn, connect_timeout=5) as conn:
            if not schema_exists(conn, LIVE_SCHEMA):
                print(f"there are no live read models ({LIVE_SCHEMA}): nothing to reset")
                return 0
            store = ProjectionStore(settings.read_dsn, LIVE_SCHEMA, session="razao-cli")
            try:
                tracking = store.tracking()
            finally:
                store.close()
            mismatch = ledger_mismatch(log, tracking.position, tracking.chain_hash)
            if mismatch is None:
                print(f"razao: error: the live read models are of this ledger (position {tracking.position}, chain "
                      f"hash {tracking.chain_hash}); they are not reset. To check them: razao projections rebuild "
                      "--into audit && razao projections verify --schema audit", file=sys.stderr)
                return 2
            running = _projector_sessions(conn)
            if running:
                print(f"razao: error: a projector is still connected to the live read models (database sessions "
                      f"{', '.join(running)}); they are not reset. Stop it first (razao down), then run reset again",
                      file=sys.stderr)
                return 2
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(LIVE_SCHEMA)))
    finally:
        log.close()
    print(f"dropped the live read models: {mismatch.removeprefix(f'{LEDGER_MISMATCH}: ')}")
    print("start the projector (razao up): it projects this ledger from position 0")
    return 0
