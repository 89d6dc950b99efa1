"""`razao demo` tells its story through a running command API; `razao up` would start the API as a service."""

from __future__ import annotations

import os
from pathlib import Path

from commands.services import API_PORT_DEFAULT, api_port, api_url, services
from infra.settings import Settings
from tests.conftest import RunRazao
from tests.e2e.conftest import ApiServer


def test_demo_runs_through_the_api(api: ApiServer, razao: RunRazao) -> None:
    env = {**os.environ, "RAZAO_STATE_DIR": str(api.state_dir), "RAZAO_ENV": "development"}
    output = razao("demo", "--url", api.url, env=env).stdout
    assert "POST /v1/parties" in output and "← 201 Created" in output
    assert "· replayed" in output
    assert "← 404 Not Found: LEDGER_ACCOUNT_NOT_FOUND" in output  # Ana cannot see Bruno's wallet
    assert "← 422 Unprocessable" in output and "LEDGER_INSUFFICIENT_FUNDS" in output
    table = output[output.index("account "):]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip() and "Σ" not in line}
    assert rows["Ana"][-1] == "729.50"  # 1000 - 120.50 - 180 + 30
    assert rows["Bruno"][-1] == "200.50"  # 250 + 120.50 - 200 + 30
    assert rows["Carla"][-1] == "316.00"  # 200 - 4 + 180 - 60
    # The bulk repayment: two transfers committed, the third refused on its own.
    assert "R$ 30.00 committed, R$ 30.00 committed, LEDGER_INSUFFICIENT_FUNDS" in output
    assert "the ledger balances" in output


def test_api_service_spec_for_razao_up(tmp_path: Path, monkeypatch: object) -> None:
    settings = Settings(pg_dsn="postgresql://x@127.0.0.1/razao", redis_url="redis://127.0.0.1:6379/0",
                        kafka_bootstrap="127.0.0.1:9092", state_dir=tmp_path)
    os.environ.pop("RAZAO_API_PORT", None)
    [spec] = services(settings)
    port = api_port(tmp_path)
    assert spec.name == "api" and spec.health_url == f"http://127.0.0.1:{port}/readyz"
    assert spec.argv[1:3] == ("-m", "commands.api") and str(port) in spec.argv
    assert api_url(tmp_path) == f"http://127.0.0.1:{port}"
    assert port == API_PORT_DEFAULT or port > 1024
