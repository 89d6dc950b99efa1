"""A PIX platform for end-to-end tests: two real sandbox PSPs and a real API process (PIX on) wired to them.

Each platform has its own database, state directory and sandboxes on free ports, so tests never share money. The
API can be killed (SIGKILL to its own PID) and started again on the same database, as a crash would leave it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.processes import free_port
from infra.sandbox_psp.launcher import RunningSandbox, start_sandbox
from infra.settings import Settings, drop_database, ensure_database, with_database
from tests.e2e.conftest import GENEROUS_LIMITS, READY_TIMEOUT_S, ApiServer, new_key, party_body, stop_api

PRIMARY_KEY = "5f8e0c1a-3b7d-4e2f-9a6c-1d2e3f4a5b6c"
SECONDARY_KEY = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
BREAKER_RESET_S = 1.5
#: Fast PSP tuning so outages are noticed within a test's patience.
PSP_TUNING = {
    "RAZAO_PSP_CONNECT_TIMEOUT_S": "0.3", "RAZAO_PSP_READ_TIMEOUT_S": "1.0", "RAZAO_PSP_DEADLINE_S": "2.5",
    "RAZAO_PSP_ATTEMPTS_MAX": "3", "RAZAO_PSP_BACKOFF_INITIAL_S": "0.02", "RAZAO_PSP_BACKOFF_MAX_S": "0.1",
    "RAZAO_PSP_BREAKER_FAIL_MAX": "3", "RAZAO_PSP_BREAKER_RESET_TIMEOUT_S": str(BREAKER_RESET_S),
}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class PixPlatform:
    api: ApiServer
    primary: RunningSandbox
    secondary: RunningSandbox
    env: dict[str, str]
    logs: Path
    operator: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.operator = self.api.client("operator", "ops-pix")

    # ---- people ------------------------------------------------------------------------------------------------
    def investor(self) -> tuple[dict[str, Any], httpx.Client]:
        response = self.operator.post("/v1/parties", json=party_body("investor"),
                                      headers={"Idempotency-Key": new_key()})
        assert response.status_code == 201, response.text
        party: dict[str, Any] = response.json()
        return party, self.api.client("investor", party["id"])

    def wallet(self, wallet_id: str) -> dict[str, Any]:
        response = self.operator.get(f"/v1/wallets/{wallet_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    # ---- money in --------------------------------------------------------------------------------------------
    def deposit(self, client: httpx.Client, valor: str, key: str | None = None) -> dict[str, Any]:
        response = client.post("/v1/deposits", json={"valor": valor}, headers={"Idempotency-Key": key or new_key()})
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def sandbox(self, psp: str) -> RunningSandbox:
        return self.primary if psp == "primary" else self.secondary

    def post_webhook(self, psp: str, body: bytes, *, secret: str | None = None, psp_header: str | None = None,
                     client: httpx.Client | None = None) -> httpx.Response:
        sandbox = self.sandbox(psp)
        headers = {"Content-Type": "application/json", "X-Psp-Id": psp_header or psp,
                   "X-Razao-Signature": sign(secret or sandbox.webhook_secret, body),
                   "X-Razao-Delivery": uuid.uuid4().hex[:20]}
        return (client or httpx).post(f"{self.api.url}/v1/webhooks/psp/{psp}/pix", content=body,
                                      headers=headers, timeout=30.0)

    def wait_for(self, what: str, check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n--- API log:\n{self.api.log()[-4000:]}")
            time.sleep(0.05)

    def received(self, e2eid: str) -> dict[str, Any] | None:
        response = self.operator.get(f"/v1/pix/{e2eid}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def withdrawal(self, withdrawal_id: str) -> dict[str, Any]:
        response = self.operator.get(f"/v1/withdrawals/{withdrawal_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def settled_withdrawal(self, withdrawal_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
        found: dict[str, Any] = self.wait_for(
            f"withdrawal {withdrawal_id} to end",
            lambda: (w := self.withdrawal(withdrawal_id))["status"] != "PROCESSING" and w, timeout_s)
        return found

    def metrics(self) -> str:
        return httpx.get(f"{self.api.url}/metrics").text

    # ---- process control ---------------------------------------------------------------------------------------
    def kill_api(self) -> None:
        """SIGKILL to the API's own PID: no lifespan shutdown, no flush, as a crash."""
        os.kill(self.api.process.pid, signal.SIGKILL)
        self.api.process.wait(10)

    def restart_api(self) -> None:
        for client in self.api.clients:
            client.close()
        self.api = spawn_api(self.api.dsn, self.api.state_dir, self.env)
        self.operator = self.api.client("operator", "ops-pix")


def platform_env(primary: RunningSandbox, secondary: RunningSandbox, extra: Mapping[str, str]) -> dict[str, str]:
    env = {**GENEROUS_LIMITS, **PSP_TUNING, "RAZAO_PIX_ENABLED": "true", "RAZAO_PIX_RECONCILE_INTERVAL_S": "0",
           "RAZAO_PIX_INBOX_SWEEP_S": "0.2", "RAZAO_PIX_PAYOUT_DELAY_S_MAX": "1.0"}
    for name, sandbox in (("PRIMARY", primary), ("SECONDARY", secondary)):
        env.update({f"RAZAO_PSP_{name}_URL": sandbox.base_url, f"RAZAO_PSP_{name}_CLIENT_ID": sandbox.client_id,
                    f"RAZAO_PSP_{name}_CLIENT_SECRET": sandbox.client_secret,
                    f"RAZAO_PSP_{name}_PIX_KEY": sandbox.pix_key,
                    f"RAZAO_PSP_{name}_WEBHOOK_SECRET": sandbox.webhook_secret})
    env.update(extra)
    return env


def spawn_api(dsn: str, state_dir: Path, env: Mapping[str, str]) -> ApiServer:
    """``python -m commands.api`` on an existing database, as `razao up` runs it; waits until ready."""
    port = free_port("127.0.0.1")
    log_path = state_dir / "api.log"
    child_env = {**os.environ, "RAZAO_ENV": "development", "RAZAO_PG_DSN": dsn, "RAZAO_STATE_DIR": str(state_dir),
                 "RAZAO_API_RATE_LIMIT_KEY_PREFIX": f"razao-test-{uuid.uuid4().hex[:12]}", **env}
    for name in ("RAZAO_JWT_PUBLIC_KEY_FILE", "RAZAO_JWT_PRIVATE_KEY_FILE", "RAZAO_JWT_HS256_SECRET"):
        child_env.pop(name, None)
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "commands.api", "--host", "127.0.0.1", "--port",
                                    str(port)], env=child_env, stdout=log, stderr=subprocess.STDOUT)
    server = ApiServer(f"http://127.0.0.1:{port}", state_dir, dsn, process, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the API exited with {process.returncode} at start:\n{server.log()}", pytrace=False)
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the API was not ready within {READY_TIMEOUT_S:.0f}s:\n{server.log()}", pytrace=False)


def start_platform(settings: Settings, directory: Path, extra_env: Mapping[str, str] | None = None,
                   **sandbox_knobs: Any) -> PixPlatform:
    directory.mkdir(parents=True, exist_ok=True)
    secret = uuid.uuid4().hex
    primary = start_sandbox("primary", seed=11, client_secret=f"p-{secret}", webhook_secret=f"pw-{secret}",
                            log_path=directory / "primary.log")
    secondary = start_sandbox("secondary", ispb="20000002", pix_key=SECONDARY_KEY, seed=12,
                              client_secret=f"s-{secret}", webhook_secret=f"sw-{secret}",
                              log_path=directory / "secondary.log")
    if sandbox_knobs:
        primary.configure(**sandbox_knobs)
        secondary.configure(**sandbox_knobs)
    dsn = with_database(settings.pg_dsn, f"razao_test_pix_{uuid.uuid4().hex[:8]}")
    ensure_database(dsn)
    env = platform_env(primary, secondary, extra_env or {})
    (directory / "api").mkdir()
    try:
        api = spawn_api(dsn, directory / "api", env)
    except BaseException:
        primary.stop()
        secondary.stop()
        drop_database(dsn)
        raise
    platform = PixPlatform(api, primary, secondary, env, directory)
    platform.wait_for("the webhook registrations", lambda: _registered(primary) and _registered(secondary))
    return platform


def _registered(sandbox: RunningSandbox) -> bool:
    return bool(sandbox.state().get("webhook"))


def stop_platform(platform: PixPlatform) -> None:
    stop_api(platform.api)  # also drops its database
    platform.primary.stop()
    platform.secondary.stop()


@pytest.fixture(scope="module")
def pix(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PixPlatform]:
    platform = start_platform(settings, tmp_path_factory.mktemp("pix"))
    yield platform
    log = platform.api.log()
    stop_platform(platform)
    assert "Traceback" not in log, f"the API logged an unexpected error:\n{log}"


def pix_item(sandbox_pix: dict[str, Any]) -> bytes:
    """A webhook body carrying one Pix, as the sandbox would post it."""
    return json.dumps({"pix": [sandbox_pix]}, separators=(",", ":")).encode()
