"""`razao bench api` runs end to end (real API subprocess, real Postgres and Redis) and reports consistent numbers.

Not a performance test: about a second with a few clients, and no timing target is asserted. What is asserted is
what must hold on any machine: the report has every field, the commits were durable, every 201 the API sent is
one ``TransferCommitted`` in the store, and the bench dropped the database it made.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from commands import bench, bench_api
from infra.settings import Settings, admin_dsn


@pytest.fixture(scope="module")
def report(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("bench") / "api.json"
    code = bench.main(["api", "--seconds", "1", "--warmup-seconds", "0.2", "--clients", "4", "--wallets", "20",
                       "--dsn", settings.pg_dsn, "--json", str(path)])
    assert code == 0, "the bench failed its consistency checks (exit code 3) or could not run"
    loaded: dict[str, Any] = json.loads(Path(path).read_text())
    return loaded


def test_report_has_every_field(report: dict[str, Any]) -> None:
    assert report["schema"] == bench_api.JSON_SCHEMA
    assert report["command"].startswith("razao bench api --seconds 1 ")
    assert report["server"]["synchronous_commit"] == "on" and report["server"]["fsync"] == "on"
    assert report["options"]["clients"] == 4 and report["options"]["wallets"] == 20
    assert report["options"]["rate_limits_raised_to"] == bench_api.BENCH_RATE_LIMITS
    assert {"p50", "p99", "max", "mean", "count"} <= report["latency_ms"].keys()
    assert report["transfers_per_s"] > 0 and report["ok"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert isinstance(report["non_201_by_status"], dict)
    assert report["transport_errors"] == 0
    assert report["client_cpu"]["seconds"] >= 0 and report["server_cpu"]["seconds"] > 0
    assert {"transfers_per_s", "p99_ms"} == report["targets"].keys()
    assert all(isinstance(t["pass"], bool) for t in report["targets"].values())


def test_every_acknowledged_transfer_is_committed(report: dict[str, Any]) -> None:
    checks = report["checks"]
    assert checks["passed"], checks
    assert checks["committed_after_setup"] == checks["setup_transfers"] == 20
    assert checks["committed_total"] == checks["setup_transfers"] + checks["acknowledged_total"]
    assert checks["acknowledged_total"] == report["statuses_total"]["201"] >= report["ok"]
    assert checks["server_tracebacks"] == 0


def test_bench_database_is_dropped(report: dict[str, Any], settings: Settings) -> None:
    name = report["server"]["database"]
    assert name.startswith("razao_bench_api_")
    with psycopg.connect(admin_dsn(settings.pg_dsn), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None


def test_cli_registers_bench_api() -> None:
    parser = argparse.ArgumentParser(prog="razao")
    bench.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "api", "--seconds", "3", "--json", "out.json", "--clients", "8"])
    assert args.func is bench_api.run_api_cli
    assert (args.seconds, args.clients, args.json) == (3.0, 8, Path("out.json"))


def test_bulk_requests_count_their_committed_transfers(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "bulk.json"
    code = bench.main(["api", "--seconds", "1", "--warmup-seconds", "0.2", "--clients", "2", "--wallets", "20",
                       "--bulk", "10", "--dsn", settings.pg_dsn, "--json", str(path)])
    assert code == 0, "the bulk bench failed its consistency checks (exit code 3) or could not run"
    report = json.loads(path.read_text())
    assert report["command"].endswith("--bulk 10 --json " + str(path))
    assert report["options"]["transfers_per_request"] == 10
    requests = report["statuses_total"]["200"]
    # Every request answered 200 and committed its 10 transfers (wallets start with enough for all of them);
    # Postgres holds exactly those.
    assert report["non_201_by_status"] == {} and report["transport_errors"] == 0
    assert report["checks"]["passed"], report["checks"]
    assert report["checks"]["acknowledged_total"] == 10 * requests
    assert report["checks"]["committed_total"] == 20 + 10 * requests
    assert report["ok"] % 10 == 0 and report["transfers_per_s"] > 0
