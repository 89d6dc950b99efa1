"""The ledger on a real Postgres: restart and checkpoints, idempotency across restarts, the single-writer lease,
fencing after a takeover, and durable acknowledgement.

Each test gets a database of its own (``fresh_database``) and builds the ledger as a process would
(``commands.bootstrap.build_ledger``).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from psycopg.sql import SQL as sql_text

from commands.bootstrap import LedgerRuntime, build_ledger
from infra.postgres_store import (
    CHECKPOINTS_KEPT_DEFAULT,
    ENV_CHECKPOINTS_KEPT,
    WRITER_LEASE_NAME,
    BinaryStateRecorder,
    PostgresTransferLookup,
)
from ledger import errors
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.command_types import transfer_id_for_key
from ledger.events import TRANSFER_COMMITTED_TOPIC, PendingTransferResolved
from ledger.model import (
    CloseAccount,
    CreateLinkedTransfers,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
)

WAIT_S = 20.0


class Runtimes:
    """Builds ledgers on one database and closes whatever is still open at the end of the test."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.open: list[LedgerRuntime] = []

    def build(self, **writer_options: Any) -> LedgerRuntime:
        writer_options.setdefault("wait_ms", 1.0)
        runtime = build_ledger(self.dsn, **writer_options)
        self.open.append(runtime)
        return runtime

    def close(self, runtime: LedgerRuntime) -> None:
        self.open.remove(runtime)
        runtime.close()

    def close_all(self) -> None:
        while self.open:
            runtime = self.open.pop()
            try:
                runtime.close()
            except Exception:  # a fenced runtime's lease connection may already be gone
                runtime.app.close()


@pytest.fixture
def ledgers(fresh_database: str) -> Iterator[Runtimes]:
    runtimes = Runtimes(fresh_database)
    yield runtimes
    runtimes.close_all()


def sql(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(query, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def events_table(runtime: LedgerRuntime) -> str:
    return str(runtime.app.recorder.events_table_name)  # type: ignore[attr-defined]


def checkpoint_positions(dsn: str) -> list[int]:
    return [int(v) for (v,) in sql(dsn, "SELECT originator_version FROM ledger_snapshots ORDER BY 1")]


def event_count(dsn: str, table: str) -> int:
    return int(sql(dsn, f'SELECT count(*) FROM "{table}"')[0][0])


def t(key: str, debit: UUID | None, credit: UUID | None, amount: int | None, **kw: Any) -> CreateTransfer:
    return CreateTransfer(key, debit, credit, amount, **kw)


def post(key: str, pending_key: str, amount: int | None = None) -> CreateTransfer:
    return CreateTransfer(key, None, None, amount, kind="post_pending", pending_id=transfer_id_for_key(pending_key))


def void(key: str, pending_key: str) -> CreateTransfer:
    return CreateTransfer(key, None, None, None, kind="void_pending", pending_id=transfer_id_for_key(pending_key))


def open_account(runtime: LedgerRuntime, code: AccountCode) -> UUID:
    account_id = uuid.uuid4()
    runtime.writer.open_account(OpenAccount(account_id, code, REQUIRED_FLAGS[code]))
    return account_id


class Accounts:
    def __init__(self, runtime: LedgerRuntime) -> None:
        self.settlement = open_account(runtime, AccountCode.PIX_SETTLEMENT)
        self.alice = open_account(runtime, AccountCode.INVESTOR_WALLET)
        self.bob = open_account(runtime, AccountCode.BORROWER_WALLET)
        self.escrow = open_account(runtime, AccountCode.LOAN_ESCROW)
        self.fees = open_account(runtime, AccountCode.FEE_REVENUE)


def workload(runtime: LedgerRuntime, a: Accounts, prefix: str) -> list[CreateTransfer | CreateLinkedTransfers]:
    """Every kind of command, committed; returns them so they can be replayed later."""
    w = runtime.writer
    commands: list[CreateTransfer | CreateLinkedTransfers] = [
        t(f"{prefix}dep-a", a.settlement, a.alice, 50_000, code=10, reference="e2e:1"),
        t(f"{prefix}dep-b", a.settlement, a.bob, 5_000, code=10),
        t(f"{prefix}hold-1", a.alice, a.settlement, 7_000, kind="pending", timeout_s=3_600),
        t(f"{prefix}hold-2", a.alice, a.settlement, 3_000, kind="pending"),
        t(f"{prefix}hold-3", a.bob, a.settlement, 1_000, kind="pending", timeout_s=7_200),
        post(f"{prefix}post-1", f"{prefix}hold-1", 6_500),
        void(f"{prefix}void-2", f"{prefix}hold-2"),
        CreateLinkedTransfers((
            t(f"{prefix}fund", a.alice, a.escrow, 20_000, code=20),
            t(f"{prefix}fee", a.alice, a.fees, 200, code=30),
        )),
    ]
    for command in commands:
        result = w.execute(command, timeout_s=WAIT_S)
        assert not (result.replayed if not isinstance(result, list) else result[0].replayed)
    return commands


def replay_all(runtime: LedgerRuntime, commands: list[CreateTransfer | CreateLinkedTransfers]) -> list[Any]:
    results = []
    for command in commands:
        result = runtime.writer.execute(command, timeout_s=WAIT_S)
        for r in result if isinstance(result, list) else [result]:
            assert r.replayed is True, r
        results.append(result)
    return results


# ---- restart ---------------------------------------------------------------------------------------------------------


def test_restart_rebuilds_the_same_state_without_checkpoints(ledgers: Runtimes) -> None:
    first = ledgers.build()
    accounts = Accounts(first)
    commands = workload(first, accounts, "x-")
    empty = open_account(first, AccountCode.INVESTOR_WALLET)
    first.writer.close_account(CloseAccount(empty))
    live = first.writer.state.fingerprint()
    originals = replay_all(first, commands)
    table = events_table(first)
    count = event_count(ledgers.dsn, table)
    ledgers.close(first)

    second = ledgers.build()
    assert second.app.latest_checkpoint() is None
    assert second.writer.state.fingerprint() == live
    assert second.writer.state.index_complete is True
    # Every key replays to its original result, positions included, and nothing new is written.
    assert replay_all(second, commands) == originals
    assert event_count(ledgers.dsn, table) == count
    with pytest.raises(errors.AccountClosed):
        second.writer.transfer(t("to-closed", accounts.settlement, empty, 1))
    second.writer.state.check_invariants()


def test_restart_from_checkpoints_rebuilds_the_same_state(ledgers: Runtimes) -> None:
    first = ledgers.build(checkpoint_interval=3)
    accounts = Accounts(first)
    workload(first, accounts, "a-")
    workload(first, accounts, "b-")
    live = first.writer.state.fingerprint()
    checkpoint = first.app.latest_checkpoint()
    assert checkpoint is not None and checkpoint.position > 10
    ledgers.close(first)

    second = ledgers.build(checkpoint_interval=3)
    assert second.writer.state.fingerprint() == live
    assert second.app.load_state(use_checkpoint=False).fingerprint() == live
    # As of a past position: an older checkpoint plus its tail equals the full replay up to there. (Only at
    # positions that end a commit: see test_writer.py::test_state_as_of_the_position_of_a_post_can_be_rebuilt.)
    log = list(second.app.iter_log())
    ends = [n.id for (n, _), (_, after) in itertools.pairwise(log)
            if not isinstance(after, PendingTransferResolved)]
    for upto in [p for p in ends if checkpoint.position - 8 <= p <= checkpoint.position]:
        older = second.app.latest_checkpoint(upto=upto)
        assert older is not None and older.position <= upto
        assert second.app.load_state(upto=upto).fingerprint() == (
            second.app.load_state(upto=upto, use_checkpoint=False).fingerprint()
        )


def test_replay_after_restart_of_a_key_older_than_the_checkpoint(ledgers: Runtimes) -> None:
    first = ledgers.build(checkpoint_interval=4)
    accounts = Accounts(first)
    commands = workload(first, accounts, "old-")
    originals = replay_all(first, commands)
    for i in range(6):  # push the checkpoint past every key of the workload
        first.writer.transfer(t(f"later-{i}", accounts.settlement, accounts.bob, 100))
    checkpoint = first.app.latest_checkpoint()
    assert checkpoint is not None
    assert all(r.position < checkpoint.position for r in originals if not isinstance(r, list))
    ledgers.close(first)

    second = ledgers.build(checkpoint_interval=4)
    state = second.writer.state
    assert state.index_complete is False
    assert transfer_id_for_key("old-dep-a") not in state.transfers
    # Streamed from the store after start, in the background: the filter that sends only possibly old keys to the
    # store (until it is whole, every key the index does not hold is looked up).
    deadline = time.monotonic() + 30
    while not state.committed_ids_complete:
        assert time.monotonic() < deadline, "the committed ids were never all streamed in"
        time.sleep(0.01)
    assert transfer_id_for_key("old-dep-a").int in state.committed_ids
    count = event_count(ledgers.dsn, events_table(second))
    # Looked up in the store: the originals come back, with their positions.
    assert replay_all(second, commands) == originals
    with pytest.raises(errors.IdempotencyConflict) as caught:
        second.writer.transfer(t("old-dep-a", accounts.settlement, accounts.alice, 50_001, code=10, reference="e2e:1"))
    assert caught.value.context["field"] == "amount_centavos"
    # Pending transfers from before the checkpoint keep their story.
    with pytest.raises(errors.PendingTransferAlreadyPosted):
        second.writer.transfer(post("old-post-again", "old-hold-1"))
    with pytest.raises(errors.PendingTransferAlreadyVoided):
        second.writer.transfer(post("old-post-voided", "old-hold-2"))
    assert event_count(ledgers.dsn, events_table(second)) == count
    assert second.writer.transfer(void("old-void-3", "old-hold-3")).amount_centavos == 1_000
    second.writer.state.check_invariants()


# ---- the single writer -----------------------------------------------------------------------------------------------


def epoch(dsn: str) -> int:
    return int(sql(dsn, "SELECT epoch FROM ledger_writer WHERE name = %s", WRITER_LEASE_NAME)[0][0])


def test_a_second_writer_on_the_same_database_is_refused(ledgers: Runtimes) -> None:
    first = ledgers.build()
    accounts = Accounts(first)
    first_epoch = epoch(ledgers.dsn)
    with pytest.raises(errors.WriterBusy):
        ledgers.build()
    assert epoch(ledgers.dsn) == first_epoch
    # The refused writer changed nothing: the first one goes on writing.
    assert first.writer.transfer(t("still-mine", accounts.settlement, accounts.alice, 100)).replayed is False
    ledgers.close(first)
    second = ledgers.build()
    assert epoch(ledgers.dsn) == first_epoch + 1
    assert second.writer.transfer(t("still-mine", accounts.settlement, accounts.alice, 100)).replayed is True


def take_over_by_bumping_the_epoch(ledgers: Runtimes, old: LedgerRuntime) -> LedgerRuntime | None:
    sql(ledgers.dsn, "UPDATE ledger_writer SET epoch = epoch + 1 WHERE name = %s", WRITER_LEASE_NAME)
    return None


def take_over_after_the_lease_connection_died(ledgers: Runtimes, old: LedgerRuntime) -> LedgerRuntime | None:
    # The old writer's lease connection is cut (a network partition, an idle-session kill): its advisory lock is
    # gone but its writer thread and connection pool live on. A new writer then takes the lease.
    lease: Any = old.writer.lease
    pid = lease._conn.info.backend_pid
    assert sql(ledgers.dsn, "SELECT pg_terminate_backend(%s)", pid) == [(True,)]
    return ledgers.build()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # a fenced writer stops loudly
@pytest.mark.parametrize("take_over", [take_over_by_bumping_the_epoch, take_over_after_the_lease_connection_died])
def test_a_fenced_writer_writes_nothing_and_stops(ledgers: Runtimes, take_over: Any) -> None:
    old = ledgers.build()
    accounts = Accounts(old)
    old.writer.transfer(t("before", accounts.settlement, accounts.alice, 10_000))
    table = events_table(old)
    count = event_count(ledgers.dsn, table)
    new = take_over(ledgers, old)

    with pytest.raises(errors.LedgerUnavailable):
        old.writer.transfer(t("after", accounts.alice, accounts.bob, 100))
    assert isinstance(old.writer.fatal, errors.WriterFenced)
    # Everything after is refused without trying, and nothing of the old writer's reached the store.
    futures: list[Future[Any]] = [old.writer.submit(t(f"after-{i}", accounts.alice, accounts.bob, 1)) for i in range(3)]
    for future in futures:
        assert isinstance(future.exception(timeout=WAIT_S), errors.LedgerUnavailable)
    assert event_count(ledgers.dsn, table) == count
    keys = {"after", "after-0", "after-1", "after-2"}
    ids = [transfer_id_for_key(k) for k in keys]
    assert sql(ledgers.dsn, f'SELECT count(*) FROM "{table}" WHERE originator_id = ANY(%s)', ids) == [(0,)]

    if new is not None:
        # The new writer sees everything the old one committed, and owns the ledger now.
        assert new.writer.state.fingerprint() == old.app.load_state().fingerprint()
        result = new.writer.transfer(t("after", accounts.alice, accounts.bob, 100))
        assert result.replayed is False and result.position is not None and result.position > count


# ---- durable acknowledgement -----------------------------------------------------------------------------------------


def test_every_acknowledged_position_is_committed_in_the_events_table(ledgers: Runtimes) -> None:
    runtime = ledgers.build()
    accounts = Accounts(runtime)
    runtime.writer.transfer(t("seed", accounts.settlement, accounts.alice, 100_000))
    futures = {}
    for i in range(300):
        key = f"ack-{i}"
        command = t(key, accounts.alice, accounts.bob, 100) if i % 3 else t(key, accounts.settlement, accounts.bob, 7)
        futures[key] = runtime.writer.submit(command)
        if i % 50 == 0:
            futures[f"hold-{i}"] = runtime.writer.submit(t(f"hold-{i}", accounts.alice, accounts.bob, 10,
                                                           kind="pending"))
    results = {key: future.result(timeout=WAIT_S) for key, future in futures.items()}
    assert runtime.writer.stats().batches < len(results)  # group commit did group
    table = events_table(runtime)
    # Read from another connection, as any client would after the acknowledgement.
    stored = dict(sql(ledgers.dsn, f'SELECT notification_id, originator_id FROM "{table}" '
                                   f"WHERE originator_version = 1"))
    for key, result in results.items():
        assert stored.get(result.position) == transfer_id_for_key(key), key
    assert len({r.position for r in results.values()}) == len(results)


def test_writers_starting_together_get_one_lease_and_writer_busy_for_the_rest(ledgers: Runtimes) -> None:
    # A rolling restart, or standbys polling for a takeover: several processes start at once on a ledger that
    # already exists. One must win; every other one must get the typed WriterBusy it can wait on and retry,
    # not a raw database error from the lease's setup (e.g. two CREATE OR REPLACE FUNCTION at once).
    ledgers.close(ledgers.build())
    contenders = 8
    barrier = threading.Barrier(contenders)
    outcomes: list[str] = []

    def start() -> None:
        barrier.wait(timeout=WAIT_S)
        try:
            ledgers.build()
            outcomes.append("started")
        except errors.WriterBusy:
            outcomes.append("busy")
        except Exception as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")

    for _ in range(3):
        threads = [threading.Thread(target=start) for _ in range(contenders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=WAIT_S)
        ledgers.close_all()
    assert sorted(set(outcomes)) == ["busy", "started"], outcomes
    assert outcomes.count("started") == 3


# ---- a tampered log --------------------------------------------------------------------------------------------------


def test_a_writer_refuses_to_start_on_a_tampered_log_and_releases_its_lease(ledgers: Runtimes) -> None:
    runtime = ledgers.build()
    accounts = Accounts(runtime)
    paid = runtime.writer.transfer(t("pay", accounts.settlement, accounts.alice, 10_000))
    runtime.writer.transfer(t("after", accounts.settlement, accounts.bob, 1))
    table = events_table(runtime)
    ledgers.close(runtime)
    [(state,)] = sql(ledgers.dsn, f'SELECT state FROM "{table}" WHERE notification_id = %s', paid.position)
    body = json.loads(bytes(state))
    assert body["amount_centavos"] == 10_000
    body["amount_centavos"] = body["requested_amount_centavos"] = 1_000_000
    body["debit_after"], body["credit_after"] = [0, 1_000_000, 0, 0], [0, 0, 0, 1_000_000]
    sql(ledgers.dsn, f'UPDATE "{table}" SET state = %s WHERE notification_id = %s',
        json.dumps(body).encode(), paid.position)
    for _ in range(2):  # the failed start released the lease: the second attempt fails the same way, not busy
        with pytest.raises(AssertionError, match="chain broken"):
            ledgers.build()


def test_processes_opening_the_ledger_together_all_succeed(fresh_database: str) -> None:
    """The API, the relay and `razao ledger verify` open the ledger (and create its tables and functions) on their
    own; opened at the same moment, none may fail on Postgres's unserialised DDL ("tuple concurrently updated")."""
    from commands.bootstrap import open_ledger_app

    runtime = build_ledger(fresh_database)  # the tables exist, as when the API started first
    runtime.close()
    with psycopg.connect(fresh_database, autocommit=True) as conn:  # an older append function, replaced on open
        conn.execute("CREATE OR REPLACE FUNCTION razao_append_ledger_events(lease text, expected_epoch bigint, "
                     "ids uuid[], versions bigint[], topics text[], states bytea[]) RETURNS SETOF bigint "
                     "LANGUAGE plpgsql AS $$BEGIN RETURN; END$$")
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def open_and_close() -> None:
        start.wait()
        try:
            open_ledger_app(fresh_database, pool_size=1).close()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_and_close) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    # And the function they left is the one that appends: an account opened through it is in the log.
    runtime = build_ledger(fresh_database)
    try:
        account = uuid.uuid4()
        opened = runtime.writer.open_account(OpenAccount(account, AccountCode.INVESTOR_WALLET,
                                                         REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET]))
        assert opened.position is not None
        assert [n.originator_id for n in runtime.app.recorder.select_notifications(opened.position, 1)] == [account]
    finally:
        runtime.close()


def test_ledger_verify_of_a_database_that_does_not_exist_says_so_and_creates_nothing(
        razao: Any, fresh_database: str) -> None:
    missing = fresh_database.rsplit("/", 1)[0] + f"/razao_missing_{uuid.uuid4().hex[:8]}"
    refused = razao("ledger", "verify", "--dsn", missing, check=False)
    assert refused.returncode == 2 and "razao: error: cannot open the ledger at" in refused.stderr
    assert "Traceback" not in refused.stderr
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        name = missing.rsplit("/", 1)[1]
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None


def _maintenance_dsn(dsn: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/postgres"


def test_ledger_verify_only_reads_so_an_auditor_can_run_it_on_a_read_only_standby(
        razao: Any, fresh_database: str) -> None:
    """A hot standby refuses every write, even `CREATE TABLE IF NOT EXISTS`; a database whose sessions are
    read-only by default refuses the same statements the same way."""
    runtime = build_ledger(fresh_database)
    try:
        workload(runtime, Accounts(runtime), "audit-")
        head = runtime.writer.state.chain_hash
        posted = sum(a.debits_posted for a in runtime.writer.state.accounts.values())
    finally:
        runtime.close()
    name = fresh_database.rsplit("/", 1)[1]
    with psycopg.connect(_maintenance_dsn(fresh_database), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        with psycopg.connect(fresh_database, autocommit=True) as conn, pytest.raises(
                psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE IF NOT EXISTS ledger_events (id int)")  # what opening for writing would do
        verified = razao("ledger", "verify", "--dsn", fresh_database)
        assert f"chain head: {head}" in verified.stdout
        assert posted > 0 and f"Σ debits posted = {posted}, Σ credits posted = {posted}" in verified.stdout
    finally:
        with psycopg.connect(_maintenance_dsn(fresh_database), autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')


def test_ledger_verify_of_a_database_without_a_ledger_says_so_and_creates_nothing(
        razao: Any, fresh_database: str) -> None:
    refused = razao("ledger", "verify", "--dsn", fresh_database, check=False)
    assert refused.returncode == 2 and "holds no ledger" in refused.stderr and "Traceback" not in refused.stderr
    tables = sql(fresh_database, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert tables[0][0] == 0


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def test_the_transfer_lookup_probes_the_primary_key_whatever_the_statistics(ledgers: Runtimes) -> None:
    # After a restart from a checkpoint every batch looks its new transfer ids up. On a table without statistics
    # (autovacuum off), ``originator_id = ANY(...)`` was planned as a walk of the whole notification index: 250 ms
    # a batch at a million events. The lookup must stay one primary-key probe per id, without JIT.
    runtime = ledgers.build()
    accounts = Accounts(runtime)
    runtime.writer.transfer(t("fund", accounts.settlement, accounts.alice, 10_000_000, code=10))
    for block in range(10):
        runtime.writer.submit(CreateTransfers(tuple(
            t(f"bulk-{block}-{i}", accounts.alice, accounts.bob, 1) for i in range(2_000)))).result(timeout=WAIT_S)
    lookup = PostgresTransferLookup(runtime.app.recorder)
    wanted = [uuid.uuid4() for _ in range(200)] + [transfer_id_for_key("bulk-3-7")]
    with psycopg.connect(ledgers.dsn) as conn, conn.transaction():
        conn.execute("SET LOCAL jit = off")  # as ``find`` does
        (explained,) = conn.execute(sql_text("EXPLAIN (ANALYZE, FORMAT JSON) ") + lookup.statement,
                                    (wanted,)).fetchone()  # type: ignore[misc]
    nodes = list(plan_nodes(explained[0]["Plan"]))
    table = events_table(runtime)
    on_table = [n["Node Type"] for n in nodes if n.get("Relation Name") == table]
    assert on_table and set(on_table) <= {"Index Scan", "Bitmap Heap Scan"}, on_table
    probes = [n for n in nodes if "Index Name" in n]
    assert {n["Index Name"] for n in probes} == {f"{table}_pkey"}
    assert probes[0]["Actual Loops"] == len(wanted)  # one probe per id
    assert "JIT" not in explained[0]
    found = lookup.find(wanted)
    assert [stored.originator_id for _, stored in found] == [transfer_id_for_key("bulk-3-7")]


def test_the_ids_of_committed_transfers_stream_up_to_a_position(ledgers: Runtimes) -> None:
    runtime = ledgers.build()
    accounts = Accounts(runtime)  # account events: not transfers, never streamed
    first = runtime.writer.transfer(t("s-1", accounts.settlement, accounts.alice, 100, code=10))
    runtime.writer.transfer(t("s-2", accounts.settlement, accounts.alice, 100, code=10))
    lookup = PostgresTransferLookup(runtime.app.recorder)
    assert first.position is not None
    assert set(lookup.originator_ids(TRANSFER_COMMITTED_TOPIC, upto=first.position)) == {transfer_id_for_key("s-1")}
    assert set(lookup.originator_ids(TRANSFER_COMMITTED_TOPIC, upto=runtime.writer.stats().position)) == {
        transfer_id_for_key("s-1"), transfer_id_for_key("s-2")}


def test_checkpoints_are_compressed_with_lz4_when_the_server_has_it(ledgers: Runtimes) -> None:
    runtime = ledgers.build(checkpoint_interval=3)
    accounts = Accounts(runtime)
    workload(runtime, accounts, "a-")
    assert runtime.app.snapshots is not None
    table = runtime.app.snapshots.recorder.events_table_name  # type: ignore[attr-defined]
    has_lz4 = sql(ledgers.dsn, "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                               "WHERE name = 'default_toast_compression'")[0][0]
    compression = sql(ledgers.dsn, "SELECT attcompression::text FROM pg_attribute "
                                   "WHERE attrelid = %s::regclass AND attname = 'state'", table)[0][0]
    assert compression == ("l" if has_lz4 else "")
    # With enough accounts the writer's checkpoints pass the size Postgres compresses (about 2 KB): stored with
    # lz4, and read back whole.
    for _ in range(60):
        open_account(runtime, AccountCode.INVESTOR_WALLET)
    live = runtime.writer.state.fingerprint()
    runtime.writer.stop()
    size, method = sql(ledgers.dsn, f'SELECT octet_length(state), pg_column_compression(state) FROM "{table}" '
                                    "ORDER BY originator_version DESC LIMIT 1")[0]
    assert size > 4_000
    assert method == ("lz4" if has_lz4 else "pglz")
    assert runtime.app.load_state().fingerprint() == live


def test_checkpoints_are_saved_through_the_binary_recorder_whole_and_all_or_nothing(ledgers: Runtimes) -> None:
    runtime = ledgers.build()
    assert runtime.app.snapshots is not None
    recorder = runtime.app.snapshots.recorder
    # The library's recorder escapes the state as text while holding the interpreter lock (docs/benchmarks.md).
    assert isinstance(recorder, BinaryStateRecorder)
    # Every byte value, and the ones text escaping treats specially, come back as they were sent.
    state = bytes(range(256)) * 64 + b"\\x00'\"{},\\\\"
    owner = uuid.uuid4()
    recorder.insert_events([StoredEvent(originator_id=owner, originator_version=1, topic="t", state=state)])
    [stored] = recorder.select_events(owner)
    assert (stored.originator_version, stored.topic, stored.state) == (1, "t", state)
    # Rows saved together are saved together: a duplicate among them leaves none of them.
    with pytest.raises(IntegrityError):
        recorder.insert_events([StoredEvent(originator_id=owner, originator_version=2, topic="t", state=b"2"),
                                StoredEvent(originator_id=owner, originator_version=1, topic="t", state=b"1")])
    assert [e.originator_version for e in recorder.select_events(owner)] == [1]
    # The ledger's own checkpoints go through it and restore the live state.
    accounts = Accounts(runtime)
    workload(runtime, accounts, "b-")
    live = runtime.writer.state.fingerprint()
    runtime.writer.stop()
    checkpoint = runtime.app.write_checkpoint(runtime.app.load_state())
    latest = runtime.app.latest_checkpoint()
    assert latest is not None and (latest.position, latest.chain_hash) == (checkpoint.position, checkpoint.chain_hash)
    assert runtime.app.load_state().fingerprint() == live


def test_ledger_verify_compares_every_checkpoint_with_the_log_and_finds_a_changed_one(
        razao: Any, ledgers: Runtimes) -> None:
    first = ledgers.build(checkpoint_interval=3)
    accounts = Accounts(first)
    workload(first, accounts, "a-")
    workload(first, accounts, "b-")
    ledgers.close(first)
    positions = checkpoint_positions(ledgers.dsn)
    assert len(positions) >= 3
    verified = razao("ledger", "verify", "--dsn", ledgers.dsn)
    assert f"checkpoints: {len(positions)}, each equal to the log replayed to its position" in verified.stdout

    # Move R$ 10.00 of credits from Alice to Bob inside the latest checkpoint: the books still balance and every
    # invariant holds, so a restart takes it as it is; only the comparison with the log can tell.
    latest = positions[-1]
    [(stored,)] = sql(ledgers.dsn, "SELECT state FROM ledger_snapshots WHERE originator_version = %s", latest)
    body = json.loads(bytes(stored))
    rows = {row[0]: row for row in body["accounts"]}
    rows[str(accounts.alice)][8] -= 1_000
    rows[str(accounts.bob)][8] += 1_000
    sql(ledgers.dsn, "UPDATE ledger_snapshots SET state = %s WHERE originator_version = %s",
        json.dumps(body).encode(), latest)
    replayed = ledgers.build()
    try:
        from_log = replayed.app.load_state(use_checkpoint=False).accounts[accounts.alice].credits_posted
        assert replayed.writer.state.accounts[accounts.alice].credits_posted == from_log - 1_000
    finally:
        ledgers.close(replayed)
    refused = razao("ledger", "verify", "--dsn", ledgers.dsn, check=False)
    assert refused.returncode == 2
    assert f"the checkpoint at position {latest} differs from the log replayed to that position" in refused.stdout


def test_the_snapshot_store_keeps_only_the_newest_checkpoints(ledgers: Runtimes,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CHECKPOINTS_KEPT, "2")
    first = ledgers.build(checkpoint_interval=3)
    accounts = Accounts(first)
    workload(first, accounts, "a-")
    written = first.app.latest_checkpoint()
    assert written is not None
    workload(first, accounts, "b-")
    live, position = first.writer.state.fingerprint(), first.writer.state.position
    ledgers.close(first)
    kept = checkpoint_positions(ledgers.dsn)
    # Each save deleted what was beyond the newest two, in its own transaction; the newest is the one the writer
    # wrote when it stopped.
    assert len(kept) == 2 and kept[-1] == position > written.position
    assert written.position not in kept
    # What a restart, an as-of load and the audit need still works from what is left.
    second = ledgers.build(checkpoint_interval=3)
    assert second.writer.state.fingerprint() == live and second.writer.state.position == position
    assert second.app.load_state(upto=written.position).fingerprint() == (
        second.app.load_state(upto=written.position, use_checkpoint=False).fingerprint())
    _, checked = second.app.replay_checking_checkpoints()
    assert checked == kept


def test_the_default_keeps_five_and_a_bad_setting_is_refused_by_name(ledgers: Runtimes,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CHECKPOINTS_KEPT, raising=False)
    runtime = ledgers.build(checkpoint_interval=2)
    accounts = Accounts(runtime)
    for prefix in ("a-", "b-", "c-"):
        workload(runtime, accounts, prefix)
    ledgers.close(runtime)
    assert len(checkpoint_positions(ledgers.dsn)) == CHECKPOINTS_KEPT_DEFAULT == 5
    for bad in ("0", "-3", "ten", "1001"):
        monkeypatch.setenv(ENV_CHECKPOINTS_KEPT, bad)
        with pytest.raises(ValueError, match=ENV_CHECKPOINTS_KEPT):
            ledgers.build()


def test_the_writer_recovers_when_its_store_connections_are_cut(ledgers: Runtimes) -> None:
    """Appends go straight to libpq: a connection that broke under one must leave the pool, not fail every later
    batch. Every connection of the event store's pool is cut; the retried transfer commits once."""
    runtime = ledgers.build()
    accounts = Accounts(runtime)
    runtime.writer.transfer(t("before-cut", accounts.settlement, accounts.alice, 10_000))
    lease_pid = runtime.writer.lease._conn.info.backend_pid  # type: ignore[attr-defined]
    cut = sql(ledgers.dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND pid NOT IN (pg_backend_pid(), %s)", lease_pid)
    assert cut and all(ok for (ok,) in cut)
    transfer = t("after-cut", accounts.settlement, accounts.alice, 5_000)
    refusals = 0
    for _ in range(40):
        try:
            runtime.writer.transfer(transfer)
            break
        except errors.LedgerUnavailable:  # the outcome of an append on a cut connection is unknown: retry
            refusals += 1
            time.sleep(0.25)
    else:
        pytest.fail("the writer never recovered from its cut connections")
    assert runtime.writer.accounts(accounts.alice)[accounts.alice].credits_posted == 15_000
    committed = sql(ledgers.dsn, f'SELECT count(*) FROM "{events_table(runtime)}" WHERE originator_id = %s',
                    transfer.transfer_id)
    assert committed == [(1,)]
    assert refusals <= 10, f"{refusals} refusals before the pool had live connections again"
