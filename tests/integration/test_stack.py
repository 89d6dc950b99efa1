"""`razao stack` and `razao up|down` against the real servers of this machine.

Tests that start or stop things do it in a stack of their own (RAZAO_STATE_DIR in a temporary directory, Kafka
on a free port), so they never disturb the session's stack, which the other tests of the run are using.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]

from infra import platform, plugins
from infra.probes import kafka_brokers, kafka_endpoint
from infra.processes import ProcessRecord, describe, free_port, is_alive
from infra.settings import (
    ENV_KAFKA_BOOTSTRAP,
    ENV_PG_DSN,
    ENV_REDIS_URL,
    ENV_STATE_DIR,
    Settings,
    load_settings,
)
from infra.stack import STACK_MARKER_ENV
from infra.stack_state import Component, load_stack, save_stack

MESSAGE_TIMEOUT_S = 15.0


# ------------------------------------------------------------------------------------------------- helpers


def _state(env: dict[str, str]) -> dict[str, Any]:
    components: dict[str, Any] = json.loads((Path(env[ENV_STATE_DIR]) / "stack.json").read_text())[
        "components"
    ]
    return components


def _process(env: dict[str, str], name: str) -> ProcessRecord:
    return ProcessRecord.from_json(_state(env)[name]["process"])


def _brokers_started_for(state_dir: str) -> list[int]:
    """PIDs of live Tansu processes started for `state_dir`, found by the marker in their environment."""
    marker = f"{STACK_MARKER_ENV}={state_dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited while we looked, or not ours to read
        if b"tansu" in cmdline and marker in environ.split(b"\0") and state != "Z":
            found.append(int(proc.name))
    return found


def _postmaster_start(dsn: str) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


def _redis_run_id(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]  # sync client: a dict
        return str(info["run_id"])
    finally:
        client.close()


@pytest.fixture
def temp_stack_env(tmp_path: Path, settings: Settings, razao: Any) -> Iterator[dict[str, str]]:
    """Environment for a stack of its own: the session's Postgres and Redis, Kafka on a free port."""
    env = {
        **os.environ,
        ENV_STATE_DIR: str(tmp_path / "state"),
        ENV_PG_DSN: settings.pg_dsn,
        ENV_REDIS_URL: settings.redis_url,
        ENV_KAFKA_BOOTSTRAP: f"127.0.0.1:{free_port('127.0.0.1')}",
    }
    yield env
    # Whatever the test did, leave no broker behind.
    razao("stack", "down", env=env)


# ------------------------------------------------------------------------------------ the session's stack


def test_status_reports_every_component_reachable(razao: Any, settings: Settings) -> None:
    result = razao("stack", "status", "--json")

    statuses = {status["name"]: status for status in json.loads(result.stdout)}
    assert sorted(statuses) == ["kafka", "postgres", "redis"]
    for name, status in statuses.items():
        assert status["reachable"], f"{name}: {status['problem']}"
    assert statuses["kafka"]["url"] == settings.kafka_bootstrap
    assert statuses["postgres"]["url"] == settings.pg_dsn


def test_status_table_says_yes_for_each_component(razao: Any) -> None:
    lines = razao("stack", "status").stdout.splitlines()

    rows = {line.split()[0]: line.split()[1] for line in lines[1:] if line and not line.startswith(" ")}
    assert rows == {"postgres": "yes", "redis": "yes", "kafka": "yes"}


def test_kafka_at_the_recorded_bootstrap_round_trips_a_message(kafka_bootstrap: str) -> None:
    topic, payload = f"razao-stack-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().bytes
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", request_timeout_ms=10_000)
    try:
        sent = producer.send(topic, key=b"k", value=payload).get(timeout=MESSAGE_TIMEOUT_S)
    finally:
        producer.close()

    # Assigning the partition directly skips the consumer-group join, which takes seconds on Tansu.
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    try:
        partition = TopicPartition(topic, sent.partition)
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        received: list[bytes] = []
        deadline = time.monotonic() + MESSAGE_TIMEOUT_S
        while not received and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend(record.value for record in records)
    finally:
        consumer.close()
    assert received[:1] == [payload]


# ------------------------------------------------------------------------------------- stacks of their own


def test_up_twice_starts_one_broker(temp_stack_env: dict[str, str], razao: Any) -> None:
    razao("stack", "up", env=temp_stack_env)
    first = _process(temp_stack_env, "kafka")

    second_run = razao("stack", "up", env=temp_stack_env)

    assert _process(temp_stack_env, "kafka") == first
    assert "running" in second_run.stdout
    assert _brokers_started_for(temp_stack_env[ENV_STATE_DIR]) == [first.pid]


def test_down_stops_exactly_the_broker_it_started(
    temp_stack_env: dict[str, str], razao: Any, settings: Settings
) -> None:
    razao("stack", "up", env=temp_stack_env)
    state = _state(temp_stack_env)
    assert state["postgres"]["origin"] == "external" and state["postgres"]["process"] is None
    assert state["redis"]["origin"] == "external" and state["redis"]["process"] is None
    broker = _process(temp_stack_env, "kafka")
    assert is_alive(broker)
    postmaster_before, redis_before = _postmaster_start(settings.pg_dsn), _redis_run_id(settings.redis_url)

    result = razao("stack", "down", env=temp_stack_env)

    assert f"stopped (pid {broker.pid})" in result.stdout
    assert not is_alive(broker)
    assert _brokers_started_for(temp_stack_env[ENV_STATE_DIR]) == []
    assert "kafka" not in _state(temp_stack_env)
    # The external servers, and the session's own broker, are untouched.
    assert _postmaster_start(settings.pg_dsn) == postmaster_before
    assert _redis_run_id(settings.redis_url) == redis_before
    assert kafka_brokers(kafka_endpoint(settings.kafka_bootstrap))


def test_down_never_signals_a_process_that_inherited_a_recorded_pid(tmp_path: Path, razao: Any) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        # A record of "our broker" whose PID now belongs to another process: same PID, other start time.
        record = replace(describe(stranger.pid, ["tansu"], group=True), start_ticks=1)
        env = {**os.environ, ENV_STATE_DIR: str(tmp_path)}
        save_stack(tmp_path, {"kafka": Component("kafka", "x:1", "x:1", "started", "tansu", process=record)})

        result = razao("stack", "down", env=env)

        assert "was not running" in result.stdout
        assert stranger.poll() is None, "razao down signalled a process it did not start"
        assert load_stack(tmp_path) == {}
    finally:
        stranger.kill()
        stranger.wait()


def test_a_lease_keeps_the_broker_until_its_holder_is_gone(
    temp_stack_env: dict[str, str], razao: Any
) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    try:
        razao("stack", "up", "--owner", "a", "--holder-pid", str(os.getpid()), env=temp_stack_env)
        razao("stack", "up", "--owner", "b", "--holder-pid", str(holder.pid), env=temp_stack_env)
        broker = _process(temp_stack_env, "kafka")

        kept = razao("stack", "down", "--owner", "a", env=temp_stack_env)
        assert "held by b" in kept.stdout
        assert is_alive(broker)

        holder.kill()
        holder.wait()
        razao("stack", "down", "--owner", "a", env=temp_stack_env)
        assert not is_alive(broker)
    finally:
        holder.kill()
        holder.wait()


def test_an_owners_down_leaves_a_stack_a_person_brought_up(
    temp_stack_env: dict[str, str], razao: Any
) -> None:
    razao("stack", "up", env=temp_stack_env)

    razao("stack", "up", "--owner", "script", env=temp_stack_env)
    razao("stack", "down", "--owner", "script", env=temp_stack_env)

    assert is_alive(_process(temp_stack_env, "kafka"))


def test_kafka_moves_off_a_port_something_else_listens_on(temp_stack_env: dict[str, str], razao: Any) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = f"127.0.0.1:{squatter.getsockname()[1]}"
        env = {**temp_stack_env, ENV_KAFKA_BOOTSTRAP: taken}

        razao("stack", "up", env=env)

        actual = _state(env)["kafka"]["url"]
        assert actual != taken
        assert kafka_brokers(kafka_endpoint(actual))
        # Clients asking for the configured address are sent to where the broker really is.
        assert load_settings(env).kafka_bootstrap == actual


@pytest.mark.slow
def test_falls_back_to_embedded_servers_when_none_listen(tmp_path: Path, razao: Any) -> None:
    env = {
        **os.environ,
        ENV_STATE_DIR: str(tmp_path / "state"),
        ENV_PG_DSN: f"postgresql://postgres@127.0.0.1:{free_port('127.0.0.1')}/razao",
        ENV_REDIS_URL: f"redis://127.0.0.1:{free_port('127.0.0.1')}/0",
        ENV_KAFKA_BOOTSTRAP: f"127.0.0.1:{free_port('127.0.0.1')}",
    }
    try:
        razao("stack", "up", env=env)
        state = _state(env)
        assert {state[name]["origin"] for name in ("postgres", "redis", "kafka")} == {"started"}
        processes = [_process(env, name) for name in ("postgres", "redis", "kafka")]

        found = load_settings(env)
        with psycopg.connect(found.pg_dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("razao",)
        client = redis.Redis.from_url(found.redis_url)
        assert client.ping()
        client.close()
    finally:
        razao("stack", "down", env=env)
    assert not any(is_alive(process) for process in processes)


# ------------------------------------------------------------------------------------------------ settings


def test_settings_follow_the_state_file_only_while_its_process_lives(tmp_path: Path) -> None:
    alive = describe(os.getpid(), ["pytest"], group=False)
    moved = Component("kafka", "127.0.0.1:9092", "127.0.0.1:40001", "started", "tansu", process=alive)
    save_stack(tmp_path, {"kafka": moved})
    base = {ENV_STATE_DIR: str(tmp_path)}

    assert load_settings(base).kafka_bootstrap == "127.0.0.1:40001"
    assert load_settings({**base, ENV_KAFKA_BOOTSTRAP: "127.0.0.1:9092"}).kafka_bootstrap == "127.0.0.1:40001"
    assert load_settings({**base, ENV_KAFKA_BOOTSTRAP: "10.1.2.3:9092"}).kafka_bootstrap == "10.1.2.3:9092"

    save_stack(tmp_path, {"kafka": replace(moved, process=replace(alive, start_ticks=1))})
    assert load_settings(base).kafka_bootstrap == "127.0.0.1:9092"


def test_fresh_database_is_empty_and_dropped_afterwards(pg_dsn_factory: Any, settings: Settings) -> None:
    dsn = pg_dsn_factory()
    with psycopg.connect(dsn) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        name = conn.execute("SELECT current_database()").fetchone()
    assert tables == (0,)
    assert name is not None and name[0].startswith("razao_test_")


# ------------------------------------------------------------------------------------------------- plugins


def test_an_entry_point_whose_module_does_not_exist_is_skipped_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ghost = EntryPoint(name="ghost", value="infra.no_such_module:register_cli", group="razao.cli")
    absent = EntryPoint(name="absent", value="infra.settings:no_such_function", group="razao.cli")

    assert plugins.load(ghost) is None
    assert plugins.load(absent) is None

    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2
    assert "infra.no_such_module" in warnings[0] and "infra.settings:no_such_function" in warnings[1]


def test_an_entry_point_whose_module_fails_to_import_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "razao_broken_plugin.py").write_text("import razao_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = EntryPoint(name="broken", value="razao_broken_plugin:register_cli", group="razao.cli")

    with pytest.raises(ModuleNotFoundError, match="razao_no_such_dependency"):
        plugins.load(broken)


# ------------------------------------------------------------------------------------------------ platform


def test_up_starts_each_service_and_down_stops_it(
    temp_stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port("127.0.0.1")
    web = platform.ServiceSpec(
        name="web",
        argv=(sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"),
        health_url=f"http://127.0.0.1:{port}/",
    )
    monkeypatch.setattr(platform, "SERVICES", (web,))
    for name, value in temp_stack_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(platform, "discover", lambda group: iter(()))  # only `web`, whatever is installed

    platform.platform_up(report=lambda line: None)
    recorded = json.loads((Path(temp_stack_env[ENV_STATE_DIR]) / "platform.json").read_text())["services"]
    service = ProcessRecord.from_json(recorded["web"]["process"])
    broker = _process(temp_stack_env, "kafka")
    assert is_alive(service) and platform.is_healthy(web.address)
    assert service.pid != broker.pid

    platform.platform_down(report=lambda line: None)

    assert not is_alive(service) and not is_alive(broker)
    assert not platform.is_healthy(web.address)


def test_a_service_that_exits_at_start_is_reported_with_its_log(
    temp_stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed = platform.ServiceSpec(
        name="doomed",
        argv=(sys.executable, "-c", "raise SystemExit('no config')"),
        port=free_port("127.0.0.1"),
    )
    monkeypatch.setattr(platform, "SERVICES", (doomed,))
    monkeypatch.setattr(platform, "discover", lambda group: iter(()))
    for name, value in temp_stack_env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(platform.PlatformError, match=r"(?s)doomed exited at start.*no config"):
        platform.platform_up(report=lambda line: None)

    recorded = Path(temp_stack_env[ENV_STATE_DIR]) / "platform.json"
    assert not recorded.exists() or "doomed" not in json.loads(recorded.read_text())["services"]
