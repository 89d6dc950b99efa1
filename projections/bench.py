"""`razao bench-read projection|rebuild`: the read side's benchmarks (results in docs/benchmarks.md).

- ``projection``: transfers are committed at a sustained rate (default 1,000/s) by a load process with the ledger
  writer; the relay, the projector and the query API run as processes, as `razao up` runs them. For a sample of
  the committed transfers the benchmark asks the query API for that transfer with ``min_position`` set to the
  transfer's position, right when it learns of the commit; the lag is from the writer's commit to the query API's
  answer. Target: p99 < 100 ms.
- ``rebuild``: a ledger of N events is written (or an existing one is named); then, in the same run, the raw speed
  of reading the notification log (the event store's own reader, a plain binary SQL cursor, and the binary COPY
  stream the set-based rebuild reads) and the events/s of a full set-based rebuild, each ``--repeat`` times
  (medians reported), then one rebuild with the projector (the reference) and a check that both built the same
  tables. Targets: at least half the raw read and ≥ 50,000 events/s.

Both run on throwaway databases (a topic and consumer group of their own) and remove them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.bootstrap import (
    database_name,
    drop_database,
    ensure_database,
    free_port,
    kafka_reachable,
    load_read_settings,
    open_event_store_reader,
    open_ledger_log,
    with_database,
)
from projections.rebuild import RebuildResult, rebuild, table_checksums

TARGET_P99_MS = 100.0
TARGET_REBUILD_EVENTS_PER_S = 50_000
TARGET_REBUILD_RAW_RATIO = 0.5
READY_TIMEOUT_S = 60.0
#: A sampled read waits at most this long for its position (a longer lag counts as this, and as an error).
SAMPLE_WAIT_MS = 5_000


def register_bench(subsystems: Any) -> None:
    """``razao bench projection`` and ``razao bench rebuild`` (a ``razao.bench`` entry point)."""
    _add_projection(subsystems)
    _add_rebuild(subsystems)


def register_cli(subparsers: Any) -> None:
    """``razao bench-read projection|rebuild``: the same benchmarks under their earlier name."""
    parser = subparsers.add_parser("bench-read", help="benchmarks of the read side (same as razao bench "
                                                      "projection|rebuild)")
    sub = parser.add_subparsers(dest="bench_read_command", required=True)
    _add_projection(sub)
    _add_rebuild(sub)


def _add_projection(subparsers: Any) -> None:
    lag = subparsers.add_parser("projection", help="commit-to-query lag of the read side at a sustained rate")
    lag.add_argument("--seconds", type=float, default=30.0, help="measured seconds (after a warm-up)")
    lag.add_argument("--rate", type=float, default=1000.0, help="transfers per second")
    lag.add_argument("--sample-every", type=int, default=10, help="measure one transfer in N")
    lag.add_argument("--warmup-s", type=float, default=3.0)
    lag.add_argument("--json", type=Path, help="write the results here")
    lag.set_defaults(func=_cli_projection)


def _add_rebuild(subparsers: Any) -> None:
    build = subparsers.add_parser("rebuild", help="events/s of a full read-model rebuild vs the raw read of the log")
    build.add_argument("--events", type=int, default=200_000, help="transfers to write first")
    build.add_argument("--ledger-dsn", help="rebuild an existing ledger instead of writing one")
    build.add_argument("--repeat", type=int, default=3, help="runs of each raw read and set-based rebuild (medians)")
    build.add_argument("--skip-projector", action="store_true", help="do not time the projector-based rebuild")
    build.add_argument("--json", type=Path, help="write the results here")
    build.set_defaults(func=_cli_rebuild)


# ----------------------------------------------------------------------------------------------------- common


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0], "python": platform.python_version(),
            "platform": platform.platform()}


@contextmanager
def scratch_databases(ledger_dsn_base: str) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    ledger_dsn = with_database(ledger_dsn_base, f"razao_bench_{suffix}")
    read_dsn = with_database(ledger_dsn_base, f"razao_bench_{suffix}_read")
    ensure_database(ledger_dsn)
    ensure_database(read_dsn)
    try:
        yield ledger_dsn, read_dsn
    finally:
        drop_database(read_dsn)
        drop_database(ledger_dsn)


class Processes:
    """Child processes of the benchmark, stopped by the PIDs it started."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], health_url: str | None = None, *,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        child = subprocess.Popen([sys.executable, *argv], env=self.env, stdout=stdout or log, stderr=log)
        self.children.append(child)
        if health_url is not None:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if child.poll() is not None:
                    raise RuntimeError(f"{name} exited at start; see {self.log_dir / f'{name}.log'}")
                try:
                    if httpx.get(health_url, timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} was not ready in {READY_TIMEOUT_S:.0f}s")
                time.sleep(0.1)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(5)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def _write(report: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(report, indent=2, default=str)
    if path is not None:
        path.write_text(text + "\n")
    print(text)


# ------------------------------------------------------------------------------------------------- projection


def _keypair(directory: Path) -> tuple[Path, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    public = directory / "bench-public.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return public, key


def run_projection(seconds: float, rate: float, sample_every: int, warmup_s: float) -> dict[str, Any]:
    settings = load_read_settings()
    if not kafka_reachable(settings.kafka_bootstrap):
        raise SystemExit(f"razao: error: no Kafka broker at {settings.kafka_bootstrap}; start the stack first "
                         "(razao stack up, or razao up)")
    started_at = datetime.now(UTC)
    facts = machine()
    with scratch_databases(settings.ledger_dsn) as (ledger_dsn, read_dsn), \
            tempfile.TemporaryDirectory(prefix="razao-bench-read-") as tmp:
        work = Path(tmp)
        public_key, private_key = _keypair(work)
        now = int(time.time())
        token = jwt.encode({"sub": "bench", "role": "auditor", "aud": "razao-api", "iss": "razao-auth", "iat": now,
                            "exp": now + 3600}, private_key, algorithm="EdDSA")
        topic = f"razao.bench.{uuid.uuid4().hex[:8]}"
        env = {**os.environ, "RAZAO_PG_DSN": ledger_dsn, "RAZAO_READ_PG_DSN": read_dsn, "RAZAO_LEDGER_TOPIC": topic,
               "RAZAO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "RAZAO_STATE_DIR": str(work),
               "RAZAO_JWT_PUBLIC_KEY_FILE": str(public_key), "RAZAO_QUERY_RATE_LIMIT_REQUESTS_MAX": str(10**9),
               "RAZAO_QUERY_RATE_LIMIT_KEY_PREFIX": f"razao-bench-{uuid.uuid4().hex[:8]}"}
        processes = Processes(env, work)
        try:
            ports = [free_port("127.0.0.1") for _ in range(3)]
            processes.start("relay", ["-m", "commands.relay", "run", "--port", str(ports[0])],
                            f"http://127.0.0.1:{ports[0]}/health")
            processes.start("projector", ["-m", "projections.consumer", "--port", str(ports[1]), "--group-id",
                                          f"razao-bench-{uuid.uuid4().hex[:8]}", "--session-timeout-ms", "2000",
                                          "--heartbeat-interval-ms", "300"], f"http://127.0.0.1:{ports[1]}/health")
            query = f"http://127.0.0.1:{ports[2]}"
            processes.start("query-api", ["-m", "projections.api", "--port", str(ports[2])], f"{query}/health")
            load = processes.start("load", ["-m", "commands.relay", "load", "--rate", str(rate), "--seconds",
                                            str(seconds + warmup_s), "--print-every", str(sample_every)],
                                   stdout=subprocess.PIPE)
            lags_ms, errors, committed = _measure(load, query, token, warmup_s)
            stages = {name: _histogram_means(f"http://127.0.0.1:{port}/metrics")
                      for name, port in (("relay", ports[0]), ("projector", ports[1]))}
        finally:
            processes.stop()
    measured = lags_ms
    p99 = percentile(measured, 99)
    return {
        "benchmark": "projection lag (commit -> visible in the query API)", "started_at": started_at.isoformat(),
        "rate_per_s": rate, "seconds": seconds, "warmup_s": warmup_s, "sample_every": sample_every,
        "committed_transfers": committed, "samples": len(measured), "errors": errors,
        "p50_ms": round(percentile(measured, 50), 2), "p90_ms": round(percentile(measured, 90), 2),
        "p99_ms": round(p99, 2), "max_ms": round(max(measured, default=float("nan")), 2),
        "target_p99_ms": TARGET_P99_MS, "met": bool(measured) and p99 < TARGET_P99_MS and errors == 0,
        "stages": stages,
        "machine": {**facts, "load_avg_1m_at_end": os.getloadavg()[0]},
    }


def _histogram_means(url: str) -> dict[str, float]:
    """Mean and count of each histogram a service exposes (its batch times), from its Prometheus text."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith("_sum"):
            sums[name[:-4]] = float(value)
        elif name.endswith("_count"):
            counts[name[:-6]] = float(value)
    return {f"{name}_mean_ms": round(1000 * sums[name] / counts[name], 2) for name in sums if counts.get(name)} | {
        f"{name}_count": counts[name] for name in sums}


#: Keep-alive connections of the sampling client (each carries one request at a time).
SAMPLE_CONNECTIONS = 16


def _measure(load: subprocess.Popen[bytes], query: str, token: str, warmup_s: float) -> tuple[list[float], int, int]:
    """Reads the load's commit records and, for each, times a read-your-writes GET of that transfer.

    The client is lean on purpose (asyncio, hand-written HTTP/1.1 on keep-alive connections, its own garbage
    collector frozen): it shares the two cores with everything it measures, and a heavier one (an HTTP library on a
    pool of threads) showed up in the tail as its own queueing.
    """
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(_measure_async(load, query, token, warmup_s))
    finally:
        gc.unfreeze()


async def _measure_async(load: subprocess.Popen[bytes], query: str, token: str,
                         warmup_s: float) -> tuple[list[float], int, int]:
    url = urlsplit(query)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    loop = asyncio.get_running_loop()
    records: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def read_records() -> None:
        assert load.stdout is not None
        for line in load.stdout:
            loop.call_soon_threadsafe(records.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(records.put_nowait, None)

    connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(SAMPLE_CONNECTIONS):
        connections.put_nowait(await asyncio.open_connection(host, port))
    lags_ms: list[float] = []
    errors = 0
    first_ns: list[int] = []

    async def sample(record: dict[str, Any]) -> None:
        nonlocal errors
        request = (f"GET /v1/transfers/{record['transfer_id']}?min_position={record['position']}"
                   f"&wait_ms={SAMPLE_WAIT_MS} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n")
        reader, writer = await connections.get()
        try:
            writer.write(request.encode())
            status = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            status = 0
        finally:
            connections.put_nowait((reader, writer))
        lag_ms = (time.monotonic_ns() - record["committed_ns"]) / 1e6
        if status != 200:
            errors += 1
        if record["committed_ns"] - first_ns[0] >= warmup_s * 1e9:
            lags_ms.append(lag_ms)

    threading.Thread(target=read_records, name="bench-load-reader", daemon=True).start()
    committed = 0
    tasks = []
    while (record := await records.get()) is not None:
        if not first_ns:
            first_ns.append(record["committed_ns"])
        committed += 1
        tasks.append(asyncio.create_task(sample(record)))
    await asyncio.gather(*tasks)
    while not connections.empty():
        connections.get_nowait()[1].close()
    load.wait()
    return lags_ms, errors, committed


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Reads one HTTP/1.1 response with a Content-Length body; returns its status code."""
    status = int((await reader.readuntil(b"\r\n")).split(b" ", 2)[1])
    length = 0
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def _cli_projection(args: argparse.Namespace) -> int:
    report = run_projection(args.seconds, args.rate, args.sample_every, args.warmup_s)
    _write(report, args.json)
    return 0


# ----------------------------------------------------------------------------------------------------- rebuild


def _raw_read(select: Any, page: int = 10_000) -> tuple[int, float]:
    started, count, start = time.perf_counter(), 0, 1
    while rows := select(start, page):
        count += len(rows)
        last = rows[-1]
        start = (last[0] if isinstance(last, tuple) else last.id) + 1
    return count, time.perf_counter() - started


def _raw_copy(log: Any) -> tuple[int, float]:
    """The binary COPY stream of the whole log, as the set-based rebuild reads it (bytes only: records not counted
    here, they are the plain cursor's count)."""
    started, size = time.perf_counter(), 0
    for block in log.copy_records(0, log.max_notification_id() or 0):
        size += len(block)
    return size, time.perf_counter() - started


def _timed_rebuild(read_dsn: str, log: Any, schema: str, method: str) -> tuple[RebuildResult, dict[str, float]]:
    """A rebuild, and the seconds it spent in each of its stages (from the progress reports)."""
    stages: dict[str, float] = {}
    current: list[Any] = [None, time.perf_counter()]

    def progress(stage: str, _done: int, _total: int | None) -> None:
        now, group = time.perf_counter(), stage.partition("/")[0]
        if current[0] is not None:
            stages[current[0]] = stages.get(current[0], 0.0) + now - current[1]
        current[0], current[1] = group, now

    result = rebuild(read_dsn, log, schema, method=method, progress=progress)
    progress("", 0, None)
    return result, {name: round(seconds, 3) for name, seconds in stages.items() if name}


def run_rebuild(events: int, ledger_dsn: str | None, repeat: int = 3, projector: bool = True) -> dict[str, Any]:
    settings = load_read_settings()
    facts = machine()
    runs: list[dict[str, Any]] = []
    with scratch_databases(settings.ledger_dsn) as (scratch_ledger, read_dsn):
        dsn = ledger_dsn or scratch_ledger
        write_s = None
        if ledger_dsn is None:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "commands.relay", "load", "--dsn", dsn, "--rate", "0", "--count",
                            str(events), "--seconds", "100000", "--print-every", str(10**9)], check=True,
                           stdout=subprocess.DEVNULL)
            write_s = time.perf_counter() - started
        recorder, close = open_event_store_reader(dsn)
        log = open_ledger_log(dsn)
        try:
            facts["load_avg_1m_before_reads"] = os.getloadavg()[0]
            for _ in range(max(1, repeat)):  # interleaved, so a busy moment of the machine hits every number alike
                library_count, library_s = _raw_read(recorder.select_notifications)
                plain_count, plain_s = _raw_read(log.select_rows)
                _, copy_s = _raw_copy(log)
                result, stages = _timed_rebuild(read_dsn, log, "bench_rebuild", "sql")
                runs.append({"event_store": library_count / library_s, "plain": plain_count / plain_s,
                             "copy": plain_count / copy_s, "rebuild": result.events_per_s, "result": result,
                             "stages": stages})
            reference, equal = None, False
            if projector:
                reference, _ = _timed_rebuild(read_dsn, log, "bench_reference", "projector")
                with psycopg.connect(read_dsn) as conn:
                    equal = table_checksums(conn, "bench_rebuild") == table_checksums(conn, "bench_reference")
        finally:
            log.close()
            close()
    median = {key: statistics.median(run[key] for run in runs) for key in ("event_store", "plain", "copy", "rebuild")}
    typical = min(runs, key=lambda run: abs(run["rebuild"] - median["rebuild"]))
    result = typical["result"]
    library_rate, plain_rate, rate = median["event_store"], median["plain"], median["rebuild"]
    report: dict[str, Any] = {
        "benchmark": "full rebuild vs raw read of the notification log", "ledger": database_name(dsn),
        "events": result.events, "write_s": None if write_s is None else round(write_s, 1), "repeat": len(runs),
        "raw_read_event_store_events_per_s": round(library_rate),
        "raw_read_plain_sql_events_per_s": round(plain_rate),
        "raw_copy_stream_events_per_s": round(median["copy"]),
        "rebuild_method": result.method,
        "rebuild_events_per_s": round(rate), "rebuild_s": round(result.seconds, 2),
        "rebuild_stages_s": typical["stages"],
        "runs": [{"raw_read_event_store": round(run["event_store"]), "raw_read_plain_sql": round(run["plain"]),
                  "raw_copy_stream": round(run["copy"]), "rebuild": round(run["rebuild"])} for run in runs],
        "ratio_to_event_store_read": round(rate / library_rate, 3),
        "ratio_to_plain_sql_read": round(rate / plain_rate, 3),
        "ratio_to_copy_stream": round(rate / median["copy"], 3),
        "targets": {"events_per_s": TARGET_REBUILD_EVENTS_PER_S, "ratio": TARGET_REBUILD_RAW_RATIO},
        "met_events_per_s": rate >= TARGET_REBUILD_EVENTS_PER_S,
        "met_ratio_event_store": rate >= TARGET_REBUILD_RAW_RATIO * library_rate,
        "met_ratio_plain_sql": rate >= TARGET_REBUILD_RAW_RATIO * plain_rate,
    }
    if reference is not None:
        report.update({
            "projector_rebuild_events_per_s": round(reference.events_per_s),
            "projector_rebuild_s": round(reference.seconds, 2),
            "projector_ratio_to_event_store_read": round(reference.events_per_s / library_rate, 3),
            "projector_ratio_to_plain_sql_read": round(reference.events_per_s / plain_rate, 3),
            "set_based_speedup_over_projector": round(rate / reference.events_per_s, 2),
            "rebuilds_equal": equal and reference.position == result.position,
        })
    report["machine"] = {**facts, "load_avg_1m_at_end": os.getloadavg()[0]}
    return report


def _cli_rebuild(args: argparse.Namespace) -> int:
    _write(run_rebuild(args.events, args.ledger_dsn, args.repeat, not args.skip_projector), args.json)
    return 0
