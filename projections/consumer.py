"""The projector process: a Kafka consumer group member that keeps the live read models up to date.

Each poll's records are decoded (``ledger.contracts``) and applied by ``ProjectionStore.apply`` in one Postgres
transaction together with the tracking row, so a redelivered or duplicated event is a no-op and a restart resumes
where the last commit left off. Kafka's committed offsets are only a hint of where to resume reading: the tracking
row in the read database is the truth, which is what makes commits safe across rebalances and restarts.

What stops the projector, and never gets skipped:
- a poison event (a type or version the contract does not define, a malformed message, rows the database refuses,
  a projector assertion): its partition is paused, the reason is written to the tracking row and logged as
  CRITICAL, and ``razao_projector_halted`` is 1. A restart meets the same event again and stops again, until the
  code is fixed.
- a gap (an event whose ``previous_chain_hash`` is not the last applied one: an event is missing, e.g. the broker
  lost records): nothing after it is applied; the partition is re-read from the beginning (at most every few
  seconds) while the relay, which noticed the loss too, publishes the log again.
- read models of another ledger (``projections.ledger_identity``): checked at start against the ledger's event at
  the tracked position (``check_ledger``). The projector writes the refusal to the tracking row, logs it as CRITICAL
  and exits with status 2 (so `razao up` fails at once, naming it); it consumes nothing.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any

import psycopg
from kafka import KafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from kafka.consumer.subscription_state import ConsumerRebalanceListener  # type: ignore[import-untyped]
from kafka.errors import KafkaError  # type: ignore[import-untyped]
from kafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ledger.contracts import ContractError, IntegrationEvent
from projections.bootstrap import NotificationLog, quiet_closed_transport_race, serve_status
from projections.ledger_identity import REMEDY, is_ledger_mismatch, ledger_mismatch
from projections.limits import (
    PROJECTOR_BATCH_EVENTS_MAX,
    PROJECTOR_POLL_MS_MAX,
    PROJECTOR_RESCAN_INTERVAL_S,
    PROJECTOR_RETRY_WAIT_S_MAX,
    PROJECTOR_TOPIC_POLL_S,
    PROJECTOR_TOPIC_WAIT_S,
)
from projections.store import BatchRejected, Outcome, ProjectionStore

log = logging.getLogger("razao.projector")

GROUP_ID = "razao-projector-ledger"
SESSION_TIMEOUT_MS_DEFAULT = 6_000
HEARTBEAT_INTERVAL_MS_DEFAULT = 1_000


class ProjectorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.position = Gauge("razao_projector_position", "Last log position applied to the read models", registry=r)
        self.applied = Counter("razao_projector_applied_events", "Events applied", registry=r)
        self.duplicates = Counter("razao_projector_duplicate_events", "Redelivered events dropped", registry=r)
        self.gaps = Counter("razao_projector_gaps", "Events that did not link to the last applied one", registry=r)
        self.poison = Counter("razao_projector_poison_events", "Events that stopped their partition", registry=r)
        self.halted = Gauge("razao_projector_halted", "1 while a partition is stopped on a poison event", registry=r)
        self.lag_seconds = Gauge("razao_projector_lag_seconds",
                                 "Time from the ledger commit of the last applied event to its projection",
                                 registry=r)
        self.batch_seconds = Histogram("razao_projector_batch_seconds", "Decode and apply one batch",
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2), registry=r)


class LedgerMismatch(RuntimeError):
    """The read models were built from another ledger (``projections.ledger_identity``)."""


class Projector:
    """Consumes the ledger topic into one ``ProjectionStore``; ``check_ledger`` first, then ``run`` until ``stop``."""

    def __init__(self, store: ProjectionStore, bootstrap: str, topic: str, *, group_id: str = GROUP_ID,
                 session_timeout_ms: int = SESSION_TIMEOUT_MS_DEFAULT,
                 heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS_DEFAULT,
                 metrics: ProjectorMetrics | None = None) -> None:
        assert heartbeat_interval_ms * 3 <= session_timeout_ms
        self.store = store
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.metrics = metrics or ProjectorMetrics()
        self.halted: dict[TopicPartition, str] = {}
        self.status: str | None = None
        self.position = 0
        self.last_loop = time.monotonic()
        self._stop = threading.Event()
        self._last_rescan = 0.0
        self._consumer: KafkaConsumer | None = None

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        tracking = self.store.ensure()
        self.position = tracking.position
        self.status = tracking.halted_reason
        self.metrics.position.set(self.position)
        self._consumer = consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id=f"razao-projector-{self.store.schema}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_uncommitted",  # the relay does not use transactions (Tansu does not isolate them)
            fetch_max_wait_ms=10,
            max_poll_records=PROJECTOR_BATCH_EVENTS_MAX,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            # A topic created or re-created (broker restart) is noticed within seconds.
            metadata_max_age_ms=2_000,
            allow_auto_create_topics=False,
        )
        self._await_topic(consumer)
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        log.info("projector %s starting at position %d", self.store.schema, self.position)
        try:
            while not self._stop.is_set():
                self.last_loop = time.monotonic()
                polled = consumer.poll(timeout_ms=PROJECTOR_POLL_MS_MAX, max_records=PROJECTOR_BATCH_EVENTS_MAX)
                for tp, records in polled.items():
                    if tp not in self.halted:
                        self._handle(consumer, tp, records)
        finally:
            consumer.close(autocommit=False)
            self.store.close()

    def check_ledger(self, ledger: NotificationLog) -> None:
        """Raises ``LedgerMismatch`` (recorded in the tracking row) unless the read models are of ``ledger``."""
        tracking = self.store.ensure()
        mismatch = ledger_mismatch(ledger, tracking.position, tracking.chain_hash)
        if mismatch is not None:
            refusal = f"{mismatch}. To fix: {REMEDY}"
            self.store.halt(refusal, tracking.position)
            self.store.close()
            log.critical("PROJECTOR REFUSED TO START: %s", refusal)
            raise LedgerMismatch(refusal)
        if is_ledger_mismatch(tracking.halted_reason):  # the operator put the right ledger back
            self.store.clear_halt()
            log.info("the read models are of this ledger again (position %d)", tracking.position)

    def _await_topic(self, consumer: KafkaConsumer) -> None:
        """Waits (bounded) until the relay has created the ledger topic, listing all topics: a metadata request
        naming the topic would make Tansu create it with the wrong partition count (PROJECTOR_TOPIC_WAIT_S)."""
        deadline = time.monotonic() + PROJECTOR_TOPIC_WAIT_S
        told = False
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if self.topic in consumer.topics():
                    return
            except KafkaError as exc:  # the broker is not answering yet: the same wait
                log.debug("listing topics failed: %r", exc)
            if not told:
                log.info("waiting for the relay to create topic %s", self.topic)
                told = True
            self._stop.wait(PROJECTOR_TOPIC_POLL_S)
        if not self._stop.is_set():
            log.warning("topic %s not there after %.0f s; subscribing anyway", self.topic, PROJECTOR_TOPIC_WAIT_S)

    # ---- one batch --------------------------------------------------------------------------------------------
    def _handle(self, consumer: KafkaConsumer, tp: TopicPartition, records: Sequence[Any]) -> None:
        started = time.perf_counter()
        events: list[IntegrationEvent] = []
        undecodable: tuple[Any, ContractError] | None = None
        for record in records:
            try:
                events.append(IntegrationEvent.from_json(record.value))
            except ContractError as exc:
                undecodable = (record, exc)
                break
        outcome = self._apply(events) if events else Outcome(0, 0, self.position)
        self._account(outcome, started)
        if outcome.applied:
            last = next(e for e in reversed(events) if e.position == outcome.position)
            self.metrics.lag_seconds.set(max(0.0, (datetime.now(UTC) - last.recorded_at).total_seconds()))
        by_event = dict(zip((id(e) for e in events), records, strict=False))
        if outcome.poison is not None:
            event, exc = outcome.poison
            self._halt(consumer, tp, by_event[id(event)].offset, event.position, f"{type(exc).__name__}: {exc}")
        elif outcome.gap is not None:
            self._on_gap(consumer, tp, outcome.gap, by_event[id(outcome.gap)].offset)
        elif undecodable is not None:
            record, exc = undecodable
            self._halt(consumer, tp, record.offset, None, f"{type(exc).__name__}: {exc}")
        else:
            self._commit(consumer, tp, records[-1].offset + 1)

    def _apply(self, events: list[IntegrationEvent]) -> Outcome:
        wait_s = 0.1
        while True:
            try:
                try:
                    return self.store.apply(events)
                except BatchRejected:
                    return self._isolate(events)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self._stop.is_set():
                    raise
                log.warning("read database unavailable (%s); retrying the batch in %.1fs", exc, wait_s)
                self.store.close()
                self._stop.wait(wait_s)
                wait_s = min(wait_s * 2, PROJECTOR_RETRY_WAIT_S_MAX)

    def _isolate(self, events: list[IntegrationEvent]) -> Outcome:
        """The database refused a batch: apply its events one by one to find the one it refuses."""
        applied = duplicates = 0
        position = self.position
        for event in events:
            try:
                outcome = self.store.apply([event])
            except BatchRejected as exc:
                return Outcome(applied, duplicates, position, poison=(event, exc))
            if outcome.gap or outcome.poison:
                return Outcome(applied + outcome.applied, duplicates, outcome.position, outcome.gap, outcome.poison)
            applied, duplicates, position = applied + outcome.applied, duplicates + outcome.duplicates, outcome.position
        return Outcome(applied, duplicates, position)

    def _account(self, outcome: Outcome, started: float) -> None:
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.duplicates.inc(outcome.duplicates)
        if outcome.applied:
            self.position = outcome.position
            self.metrics.applied.inc(outcome.applied)
            self.metrics.position.set(outcome.position)
            if self.status is not None and not self.halted:
                self.store.clear_halt()
                self.status = None
                log.info("projector resumed: applied up to position %d", outcome.position)

    # ---- stops --------------------------------------------------------------------------------------------------
    def _halt(self, consumer: KafkaConsumer, tp: TopicPartition, offset: int, position: int | None,
              reason: str) -> None:
        self._commit(consumer, tp, offset)
        consumer.pause(tp)
        self.halted[tp] = reason
        self.status = f"halted at offset {offset}: {reason}"
        self.metrics.poison.inc()
        self.metrics.halted.set(1)
        self.store.halt(self.status, position)
        log.critical("PROJECTOR HALTED on %s offset %d (log position %s): %s. The partition stays stopped; fix the "
                     "cause and restart (see docs/runbook.md).", tp, offset, position, reason)

    def _on_gap(self, consumer: KafkaConsumer, tp: TopicPartition, event: IntegrationEvent, offset: int) -> None:
        self._commit(consumer, tp, offset)
        self.metrics.gaps.inc()
        reason = (f"gap: the event at position {event.position} does not follow position {self.position}; waiting "
                  "for the relay to publish the missing events")
        if self.status != reason:
            self.status = reason
            self.store.halt(reason, self.position)
            log.error("%s (offset %d)", reason, offset)
        now = time.monotonic()
        if now - self._last_rescan >= PROJECTOR_RESCAN_INTERVAL_S:
            self._last_rescan = now
            log.warning("re-reading %s from the beginning to find the missing events", tp)
            consumer.seek_to_beginning(tp)

    @staticmethod
    def _commit(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> None:
        # A hint for where to resume reading; losing it only means reading again what the tracking row drops.
        consumer.commit_async(offsets={tp: OffsetAndMetadata(offset, "", -1)})


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", sorted(str(tp) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted(str(tp) for tp in assigned))
        consumer = self.projector._consumer
        for tp in assigned:
            if tp in self.projector.halted and consumer is not None:
                consumer.pause(tp)


# ------------------------------------------------------------------------------------------------- process


def serve_health(projector: Projector, port: int) -> ThreadingHTTPServer:
    def health() -> tuple[int, dict[str, Any]]:
        alive = time.monotonic() - projector.last_loop < 30
        halted = bool(projector.halted)
        return (200 if alive and not halted else 503), {
            "status": "halted" if halted else "ok" if alive else "stalled", "position": projector.position,
            "detail": projector.status}

    return serve_status(port, projector.metrics.registry, health, name="projector-health")


def main(argv: Sequence[str] | None = None) -> int:
    from projections.bootstrap import ensure_read_database, load_read_settings, open_ledger_log
    from projections.schema import LIVE_SCHEMA

    parser = argparse.ArgumentParser(prog="python -m projections.consumer", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port of /health and /metrics (0: none)")
    parser.add_argument("--schema", default=LIVE_SCHEMA)
    parser.add_argument("--group-id", default=GROUP_ID)
    parser.add_argument("--session-timeout-ms", type=int, default=SESSION_TIMEOUT_MS_DEFAULT)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=HEARTBEAT_INTERVAL_MS_DEFAULT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    quiet_closed_transport_race()
    settings = load_read_settings()
    ensure_read_database(settings.read_dsn)
    projector = Projector(ProjectionStore(settings.read_dsn, args.schema), settings.kafka_bootstrap, settings.topic,
                          group_id=args.group_id, session_timeout_ms=args.session_timeout_ms,
                          heartbeat_interval_ms=args.heartbeat_interval_ms)
    try:
        ledger = open_ledger_log(settings.ledger_dsn)
    except psycopg.OperationalError as exc:
        # The read side runs without the ledger's database (it reads Kafka); only this check needs it.
        log.warning("the ledger's database does not answer (%s): the read models are not checked against it at "
                    "this start", exc)
    else:
        try:
            projector.check_ledger(ledger)
        except LedgerMismatch:
            return 2
        finally:
            ledger.close()
    server = serve_health(projector, args.port) if args.port else None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: projector.stop())
    try:
        projector.run()
    finally:
        if server is not None:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
