"""`razao projections rebuild|verify|status` and `razao relay status|rewind`, run as a person would run them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from commands.bootstrap import build_ledger
from infra.settings import Settings, drop_database, ensure_database, with_database
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.model import CreateTransfer, OpenAccount
from projections.bootstrap import open_ledger_log
from projections.rebuild import iter_events
from projections.store import ProjectionStore


@pytest.fixture
def ledger_and_read(settings: Settings) -> Iterator[tuple[str, str, dict[str, str]]]:
    suffix = uuid.uuid4().hex[:8]
    ledger_dsn = with_database(settings.pg_dsn, f"razao_test_cli_{suffix}")
    read_dsn = with_database(settings.pg_dsn, f"razao_test_cli_{suffix}_read")
    ensure_database(ledger_dsn)
    runtime = build_ledger(ledger_dsn)
    try:
        settlement, wallet = uuid.uuid4(), uuid.uuid4()
        writer = runtime.writer
        writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT,
                                        int(REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT])))
        writer.open_account(OpenAccount(wallet, AccountCode.INVESTOR_WALLET,
                                        int(REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET])))
        for n in range(40):
            writer.transfer(CreateTransfer(f"cli-{n}", settlement, wallet, 100 + n))
    finally:
        runtime.close()
    env = {**os.environ, "RAZAO_PG_DSN": ledger_dsn, "RAZAO_READ_PG_DSN": read_dsn}
    yield ledger_dsn, read_dsn, env
    drop_database(read_dsn)
    drop_database(ledger_dsn)


def test_rebuild_verify_and_status_from_the_command_line(razao, ledger_and_read) -> None:
    ledger_dsn, read_dsn, env = ledger_and_read
    # The live model, as a projector would have left it: everything but the last ten events.
    log = open_ledger_log(ledger_dsn)
    events = list(iter_events(log))
    log.close()
    ensure_database(read_dsn)
    razao("projections", "rebuild", "--into", "early", env=env)  # before any projector ran: nothing to compare with
    early = razao("projections", "verify", "--schema", "early", env=env, check=False)
    assert early.returncode == 2 and "no live read models" in early.stderr and "Traceback" not in early.stderr
    store = ProjectionStore(read_dsn)
    store.ensure()
    store.apply(events[:-10])
    store.close()
    status = razao("projections", "status", env=env)
    assert f"position {events[-11].position} of {events[-1].position} (lag 10 positions)" in status.stdout

    built = razao("projections", "rebuild", "--as-of", str(events[5].position), "--into", "audit", env=env)
    assert f"6 events up to position {events[5].position}" in built.stdout
    assert "rebuild audit" in built.stderr  # the progress bar
    verified = razao("projections", "verify", "--schema", "audit", env=env)
    assert "read models VERIFIED" in verified.stdout and f"position {events[-11].position}" in verified.stdout

    with psycopg.connect(read_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM live.entries WHERE position = %s", (events[-11].position,))
    differ = razao("projections", "verify", "--schema", "audit", env=env, check=False)
    assert differ.returncode == 1
    assert "entries    DIFFERENT" in differ.stdout and "only rebuilt:" in differ.stdout

    # Bad input is refused with a message, never a traceback.
    for args in (("--as-of", "yesterday"), ("--as-of", "2026-11-29T12:00:00"), ("--into", "live"),
                 ("--into", "Robert'); DROP TABLE")):
        refused = razao("projections", "rebuild", *args, env=env, check=False)
        assert refused.returncode == 2 and "razao: error:" in refused.stderr, args
        assert "Traceback" not in refused.stderr
    missing = razao("projections", "verify", "--schema", "nowhere", env=env, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_relay_status_and_rewind(razao, ledger_and_read) -> None:
    _, _, env = ledger_and_read
    assert "never ran" in razao("relay", "status", env=env).stdout
    razao("relay", "rewind", "--to", "5", env=env)
    status = razao("relay", "status", env=env).stdout
    assert "position 5 of 42 (lag 37 events)" in status and "rewinds 1" in status
    refused = razao("relay", "rewind", "--to", "999", env=env, check=False)
    assert refused.returncode == 2 and "no log record at position 999" in refused.stderr


def test_razao_up_starts_the_relay_projector_and_query_api(settings: Settings) -> None:
    from infra.platform import discover_services

    specs = {spec.name: spec for spec in discover_services(settings)}
    for name, module in (("relay", "commands.relay"), ("projector", "projections.consumer"),
                         ("query-api", "projections.api")):
        spec = specs[name]
        assert spec.argv[1:3] == ("-m", module) and spec.health_url and spec.health_url.endswith("/health")
    assert len({specs[n].health_url for n in ("relay", "projector", "query-api")}) == 3


def test_the_projection_benchmark_measures_commit_to_query_lag(razao, settings: Settings, tmp_path) -> None:
    """`razao bench projection`: relay, projector and query API as processes, a short load, every sample answered."""
    import json

    out = tmp_path / "projection.json"
    run = razao("bench", "projection", "--seconds", "3", "--rate", "200", "--sample-every", "4", "--warmup-s", "1",
                "--json", str(out), check=False)
    assert run.returncode == 0, run.stderr  # the p99 target is reported, not enforced
    report = json.loads(out.read_text())
    assert report["errors"] == 0
    assert report["committed_transfers"] >= 150 and report["samples"] >= 100
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"] < 5_000
    assert report["stages"]["projector"]["razao_projector_batch_seconds_count"] > 0


@pytest.mark.parametrize("method", ["sql", "projector"])
def test_a_rebuild_reads_the_log_from_a_read_only_ledger_database(razao, ledger_and_read, method: str) -> None:
    """As from a hot standby (which refuses every write): the ledger's database is only read, the read models are
    written to the read database."""
    ledger_dsn, read_dsn, env = ledger_and_read
    name = ledger_dsn.rsplit("/", 1)[1]
    maintenance = ledger_dsn.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        with psycopg.connect(ledger_dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE refused (id int)")
        built = razao("projections", "rebuild", "--into", f"standby_{method}", "--method", method, "--no-progress",
                      env=env)
        assert "42 events up to position 42" in built.stdout and f"method {method}" in built.stdout
        with psycopg.connect(read_dsn, autocommit=True) as conn:
            row = conn.execute(f"SELECT count(*) FROM standby_{method}.transfers").fetchone()
        assert row is not None and row[0] == 40
    finally:
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')


@pytest.mark.parametrize("command", ["status", "reset"])
def test_a_database_that_does_not_answer_is_one_line_not_a_traceback(razao, command: str) -> None:
    env = {**os.environ, "RAZAO_PG_DSN": "postgresql://postgres@127.0.0.1:1/razao",
           "RAZAO_READ_PG_DSN": "postgresql://postgres@127.0.0.1:1/razao_read"}
    result = razao("projections", command, env=env, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("razao: error: connection failed") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr  # libpq's message and its hint
