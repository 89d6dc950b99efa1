"""Fixtures for the command API's end-to-end tests: real uvicorn processes on free ports, real Postgres, Redis.

Each server runs `python -m commands.api` as `razao up` would, on a database of its own (dropped afterwards),
with a state directory of its own (so its development JWT keys are its own) and a Redis key prefix of its own
(so rate-limit counters never leak between runs). Tokens are minted with the server's development key.

- `api`: the main server, with limits high enough never to get in the way;
- `limited_api`: tiny limits on real Redis, for 429s;
- `redisless_api`: tiny limits and a Redis URL where nothing listens (the in-process fallback).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from commands.api.auth import ensure_dev_keys, mint_token
from infra.processes import free_port
from infra.settings import Settings, drop_database, ensure_database, with_database

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
GENEROUS_LIMITS = {
    "RAZAO_API_RATE_LIMIT_CUSTOMER": "1000/second",
    "RAZAO_API_RATE_LIMIT_CUSTOMER_MONEY": "1000/second",
    "RAZAO_API_RATE_LIMIT_INTERNAL": "10000/second",
    "RAZAO_API_RATE_LIMIT_INTERNAL_MONEY": "10000/second",
    "RAZAO_API_RATE_LIMIT_ADDRESS": "10000/second",
    "RAZAO_API_RATE_LIMIT_ADDRESS_MONEY": "10000/second",
}
TINY_LIMITS = {
    **GENEROUS_LIMITS,
    "RAZAO_API_RATE_LIMIT_CUSTOMER_MONEY": "3/minute",
    "RAZAO_API_RATE_LIMIT_INTERNAL_MONEY": "30/minute",
    "RAZAO_API_RATE_LIMIT_ADDRESS_MONEY": "20/minute",
}


@dataclass
class ApiServer:
    url: str
    state_dir: Path
    dsn: str
    process: subprocess.Popen[bytes]
    log_path: Path
    clients: list[httpx.Client] = field(default_factory=list)

    def token(self, role: str, sub: str, **options: Any) -> str:
        return mint_token(ensure_dev_keys(self.state_dir / "jwt"), sub, role, **options)

    def client(self, role: str | None = None, sub: str | None = None, **options: Any) -> httpx.Client:
        """An HTTP client of this server, with a token for ``role`` (and ``sub``, default a fresh name)."""
        headers = {}
        if role is not None:
            if sub is None:
                sub = str(uuid.uuid4()) if role in ("investor", "borrower") else f"{role}-{uuid.uuid4().hex[:8]}"
            headers["Authorization"] = f"Bearer {self.token(role, sub, **options)}"
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)
        self.clients.append(client)
        return client

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_api(settings: Settings, state_dir: Path, *, env: Mapping[str, str] = GENEROUS_LIMITS,
              redis_url: str | None = None) -> ApiServer:
    dsn = with_database(settings.pg_dsn, f"razao_test_api_{uuid.uuid4().hex[:8]}")
    ensure_database(dsn)
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    log_path = state_dir / "api.log"
    child_env = {
        **os.environ, "RAZAO_ENV": "development", "RAZAO_PG_DSN": dsn, "RAZAO_STATE_DIR": str(state_dir),
        "RAZAO_REDIS_URL": redis_url or settings.redis_url,
        "RAZAO_API_RATE_LIMIT_KEY_PREFIX": f"razao-test-{uuid.uuid4().hex[:12]}", **env,
    }
    for name in ("RAZAO_JWT_PUBLIC_KEY_FILE", "RAZAO_JWT_PRIVATE_KEY_FILE", "RAZAO_JWT_HS256_SECRET"):
        if name not in env:
            child_env.pop(name, None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "commands.api", "--host", "127.0.0.1", "--port", str(port)],
            env=child_env, stdout=log, stderr=subprocess.STDOUT,
        )
    server = ApiServer(f"http://127.0.0.1:{port}", state_dir, dsn, process, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            drop_database(dsn)
            pytest.fail(f"the API exited with {process.returncode} at start:\n{server.log()}", pytrace=False)
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_api(server)
    pytest.fail(f"the API was not ready within {READY_TIMEOUT_S:.0f}s:\n{server.log()}", pytrace=False)


def stop_api(server: ApiServer) -> None:
    for client in server.clients:
        client.close()
    if server.process.poll() is None:
        server.process.terminate()  # SIGTERM to the PID we started, nothing else
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(STOP_TIMEOUT_S)
    drop_database(server.dsn)


@pytest.fixture(scope="session")
def api(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = start_api(settings, tmp_path_factory.mktemp("api"))
    yield server
    stop_api(server)
    assert "Traceback" not in server.log(), f"the API logged an unexpected error:\n{server.log()}"


@pytest.fixture
def limited_api(settings: Settings, tmp_path: Path) -> Iterator[ApiServer]:
    server = start_api(settings, tmp_path / "limited", env=TINY_LIMITS)
    yield server
    stop_api(server)


@pytest.fixture
def redisless_api(settings: Settings, tmp_path: Path) -> Iterator[ApiServer]:
    dead_redis = f"redis://127.0.0.1:{free_port('127.0.0.1')}/0"
    server = start_api(settings, tmp_path / "redisless", env=TINY_LIMITS, redis_url=dead_redis)
    yield server
    stop_api(server)


# ---- helpers for the tests ---------------------------------------------------------------------------------


def _check_digit(digits: str, weights: list[int]) -> int:
    remainder = sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    return 0 if remainder < 2 else 11 - remainder


def random_cpf(rng: random.Random | None = None) -> str:
    rng = rng or random.Random()
    base = "".join(str(rng.randint(0, 9)) for _ in range(9))
    first = _check_digit(base, list(range(10, 1, -1)))
    second = _check_digit(base + str(first), list(range(11, 1, -1)))
    return f"{base}{first}{second}"


def random_cnpj(rng: random.Random | None = None) -> str:
    rng = rng or random.Random()
    base = "".join(str(rng.randint(0, 9)) for _ in range(8)) + "0001"
    weights = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
    first = _check_digit(base, weights)
    second = _check_digit(base + str(first), [6, *weights])
    return f"{base}{first}{second}"


def party_body(kind: str = "investor", **overrides: str) -> dict[str, str]:
    return {"kind": kind, "name": "Ana Souza", "document": random_cpf(), "email": "ana@example.com.br",
            "phone": "+5511987654321", **overrides}


def new_key() -> str:
    return uuid.uuid4().hex


@dataclass
class World:
    """A small ledger: an operator, a PIX settlement account, and parties with funded wallets."""

    api: ApiServer
    operator: httpx.Client
    settlement: str

    def onboard(self, kind: str = "investor") -> dict[str, Any]:
        response = self.operator.post("/v1/parties", json=party_body(kind), headers={"Idempotency-Key": new_key()})
        assert response.status_code == 201, response.text
        party: dict[str, Any] = response.json()
        return party

    def deposit(self, wallet_id: str, valor: str) -> dict[str, Any]:
        response = self.operator.post(
            "/v1/transfers", headers={"Idempotency-Key": new_key()},
            json={"debit_account_id": self.settlement, "credit_account_id": wallet_id, "valor": valor, "code": 10},
        )
        assert response.status_code == 201, response.text
        transfer: dict[str, Any] = response.json()
        return transfer

    def customer(self, party: dict[str, Any]) -> httpx.Client:
        return self.api.client(party["kind"], party["id"])

    def balance(self, account_id: str) -> dict[str, Any]:
        response = self.operator.get(f"/v1/accounts/{account_id}")
        assert response.status_code == 200, response.text
        account: dict[str, Any] = response.json()
        return account


def open_account(operator: httpx.Client, code: str) -> str:
    response = operator.post("/v1/accounts", json={"code": code, "reference": f"test:{code}"},
                             headers={"Idempotency-Key": new_key()})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture
def world(api: ApiServer) -> World:
    operator = api.client("operator")
    return World(api, operator, open_account(operator, "pix_settlement"))
