"""Helpers for the read-side tests (relay, projector, query API): processes started as `razao up` would start them.

- ``PrivateBroker``: a Tansu broker of the test's own on a free port, which a test may pause (SIGSTOP), resume,
  or restart (losing everything, as Tansu does) without disturbing the session's broker.
- ``ReadSide``: a ledger database and its read database, a topic and consumer group of their own, and the relay,
  projector and query API as child processes (each killed only by the PID the test started).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from infra.processes import free_port
from infra.stack import tansu_binary

READY_TIMEOUT_S = 30.0


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class PrivateBroker:
    """A Tansu broker (memory storage) on a free port, owned by one test module."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port("127.0.0.1")
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_dir / f"tansu-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        listener = f"tcp://{self.bootstrap}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                 "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT)
        from infra.probes import Endpoint, kafka_brokers

        wait_until(lambda: kafka_brokers(Endpoint("127.0.0.1", self.port), timeout_s=0.5), READY_TIMEOUT_S,
                   "the private Tansu broker")

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Kills and starts the broker on the same port: every topic, record and group offset is gone."""
        self.stop()
        self.start()


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    health_url: str | None

    def kill9(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL to the PID this test started
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def http_json(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class ReadSide:
    """A ledger database, its read database and the read-side processes for them."""

    ledger_dsn: str
    read_dsn: str
    bootstrap: str
    state_dir: Path
    topic: str = field(default_factory=lambda: f"razao.test.{uuid.uuid4().hex[:10]}")
    group: str = field(default_factory=lambda: f"razao-test-{uuid.uuid4().hex[:10]}")
    extra_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAZAO_PG_DSN": self.ledger_dsn, "RAZAO_READ_PG_DSN": self.read_dsn,
                "RAZAO_KAFKA_BOOTSTRAP": self.bootstrap, "RAZAO_STATE_DIR": str(self.state_dir),
                "RAZAO_LEDGER_TOPIC": self.topic, **self.extra_env}

    def _spawn(self, name: str, argv: list[str], health_url: str | None, *, healthy: bool = True) -> Service:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen([sys.executable, *argv], env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        service = Service(name, process, log_path, health_url)
        self.services[name] = service
        if health_url is not None:
            def ready() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited with {process.returncode}:\n{service.log()}")
                try:
                    status = http_json(health_url, 0.5)[0]
                except OSError:
                    return False
                return status == 200 or not healthy

            wait_until(ready, READY_TIMEOUT_S, f"{name} to be ready", interval_s=0.1)
        return service

    def start_relay(self) -> Service:
        port = free_port("127.0.0.1")
        return self._spawn("relay", ["-m", "commands.relay", "run", "--port", str(port)],
                           f"http://127.0.0.1:{port}/health")

    def start_projector(self, *, healthy: bool = True) -> Service:
        """The projector; ``healthy=False`` waits only until it answers (a halted one answers 503)."""
        port = free_port("127.0.0.1")
        return self._spawn("projector", ["-m", "projections.consumer", "--port", str(port), "--group-id", self.group,
                                         "--session-timeout-ms", "2000", "--heartbeat-interval-ms", "300"],
                           f"http://127.0.0.1:{port}/health", healthy=healthy)

    def start_query_api(self) -> tuple[Service, str]:
        port = free_port("127.0.0.1")
        url = f"http://127.0.0.1:{port}"
        return self._spawn("query-api", ["-m", "projections.api", "--port", str(port)], f"{url}/health"), url

    def stop_all(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()

    # ---- state ---------------------------------------------------------------------------------------------------
    def projected_position(self, schema: str = "live") -> int:
        with psycopg.connect(self.read_dsn, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (f"{schema}.tracking",)).fetchone()
            if not exists or exists[0] is None:
                return 0
            row = conn.execute(f"SELECT position FROM {schema}.tracking").fetchone()
        return int(row[0]) if row else 0

    def log_head(self) -> int:
        with psycopg.connect(self.ledger_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT max(notification_id) FROM ledger_events").fetchone()
        return int(row[0] or 0) if row else 0

    def wait_projected(self, position: int, timeout_s: float = 60.0) -> None:
        wait_until(lambda: self.projected_position() >= position, timeout_s,
                   f"the projection to reach position {position}", interval_s=0.1)

    def sums(self, schema: str = "live") -> Mapping[str, int]:
        with psycopg.connect(self.read_dsn, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT count(*), coalesce(sum(debits_posted), 0), coalesce(sum(credits_posted), 0), "
                f"coalesce(sum(debits_pending), 0), coalesce(sum(credits_pending), 0) FROM {schema}.balances"
            ).fetchone()
            entries = conn.execute(f"SELECT count(*) FROM {schema}.entries").fetchone()
        assert row is not None and entries is not None
        return {"accounts": int(row[0]), "debits_posted": int(row[1]), "credits_posted": int(row[2]),
                "debits_pending": int(row[3]), "credits_pending": int(row[4]), "entries": int(entries[0])}
