"""Fault drills on the whole read path, as processes: writer → event store → relay → Kafka → projector → read DB.

During a steady load of transfers the projector is killed with SIGKILL and restarted, the relay too, and the
broker is paused (SIGSTOP) for 10 s. After each drill the projection must reach the head of the log with every
event applied exactly once (the count in the tracking row equals the number of events in the store) and the read
models must equal a rebuild from the event store. Then duplicates are injected on purpose, and finally a poison
message must stop the projector instead of being skipped.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]
from readside_support import PrivateBroker, ReadSide, http_json, wait_until

from commands.bootstrap import LedgerRuntime, build_ledger
from infra.settings import Settings, drop_database, ensure_database, with_database
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.model import CreateTransfer, OpenAccount
from projections.bootstrap import open_ledger_log
from projections.rebuild import rebuild, verify

LOAD_RATE_PER_S = 300
WALLETS = 20


class Load:
    """Transfers at a steady rate on a thread, between wallets funded from a settlement account."""

    def __init__(self, runtime: LedgerRuntime) -> None:
        self.writer = runtime.writer
        self.settlement = uuid.uuid4()
        self.writer.open_account(OpenAccount(self.settlement, AccountCode.PIX_SETTLEMENT,
                                             int(REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT])))
        self.wallets = [uuid.uuid4() for _ in range(WALLETS)]
        flags = int(REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET])
        for wallet in self.wallets:
            self.writer.open_account(OpenAccount(wallet, AccountCode.INVESTOR_WALLET, flags))
            self.writer.transfer(CreateTransfer(uuid.uuid4().hex, self.settlement, wallet, 10**9))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.committed = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started, n, futures = time.monotonic(), 0, []
        while not self._stop.is_set():
            delay = started + n / LOAD_RATE_PER_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            debit, credit = self.wallets[n % WALLETS], self.wallets[(n * 7 + 3) % WALLETS]
            if debit != credit:
                kind = "pending" if n % 25 == 0 else "single"
                futures.append(self.writer.submit(CreateTransfer(uuid.uuid4().hex, debit, credit, 1 + n % 500,
                                                                 kind=kind)))
            n += 1
        for future in futures:
            future.result(timeout=30)
        self.committed += len(futures)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)


@pytest.fixture(scope="module")
def drill(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("drill")
    broker = PrivateBroker(base)
    broker.start()
    suffix = uuid.uuid4().hex[:8]
    ledger_dsn = with_database(settings.pg_dsn, f"razao_test_drill_{suffix}")
    read_dsn = with_database(settings.pg_dsn, f"razao_test_drill_{suffix}_read")
    ensure_database(ledger_dsn)
    ensure_database(read_dsn)
    runtime = build_ledger(ledger_dsn)
    side = ReadSide(ledger_dsn, read_dsn, broker.bootstrap, base / "state")
    try:
        load = Load(runtime)
        side.start_relay()
        side.start_projector()
        yield {"side": side, "broker": broker, "load": load}
    finally:
        side.stop_all()
        runtime.close()
        broker.stop()
        drop_database(read_dsn)
        drop_database(ledger_dsn)


def assert_exactly_once_and_equal_to_a_rebuild(side: ReadSide) -> None:
    head = side.log_head()
    side.wait_projected(head, timeout_s=90)
    with psycopg.connect(side.ledger_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*), count(*) FILTER (WHERE topic LIKE '%TransferCommitted' OR topic LIKE "
                           "'%PendingTransferExpired') FROM ledger_events").fetchone()
    assert row is not None
    events, balance_events = int(row[0]), int(row[1])
    with psycopg.connect(side.read_dsn, autocommit=True) as conn:
        tracked = conn.execute("SELECT events_applied, halted_reason FROM live.tracking").fetchone()
    assert tracked == (events, None), "an event was lost or applied twice"
    assert side.sums()["entries"] == 2 * balance_events
    log = open_ledger_log(side.ledger_dsn)
    try:
        rebuild(side.read_dsn, log, "drill_rebuild")
        result = verify(side.read_dsn, log, "drill_rebuild")
    finally:
        log.close()
    assert result.equal, [t for t in result.tables if not t.equal]
    sums = side.sums()
    assert sums["debits_posted"] == sums["credits_posted"] and sums["debits_pending"] == sums["credits_pending"]


def under_load(drill: dict[str, Any], fault: Any, before_s: float = 2.0, after_s: float = 2.0) -> None:
    drill["load"].start()
    time.sleep(before_s)
    fault()
    time.sleep(after_s)
    drill["load"].stop()


def test_kill_9_of_the_projector_during_load(drill: dict[str, Any]) -> None:
    side: ReadSide = drill["side"]

    def fault() -> None:
        side.services["projector"].kill9()
        time.sleep(1.0)
        side.start_projector()

    under_load(drill, fault)
    assert_exactly_once_and_equal_to_a_rebuild(side)


def test_kill_9_of_the_relay_during_load(drill: dict[str, Any]) -> None:
    side: ReadSide = drill["side"]

    def fault() -> None:
        side.services["relay"].kill9()
        time.sleep(1.0)
        side.start_relay()

    under_load(drill, fault)
    assert_exactly_once_and_equal_to_a_rebuild(side)


def test_the_broker_paused_for_10_s_during_load(drill: dict[str, Any]) -> None:
    side: ReadSide = drill["side"]
    broker: PrivateBroker = drill["broker"]

    def fault() -> None:
        broker.pause()
        try:
            time.sleep(10)
        finally:
            broker.resume()

    under_load(drill, fault, before_s=1.0, after_s=1.0)
    assert_exactly_once_and_equal_to_a_rebuild(side)


def all_records(bootstrap: str, topic: str) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records: list[Any] = []
    try:
        while batch := consumer.poll(timeout_ms=1000):
            for part in batch.values():
                records.extend(part)
    finally:
        consumer.close()
    return records


def test_duplicates_injected_on_purpose_are_not_counted_twice(drill: dict[str, Any]) -> None:
    side: ReadSide = drill["side"]
    broker: PrivateBroker = drill["broker"]
    assert_exactly_once_and_equal_to_a_rebuild(side)
    before = side.sums()
    records = all_records(broker.bootstrap, side.topic)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=True)
    try:
        for record in records[len(records) // 2:] + records[:50]:  # redeliver half the log, out of order too
            producer.send(side.topic, key=record.key, value=record.value, partition=0)
        producer.flush(30)
    finally:
        producer.close()
    wait_until(lambda: len(all_records(broker.bootstrap, side.topic)) >= len(records) * 3 // 2, 30,
               "the duplicates to be in the topic")
    time.sleep(2.0)  # let the projector read them all
    assert side.sums() == before
    assert_exactly_once_and_equal_to_a_rebuild(side)


def test_a_poison_event_stops_the_projector_instead_of_being_skipped(drill: dict[str, Any]) -> None:
    """Runs last: it leaves this projection stopped, as it should."""
    side: ReadSide = drill["side"]
    broker: PrivateBroker = drill["broker"]
    assert_exactly_once_and_equal_to_a_rebuild(side)
    position = side.projected_position()
    last = json.loads(all_records(broker.bootstrap, side.topic)[-1].value)
    poison = {**last, "type": "LoanFunded", "position": last["position"] + 1, "aggregate_version": 1,
              "previous_chain_hash": last["chain_hash"]}
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        producer.send(side.topic, value=json.dumps(poison).encode(), partition=0).get(timeout=30)
    finally:
        producer.close()
    load: Load = drill["load"]
    load.writer.transfer(CreateTransfer(uuid.uuid4().hex, load.settlement, load.wallets[0], 5))  # after the poison
    projector = side.services["projector"]

    def halted(service: Any) -> bool:
        status, body = http_json(service.health_url)
        return status == 503 and body["status"] == "halted"

    wait_until(lambda: halted(projector), 30, "the projector to halt")
    time.sleep(1.0)
    assert side.projected_position() == position, "events after the poison were applied"
    with psycopg.connect(side.read_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT halted_reason FROM live.tracking").fetchone()
    assert row is not None and "UnknownEventType" in row[0] and "LoanFunded" in row[0]
    assert "PROJECTOR HALTED" in projector.log()
    # A restart meets the same poison again: still stopped, still nothing skipped.
    projector.kill9()
    restarted = side.start_projector(healthy=False)
    wait_until(lambda: halted(restarted), 30, "the restarted projector to halt again")
    assert side.projected_position() == position
