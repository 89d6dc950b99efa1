"""Kill -9 of a busy ledger writer process, then restart: nothing acknowledged is lost, nothing is doubled.

The writer runs in a child process (``scripts/crash_writer.py``) that prints each acknowledged transfer the
moment its result arrives. After SIGKILL, this process restarts the ledger on the same database and checks that
the dead writer's lease was released, that every acknowledged transfer is in the store exactly once at the
position it was acknowledged with (a retry gets it back with ``replayed=True``), that the ledger balances, and
that the state rebuilt from the checkpoint equals a full replay of the log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from commands.bootstrap import LedgerRuntime, build_ledger
from infra.postgres_store import WRITER_LEASE_NAME
from ledger import errors
from ledger.events import TransferCommitted
from ledger.model import CreateTransfer, TransferResult

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("scripts") / "crash_writer.py"
THREADS = 6
RUN_S = 2.5
READY_S = 30.0
LEASE_WAIT_S = 10.0
WAIT_S = 30.0


def command_from_json(data: dict[str, Any]) -> CreateTransfer:
    def uid(value: str | None) -> UUID | None:
        return UUID(value) if value else None

    return CreateTransfer(
        data["key"], uid(data["debit_account_id"]), uid(data["credit_account_id"]), data["amount_centavos"],
        kind=data["kind"], pending_id=uid(data["pending_id"]), timeout_s=data["timeout_s"], code=data["code"],
    )


class Child:
    """The writer process and everything it printed."""

    def __init__(self, dsn: str, stderr_path: Path) -> None:
        self.stderr = stderr_path.open("w")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), dsn, str(THREADS)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line == "READY\n":
                self.ready.set()
            else:
                self.lines.append(line)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=WAIT_S)
        self.reader.join(timeout=WAIT_S)
        assert not self.reader.is_alive()
        self.stderr.close()

    def acknowledged(self) -> list[tuple[CreateTransfer, int]]:
        acks = []
        for i, line in enumerate(self.lines):
            if not line.endswith("\n"):
                # Only the very last write can have been cut by the kill; it was never a whole acknowledgement.
                assert i == len(self.lines) - 1, line
                continue
            data = json.loads(line)
            acks.append((command_from_json(data["command"]), int(data["position"])))
        return acks


def restart_when_the_lease_is_free(dsn: str) -> tuple[LedgerRuntime, float]:
    """The dead process's session (and so its advisory lock) ends when the server notices; retry until then."""
    started = time.monotonic()
    while True:
        try:
            return build_ledger(dsn, wait_ms=1.0), time.monotonic() - started
        except errors.WriterBusy:
            if time.monotonic() - started > LEASE_WAIT_S:
                raise
            time.sleep(0.1)


def test_kill_9_loses_no_acknowledged_transfer_and_doubles_none(fresh_database: str, tmp_path: Path) -> None:
    child = Child(fresh_database, tmp_path / "writer.stderr")
    try:
        assert child.ready.wait(READY_S), (tmp_path / "writer.stderr").read_text()
        time.sleep(RUN_S)
        assert child.process.poll() is None, (tmp_path / "writer.stderr").read_text()
    finally:
        child.kill()
    assert child.process.returncode == -signal.SIGKILL
    acks = child.acknowledged()
    assert len(acks) > 100, "the writer hardly wrote anything before the kill"
    assert {c.kind for c, _ in acks} == {"single", "pending", "post_pending", "void_pending"}

    with psycopg.connect(fresh_database, autocommit=True) as conn:
        dead_epoch, dead_holder = conn.execute(
            "SELECT epoch, holder FROM ledger_writer WHERE name = %s", (WRITER_LEASE_NAME,)
        ).fetchone()  # type: ignore[misc]
    assert dead_holder.endswith(f":{child.process.pid}")

    runtime, waited_s = restart_when_the_lease_is_free(fresh_database)
    try:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            epoch, holder = conn.execute(
                "SELECT epoch, holder FROM ledger_writer WHERE name = %s", (WRITER_LEASE_NAME,)
            ).fetchone()  # type: ignore[misc]
        assert epoch == dead_epoch + 1 and holder.endswith(f":{os.getpid()}")
        assert waited_s < LEASE_WAIT_S

        # The restart used a checkpoint, and its state equals a full replay of the log.
        checkpoint = runtime.app.latest_checkpoint()
        assert checkpoint is not None and checkpoint.position > 0
        rebuilt = runtime.writer.state
        assert rebuilt.fingerprint() == runtime.app.load_state(use_checkpoint=False).fingerprint()
        rebuilt.check_invariants()
        debits = sum(a.debits_posted for a in rebuilt.accounts.values())
        credits = sum(a.credits_posted for a in rebuilt.accounts.values())
        assert debits == credits > 0
        assert sum(a.debits_pending for a in rebuilt.accounts.values()) == sum(
            a.credits_pending for a in rebuilt.accounts.values()
        )

        # Every acknowledged key is stored once, at the position it was acknowledged with; no key twice.
        stored: dict[str, int] = {}
        keys = Counter()
        for notification, event in runtime.app.iter_log():
            if isinstance(event, TransferCommitted):
                keys[event.key] += 1
                stored[event.key] = notification.id
        assert keys and max(keys.values()) == 1
        for command, position in acks:
            assert stored.get(command.key) == position, command.key
        count = runtime.app.recorder.max_notification_id()

        # Clients retrying after the crash get the original results back, and nothing is written again.
        futures = [(command, position, runtime.writer.submit(command)) for command, position in acks]
        for command, position, future in futures:
            result = future.result(timeout=WAIT_S)
            assert isinstance(result, TransferResult)
            assert result.replayed is True, command.key
            assert result.position == position
        assert runtime.app.recorder.max_notification_id() == count
        runtime.writer.state.check_invariants()
    finally:
        runtime.close()
