"""The projector's start: it waits for the relay to create the ledger topic and never makes the broker create it."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from kafka.admin import KafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from infra.settings import Settings, drop_database, ensure_database, with_database
from projections.consumer import Projector
from projections.store import ProjectionStore

WAIT_S = 20.0


@pytest.fixture
def read_dsn(settings: Settings) -> Iterator[str]:
    dsn = with_database(settings.pg_dsn, f"razao_test_start_{uuid.uuid4().hex[:8]}")
    ensure_database(dsn)
    yield dsn
    drop_database(dsn)


def test_the_projector_waits_for_the_relays_topic_without_creating_it(
        read_dsn: str, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    topic = f"razao.test.start.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="razao-test-start")
    projector = Projector(ProjectionStore(read_dsn, "live"), kafka_bootstrap, topic, group_id=f"g-{topic}",
                          session_timeout_ms=2_000, heartbeat_interval_ms=300)
    thread = threading.Thread(target=projector.run, daemon=True)
    try:
        with caplog.at_level(logging.INFO, logger="razao.projector"):
            thread.start()
            time.sleep(3.0)  # longer than the consumer's metadata refresh: a subscription would have named it
            # Tansu would have created it, with its default partition count, for any metadata request naming it.
            assert topic not in admin.list_topics()
            assert f"waiting for the relay to create topic {topic}" in caplog.text
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])  # what the relay does
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and not (projector._consumer and projector._consumer.subscription()):
                time.sleep(0.1)
            assert projector._consumer is not None and projector._consumer.subscription() == {topic}
        described = admin.describe_topics([topic])[0]
        assert len(described["partitions"]) == 1  # still the relay's one partition
    finally:
        projector.stop()
        thread.join(WAIT_S)
        admin.delete_topics([topic])
        admin.close()
    assert not thread.is_alive()


def test_the_projector_runs_unchecked_when_the_ledgers_database_does_not_answer(
        read_dsn: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    """The read side serves from Kafka and its own database; the ledger's database is needed only for the check
    that the read models are of this ledger (ADR 0021). Without it the projector warns and runs."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port that nothing listens on: the connection is refused at once
    port = closed.getsockname()[1]
    closed.close()
    env = {**os.environ, "RAZAO_PG_DSN": f"postgresql://postgres@127.0.0.1:{port}/razao",
           "RAZAO_READ_PG_DSN": read_dsn, "RAZAO_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "RAZAO_LEDGER_TOPIC": f"razao.test.unchecked.{uuid.uuid4().hex[:8]}", "RAZAO_STATE_DIR": str(tmp_path)}
    log_path = tmp_path / "projector.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "projections.consumer", "--group-id",
                                    f"razao-test-{uuid.uuid4().hex[:8]}"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and "waiting for the relay to create topic" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.1)
        output = log_path.read_text()
        assert "the ledger's database does not answer" in output and "not checked against it" in output, output
        assert "waiting for the relay to create topic" in output and process.poll() is None
        assert "Traceback" not in output
    finally:
        process.terminate()
        returncode = process.wait(WAIT_S)
    assert returncode == 0, log_path.read_text()
    with psycopg.connect(read_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT position, halted_reason FROM live.tracking").fetchone()
    assert row == (0, None)  # its read models exist and hold no refusal
