"""The relay: the ledger's notification log is the outbox, and this process fans it out to Kafka (DESIGN §4).

It follows the log in order from its stored position (woken by the event store's LISTEN/NOTIFY channel, polling as
a fallback), turns each record into an integration event (``ledger.contracts.LogDecoder``), produces a batch with the
idempotent producer and ``acks="all"`` keyed by account id, waits until the broker acknowledged every record of
the batch, and only then stores its new position. A crash between the acknowledgement and the stored position
re-publishes that batch: delivery is at least once and consumers drop what they already applied.

Ordering: the ledger topic has a single partition, so Kafka order is log order and a consumer tracks one number.
Notification ids can have gaps (a rolled-back insert burns its sequence values); the relay never expects id + 1,
and each event carries the chain hash of the event before it, so a consumer can tell a gap in ids (harmless) from
a missing event (never harmless).

A broker that went backwards (Tansu keeps everything in memory, so a restart loses every record; DESIGN §8) is
detected two ways: the topic's id changed, or the broker acknowledged offsets at or below ones it had already
acknowledged. The relay then re-publishes the whole log from position 0, because it cannot know how far each
consumer got; consumers drop what they have. `razao relay rewind --to P` re-publishes from P instead (runbook).

A topic of another ledger is refused: before a relay first publishes to a topic that already holds records, the
last record's chain hash must be this ledger's at that position; otherwise it exits with status 2.

Only one relay runs per name: a session advisory lock on the ledger database, released when the process dies.
Metrics (`/metrics`): position, log head, lag in events and seconds, batches, errors, rewinds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any

import psycopg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]
from kafka.admin import KafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from kafka.errors import KafkaError, TopicAlreadyExistsError  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from commands.bootstrap import build_ledger, open_ledger_app
from infra.kafka_logging import quiet_closed_transport_race
from infra.platform import ServiceSpec
from infra.processes import free_port, port_is_free
from infra.settings import Settings, ensure_database, load_settings
from infra.status_server import serve_status
from ledger.application import LedgerApplication
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.contracts import (
    GENESIS_CHAIN_HASH,
    LEDGER_TOPIC,
    ContractError,
    IntegrationEvent,
    LogDecoder,
    stored_chain_hash,
)
from ledger.model import CreateTransfer, OpenAccount
from ledger.reply import Reply

log = logging.getLogger("razao.relay")

#: Records read from the log and produced as one batch (one acknowledgement wait, one position update).
RELAY_BATCH_EVENTS_MAX = 2_000
#: How long the relay sleeps without a NOTIFY before looking at the log anyway (the fallback poll).
RELAY_POLL_INTERVAL_S = 1.0
#: How long it waits for the broker to acknowledge a batch before giving up on it and producing it again.
RELAY_ACK_TIMEOUT_S = 10.0
#: One produce request, and the whole delivery of a record, are bounded below the batch's acknowledgement wait.
RELAY_REQUEST_TIMEOUT_MS = 4_000
RELAY_DELIVERY_TIMEOUT_MS = 8_000
RELAY_LINGER_MS = 1
#: Backoff after a failure of Kafka or Postgres: doubling from the first value up to the last.
RELAY_RETRY_WAIT_S_MIN = 0.1
RELAY_RETRY_WAIT_S_MAX = 5.0
#: While idle, the relay checks this often that the broker still has the topic it produced to.
RELAY_TOPIC_CHECK_INTERVAL_S = 5.0
RELAY_PORT_DEFAULT = 9101
ENV_RELAY_PORT = "RAZAO_RELAY_PORT"
ENV_RELAY_TOPIC = "RAZAO_LEDGER_TOPIC"
#: Replicas of the ledger topic when the relay creates it: 1 for the local single broker; 3 in production
#: (docker-compose.yml), where the topic also gets ``min.insync.replicas`` = replicas - 1, so that ``acks="all"``
#: means a record is on at least two brokers.
ENV_TOPIC_REPLICATION = "RAZAO_LEDGER_TOPIC_REPLICATION"
TOPIC_REPLICATION_MAX = 7

assert RELAY_REQUEST_TIMEOUT_MS + RELAY_LINGER_MS <= RELAY_DELIVERY_TIMEOUT_MS < RELAY_ACK_TIMEOUT_S * 1000
assert 0 < RELAY_RETRY_WAIT_S_MIN < RELAY_RETRY_WAIT_S_MAX

_CREATE_POSITION_TABLE = """
CREATE TABLE IF NOT EXISTS relay_position (
    name text PRIMARY KEY,
    position bigint NOT NULL,
    chain_hash text NOT NULL,
    topic text NOT NULL,
    topic_id text,
    last_offset bigint,
    rewinds bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""


class RelayBusy(RuntimeError):
    """Another relay process with the same name is running."""


class TopicOfAnotherLedger(RuntimeError):
    """The topic this relay would adopt already holds events of another ledger."""


@dataclass(frozen=True)
class RelayPosition:
    position: int
    chain_hash: str
    topic_id: str | None
    last_offset: int | None


class PositionStore:
    """The relay's position in the ledger database: one row per relay, and the lock that keeps it single."""

    def __init__(self, dsn: str, name: str, topic: str) -> None:
        self.dsn, self.name, self.topic = dsn, name, topic
        self._conn: psycopg.Connection[Any] | None = None

    def open(self) -> RelayPosition:
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                               application_name=f"razao-relay-{self.name}")
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                               (f"razao-relay:{self.name}",)).fetchone()
            if not row or not row[0]:
                raise RelayBusy(f"another relay named {self.name!r} is running")
            conn.execute(_CREATE_POSITION_TABLE)
            # Losing the last position update in a Postgres crash only re-publishes a batch, which consumers drop:
            # no need to wait for the disk on every batch.
            conn.execute("SET synchronous_commit = off")
            conn.execute(
                "INSERT INTO relay_position (name, position, chain_hash, topic) VALUES (%s, 0, %s, %s) "
                "ON CONFLICT (name) DO NOTHING", (self.name, GENESIS_CHAIN_HASH, self.topic),
            )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self.load()

    def load(self) -> RelayPosition:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT position, chain_hash, topic_id, last_offset FROM relay_position WHERE name = %s", (self.name,)
        ).fetchone()
        assert row is not None
        return RelayPosition(*row)

    def save(self, position: RelayPosition, *, rewound: bool = False) -> None:
        assert self._conn is not None
        self._conn.execute(
            "UPDATE relay_position SET position = %s, chain_hash = %s, topic_id = %s, last_offset = %s, "
            "rewinds = rewinds + %s, updated_at = now() WHERE name = %s",
            (position.position, position.chain_hash, position.topic_id, position.last_offset, int(rewound),
             self.name),
        )

    def close(self) -> None:
        if self._conn is not None:
            try:
                # Closing releases the lock too, but only once the server notices; unlock so it is free at once.
                self._conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (f"razao-relay:{self.name}",))
            except psycopg.Error:
                pass
            self._conn.close()
            self._conn = None


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.position = Gauge("razao_relay_position", "Last log position acknowledged by Kafka", registry=r)
        self.head = Gauge("razao_relay_log_head", "Highest notification id in the ledger log", registry=r)
        self.lag_events = Gauge("razao_relay_lag_events", "Log records not yet acknowledged by Kafka", registry=r)
        self.lag_seconds = Gauge("razao_relay_lag_seconds",
                                 "Age of the oldest record of the batch being published (0 when caught up)",
                                 registry=r)
        self.published = Counter("razao_relay_published_events", "Events acknowledged by Kafka", registry=r)
        self.batch_seconds = Histogram("razao_relay_batch_seconds", "Read, produce and acknowledge one batch",
                                       buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5), registry=r)
        self.errors = Counter("razao_relay_errors", "Failed batches (Kafka or Postgres)", registry=r)
        self.rewinds = Counter("razao_relay_rewinds", "Re-publications after the broker lost records", registry=r)


class Relay:
    """Follows the ledger log and publishes it; see the module doc. ``run`` until ``stop``."""

    def __init__(self, app: LedgerApplication, positions: PositionStore, bootstrap: str, *,
                 topic: str = LEDGER_TOPIC, batch_max: int = RELAY_BATCH_EVENTS_MAX,
                 poll_interval_s: float = RELAY_POLL_INTERVAL_S, metrics: RelayMetrics | None = None) -> None:
        assert 0 < batch_max <= RELAY_BATCH_EVENTS_MAX
        self.app = app
        self.positions = positions
        self.bootstrap = bootstrap
        self.topic = topic
        self.topic_replication = topic_replication()  # a bad setting fails the start, not every retry
        self.batch_max = batch_max
        self.poll_interval_s = poll_interval_s
        self.metrics = metrics or RelayMetrics()
        self._stop = threading.Event()
        self._producer: KafkaProducer | None = None
        self._state: RelayPosition | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._admin: KafkaAdminClient | None = None
        self._topic_checked = 0.0
        self.healthy = False

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self._state = self.positions.open()
        self.metrics.position.set(self._state.position)
        log.info("relay %s starting at position %d (topic %s)", self.positions.name, self._state.position, self.topic)
        wait_s = RELAY_RETRY_WAIT_S_MIN
        try:
            while not self._stop.is_set():
                try:
                    self._ensure_listening()
                    self._check_topic()
                    published = self._drain()
                    self.healthy = True
                    wait_s = RELAY_RETRY_WAIT_S_MIN
                    if not published:
                        self._wait_for_notify()
                except ContractError as exc:
                    # An event the contract does not define: never skip it, never publish it half-understood.
                    log.critical("RELAY HALTED at position %d: %s. Map the event in ledger/contracts.py, deploy, "
                                 "restart the relay (docs/adr/0007-read-side.md).", self.position, exc)
                    raise
                except (KafkaError, psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                    self.metrics.errors.inc()
                    self.healthy = False
                    log.warning("relay batch failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, wait_s)
                    self._reset_producer()
                    self._close_listen()
                    self._stop.wait(wait_s)
                    wait_s = min(wait_s * 2, RELAY_RETRY_WAIT_S_MAX)
        finally:
            self._reset_producer()
            self._close_listen()
            self.positions.close()

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _drain(self) -> bool:
        """Publishes everything after the position, batch by batch; whether anything was published."""
        published = False
        while not self._stop.is_set():
            assert self._state is not None
            records = self.app.recorder.select_notifications(self._state.position + 1, limit=self.batch_max)
            if not records:
                self.metrics.head.set(self._state.position)
                self.metrics.lag_events.set(0)
                self.metrics.lag_seconds.set(0)
                return published
            # A short page reached the head; only a full one needs asking how far the log goes.
            full = len(records) == self.batch_max
            head = max(records[-1].id, self.app.recorder.max_notification_id() or 0) if full else records[-1].id
            self.metrics.head.set(head)
            self.metrics.lag_events.set(head - self._state.position)
            self._publish(records)
            published = True
        return published

    @property
    def position(self) -> int:
        return self._state.position if self._state else 0

    def _publish(self, records: Sequence[Any]) -> None:
        assert self._state is not None
        started = time.perf_counter()
        decoder = LogDecoder(self._state.chain_hash)
        events = [decoder.decode(r) for r in records]
        self.metrics.lag_seconds.set(max(0.0, (datetime.now(UTC) - events[0].recorded_at).total_seconds()))
        producer = self._producer_now()
        futures: list[Reply[Any]] = [
            producer.send(self.topic, key=e.key.encode(), value=e.to_json(), partition=0) for e in events
        ]
        producer.flush(timeout=RELAY_ACK_TIMEOUT_S)
        offsets = [f.get(timeout=0).offset for f in futures]  # raises the first failure
        state = self._state
        if state.last_offset is not None and offsets[0] <= state.last_offset:
            # Acknowledged offsets only grow on a broker that keeps its data. Nothing is stored: publish again.
            self._rewind(f"broker acknowledged offset {offsets[0]} after {state.last_offset}")
            return
        self._state = RelayPosition(events[-1].position, events[-1].chain_hash, state.topic_id, offsets[-1])
        self.positions.save(self._state)
        self.metrics.position.set(self._state.position)
        self.metrics.published.inc(len(events))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _rewind(self, why: str) -> None:
        assert self._state is not None
        log.error("the broker lost acknowledged records (%s): re-publishing the ledger log from position 0", why)
        self.metrics.rewinds.inc()
        self._state = RelayPosition(0, GENESIS_CHAIN_HASH, self._state.topic_id, None)
        self.positions.save(self._state, rewound=True)
        self.metrics.position.set(0)

    def _check_topic(self, force: bool = False) -> None:
        """Creates the topic if missing; a topic id that changed means the broker lost the old one."""
        now = time.monotonic()
        if not force and now - self._topic_checked < RELAY_TOPIC_CHECK_INTERVAL_S:
            return
        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="razao-relay-admin",
                                           request_timeout_ms=RELAY_REQUEST_TIMEOUT_MS)
        assert self._state is not None
        topic_id = ensure_topic(self._admin, self.topic, self._state.topic_id, self.topic_replication)
        self._topic_checked = now
        assert self._state is not None
        if self._state.topic_id is None:
            self._refuse_another_ledgers_topic()
            self._state = RelayPosition(self._state.position, self._state.chain_hash, topic_id, self._state.last_offset)
            self.positions.save(self._state)
        elif topic_id != self._state.topic_id:
            previous = self._state.topic_id
            self._state = RelayPosition(self._state.position, self._state.chain_hash, topic_id, None)
            self._rewind(f"topic {self.topic} is now {topic_id}, was {previous}")

    def _refuse_another_ledgers_topic(self) -> None:
        """Before this ledger's relay first publishes to the topic: records already there must be this ledger's.

        A ledger created again (its database dropped, restored, or a DSN naming another server) starts at position
        1 with a relay that never saw the topic. Appended after another ledger's events, its own would be dropped
        by consumers as redeliveries up to the other ledger's position. The last record's chain hash settles it:
        it commits to every event before it."""
        value = last_record_value(self.bootstrap, self.topic)
        if value is None:
            return
        try:
            event = IntegrationEvent.from_json(value)
        except ContractError as exc:
            raise TopicOfAnotherLedger(f"topic {self.topic} holds records this relay did not publish ({exc})") from exc
        found = self.app.recorder.select_notifications(event.position, limit=1, stop=event.position)
        ours = stored_chain_hash(found[0].state) if found and found[0].id == event.position else None
        if ours != event.chain_hash:
            here = (f"this ledger's event there has chain hash {ours}" if ours is not None
                    else f"this ledger has no event at position {event.position}")
            raise TopicOfAnotherLedger(
                f"topic {self.topic} holds events of another ledger: its last record is position {event.position} "
                f"with chain hash {event.chain_hash}, and {here}. Publish to another topic (RAZAO_LEDGER_TOPIC), or "
                "delete this one if that ledger is gone (docs/runbook.md)")
        log.info("topic %s already holds this ledger's events up to position %d", self.topic, event.position)

    # ---- Kafka and Postgres handles -------------------------------------------------------------------------
    def _producer_now(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=f"razao-relay-{self.positions.name}",
                acks="all",
                enable_idempotence=True,
                max_in_flight_requests_per_connection=5,
                linger_ms=RELAY_LINGER_MS,
                request_timeout_ms=RELAY_REQUEST_TIMEOUT_MS,
                delivery_timeout_ms=RELAY_DELIVERY_TIMEOUT_MS,
                retry_backoff_ms=100,
                reconnect_backoff_max_ms=1_000,
                # The relay creates the topic itself with one partition; an auto-created topic could have more.
                allow_auto_create_topics=False,
                compression_type=None,
            )
        return self._producer

    def _reset_producer(self) -> None:
        # An idempotent producer whose broker restarted keeps retrying with a producer id the broker forgot:
        # start afresh. Its unacknowledged records are produced again from the stored position.
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except Exception:
                log.debug("closing the producer failed", exc_info=True)
            self._producer = None
            self._topic_checked = 0.0

    def _ensure_listening(self) -> None:
        if self._listen is None:
            conn = psycopg.connect(self.positions.dsn, autocommit=True, connect_timeout=5)
            conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.app.recorder.channel_name)))
            self._listen = conn

    def _close_listen(self) -> None:
        if self._listen is not None:
            self._listen.close()
            self._listen = None

    def _wait_for_notify(self) -> None:
        """Sleeps until the writer commits (NOTIFY), the fallback poll interval passes, or ``stop``."""
        assert self._listen is not None
        deadline = time.monotonic() + self.poll_interval_s
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # The generator holds the connection's lock until closed, so close it before draining.
            waiting = self._listen.notifies(timeout=min(remaining, 0.2), stop_after=1)
            try:
                woken = next(waiting, None)
            finally:
                waiting.close()
            if woken is not None:
                # Drop the notifications that piled up meanwhile: one read of the log serves them all.
                for _ in self._listen.notifies(timeout=0.0):
                    pass
                return


def topic_replication(environ: Mapping[str, str] | None = None) -> int:
    """``RAZAO_LEDGER_TOPIC_REPLICATION``, 1 when unset; anything but an integer from 1 to 7 is refused."""
    text = (os.environ if environ is None else environ).get(ENV_TOPIC_REPLICATION) or "1"
    if not text.isdigit() or not 1 <= int(text) <= TOPIC_REPLICATION_MAX:
        raise ValueError(f"{ENV_TOPIC_REPLICATION} must be an integer from 1 to {TOPIC_REPLICATION_MAX}, not {text!r}")
    return int(text)


def ledger_topic(topic: str, replication: int) -> NewTopic:
    """The ledger topic as the relay creates it: one partition (log order), ``replication`` replicas."""
    configs = {"min.insync.replicas": str(replication - 1)} if replication > 1 else {}
    return NewTopic(topic, num_partitions=1, replication_factor=replication, topic_configs=configs)


def ensure_topic(admin: KafkaAdminClient, topic: str, known_id: str | None = None, replication: int = 1) -> str:
    """Creates the single-partition ledger topic unless it exists; returns its topic id.

    Create first, describe second: a metadata request for a missing topic may make the broker auto-create it with
    its default partition count, and a ledger topic with more than one partition would lose the log's order. A
    topic that is not the one the relay last published to (``known_id``) and has the wrong partition count was
    auto-created after the broker lost ours: it holds nothing the relay will not publish again, so it is deleted
    (the next check creates it right). The relay's own topic with a wrong count is refused: a person changed it.
    """
    try:
        admin.create_topics([ledger_topic(topic, replication)])
    except TopicAlreadyExistsError:
        pass
    described = admin.describe_topics([topic])[0]
    partitions = len(described["partitions"])
    if described["error_code"]:
        raise KafkaError(f"topic {topic} cannot be described (error {described['error_code']})")
    if partitions != 1:
        if described["topic_id"] == known_id:
            raise KafkaError(f"topic {topic} must have exactly one partition, not {partitions}; it was altered")
        log.error("topic %s was auto-created with %d partitions after the broker lost it; recreating it with one",
                  topic, partitions)
        admin.delete_topics([topic])
        raise KafkaError(f"topic {topic} is being recreated with one partition")
    return str(described["topic_id"])


# ------------------------------------------------------------------------------------------ metrics server


def last_record_value(bootstrap: str, topic: str) -> bytes | None:
    """The value of the last record of the ledger topic's one partition, or None when it holds none.

    It reads from the offset before the end to the end: Tansu's end offset is the last *batch's* base offset + 1,
    not the last record's + 1, so the records of that batch follow, and the last one read is the last."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="razao-relay-check", enable_auto_commit=False,
                             isolation_level="read_uncommitted", fetch_max_wait_ms=10,
                             request_timeout_ms=RELAY_REQUEST_TIMEOUT_MS)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        first, end = consumer.beginning_offsets([tp])[tp], consumer.end_offsets([tp])[tp]
        if end <= first:
            return None
        consumer.seek(tp, end - 1)
        last: bytes | None = None
        deadline = time.monotonic() + RELAY_ACK_TIMEOUT_S
        while time.monotonic() < deadline:
            polled = [r for records in consumer.poll(timeout_ms=200).values() for r in records]
            if polled:
                last = polled[-1].value
            elif last is not None:
                return last
        raise KafkaError(f"the last records of topic {topic} (from offset {end - 1}) could not be read")
    finally:
        consumer.close()


def serve_metrics(relay: Relay, port: int) -> ThreadingHTTPServer:
    def health() -> tuple[int, dict[str, Any]]:
        healthy = relay.healthy
        return (200 if healthy else 503), {"status": "ok" if healthy else "degraded", "position": relay.position}

    return serve_status(port, relay.metrics.registry, health, name="relay-metrics")


# -------------------------------------------------------------------------------------------------- entry


def relay_app(dsn: str) -> LedgerApplication:
    ensure_database(dsn)
    return open_ledger_app(dsn, pool_size=2)


def run_relay(dsn: str, bootstrap: str, *, name: str = "ledger", topic: str = LEDGER_TOPIC, port: int | None = None,
              poll_interval_s: float = RELAY_POLL_INTERVAL_S) -> int:
    app = relay_app(dsn)
    relay = Relay(app, PositionStore(dsn, name, topic), bootstrap, topic=topic, poll_interval_s=poll_interval_s)
    server = serve_metrics(relay, port) if port else None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: relay.stop())
    try:
        relay.run()
    except RelayBusy as exc:
        log.error("%s", exc)
        return 2
    except TopicOfAnotherLedger as exc:
        log.critical("RELAY REFUSED TO START: %s", exc)
        return 2
    finally:
        if server is not None:
            server.shutdown()
        app.close()
    return 0


def services(settings: Settings) -> list[ServiceSpec]:
    """The relay, for `razao up` (the `razao.services` entry point)."""
    if os.environ.get(ENV_RELAY_PORT):
        port = int(os.environ[ENV_RELAY_PORT])
    else:
        port = RELAY_PORT_DEFAULT if port_is_free("127.0.0.1", RELAY_PORT_DEFAULT) else free_port("127.0.0.1")
    return [ServiceSpec(name="relay", argv=(sys.executable, "-m", "commands.relay", "run", "--port", str(port)),
                        health_url=f"http://127.0.0.1:{port}/health")]


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("relay", help="the ledger-to-Kafka relay: run it, see its lag, rewind it")
    sub = parser.add_subparsers(dest="relay_command", required=True)
    run = sub.add_parser("run", help="follow the ledger log and publish it to Kafka (foreground)")
    run.add_argument("--port", type=int, default=int(os.environ.get(ENV_RELAY_PORT, RELAY_PORT_DEFAULT)),
                     help="port of /health and /metrics (0: none)")
    run.set_defaults(func=_cli_run)
    status = sub.add_parser("status", help="the relay's position, the log head and the lag")
    status.set_defaults(func=_cli_status)
    rewind = sub.add_parser("rewind", help="publish again from a position (runbook: a broker that lost records)")
    rewind.add_argument("--to", type=int, required=True, metavar="POSITION", help="publish every event after this")
    rewind.set_defaults(func=_cli_rewind)
    load = sub.add_parser("load", help="commit transfers at a fixed rate and print each one's position and "
                                       "commit time as JSON lines (drives the read-side benchmarks and drills)")
    load.add_argument("--rate", type=float, default=1000.0, help="transfers per second (0: as fast as possible)")
    load.add_argument("--seconds", type=float, default=10.0)
    load.add_argument("--count", type=int, default=0, help="stop after this many transfers (0: no limit)")
    load.add_argument("--wallets", type=int, default=200)
    load.add_argument("--print-every", type=int, default=1, help="print one committed transfer in N")
    load.set_defaults(func=_cli_load)
    for p in (run, status, rewind, load):
        p.add_argument("--dsn", help="Postgres DSN of the ledger (default: the configured one)")
        p.add_argument("--name", default="ledger", help="the relay's name (one row, one lock)")
        p.add_argument("--topic", default=os.environ.get(ENV_RELAY_TOPIC, LEDGER_TOPIC))


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_closed_transport_race()


def _cli_run(args: argparse.Namespace) -> int:
    _configure_logging()
    try:
        topic_replication()
    except ValueError as exc:
        print(f"razao relay run: {exc}", file=sys.stderr)
        return 2
    settings = load_settings()
    return run_relay(args.dsn or settings.pg_dsn, settings.kafka_bootstrap, name=args.name, topic=args.topic,
                     port=args.port or None)


def _cli_status(args: argparse.Namespace) -> int:
    dsn = args.dsn or load_settings().pg_dsn
    app = relay_app(dsn)
    try:
        head = app.recorder.max_notification_id() or 0
    finally:
        app.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_CREATE_POSITION_TABLE)
        row = conn.execute("SELECT position, topic, topic_id, last_offset, rewinds, updated_at FROM relay_position "
                           "WHERE name = %s", (args.name,)).fetchone()
    if row is None:
        print(f"relay {args.name}: never ran; log head {head}")
        return 0
    position, topic, topic_id, last_offset, rewinds, updated_at = row
    print(f"relay {args.name}: position {position} of {head} (lag {head - position} events), topic {topic} "
          f"(id {topic_id}), last offset {last_offset}, rewinds {rewinds}, updated {updated_at:%Y-%m-%d %H:%M:%S%z}")
    return 0


def _cli_rewind(args: argparse.Namespace) -> int:
    dsn = args.dsn or load_settings().pg_dsn
    app = relay_app(dsn)
    store = PositionStore(dsn, args.name, args.topic)
    try:
        store.open()
        chain_hash = GENESIS_CHAIN_HASH
        if args.to > 0:
            records = app.recorder.select_notifications(args.to, limit=1, stop=args.to)
            if not records:
                print(f"razao: error: there is no log record at position {args.to}", file=sys.stderr)
                return 2
            chain_hash = json.loads(records[0].state)["chain_hash"]
        store.save(RelayPosition(args.to, chain_hash, store.load().topic_id, None), rewound=True)
    except RelayBusy:
        print("razao: error: the relay is running; stop it (razao down) before rewinding it", file=sys.stderr)
        return 2
    finally:
        store.close()
        app.close()
    print(f"relay {args.name} will publish again every event after position {args.to}")
    return 0


# ---------------------------------------------------------------------------------------------------- load


def drive_load(dsn: str, *, rate_per_s: float, seconds: float, count: int, wallets: int,
               print_every: int) -> Iterator[dict[str, Any]]:
    """Opens funded wallets, then commits transfers between them at ``rate_per_s``; yields one record per
    committed transfer (every ``print_every``-th): its id, log position and commit time (monotonic ns)."""
    runtime = build_ledger(dsn, checkpoint_in_background=True)  # as in the API process, which hosts the writer
    try:
        writer = runtime.writer
        run = uuid.uuid4().hex[:8]
        settlement = uuid.uuid4()
        writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT,
                                        int(REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT]), reference=f"load:{run}"))
        ids = [uuid.uuid4() for _ in range(wallets)]
        flags = int(REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET])
        for f in [writer.submit(OpenAccount(i, AccountCode.INVESTOR_WALLET, flags)) for i in ids]:
            f.result(timeout=30)
        funding = [writer.submit(CreateTransfer(f"load-{run}-fund-{n}", settlement, i, 10**12))
                   for n, i in enumerate(ids)]
        for f in funding:
            f.result(timeout=30)
        done: list[dict[str, Any]] = []
        lock = threading.Lock()

        def committed(future: Reply[Any], n: int) -> None:
            now_ns = time.monotonic_ns()
            if future.exception() is None and n % print_every == 0:
                result = future.result()
                with lock:
                    done.append({"transfer_id": str(result.id), "position": result.position, "committed_ns": now_ns,
                                 "debit_account_id": str(result.debit_account_id)})

        started = time.monotonic()
        n = 0
        futures = []
        while (time.monotonic() - started < seconds) and (not count or n < count):
            if rate_per_s:
                due = started + n / rate_per_s
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            debit, credit = ids[n % wallets], ids[(n * 7 + 1) % wallets]
            if debit == credit:
                credit = ids[(n + 1) % wallets]
            future = writer.submit(CreateTransfer(f"load-{run}-{n}", debit, credit, 1 + n % 997))
            future.add_done_callback(lambda f, n=n: committed(f, n))
            futures.append(future)
            n += 1
            if done:  # hand each commit on at once: a late line would add to the latency a reader measures
                with lock:
                    batch, done[:] = list(done), []
                yield from batch
            if len(futures) > 20_000:
                futures = [f for f in futures if not f.done()]
        for f in futures:
            f.exception(timeout=30)
        with lock:
            yield from done
    finally:
        runtime.close()


def _cli_load(args: argparse.Namespace) -> int:
    dsn = args.dsn or load_settings().pg_dsn
    for record in drive_load(dsn, rate_per_s=args.rate, seconds=args.seconds, count=args.count,
                             wallets=args.wallets, print_every=args.print_every):
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.relay")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["relay", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
