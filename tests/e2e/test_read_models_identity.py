"""Read models of another ledger are refused, not served.

Two ledgers, A and B, in two databases; the read models are projected from A. Pointed at B (a ledger created
again in the same database, or a DSN naming the wrong server, look the same), the projector refuses to start,
records why in the tracking row and exits with status 2; the query API answers ``QUERY_LEDGER_MISMATCH`` instead of
serving A's rows. Put back on A, the projector starts and clears the refusal. `razao projections reset` drops the
read models only when they are not of the ledger; after it, the projector on B projects B from position 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from readside_support import ReadSide, http_json, wait_until

from commands.api.auth import DEV_PUBLIC_KEY_FILENAME, ensure_dev_keys, mint_token
from commands.bootstrap import build_ledger
from infra.settings import Settings, drop_database, ensure_database, with_database
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.model import CreateTransfer, OpenAccount
from projections.bootstrap import open_ledger_log
from projections.consumer import LedgerMismatch, Projector
from projections.ledger_identity import LEDGER_MISMATCH, chain_hash_at, ledger_mismatch
from projections.store import ProjectionStore

EXIT_TIMEOUT_S = 30.0


def write_history(dsn: str, transfers: int) -> uuid.UUID:
    """A settlement account, a wallet, and ``transfers`` deposits into it; returns the wallet's id."""
    runtime = build_ledger(dsn)
    try:
        settlement, wallet = uuid.uuid4(), uuid.uuid4()
        runtime.writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT,
                                                int(REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT])))
        runtime.writer.open_account(OpenAccount(wallet, AccountCode.INVESTOR_WALLET,
                                                int(REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET])))
        for n in range(transfers):
            runtime.writer.transfer(CreateTransfer(uuid.uuid4().hex, settlement, wallet, 100 * (n + 1)))
    finally:
        runtime.close()
    return wallet


@pytest.fixture(scope="module")
def two_ledgers(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("identity")
    suffix = uuid.uuid4().hex[:8]
    ledger_a = with_database(settings.pg_dsn, f"razao_test_identity_{suffix}_a")
    ledger_b = with_database(settings.pg_dsn, f"razao_test_identity_{suffix}_b")
    read_dsn = with_database(settings.pg_dsn, f"razao_test_identity_{suffix}_read")
    for dsn in (ledger_a, ledger_b, read_dsn):
        ensure_database(dsn)
    keys = base / "jwt"
    ensure_dev_keys(keys)
    extra = {"RAZAO_JWT_PUBLIC_KEY_FILE": str(keys / DEV_PUBLIC_KEY_FILENAME),
             "RAZAO_QUERY_RATE_LIMIT_KEY_PREFIX": f"razao-test-{suffix}"}
    wallet_a = write_history(ledger_a, transfers=3)
    wallet_b = write_history(ledger_b, transfers=5)  # longer than A: A's last position exists in B, with another hash
    side_a = ReadSide(ledger_a, read_dsn, settings.kafka_bootstrap, base / "a", extra_env=extra)
    try:
        side_a.start_relay()
        side_a.start_projector()
        side_a.wait_projected(side_a.log_head())
        side_a.stop_all()
        yield {"a": ledger_a, "b": ledger_b, "read": read_dsn, "wallet_a": wallet_a, "wallet_b": wallet_b,
               "keys": keys, "extra": extra, "base": base, "bootstrap": settings.kafka_bootstrap}
    finally:
        side_a.stop_all()
        for dsn in (read_dsn, ledger_b, ledger_a):
            drop_database(dsn)


def tracking(read_dsn: str) -> tuple[int, str, str | None]:
    with psycopg.connect(read_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT position, chain_hash, halted_reason FROM live.tracking").fetchone()
    assert row is not None
    return int(row[0]), str(row[1]), row[2]


def projector_sessions(read_dsn: str) -> int:
    with psycopg.connect(read_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND application_name = 'razao-projector-live'").fetchone()
    return int(row[0]) if row else 0


def test_the_check_compares_the_chain_hash_at_the_tracked_position(two_ledgers: dict[str, Any]) -> None:
    position, chain_hash, halted = tracking(two_ledgers["read"])
    assert position > 0 and halted is None
    log_a, log_b = open_ledger_log(two_ledgers["a"]), open_ledger_log(two_ledgers["b"])
    try:
        assert chain_hash_at(log_a, position) == chain_hash
        assert ledger_mismatch(log_a, position, chain_hash) is None
        assert ledger_mismatch(log_b, 0, "anything") is None  # nothing projected yet: any ledger will do
        refusal = ledger_mismatch(log_b, position, chain_hash)
        assert refusal is not None and refusal.startswith(LEDGER_MISMATCH)
        assert chain_hash in refusal and str(chain_hash_at(log_b, position)) in refusal
        head_b = log_b.max_notification_id()
        assert head_b is not None
        beyond = ledger_mismatch(log_b, head_b + 1, chain_hash)
        assert beyond is not None and f"no event at position {head_b + 1} (it ends at {head_b})" in beyond
    finally:
        log_a.close()
        log_b.close()


def test_the_projector_refuses_another_ledger_and_the_query_api_serves_nothing(two_ledgers: dict[str, Any]) -> None:
    read_dsn = two_ledgers["read"]
    before = tracking(read_dsn)
    side_b = ReadSide(two_ledgers["b"], read_dsn, two_ledgers["bootstrap"], two_ledgers["base"] / "b",
                      extra_env=two_ledgers["extra"])
    log_path = two_ledgers["base"] / "projector-b.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "projections.consumer", "--group-id", side_b.group],
                                   env=side_b.env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        assert process.wait(EXIT_TIMEOUT_S) == 2
    finally:
        if process.poll() is None:
            process.kill()
    output = log_path.read_text()
    assert "PROJECTOR REFUSED TO START" in output and LEDGER_MISMATCH in output and "Traceback" not in output
    position, chain_hash, halted = tracking(read_dsn)
    assert (position, chain_hash) == before[:2]  # nothing of B was applied
    assert halted is not None and halted.startswith(LEDGER_MISMATCH)

    _, url = side_b.start_query_api()
    try:
        token = mint_token(ensure_dev_keys(two_ledgers["keys"]), "auditor-identity", "auditor")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
            for path in (f"/v1/accounts/{two_ledgers['wallet_a']}/balance", "/v1/audit/trial-balance"):
                response = client.get(path)
                assert response.status_code == 503, response.text
                assert response.headers["content-type"].startswith("application/problem+json")
                body = response.json()
                assert body["code"] == "QUERY_LEDGER_MISMATCH" and "another ledger" in body["detail"]
        status, health = http_json(f"{url}/health")
        assert str(health["projection_halted"]).startswith(LEDGER_MISMATCH), (status, health)
    finally:
        side_b.stop_all()


def test_back_on_its_own_ledger_the_projector_clears_the_refusal(two_ledgers: dict[str, Any]) -> None:
    read_dsn = two_ledgers["read"]
    store = ProjectionStore(read_dsn)
    projector = Projector(store, two_ledgers["bootstrap"], "unused-topic")
    log_b, log_a = open_ledger_log(two_ledgers["b"]), open_ledger_log(two_ledgers["a"])
    try:
        with pytest.raises(LedgerMismatch):
            projector.check_ledger(log_b)
        assert str(tracking(read_dsn)[2]).startswith(LEDGER_MISMATCH)
        projector.check_ledger(log_a)
        assert tracking(read_dsn)[2] is None
    finally:
        store.close()
        log_a.close()
        log_b.close()


def test_reset_drops_only_read_models_of_another_ledger_then_the_projector_projects_this_one(
        two_ledgers: dict[str, Any], tmp_path: Path, razao: Any) -> None:
    read_dsn = two_ledgers["read"]
    env_a = {**os.environ, "RAZAO_PG_DSN": two_ledgers["a"], "RAZAO_READ_PG_DSN": read_dsn}
    env_b = {**env_a, "RAZAO_PG_DSN": two_ledgers["b"]}
    kept = razao("projections", "reset", env=env_a, check=False)  # they are A's: nothing is dropped
    assert kept.returncode == 2 and "are of this ledger" in kept.stderr and "Traceback" not in kept.stderr
    assert tracking(read_dsn)[0] > 0
    # A projector still connected to them (here one of ledger A, started before the operator noticed): reset
    # refuses to drop the schema under it.
    side_a = ReadSide(two_ledgers["a"], read_dsn, two_ledgers["bootstrap"], tmp_path / "a",
                      extra_env=two_ledgers["extra"])
    try:
        side_a.start_projector(healthy=False)
        wait_until(lambda: projector_sessions(read_dsn) > 0, 30, "the projector's session on the read database")
        busy = razao("projections", "reset", env=env_b, check=False)
        assert busy.returncode == 2 and "a projector is still connected" in busy.stderr, busy.stderr
        assert "Traceback" not in busy.stderr and tracking(read_dsn)[0] > 0
    finally:
        side_a.stop_all()
    wait_until(lambda: projector_sessions(read_dsn) == 0, 30, "the projector's session to end")
    dropped = razao("projections", "reset", env=env_b)
    assert "dropped the live read models" in dropped.stdout and "another ledger" in dropped.stdout
    again = razao("projections", "reset", env=env_b)
    assert "nothing to reset" in again.stdout
    side_b = ReadSide(two_ledgers["b"], read_dsn, two_ledgers["bootstrap"], tmp_path / "b",
                      extra_env=two_ledgers["extra"])
    try:
        side_b.start_relay()
        side_b.start_projector()
        side_b.wait_projected(side_b.log_head())
        position, chain_hash, halted = tracking(read_dsn)
        log_b = open_ledger_log(two_ledgers["b"])
        try:
            assert chain_hash_at(log_b, position) == chain_hash and halted is None
        finally:
            log_b.close()
        _, url = side_b.start_query_api()
        token = mint_token(ensure_dev_keys(two_ledgers["keys"]), "auditor-identity", "auditor")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
            response = wait_until(lambda: (r := client.get(f"/v1/accounts/{two_ledgers['wallet_b']}/balance"))
                                  .status_code == 200 and r, 30, "the query API to serve ledger B")
            assert response.json()["posted"] == "15.00"  # 1 + 2 + 3 + 4 + 5 reais
    finally:
        side_b.stop_all()
