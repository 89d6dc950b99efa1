"""The relay against real Postgres and a Tansu broker of the module's own (so it may pause and restart it)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from readside_support import PrivateBroker, wait_until

from commands.bootstrap import LedgerRuntime, build_ledger
from commands.relay import PositionStore, Relay, RelayBusy, TopicOfAnotherLedger, relay_app, serve_metrics
from infra.processes import free_port
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.contracts import GENESIS_CHAIN_HASH, IntegrationEvent
from ledger.model import CreateTransfer, OpenAccount


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


class Ledger:
    def __init__(self, runtime: LedgerRuntime) -> None:
        self.runtime = runtime
        self.writer = runtime.writer
        self.settlement = uuid.uuid4()
        self.writer.open_account(OpenAccount(self.settlement, AccountCode.PIX_SETTLEMENT,
                                             int(REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT])))
        self.wallets = [uuid.uuid4() for _ in range(4)]
        for wallet in self.wallets:
            self.writer.open_account(OpenAccount(wallet, AccountCode.INVESTOR_WALLET,
                                                 int(REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET])))

    def transfers(self, count: int) -> int:
        futures = [self.writer.submit(CreateTransfer(uuid.uuid4().hex, self.settlement, self.wallets[n % 4], 100))
                   for n in range(count)]
        return max(f.result(timeout=30).position for f in futures)


@pytest.fixture
def ledger(fresh_database: str) -> Iterator[Ledger]:
    runtime = build_ledger(fresh_database)
    yield Ledger(runtime)
    runtime.close()


class RunningRelay:
    def __init__(self, dsn: str, bootstrap: str, topic: str, name: str = "ledger", **options: object) -> None:
        self.app = relay_app(dsn)
        self.relay = Relay(self.app, PositionStore(dsn, name, topic), bootstrap, topic=topic, **options)
        self.thread = threading.Thread(target=self.relay.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.relay.stop()
        self.thread.join(30)
        self.app.close()


@pytest.fixture
def topic() -> str:
    return f"razao.test.{uuid.uuid4().hex[:10]}"


def burn_notification_ids(dsn: str, count: int) -> None:
    """A rolled-back insert leaves holes in the notification ids; burning sequence values does the same."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            conn.execute("SELECT nextval(pg_get_serial_sequence('ledger_events', 'notification_id'))")


def read_topic(bootstrap: str, topic: str, until_position: int, timeout_s: float = 30) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend((r.key, r.value) for r in batch)
            if records and IntegrationEvent.from_json(records[-1][1]).position >= until_position:
                return records
    finally:
        consumer.close()
    raise AssertionError(f"the topic did not reach position {until_position}")


def record_count(bootstrap: str, topic: str) -> int:
    """Every record of the topic, read to the end (Tansu's end offset counts batches, not records)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    count, quiet = 0, 0
    try:
        while quiet < 5:
            polled = sum(len(batch) for batch in consumer.poll(timeout_ms=200).values())
            count, quiet = count + polled, 0 if polled else quiet + 1
    finally:
        consumer.close()
    return count


def stored_position(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('relay_position')").fetchone() == (None,):
            return (0, 0)  # the relay has not started yet
        row = conn.execute("SELECT position, rewinds FROM relay_position WHERE name = 'ledger'").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def log_positions(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT notification_id FROM ledger_events ORDER BY 1").fetchall()]


def test_every_event_is_published_once_in_log_order_keyed_by_account_across_id_gaps(
        ledger: Ledger, fresh_database: str, broker: PrivateBroker, topic: str) -> None:
    ledger.transfers(50)
    burn_notification_ids(fresh_database, 3)
    relay = RunningRelay(fresh_database, broker.bootstrap, topic)
    metrics_port = free_port("127.0.0.1")
    server = serve_metrics(relay.relay, metrics_port)
    try:
        ledger.transfers(200)
        burn_notification_ids(fresh_database, 5)
        head = ledger.transfers(100)
        wait_until(lambda: stored_position(fresh_database)[0] == head, 30, "the relay to store the head")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert f"razao_relay_position {float(head)}" in metrics
        assert "razao_relay_lag_events 0.0" in metrics and "razao_relay_lag_seconds" in metrics
    finally:
        server.shutdown()
        relay.stop()
    records = read_topic(broker.bootstrap, topic, head)
    events = [IntegrationEvent.from_json(value) for _, value in records]
    positions = log_positions(fresh_database)
    assert positions != list(range(1, len(positions) + 1)), "the test should have made holes in the ids"
    assert [e.position for e in events] == positions  # every record once, in order, holes and all
    previous = GENESIS_CHAIN_HASH
    for (key, _), event in zip(records, events, strict=True):
        assert event.previous_chain_hash == previous
        previous = event.chain_hash
        assert key.decode() == event.key
    transfer = next(e for e in events if e.type == "TransferCommitted")
    assert transfer.key == str(ledger.settlement)  # keyed by the debit account


def test_a_commit_wakes_the_relay_through_notify_not_polling(ledger: Ledger, fresh_database: str,
                                                             broker: PrivateBroker, topic: str) -> None:
    relay = RunningRelay(fresh_database, broker.bootstrap, topic, poll_interval_s=30.0)
    try:
        head = ledger.transfers(1)
        wait_until(lambda: stored_position(fresh_database)[0] == head, 10, "the first publication")
        time.sleep(0.5)  # idle now: only a NOTIFY (or 30 s) wakes it
        started = time.monotonic()
        head = ledger.transfers(1)
        wait_until(lambda: stored_position(fresh_database)[0] == head, 5, "the relay to be woken")
        assert time.monotonic() - started < 2.0
    finally:
        relay.stop()


def test_the_position_moves_only_after_the_broker_acknowledged(ledger: Ledger, fresh_database: str,
                                                               broker: PrivateBroker, topic: str) -> None:
    relay = RunningRelay(fresh_database, broker.bootstrap, topic)
    try:
        before = ledger.transfers(10)
        wait_until(lambda: stored_position(fresh_database)[0] == before, 15, "the first batch")
        broker.pause()
        try:
            head = ledger.transfers(10)
            time.sleep(3)
            assert stored_position(fresh_database)[0] == before, "stored a position the broker never acknowledged"
        finally:
            broker.resume()
        wait_until(lambda: stored_position(fresh_database)[0] == head, 60, "the relay to recover")
    finally:
        relay.stop()
    events = [IntegrationEvent.from_json(v) for _, v in read_topic(broker.bootstrap, topic, head)]
    assert {e.position for e in events} == set(log_positions(fresh_database))  # nothing lost (duplicates allowed)


def test_a_broker_that_lost_its_records_gets_the_whole_log_again(ledger: Ledger, fresh_database: str,
                                                                 broker: PrivateBroker, topic: str) -> None:
    relay = RunningRelay(fresh_database, broker.bootstrap, topic)
    try:
        head = ledger.transfers(30)
        wait_until(lambda: stored_position(fresh_database)[0] == head, 15, "the first publication")
        broker.restart()  # Tansu keeps everything in memory: the topic and its records are gone
        head = ledger.transfers(5)
        wait_until(lambda: stored_position(fresh_database)[0] == head and stored_position(fresh_database)[1] >= 1, 60,
                   "a rewind and a full re-publication")
    finally:
        relay.stop()
    events = [IntegrationEvent.from_json(v) for _, v in read_topic(broker.bootstrap, topic, head)]
    assert sorted({e.position for e in events}) == log_positions(fresh_database)
    assert events[0].position == 1 or any(e.position == 1 for e in events)


def test_only_one_relay_runs_per_name(fresh_database: str, topic: str) -> None:
    first = PositionStore(fresh_database, "ledger", topic)
    first.open()
    try:
        with pytest.raises(RelayBusy):
            PositionStore(fresh_database, "ledger", topic).open()
        other = PositionStore(fresh_database, "other", topic)
        other.open()
        other.close()
    finally:
        first.close()
    second = PositionStore(fresh_database, "ledger", topic)
    second.open()  # the lock went with the first one's connection
    second.close()


def test_a_topic_holding_another_ledgers_events_is_refused(ledger: Ledger, fresh_database: str,
                                                             pg_dsn_factory: Callable[[], str],
                                                             broker: PrivateBroker, topic: str,
                                                             tmp_path: Path) -> None:
    first = RunningRelay(fresh_database, broker.bootstrap, topic)
    try:
        head = ledger.transfers(5)
        wait_until(lambda: stored_position(fresh_database)[0] == head, 15, "the first ledger's publication")
    finally:
        first.stop()
    published = record_count(broker.bootstrap, topic)
    assert published >= head
    # Another relay of the same ledger adopts the topic: its records are this ledger's.
    same = RunningRelay(fresh_database, broker.bootstrap, topic, name="second")
    try:
        wait_until(lambda: same.relay.position == head, 15, "the same ledger's second relay")
    finally:
        same.stop()

    other_dsn = pg_dsn_factory()  # a ledger created again: positions start at 1 with other chain hashes
    other = build_ledger(other_dsn)
    try:
        Ledger(other)
    finally:
        other.close()
    refused: list[BaseException] = []
    app = relay_app(other_dsn)
    relay = Relay(app, PositionStore(other_dsn, "ledger", topic), broker.bootstrap, topic=topic)

    def run() -> None:
        try:
            relay.run()
        except TopicOfAnotherLedger as exc:
            refused.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    relay.stop()  # a relay that did not refuse would still be publishing
    thread.join(30)
    app.close()
    assert refused and "holds events of another ledger" in str(refused[0])
    log_path = tmp_path / "relay.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "commands.relay", "run", "--dsn", other_dsn, "--topic",
                                    topic, "--port", "0"], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "RAZAO_KAFKA_BOOTSTRAP": broker.bootstrap})
        assert process.wait(60) == 2
    assert "RELAY REFUSED TO START" in log_path.read_text()
    assert stored_position(other_dsn) == (0, 0)
    assert record_count(broker.bootstrap, topic) == published + head  # the second relay's records, none of the other's
