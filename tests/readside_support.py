"""Helpers for the read-side tests (relay, projector, query API): processes started as `razao up` would start them.

- ``PrivateBroker``: a Tansu broker of the test's own on a free port, which a test may pause (SIGSTOP), resume,
  or restart (losing everything, as Tansu does) without disturbing the session's broker.
- ``ReadSide``: a ledger database and its read database, a topic and consumer group of their own, and the relay,
  projector and query API as child processes (each killed only by the PID the test started).
- ``SteppingClock`` and ``write_every_kind``: a ledger history with every kind of event the read models know (and
  the PIX facts they skip), on any ledger writer, one clock second per command; ``append_record`` writes a raw
  record at the end of a Postgres ledger's log, as an old or a broken writer would have.
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
from datetime import UTC, datetime, timedelta
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


# ---- histories ---------------------------------------------------------------------------------------------------


class SteppingClock:
    """The writer's clock: it moves only when told (``tick``), so every event's time is known."""

    def __init__(self, start: datetime = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)


#: Distinct valid CPFs for the parties of random histories.
CPFS = ["52998224725", "11144477735", "12345678909", "98765432100", "39053344705", "71428793860"]


def random_ledger_history(ops: list[tuple[int, int, int, int]], *, clock: SteppingClock,
                          hold_timeout_mod: int) -> Any:
    """Random commands on an in-memory ledger (refused ones are just refused): the ``LedgerApplication``.

    Each op is ``(kind, a, b, amount)``: 0 registers a party and funds its wallet, 1 opens a fee account, 2 moves
    money, 3 holds (timing out after ``amount % hold_timeout_mod * 2`` s), 4 posts (in part) or voids a hold, 5
    closes an account, 6 commits a linked pair. The clock moves one to three seconds before each op.
    """
    from ledger import errors
    from ledger.application import LedgerApplication, ledger_env
    from ledger.chart import REQUIRED_FLAGS, AccountCode
    from ledger.inmemory import InMemoryWriterLease, RecorderTransferLookup
    from ledger.model import CloseAccount, CreateLinkedTransfers, CreateTransfer, OpenAccount
    from ledger.parties import RegisterParty
    from ledger.writer import LedgerWriter

    app = LedgerApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo", **ledger_env()})
    writer = LedgerWriter(app, InMemoryWriterLease(f"history-{uuid.uuid4()}"), RecorderTransferLookup(app.recorder),
                          clock=clock).start()
    try:
        settlement = uuid.uuid4()
        writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT,
                                        int(REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT])))
        accounts, holds, parties = [settlement], [], 0
        for n, (op, a, b, amount) in enumerate(ops):
            clock.tick(1 + amount % 3)
            pick = lambda i: accounts[i % len(accounts)]  # noqa: E731
            try:
                if op == 0 and parties < len(CPFS):
                    party = writer.register_party(RegisterParty(f"party-{n}", "investor" if a % 2 else "borrower",
                                                                "Pessoa Teste", CPFS[parties], "p@example.com",
                                                                "+5511987654321"))
                    parties += 1
                    accounts.append(party.wallet.id)
                    writer.transfer(CreateTransfer(f"fund-{n}", settlement, party.wallet.id, 1 + amount * 100))
                elif op == 1:
                    account = uuid.uuid4()
                    writer.open_account(OpenAccount(account, AccountCode.FEE_REVENUE,
                                                    int(REQUIRED_FLAGS[AccountCode.FEE_REVENUE])))
                    accounts.append(account)
                elif op == 2:
                    writer.transfer(CreateTransfer(f"t-{n}", pick(a), pick(b), 1 + amount))
                elif op == 3:
                    hold = writer.transfer(CreateTransfer(f"h-{n}", pick(a), pick(b), 1 + amount, kind="pending",
                                                          timeout_s=amount % hold_timeout_mod * 2))
                    holds.append(hold.id)
                elif op == 4 and holds:
                    pending = holds.pop(a % len(holds))
                    settle = "post_pending" if b % 2 else "void_pending"
                    partial = 1 if settle == "post_pending" and amount % 2 else None
                    writer.transfer(CreateTransfer(f"s-{n}", None, None, partial, kind=settle, pending_id=pending))
                elif op == 5 and len(accounts) > 2:
                    writer.close_account(CloseAccount(pick(a)))
                elif op == 6:
                    writer.linked(CreateLinkedTransfers((CreateTransfer(f"l-{n}-a", pick(a), pick(b), 1 + amount),
                                                         CreateTransfer(f"l-{n}-b", pick(b), pick(a), 1))))
            except errors.LedgerError:
                pass
    finally:
        writer.stop()
    return app


def e2eid(n: int) -> str:
    """An endToEndId of a Pix received on 2025-03-01 (the clock's start)."""
    return f"E30000003202503011200{n:011d}"


def write_every_kind(writer: Any, clock: SteppingClock) -> dict[str, Any]:
    """Runs, through ``writer`` (a started ``LedgerWriter``), a history with every event type: parties (investor
    and borrower), accounts opened and closed, single transfers, a linked batch, pending transfers posted in full,
    posted in part, voided, expired, and left open (with and without a timeout), and the PIX flows (a deposit
    credited, a Pix to suspense assigned to a wallet, a refund, a withdrawal completed and one failed).

    Returns the ids a test may want (wallets, holds)."""
    from ledger.chart import REQUIRED_FLAGS, AccountCode
    from ledger.model import CloseAccount, CreateLinkedTransfers, CreateTransfer, OpenAccount
    from ledger.parties import RegisterParty
    from ledger.pix_flows import (
        AssignReceivedPix,
        CreditReceivedPix,
        RequestDeposit,
        RequestRefund,
        RequestWithdrawal,
        SettleRefund,
        SettleWithdrawal,
        deposit_txid,
    )
    from ledger.pix_state import SETTLEMENT_ACCOUNT_ID, SUSPENSE_ACCOUNT_ID

    def run(command: Any) -> Any:
        clock.tick()
        return writer.execute(command, timeout_s=10)

    def open_account(code: AccountCode, account_id: uuid.UUID | None = None) -> uuid.UUID:
        account_id = account_id or uuid.uuid4()
        run(OpenAccount(account_id, code, int(REQUIRED_FLAGS[code])))
        return account_id

    open_account(AccountCode.PIX_SETTLEMENT, SETTLEMENT_ACCOUNT_ID)
    open_account(AccountCode.SUSPENSE, SUSPENSE_ACCOUNT_ID)
    fees, receivable = open_account(AccountCode.FEE_REVENUE), open_account(AccountCode.LOAN_RECEIVABLE)
    investor = run(RegisterParty("rebuild-investor", "investor", "Ana Souza", "52998224725", "ana@example.com",
                                 "+5511987654321")).wallet.id
    borrower = run(RegisterParty("rebuild-borrower", "borrower", "Bruno Lima", "11144477735", "bruno@example.com",
                                 "+5511987654322")).wallet.id
    # PIX: a deposit paid by Pix, a Pix nobody asked for (suspense, then assigned), a refund of part of one.
    deposit = run(RequestDeposit("rebuild:d1", investor, 500_00, 3600, deposit_txid("rebuild:d1"), "primary",
                                 "000201...6304ABCD", "psp.example/qr/v2/abc", clock.now))
    run(CreditReceivedPix(e2eid(1), "primary", 500_00, clock.now, deposit.deposit.txid))
    run(CreditReceivedPix(e2eid(2), "primary", 40_00, clock.now, None))
    run(AssignReceivedPix("rebuild:a1", e2eid(2), borrower))
    refund = run(RequestRefund("rebuild:r1", e2eid(1), 10_00, "estorno", "ops")).refund
    run(SettleRefund(refund.id, "DEVOLVIDO", return_id="D" + "1" * 31))
    # Transfers of every kind.
    run(CreateTransfer("rebuild:t1", investor, borrower, 100_00))
    run(CreateTransfer("rebuild:t2", receivable, borrower, 50_00))
    run(CreateLinkedTransfers((CreateTransfer("rebuild:l1", borrower, fees, 1_00),
                               CreateTransfer("rebuild:l2", borrower, investor, 9_00))))
    full = run(CreateTransfer("rebuild:h1", investor, borrower, 20_00, kind="pending"))
    run(CreateTransfer("rebuild:p1", None, None, None, kind="post_pending", pending_id=full.id))
    part = run(CreateTransfer("rebuild:h2", investor, borrower, 30_00, kind="pending", timeout_s=600))
    run(CreateTransfer("rebuild:p2", None, None, 12_00, kind="post_pending", pending_id=part.id))
    voided = run(CreateTransfer("rebuild:h3", borrower, investor, 5_00, kind="pending"))
    run(CreateTransfer("rebuild:v3", None, None, None, kind="void_pending", pending_id=voided.id))
    expiring = run(CreateTransfer("rebuild:h4", investor, fees, 7_00, kind="pending", timeout_s=2))
    clock.tick(60)  # the next batch expires h4
    open_with_timeout = run(CreateTransfer("rebuild:h5", investor, fees, 3_00, kind="pending", timeout_s=3600))
    open_forever = run(CreateTransfer("rebuild:h6", borrower, fees, 2_00, kind="pending"))
    # Withdrawals by Pix: one paid, one that failed (its hold released).
    paid = run(RequestWithdrawal("rebuild:w1", investor, 60_00, "52998224725")).withdrawal
    run(SettleWithdrawal(paid.id, "CONFIRMED", "primary", e2eid(5)))
    failed = run(RequestWithdrawal("rebuild:w2", borrower, 10_00, "11144477735")).withdrawal
    run(SettleWithdrawal(failed.id, "FAILED", "primary", reason="recusado"))
    # An account closed at zero, and a party registered last.
    spare = open_account(AccountCode.FEE_REVENUE)
    run(CloseAccount(spare))
    run(RegisterParty("rebuild-late", "investor", "Carla Dias", "12345678909", "carla@example.com",
                      "+5511987654323"))
    run(CreateTransfer("rebuild:t3", SETTLEMENT_ACCOUNT_ID, investor, 1_00))
    return {"investor": investor, "borrower": borrower, "fees": fees, "expired": expiring.id,
            "partly_posted": part.id,
            "open_holds": (open_with_timeout.id, open_forever.id), "closed": spare}


def append_record(ledger_dsn: str, topic: str, state: bytes, originator_id: uuid.UUID | None = None,
                  version: int = 1) -> int:
    """Writes one raw record at the end of a Postgres ledger's log (no writer may be running); returns its id."""
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        row = conn.execute("INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
                           "VALUES (%s, %s, %s, %s) RETURNING notification_id",
                           (originator_id or uuid.uuid4(), version, topic, state)).fetchone()
    assert row is not None
    return int(row[0])


def delete_record(ledger_dsn: str, position: int) -> None:
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM ledger_events WHERE notification_id = %s", (position,))


def stored_state(clock: SteppingClock, **fields: Any) -> dict[str, Any]:
    """A stored state as the event store's JSON transcoder writes it: ``timestamp`` and ``chain_hash`` first."""
    return {"timestamp": {"_type_": "datetime_iso", "_data_": clock.now.isoformat()}, "chain_hash": "ab" * 32,
            **fields}


def stored_uuid(value: uuid.UUID) -> dict[str, str]:
    return {"_type_": "uuid_hex", "_data_": value.hex}


def dumps(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":")).encode()
