"""The set-based rebuild (projections.rebuild_sql) against its definition, the projector-based rebuild, on Postgres.

A real ledger on Postgres writes a history with every kind of event (parties, accounts opened at class version 1
and 2 and closed, single transfers, a linked batch, pending transfers posted in full and in part, voided, expired
and left open, the PIX facts); the two methods must build the same rows, table by table, as of the end, of
positions and of times. Records that the contract refuses must stop both methods with the contract's own error
and leave no schema behind; records after the as-of point must not. A property test then runs random histories
(in memory) through both methods and the live projector stopped at the same point.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo
from readside_support import (
    SteppingClock,
    append_record,
    delete_record,
    dumps,
    random_ledger_history,
    stored_state,
    stored_uuid,
    write_every_kind,
)

from commands.bootstrap import build_ledger
from infra.settings import Settings, drop_database, ensure_database, with_database
from ledger.application import LedgerApplication
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.contracts import (
    EVENT_VERSIONS,
    STORED_VERSIONS,
    ContractError,
    IntegrationEvent,
    LogDecoder,
    MalformedEvent,
    UnknownEventType,
    UnsupportedEventVersion,
)
from projections.bootstrap import LedgerLog, open_ledger_log
from projections.rebuild import RebuildBusy, iter_events, rebuild, table_checksums
from projections.rebuild_sql import STORED_FIELDS, STORED_WRAPPERS, Step, building_schema, run_steps
from projections.schema import create_schema, schema_exists
from projections.store import ProjectionBug, ProjectionStore

V1_ACCOUNT_FLAGS = int(REQUIRED_FLAGS[AccountCode.FEE_REVENUE])


@dataclass
class Ledger:
    ledger_dsn: str
    read_dsn: str
    log: LedgerLog
    clock: SteppingClock
    ids: dict[str, Any]
    v1_account: uuid.UUID

    def events(self) -> list[IntegrationEvent]:
        return list(iter_events(self.log))


@pytest.fixture(scope="module")
def ledger(settings: Settings) -> Iterator[Ledger]:
    suffix = uuid.uuid4().hex[:8]
    ledger_dsn = with_database(settings.pg_dsn, f"razao_test_rebuild_{suffix}")
    read_dsn = with_database(settings.pg_dsn, f"razao_test_rebuild_{suffix}_read")
    ensure_database(ledger_dsn)
    ensure_database(read_dsn)
    clock = SteppingClock()
    runtime = build_ledger(ledger_dsn, clock=clock)
    try:
        ids = write_every_kind(runtime.writer, clock)
    finally:
        runtime.close()
    # An account opened before accounts had owners: stored at class version 1, without `owner_id`.
    clock.tick()
    v1_account = uuid.uuid4()
    append_record(ledger_dsn, "ledger.events:AccountOpened",
                  dumps(stored_state(clock, ledger=986, code=int(AccountCode.FEE_REVENUE), flags=V1_ACCOUNT_FLAGS,
                                     reference="opened at v1")), v1_account)
    log = open_ledger_log(ledger_dsn)
    try:
        yield Ledger(ledger_dsn, read_dsn, log, clock, ids, v1_account)
    finally:
        log.close()
        drop_database(read_dsn)
        drop_database(ledger_dsn)


def rebuild_both(ledger: Ledger, **as_of: Any) -> tuple[Any, Any]:
    """Both methods into their own schemas; asserts they built the same tables and tracking row."""
    built = rebuild(ledger.read_dsn, ledger.log, "set_based", **as_of)
    reference = rebuild(ledger.read_dsn, ledger.log, "reference", method="projector", **as_of)
    assert (built.method, reference.method) == ("sql", "projector")
    assert (built.position, built.events) == (reference.position, reference.events), as_of
    with psycopg.connect(ledger.read_dsn) as conn:
        ours, theirs = table_checksums(conn, "set_based"), table_checksums(conn, "reference")
        differing = {t: (ours[t], theirs[t]) for t in ours if ours[t] != theirs[t]}
        assert not differing, f"as of {as_of}: tables differ: {differing}\n{diff_rows(conn, list(differing))}"
        tracking = "SELECT projection, position, chain_hash, events_applied, halted_reason FROM {}.tracking"
        assert (conn.execute(tracking.format("set_based")).fetchall()
                == conn.execute(tracking.format("reference")).fetchall())
    return built, reference


def diff_rows(conn: psycopg.Connection[Any], tables: list[str]) -> str:
    lines = []
    for table in tables:
        for left, right in (("set_based", "reference"), ("reference", "set_based")):
            rows = conn.execute(f"SELECT t::text FROM (SELECT * FROM {left}.{table} EXCEPT "
                                f"SELECT * FROM {right}.{table}) t LIMIT 5").fetchall()
            lines += [f"  {table} only in {left}: {r[0]}" for r in rows]
    return "\n".join(lines)


# ---- equal to the projector ----------------------------------------------------------------------------------


def test_the_set_based_rebuild_builds_exactly_the_projectors_rows(ledger: Ledger) -> None:
    events = ledger.events()
    assert {e.type for e in events} == {name for name, _ in EVENT_VERSIONS}, "the history lacks an event type"
    built, _ = rebuild_both(ledger)
    assert (built.position, built.events) == (events[-1].position, len(events))
    # The rows are not trivially equal: every status, hold and account shape is there.
    with psycopg.connect(ledger.read_dsn) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM set_based.transfers GROUP BY 1").fetchall())
        assert set(statuses) == {"posted", "pending", "voided", "expired"}
        holds = dict(conn.execute("SELECT transfer_id, expires_at IS NOT NULL FROM set_based.holds").fetchall())
        open_holds = ledger.ids["open_holds"]
        assert {k: v for k, v in holds.items() if k in open_holds} == dict(zip(open_holds, (True, False),
                                                                            strict=True))
        assert ledger.ids["expired"] not in holds and ledger.ids["partly_posted"] not in holds
        assert conn.execute("SELECT closed_position IS NOT NULL, flags & 8 FROM set_based.accounts "
                            "WHERE account_id = %s", (ledger.ids["closed"],)).fetchone() == (True, 8)
        assert conn.execute("SELECT owner_id, reference FROM set_based.accounts WHERE account_id = %s",
                            (ledger.v1_account,)).fetchone() == (None, "opened at v1")
        assert conn.execute("SELECT count(*) FROM set_based.accounts WHERE owner_id IS NOT NULL").fetchone() == (3,)
        entries = conn.execute("SELECT count(*), count(*) FILTER (WHERE kind = 'expired') FROM set_based.entries"
                               ).fetchone()
        moving = [e for e in events if e.type in ("TransferCommitted", "PendingTransferExpired")]
        assert entries == (2 * len(moving), 2)
        assert conn.execute("SELECT sum(debits_posted) - sum(credits_posted), sum(debits_pending) - "
                            "sum(credits_pending) FROM set_based.balances").fetchone() == (0, 0)
        # The primary keys, foreign keys and indexes are those of the schema, under their usual names.
        assert constraints(conn, "set_based") == constraints(conn, "reference")
        assert not conn.execute("SELECT relname FROM pg_class WHERE relnamespace = 'set_based'::regnamespace "
                                "AND relname LIKE '\\_rebuild%'").fetchall(), "a scratch table was left"


def constraints(conn: psycopg.Connection[Any], schema: str) -> list[tuple[str, str, str]]:
    """Every constraint and index of the schema, with the schema's name taken out of their definitions."""
    by_constraint = conn.execute(
        "SELECT t.relname, c.conname, replace(pg_get_constraintdef(c.oid), %s, '') FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid WHERE c.connamespace = %s::regnamespace ORDER BY 1, 2",
        (schema + ".", schema)).fetchall()
    indexes = conn.execute("SELECT tablename, indexname, replace(indexdef, %s, '') FROM pg_indexes "
                           "WHERE schemaname = %s ORDER BY 1, 2", (schema + ".", schema)).fetchall()
    return [*by_constraint, *indexes]


def test_as_of_positions_equal_the_projector(ledger: Ledger) -> None:
    events = ledger.events()
    expired = next(i for i, e in enumerate(events) if e.type == "PendingTransferExpired")
    for upto in (0, events[0].position, events[expired - 1].position, events[expired].position,
                 events[len(events) // 2].position, events[-2].position, events[-1].position + 1000):
        built, _ = rebuild_both(ledger, upto=upto)
        prefix = [e for e in events if e.position <= upto]
        assert (built.position, built.events) == ((prefix[-1].position, len(prefix)) if prefix else (0, 0))


def test_as_of_a_post_or_a_void_the_pending_transfer_is_settled_and_no_longer_held(ledger: Ledger) -> None:
    """A post or void ends its pending transfer at its own position, as in the ledger's state: read models cut
    between it and the PendingTransferResolved that follows are whole (its balances moved, no hold is listed)."""
    from projections.api.queries import Queries

    events = ledger.events()
    for kind, status in (("post_pending", "posted"), ("void_pending", "voided")):
        settle = next(e for e in events if e.type == "TransferCommitted" and e.payload.kind == kind)
        follower = events[events.index(settle) + 1]
        assert follower.type == "PendingTransferResolved" and follower.position == settle.position + 1
        rebuild_both(ledger, upto=settle.position)  # and both methods agree at that cut
        for schema, resolved_at in (("set_based", settle.position), ("reference", settle.position)):
            with psycopg.connect(ledger.read_dsn) as conn:
                row = conn.execute(f"SELECT status, resolved_by, resolved_position FROM {schema}.transfers "
                                   "WHERE transfer_id = %s", (settle.payload.pending_id,)).fetchone()
                assert row is not None and (row[0], str(row[1]), row[2]) == (
                    status, settle.payload.transfer_id, resolved_at), (kind, schema)
                held = Queries(schema).holds(conn, settle.payload.debit_account_id, 1000)
                assert settle.payload.pending_id not in {str(r["transfer_id"]) for r in held}, (kind, schema)
        rebuild_both(ledger, upto=follower.position)  # one position later the resolution records its own
        with psycopg.connect(ledger.read_dsn) as conn:
            row = conn.execute("SELECT status, resolved_position FROM set_based.transfers WHERE transfer_id = %s",
                               (settle.payload.pending_id,)).fetchone()
            assert row == (status, follower.position)


def test_as_of_times_equal_the_projector(ledger: Ledger) -> None:
    events = ledger.events()
    first, middle, last = events[0].recorded_at, events[len(events) // 2].recorded_at, events[-1].recorded_at
    tick = timedelta(microseconds=1)
    for until in (first - tick, first, middle - tick, middle, middle + tick, last - tick, last + timedelta(days=1)):
        built, _ = rebuild_both(ledger, until=until)
        prefix = []
        for e in events:
            if e.recorded_at > until:
                break
            prefix.append(e)
        assert (built.position, built.events) == ((prefix[-1].position, len(prefix)) if prefix else (0, 0)), until


# ---- refusals ------------------------------------------------------------------------------------------------


def transfer_state(ledger: Ledger) -> dict[str, Any]:
    """A real stored TransferCommitted state of the ledger."""
    with psycopg.connect(ledger.ledger_dsn) as conn:
        row = conn.execute("SELECT state FROM ledger_events WHERE topic = 'ledger.events:TransferCommitted' "
                           "ORDER BY notification_id DESC LIMIT 1").fetchone()
    assert row is not None
    state: dict[str, Any] = json.loads(row[0])
    return state


def bad_records(ledger: Ledger) -> dict[str, tuple[str, bytes, type[Exception]]]:
    clock = ledger.clock
    transfer = transfer_state(ledger)
    return {
        "unknown type": ("ledger.events:LoanFunded", dumps(stored_state(clock, amount_centavos=1)), UnknownEventType),
        "foreign module": ("elsewhere.events:TransferCommitted", dumps(transfer), UnknownEventType),
        "no topic module": ("TransferCommitted", dumps(transfer), UnknownEventType),
        "unsupported version": ("ledger.events:AccountOpened",
                                dumps(stored_state(clock, class_version=9, ledger=986, code=300, flags=1,
                                                   reference="", owner_id=None)), UnsupportedEventVersion),
        "not JSON": ("ledger.events:TransferCommitted", b'{"timestamp": ', MalformedEvent),
        "not UTF-8": ("ledger.events:TransferCommitted", b"\xff\xfe{}", MalformedEvent),
        "a JSON array": ("ledger.events:TransferCommitted", b"[1, 2]", MalformedEvent),
        "missing field": ("ledger.events:TransferCommitted",
                          dumps({k: v for k, v in transfer.items() if k != "pending_id"}), MalformedEvent),
        "not a stored uuid": ("ledger.events:TransferCommitted",
                              dumps({**transfer, "debit_account_id": {"_type_": "uuid", "_data_": "x"}}),
                              MalformedEvent),
        "three balance fields": ("ledger.events:TransferCommitted",
                                 dumps({**transfer, "credit_after": transfer["credit_after"][:3]}), MalformedEvent),
        "not a stored time": ("ledger.events:AccountClosed",
                              dumps({**stored_state(clock, flags=8), "timestamp": "2025-03-01"}), MalformedEvent),
        "PIX fact missing a field": ("ledger.events:WithdrawalFailed",
                                     dumps(stored_state(clock, psp="primary",
                                                        transfer_id=stored_uuid(uuid.uuid4()))), MalformedEvent),
        "PIX fact with a wrong wrapper": ("ledger.events:WithdrawalFailed",
                                         dumps(stored_state(clock, psp="primary", reason="x",
                                                            transfer_id={"_type_": "uuid", "_data_": "0" * 32})),
                                         MalformedEvent),
        "close of an unknown account": ("ledger.events:AccountClosed", dumps(stored_state(clock, flags=8)),
                                        ProjectionBug),
    }


BAD_RECORDS = ["unknown type", "foreign module", "no topic module", "unsupported version", "not JSON", "not UTF-8",
               "a JSON array", "missing field", "not a stored uuid", "three balance fields", "not a stored time",
               "PIX fact missing a field", "PIX fact with a wrong wrapper", "close of an unknown account"]


@pytest.fixture
def kept(ledger: Ledger) -> Iterator[dict[str, tuple[int, str]]]:
    """A schema rebuilt earlier (it must survive a failed rebuild into its name), and its checksums."""
    rebuild(ledger.read_dsn, ledger.log, "kept", upto=5)
    with psycopg.connect(ledger.read_dsn) as conn:
        checksums = table_checksums(conn, "kept")
    yield checksums


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_a_record_the_contract_refuses_stops_both_methods_with_its_error(ledger: Ledger, kept, case: str) -> None:
    events = ledger.events()
    record_topic, state, error = bad_records(ledger)[case]
    ledger.clock.tick()
    position = append_record(ledger.ledger_dsn, record_topic, state)
    try:
        for method in ("sql", "projector"):
            with pytest.raises(error) as raised:
                rebuild(ledger.read_dsn, ledger.log, "broken", method=method)
            assert type(raised.value) is error, (method, raised.value)
            if issubclass(error, ContractError):
                assert f"log record {position}" in str(raised.value), (method, raised.value)
            with pytest.raises(error):  # over a schema that exists, which stays as it was
                rebuild(ledger.read_dsn, ledger.log, "kept", method=method)
            with psycopg.connect(ledger.read_dsn) as conn:
                assert not schema_exists(conn, "broken"), f"{method} left a schema behind"
                for half_built in (building_schema("broken"), building_schema("kept")):
                    assert not schema_exists(conn, half_built), f"{method} left {half_built} behind"
                assert table_checksums(conn, "kept") == kept
        # A rebuild as of before the record never reads it: as of its position, or of a time (the last event
        # recorded strictly before the last one's time ends the prefix before the record).
        rebuild_both(ledger, upto=position - 1)
        before_last = events[-1].recorded_at - timedelta(microseconds=1)
        built, _ = rebuild_both(ledger, until=before_last)
        assert built.position == max(e.position for e in events if e.recorded_at <= before_last)
    finally:
        delete_record(ledger.ledger_dsn, position)


def test_a_resolution_of_a_transfer_that_holds_nothing_is_a_projection_bug(ledger: Ledger) -> None:
    single = next(e for e in ledger.events() if e.type == "TransferCommitted" and e.payload.kind == "single")
    ledger.clock.tick()
    state = stored_state(ledger.clock, resolution="posted", by_transfer_id=stored_uuid(uuid.uuid4()),
                         amount_centavos=1)
    position = append_record(ledger.ledger_dsn, "ledger.events:PendingTransferResolved", dumps(state),
                             uuid.UUID(single.aggregate_id), version=2)
    try:
        for method in ("sql", "projector"):
            with pytest.raises(ProjectionBug):
                rebuild(ledger.read_dsn, ledger.log, "broken", method=method)
    finally:
        delete_record(ledger.ledger_dsn, position)


def test_a_transfer_missing_any_field_the_contract_reads_is_refused_with_the_contracts_error(ledger: Ledger) -> None:
    """The set-based check tests only some fields of a transfer by name (the rest land in NOT NULL columns): each
    missing field must still end in the contract's MalformedEvent, naming the record."""
    transfer = transfer_state(ledger)
    for name in ("timestamp", "chain_hash", *STORED_FIELDS[("TransferCommitted", 1)]):
        ledger.clock.tick()
        position = append_record(ledger.ledger_dsn, "ledger.events:TransferCommitted",
                                 dumps({k: v for k, v in transfer.items() if k != name}))
        try:
            with pytest.raises(MalformedEvent, match=f"log record {position}"):
                rebuild(ledger.read_dsn, ledger.log, "broken")
        finally:
            delete_record(ledger.ledger_dsn, position)


def test_the_fields_the_set_based_check_requires_are_those_the_contract_reads(ledger: Ledger) -> None:
    """STORED_FIELDS and STORED_WRAPPERS against LogDecoder, on a real record of every stored version: removing a
    field breaks decoding exactly when it is listed, and so does a wrong wrapper (or null) of a listed wrapped field;
    every wrapped field of a record is listed."""
    assert set(STORED_FIELDS) == set(STORED_WRAPPERS) == set(STORED_VERSIONS)

    def refused(row: tuple[Any, ...], state: dict[str, Any]) -> bool:
        try:
            LogDecoder().decode_row(row[0], row[1], row[2], row[3], dumps(state))
        except MalformedEvent:
            return True
        return False

    seen = set()
    for row in ledger.log.select_rows(1, 10_000):
        state = json.loads(row[4])
        key = (row[3].partition(":")[2], state.get("class_version", 1))
        seen.add(key)
        wrappers = STORED_WRAPPERS[key]
        for name, value in state.items():
            without = {k: v for k, v in state.items() if k != name}
            assert refused(row, without) == (name in ("timestamp", "chain_hash", *STORED_FIELDS[key])), (key, name)
            if isinstance(value, dict) and name != "timestamp":
                kind = {"uuid_hex": "uuid", "datetime_iso": "time"}[value["_type_"]]
                assert wrappers.get(name, "").rstrip("?") == kind, (key, name, "is wrapped but not listed")
        for name, kind in wrappers.items():
            assert refused(row, {**state, name: {"_type_": "other", "_data_": "0" * 32}}), (key, name)
            assert refused(row, {**state, name: None}) == (kind != "uuid?"), (key, name)
    assert seen == set(STORED_VERSIONS), "the history lacks a stored version"


# ---- built aside, then swapped in ------------------------------------------------------------------------------


def test_a_rebuilt_schema_has_the_catalog_of_a_live_one(ledger: Ledger) -> None:
    """Same constraints (primary keys, foreign keys, checks, not nulls) and indexes as the schema a projector creates:
    the set-based rebuild drops and builds them again in its own order, on two connections."""
    rebuild(ledger.read_dsn, ledger.log, "catalog_built")
    catalog = """SELECT t.relname, c.contype, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c
                     JOIN pg_class t ON t.oid = c.conrelid WHERE c.connamespace = %(s)s::text::regnamespace
                 UNION ALL SELECT tablename, 'i', indexname, indexdef FROM pg_indexes WHERE schemaname = %(s)s::text"""

    def described(conn: psycopg.Connection[Any], schema: str) -> set[tuple[str, ...]]:
        rows = conn.execute(catalog, {"s": schema}).fetchall()
        return {tuple(str(v).replace(f"{schema}.", "S.") for v in row) for row in rows}

    with psycopg.connect(ledger.read_dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS catalog_live CASCADE")
        create_schema(conn, "catalog_live")
        live, built = described(conn, "catalog_live"), described(conn, "catalog_built")
        assert len(live) > 20 and built == live, (sorted(live - built), sorted(built - live))


def test_a_rebuild_killed_half_way_leaves_a_schema_the_next_rebuild_replaces(ledger: Ledger) -> None:
    leftover = building_schema("resumed")
    with psycopg.connect(ledger.read_dsn) as conn:  # what a rebuild killed during its steps leaves
        create_schema(conn, leftover, constraints=False)
        conn.execute(f"CREATE TABLE {leftover}._rebuild_log (id bigint)")
    built = rebuild(ledger.read_dsn, ledger.log, "resumed")
    assert built.events == len(ledger.events())
    with psycopg.connect(ledger.read_dsn) as conn:
        assert not schema_exists(conn, leftover)
        assert conn.execute("SELECT position FROM resumed.tracking").fetchone() == (built.position,)


def test_a_second_rebuild_into_the_same_schema_is_refused_while_the_first_runs(ledger: Ledger) -> None:
    with psycopg.connect(ledger.read_dsn, autocommit=True) as first:
        first.execute("SELECT pg_advisory_lock(hashtext('razao-rebuild:contended'))")  # as a running rebuild holds
        with pytest.raises(RebuildBusy, match="another rebuild into 'contended' is running"):
            rebuild(ledger.read_dsn, ledger.log, "contended")
        rebuild(ledger.read_dsn, ledger.log, "elsewhere")  # another target is not held up
        first.execute("SELECT pg_advisory_unlock(hashtext('razao-rebuild:contended'))")
    assert rebuild(ledger.read_dsn, ledger.log, "contended").events == len(ledger.events())


def test_a_role_that_is_not_a_superuser_rebuilds_too(ledger: Ledger) -> None:
    """The rebuild compresses its WAL when it may: a role without that privilege still rebuilds."""
    role = f"razao_rebuild_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ledger.read_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        admin.execute(f"GRANT CREATE ON DATABASE {admin.info.dbname} TO {role}")
        try:
            built = rebuild(make_conninfo(ledger.read_dsn, user=role), ledger.log, "by_plain_role")
            assert built.events == len(ledger.events())
            assert admin.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'by_plain_role'"
                                 ).fetchone() == (role,)
        finally:
            admin.execute("DROP SCHEMA IF EXISTS by_plain_role CASCADE")
            admin.execute(f"REVOKE CREATE ON DATABASE {admin.info.dbname} FROM {role}")
            admin.execute(f"DROP ROLE {role}")


def test_the_first_failing_step_cancels_the_step_running_beside_it(ledger: Ledger) -> None:
    started: list[str] = []
    with psycopg.connect(ledger.read_dsn) as one, psycopg.connect(ledger.read_dsn) as two:
        steps = [Step("slow", lambda conn: conn.execute("SELECT pg_sleep(60)") and None),
                 Step("failing", lambda conn: conn.execute("SELECT 1 / 0") and None),
                 Step("never", lambda conn: None, after=("slow",))]
        clock = time.monotonic()
        with pytest.raises(psycopg.errors.DivisionByZero):
            run_steps((one, two), steps, lambda stage, _done, _total: started.append(stage))
        assert time.monotonic() - clock < 30, "the slow step was not cancelled"
        assert started == ["tables/slow", "tables/failing"]
        for conn in (one, two):  # both rolled back and usable
            assert conn.execute("SELECT 1").fetchone() == (1,)


# ---- the command line ------------------------------------------------------------------------------------------


def test_the_command_line_rebuilds_set_based_by_default_with_a_bar_per_stage(razao, ledger: Ledger) -> None:
    env = {**os.environ, "RAZAO_PG_DSN": ledger.ledger_dsn, "RAZAO_READ_PG_DSN": ledger.read_dsn}
    events = ledger.events()
    built = razao("projections", "rebuild", "--into", "cli_set", env=env)
    assert f"{len(events)} events up to position {events[-1].position}" in built.stdout
    assert "method sql" in built.stdout
    for stage in ("copy", "decode", "tables", "constraints"):
        assert f"rebuild cli_set: {stage}" in built.stderr, stage
    reference = razao("projections", "rebuild", "--into", "cli_ref", "--method", "projector", env=env)
    assert "method projector" in reference.stdout and "rebuild cli_ref: project" in reference.stderr
    with psycopg.connect(ledger.read_dsn) as conn:
        assert table_checksums(conn, "cli_set") == table_checksums(conn, "cli_ref")
    ledger.clock.tick()
    position = append_record(ledger.ledger_dsn, "ledger.events:LoanFunded", dumps(stored_state(ledger.clock)))
    try:
        refused = razao("projections", "rebuild", "--into", "cli_broken", env=env, check=False)
    finally:
        delete_record(ledger.ledger_dsn, position)
    assert refused.returncode == 1 and "razao: error:" in refused.stderr and "UnknownEventType" in refused.stderr
    assert "Traceback" not in refused.stderr
    with psycopg.connect(ledger.read_dsn) as conn:
        assert not schema_exists(conn, "cli_broken")


def test_the_rebuild_benchmark_times_both_methods_against_every_raw_read(ledger: Ledger) -> None:
    from projections.bench import run_rebuild

    report = run_rebuild(0, ledger.ledger_dsn, repeat=1)
    assert report["events"] == len(ledger.events()) and report["rebuild_method"] == "sql"
    assert report["rebuilds_equal"] is True
    for key in ("raw_read_event_store_events_per_s", "raw_read_plain_sql_events_per_s", "raw_copy_stream_events_per_s",
                "rebuild_events_per_s", "projector_rebuild_events_per_s", "ratio_to_event_store_read",
                "ratio_to_plain_sql_read", "projector_ratio_to_event_store_read"):
        assert report[key] > 0, key
    assert set(report["rebuild_stages_s"]) == {"copy", "decode", "tables", "constraints"}


# ---- random histories ------------------------------------------------------------------------------------------

def random_history(ops: list[tuple[int, int, int, int]]) -> LedgerApplication:
    """Random commands on an in-memory ledger (refused ones are just refused), one to three clock seconds apart."""
    app: LedgerApplication = random_ledger_history(ops, clock=SteppingClock(), hold_timeout_mod=3)
    return app


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 50), st.integers(0, 50), st.integers(0, 40)),
                    min_size=1, max_size=40),
       cut=st.floats(0, 1), by_time=st.booleans(), rng=st.randoms(use_true_random=False))
def test_random_histories_set_based_equals_projector_and_live_at_the_same_point(
        ledger: Ledger, ops, cut: float, by_time: bool, rng: random.Random) -> None:
    app = random_history(ops)
    events = list(iter_events(app.recorder))
    stop = events[min(len(events) - 1, int(cut * len(events)))]
    as_of: dict[str, Any] = {"until": stop.recorded_at} if by_time else {"upto": stop.position}
    live_events = [e for e in events if (e.recorded_at <= stop.recorded_at if by_time else e.position <= stop.position)]
    with psycopg.connect(ledger.read_dsn) as conn:
        create_schema(conn, "prop_live", replace=True)
    store = ProjectionStore(ledger.read_dsn, "prop_live")
    try:
        store.ensure()
        i = 0
        while i < len(live_events):  # random batches, some re-sent
            size = rng.randint(1, 7)
            assert store.apply(live_events[max(0, i - rng.randint(0, 3)):i + size]).gap is None
            i += size
    finally:
        store.close()
    built = rebuild(ledger.read_dsn, app.recorder, "prop_set", **as_of)
    reference = rebuild(ledger.read_dsn, app.recorder, "prop_ref", method="projector", **as_of)
    assert built.position == reference.position == live_events[-1].position
    with psycopg.connect(ledger.read_dsn) as conn:
        live = table_checksums(conn, "prop_live")
        assert table_checksums(conn, "prop_set") == live == table_checksums(conn, "prop_ref")
        assert (conn.execute("SELECT position, chain_hash, events_applied FROM prop_set.tracking").fetchone()
                == conn.execute("SELECT position, chain_hash, events_applied FROM prop_live.tracking").fetchone())
