"""`razao bench api`: durable transfers per second through the command API's HTTP front door.

The bench starts the real API (``python -m commands.api``, as ``razao up`` and the end-to-end tests do) in a
subprocess on a free port, on a database of its own (``razao_bench_api_<8 hex>``, dropped at the end) and with a
state directory of its own (so its development JWT keys are its own). Rate limits are raised for the run, and the
report says so: the bench measures the write path, not the limiter's refusals (the limiter still runs, on Redis).

Setup (untimed): an operator opens a PIX settlement account, onboards ``--wallets`` investors and funds each
wallet from settlement. Load (timed): ``--clients`` keep-alive HTTP/1.1 connections, each a closed loop of
``POST /v1/transfers`` between two random wallets with a unique ``Idempotency-Key`` (with ``--bulk N``, of
``POST /v1/bulk-transfers`` with N such transfers per request; the result counts transfers, the latency
requests). The client is a lean
asyncio one with hand-written request bytes (an HTTP library would measure itself on these 2 cores); it shares
the machine with the server and Postgres, so its own CPU use is reported next to the result.

After the run, Postgres counts ``TransferCommitted`` events in the bench database: they must equal the setup
transfers plus every transfer the API acknowledged (a 201, or a committed result of a bulk request): nothing
acknowledged is missing, nothing extra was written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from commands.api.auth import ensure_dev_keys, mint_token
from commands.api.limits import BATCH_TRANSFERS_MAX
from infra.processes import free_port
from infra.settings import database_name, drop_database, ensure_database, load_settings, with_database
from ledger.events import TRANSFER_COMMITTED_TOPIC

JSON_SCHEMA = "razao.bench.api/1"

# Limits of the bench itself.
SECONDS_MAX = 3_600.0
CLIENTS_MAX = 512
WALLETS_MAX = 100_000
SETUP_CONCURRENCY = 32
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
RESPONSE_HEAD_BYTES_MAX = 64 * 1024
#: Each wallet starts with R$ 100,000.00; a transfer moves R$ 0.01 to R$ 100.00, so refusals for funds are rare.
WALLET_FUNDING = "100000.00"
TRANSFER_CENTAVOS_MAX = 10_000

# The targets.
TARGET_TRANSFERS_PER_S = 1_500.0
TARGET_P99_MS = 50.0

#: Limits high enough never to refuse the bench (the defaults would: 3000/s internal, 500/s per address for money).
BENCH_RATE_LIMITS = {
    "RAZAO_API_RATE_LIMIT_CUSTOMER": "1000000/second",
    "RAZAO_API_RATE_LIMIT_CUSTOMER_MONEY": "1000000/second",
    "RAZAO_API_RATE_LIMIT_INTERNAL": "1000000/second",
    "RAZAO_API_RATE_LIMIT_INTERNAL_MONEY": "1000000/second",
    "RAZAO_API_RATE_LIMIT_ADDRESS": "1000000/second",
    "RAZAO_API_RATE_LIMIT_ADDRESS_MONEY": "1000000/second",
}


def register_cli(subsystems: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subsystems.add_parser(
        "api", help="durable transfers/s and latency through the command API over HTTP",
        description="Starts the command API on a fresh database, funds wallets, then drives POST /v1/transfers "
                    "from many keep-alive connections and reports transfers/s and p50/p99 latency.",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds (default 10)")
    p.add_argument("--warmup-seconds", type=float, default=1.0, help="unmeasured seconds first (default 1)")
    p.add_argument("--clients", type=int, default=64, help="concurrent keep-alive connections (default 64)")
    p.add_argument("--wallets", type=int, default=1_000, help="investor wallets (default 1000)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every number to this file")
    p.add_argument("--seed", type=int, default=1, help="random seed of the workload (default 1)")
    p.add_argument("--bulk", type=int, default=0, metavar="N",
                   help="send N transfers per request to POST /v1/bulk-transfers instead of one per POST "
                        "/v1/transfers (default 0: one per request)")
    p.add_argument("--dsn", default=None, help="Postgres server to use (default: the configured one); the bench "
                                               "creates and drops its own database there")
    p.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target is missed")
    p.set_defaults(func=run_api_cli)


@dataclass(frozen=True)
class ApiBenchOptions:
    seconds: float = 10.0
    warmup_seconds: float = 1.0
    clients: int = 64
    wallets: int = 1_000
    json_path: Path | None = None
    seed: int = 1
    dsn: str | None = None
    fail_on_miss: bool = False
    bulk: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.bulk <= BATCH_TRANSFERS_MAX:
            raise ValueError(f"--bulk must be in [0, {BATCH_TRANSFERS_MAX}]")
        if not 0 < self.seconds <= SECONDS_MAX:
            raise ValueError(f"--seconds must be in (0, {SECONDS_MAX:.0f}]")
        if not 0 <= self.warmup_seconds <= SECONDS_MAX:
            raise ValueError(f"--warmup-seconds must be in [0, {SECONDS_MAX:.0f}]")
        if not 1 <= self.clients <= CLIENTS_MAX:
            raise ValueError(f"--clients must be in [1, {CLIENTS_MAX}]")
        if not 2 <= self.wallets <= WALLETS_MAX:
            raise ValueError(f"--wallets must be in [2, {WALLETS_MAX}]")

    def command_line(self) -> str:
        line = (f"razao bench api --seconds {self.seconds:g} --warmup-seconds {self.warmup_seconds:g} "
                f"--clients {self.clients} --wallets {self.wallets} --seed {self.seed}"
                + (f" --bulk {self.bulk}" if self.bulk else ""))
        return line + (f" --json {self.json_path}" if self.json_path else "")


def run_api_cli(args: argparse.Namespace) -> int:
    try:
        options = ApiBenchOptions(args.seconds, args.warmup_seconds, args.clients, args.wallets, args.json,
                                  args.seed, args.dsn, args.fail_on_miss, args.bulk)
    except ValueError as exc:
        print(f"razao bench api: {exc}", file=sys.stderr)
        return 2
    return run(options)


# --------------------------------------------------------------------------------------------------------------
# A lean HTTP/1.1 keep-alive client: hand-written request bytes, status line + Content-Length parsing.


class HttpConnection:
    def __init__(self, host: str, port: int, authorization: str) -> None:
        self.host, self.port = host, port
        self._prefix = f"Host: {host}:{port}\r\nAuthorization: {authorization}\r\n".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes = b"", idempotency_key: str | None = None,
                      ) -> tuple[int, bytes]:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._prefix
        if idempotency_key is not None:
            head += b"Idempotency-Key: " + idempotency_key.encode() + b"\r\n"
        if body:
            head += b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        self._writer.write(head + b"\r\n" + body)
        response_head = await self._reader.readuntil(b"\r\n\r\n")
        assert len(response_head) <= RESPONSE_HEAD_BYTES_MAX
        lines = response_head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                raise RuntimeError("chunked responses are not expected from the API")
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None


# --------------------------------------------------------------------------------------------------------------
# The server under test.


@dataclass
class ApiProcess:
    host: str
    port: int
    dsn: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_api(dsn: str, state_dir: Path, redis_url: str) -> ApiProcess:
    host, port = "127.0.0.1", free_port("127.0.0.1")
    log_path = state_dir / "api.log"
    env = {
        **os.environ, "RAZAO_ENV": "development", "RAZAO_PG_DSN": dsn, "RAZAO_STATE_DIR": str(state_dir),
        "RAZAO_REDIS_URL": redis_url, "RAZAO_API_RATE_LIMIT_KEY_PREFIX": f"razao-bench-{uuid.uuid4().hex[:12]}",
        **BENCH_RATE_LIMITS,
    }
    for name in ("RAZAO_JWT_PUBLIC_KEY_FILE", "RAZAO_JWT_PRIVATE_KEY_FILE", "RAZAO_JWT_HS256_SECRET"):
        env.pop(name, None)
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "commands.api", "--host", host, "--port", str(port)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    return ApiProcess(host, port, dsn, state_dir, process, log_path)


async def wait_ready(server: ApiProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the API exited with {server.process.returncode} at start:\n{server.log()}")
        connection = HttpConnection(server.host, server.port, "none")
        try:
            status, _ = await connection.request("GET", "/readyz")
            if status == 200:
                return
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await connection.close()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the API was not ready within {READY_TIMEOUT_S:.0f}s:\n{server.log()}")


def stop_api(server: ApiProcess) -> None:
    if server.process.poll() is None:
        server.process.terminate()  # SIGTERM to the PID this bench started, nothing else
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(STOP_TIMEOUT_S)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from ``/proc`` (0 where there is no ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all but idle and iowait), from ``/proc/stat``."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------------------------
# Setup and load.


def _cpf(rng: random.Random) -> str:
    def digit(digits: str, top: int) -> str:
        remainder = sum(int(d) * w for d, w in zip(digits, range(top, 1, -1), strict=True)) % 11
        return "0" if remainder < 2 else str(11 - remainder)
    base = "".join(str(rng.randint(0, 9)) for _ in range(9))
    base += digit(base, 10)
    return base + digit(base, 11)


async def _gather_limited(jobs: list[Any], concurrency: int, connections: list[HttpConnection]) -> list[Any]:
    """Runs ``job(connection)`` coroutine factories over ``concurrency`` connections, keeping their order."""
    results: list[Any] = [None] * len(jobs)
    queue = list(enumerate(jobs))
    queue.reverse()

    async def worker(connection: HttpConnection) -> None:
        while queue:
            index, job = queue.pop()
            results[index] = await job(connection)

    await asyncio.gather(*(worker(connections[i]) for i in range(concurrency)))
    return results


async def setup(server: ApiProcess, authorization: str, wallets: int, seed: int) -> tuple[list[str], float]:
    """Opens the settlement account, onboards ``wallets`` investors and funds them; returns the wallet ids."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    connections = [HttpConnection(server.host, server.port, authorization) for _ in range(SETUP_CONCURRENCY)]

    async def post(connection: HttpConnection, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, payload = await connection.request("POST", path, json.dumps(body).encode(), uuid.uuid4().hex)
        if status != 201:
            raise RuntimeError(f"setup: POST {path} answered {status}: {payload[:500]!r}")
        answer: dict[str, Any] = json.loads(payload)
        return answer

    settlement = (await post(connections[0], "/v1/accounts",
                             {"code": "pix_settlement", "reference": "bench:settlement"}))["id"]
    parties = [{"kind": "investor", "name": f"Investidor {n}", "document": _cpf(rng),
                "email": f"investor{n}@example.com.br", "phone": "+5511987654321"} for n in range(wallets)]
    onboarded = await _gather_limited(
        [lambda c, b=body: post(c, "/v1/parties", b) for body in parties], SETUP_CONCURRENCY, connections)
    wallet_ids = [str(p["wallet_id"]) for p in onboarded]
    await _gather_limited(
        [lambda c, w=w: post(c, "/v1/transfers", {"debit_account_id": settlement, "credit_account_id": w,
                                                  "valor": WALLET_FUNDING, "code": 10}) for w in wallet_ids],
        SETUP_CONCURRENCY, connections)
    for connection in connections:
        await connection.close()
    return wallet_ids, time.perf_counter() - t0


@dataclass
class LoadResult:
    window_s: float
    latencies_ms: list[float]  # requests sent and answered inside the window
    ok_in_window: int  # transfers committed by requests answered inside the window
    statuses_in_window: Counter[int]
    acknowledged_total: int  # every committed transfer, warm-up and tail included (for the durability check)
    statuses_total: Counter[int]
    transport_errors: int
    client_cpu_s: float
    server_cpu_s: float
    machine_busy_s: float


def _transfer_body(rng: random.Random, wallet_ids: list[bytes]) -> bytes:
    n = len(wallet_ids)
    debit = rng.randrange(n)
    credit = rng.randrange(n - 1)
    credit += credit >= debit
    cents = rng.randint(1, TRANSFER_CENTAVOS_MAX)
    return (b'{"debit_account_id":"' + wallet_ids[debit] + b'","credit_account_id":"' + wallet_ids[credit]
            + b'","valor":"' + f"{cents // 100}.{cents % 100:02d}".encode() + b'"}')


def _request(rng: random.Random, wallet_ids: list[bytes], bulk: int) -> tuple[str, bytes]:
    """One random transfer for ``POST /v1/transfers``, or ``bulk`` of them for ``POST /v1/bulk-transfers``."""
    if not bulk:
        return "/v1/transfers", _transfer_body(rng, wallet_ids)
    transfers = b",".join(_transfer_body(rng, wallet_ids) for _ in range(bulk))
    return "/v1/bulk-transfers", b'{"transfers":[' + transfers + b"]}"


async def load(server: ApiProcess, authorization: str, wallet_ids: list[str], options: ApiBenchOptions,
               ) -> LoadResult:
    rng = random.Random(options.seed + 1)
    bodies_ids = [w.encode() for w in wallet_ids]
    run_id = uuid.uuid4().hex[:12]
    connections = [HttpConnection(server.host, server.port, authorization) for _ in range(options.clients)]
    for connection in connections:  # connect before the clock starts
        status, _ = await connection.request("GET", "/healthz")
        assert status == 200
    records: list[tuple[int, int, int, int]] = []  # (sent ns, answered ns, status, transfers committed)
    transport_errors = 0
    start_ns = time.perf_counter_ns()
    window_start_ns = start_ns + int(options.warmup_seconds * 1e9)
    window_end_ns = window_start_ns + int(options.seconds * 1e9)
    cpu0, server_cpu0, busy0 = time.process_time(), process_cpu_s(server.process.pid), machine_busy_s()

    async def client(index: int, connection: HttpConnection) -> None:
        nonlocal transport_errors
        sequence = 0
        while True:
            sent = time.perf_counter_ns()
            if sent >= window_end_ns:
                return
            path, body = _request(rng, bodies_ids, options.bulk)
            sequence += 1
            try:
                status, payload = await connection.request("POST", path, body, f"bench-{run_id}-{index}-{sequence}")
            except (OSError, asyncio.IncompleteReadError, ValueError):
                transport_errors += 1
                await connection.close()
                continue
            if options.bulk:
                committed = int(json.loads(payload)["committed"]) if status == 200 else 0
            else:
                committed = 1 if status == 201 else 0
            records.append((sent, time.perf_counter_ns(), status, committed))

    await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
    cpu1, server_cpu1, busy1 = time.process_time(), process_cpu_s(server.process.pid), machine_busy_s()
    for connection in connections:
        await connection.close()
    latencies: list[float] = []
    in_window: Counter[int] = Counter()
    total: Counter[int] = Counter()
    ok_in_window = 0
    acknowledged = 0
    for sent, answered, status, committed in records:
        total[status] += 1
        acknowledged += committed
        if sent >= window_start_ns and answered <= window_end_ns:
            latencies.append((answered - sent) / 1e6)
            in_window[status] += 1
        if window_start_ns <= answered <= window_end_ns:
            ok_in_window += committed
    latencies.sort()
    return LoadResult(options.seconds, latencies, ok_in_window, in_window, acknowledged, total, transport_errors,
                      cpu1 - cpu0, server_cpu1 - server_cpu0, busy1 - busy0)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def committed_transfers(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM ledger_events WHERE topic = %s",
                           (TRANSFER_COMMITTED_TOPIC,)).fetchone()
    assert row is not None
    return int(row[0])


def durability_settings(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        values = {name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                  for name in ("synchronous_commit", "fsync")}
        values["version"] = str(conn.execute("SELECT version()").fetchone()[0])  # type: ignore[index]
    values["database"] = database_name(dsn)
    return values


# --------------------------------------------------------------------------------------------------------------
# The run.


def run(options: ApiBenchOptions) -> int:
    """Runs the bench, prints the table, writes the JSON. Exit: 0 ok, 1 miss with --fail-on-miss, 2 not durable,
    3 a consistency check failed."""
    report, code = run_report(options)
    print_table(report)
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"JSON: {options.json_path}")
    return code


def run_report(options: ApiBenchOptions) -> tuple[dict[str, Any], int]:
    settings = load_settings()
    dsn = with_database(options.dsn or settings.pg_dsn, f"razao_bench_api_{uuid.uuid4().hex[:8]}")
    ensure_database(dsn)
    server: ApiProcess | None = None
    try:
        durability = durability_settings(dsn)
        if durability["synchronous_commit"] != "on" or durability["fsync"] != "on":
            return {"schema": JSON_SCHEMA, "error": "server commits are not durable", "server": durability}, 2
        with tempfile.TemporaryDirectory(prefix="razao-bench-api-") as state:
            state_dir = Path(state)
            server = start_api(dsn, state_dir, settings.redis_url)
            token = mint_token(ensure_dev_keys(state_dir / "jwt"), f"operator-bench-{uuid.uuid4().hex[:8]}",
                               "operator")
            authorization = f"Bearer {token}"
            asyncio.run(wait_ready(server))
            wallet_ids, setup_s = asyncio.run(setup(server, authorization, options.wallets, options.seed))
            committed_before = committed_transfers(dsn)
            result = asyncio.run(load(server, authorization, wallet_ids, options))
            stop_api(server)  # graceful: everything acknowledged must already be in the store
            committed_after = committed_transfers(dsn)
            server_log = server.log()
    finally:
        if server is not None:
            stop_api(server)
        drop_database(dsn)
    return build_report(options, durability, setup_s, committed_before=committed_before,
                        committed_after=committed_after, r=result, server_log=server_log)


def build_report(options: ApiBenchOptions, durability: dict[str, str], setup_s: float, *, committed_before: int,
                 committed_after: int, r: LoadResult, server_log: str) -> tuple[dict[str, Any], int]:
    tps = r.ok_in_window / r.window_s
    lat = r.latencies_ms
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    checks = {
        "setup_transfers": options.wallets,
        "committed_after_setup": committed_before,
        "committed_total": committed_after,
        "acknowledged_total": r.acknowledged_total,
        "setup_consistent": committed_before == options.wallets,
        "load_consistent": committed_after - committed_before == r.acknowledged_total,
        "server_tracebacks": server_log.count("Traceback"),
    }
    checks["passed"] = bool(checks["setup_consistent"] and checks["load_consistent"]
                            and not checks["server_tracebacks"])
    targets = {
        "transfers_per_s": {"target": TARGET_TRANSFERS_PER_S, "value": round(tps, 1),
                            "pass": tps >= TARGET_TRANSFERS_PER_S},
        "p99_ms": {"target": TARGET_P99_MS, "value": round(p99, 2), "pass": bool(lat) and p99 <= TARGET_P99_MS},
    }
    elapsed = options.warmup_seconds + options.seconds
    report: dict[str, Any] = {
        "schema": JSON_SCHEMA,
        "command": options.command_line(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "server": durability,
        "options": {"seconds": options.seconds, "warmup_seconds": options.warmup_seconds,
                    "clients": options.clients, "wallets": options.wallets, "seed": options.seed,
                    "transfers_per_request": options.bulk or 1,
                    "rate_limits_raised_to": BENCH_RATE_LIMITS},
        "setup_s": round(setup_s, 3),
        "window_s": r.window_s,
        "transfers_per_s": round(tps, 1),
        "latency_ms": {"p50": round(p50, 2), "p99": round(p99, 2), "max": round(lat[-1] if lat else 0.0, 2),
                       "mean": round(sum(lat) / len(lat), 2) if lat else 0.0, "count": len(lat)},
        "ok": r.ok_in_window,
        # Answers other than the route's success status (201 for one transfer, 200 for a bulk request).
        "non_201_by_status": {str(s): n for s, n in sorted(r.statuses_in_window.items())
                              if s != (200 if options.bulk else 201)},
        "statuses_total": {str(s): n for s, n in sorted(r.statuses_total.items())},
        "transport_errors": r.transport_errors,
        "client_cpu": {"seconds": round(r.client_cpu_s, 2), "cores": round(r.client_cpu_s / elapsed, 2)},
        "server_cpu": {"seconds": round(r.server_cpu_s, 2), "cores": round(r.server_cpu_s / elapsed, 2)},
        #: Everything else busy meanwhile: Postgres, Redis, the kernel's network work, and any other tenant.
        "other_cpu": {"cores": round(max(0.0, r.machine_busy_s - r.client_cpu_s - r.server_cpu_s) / elapsed, 2)},
        "targets": targets,
        "checks": checks,
    }
    if not checks["passed"]:
        return report, 3
    missed = not all(t["pass"] for t in targets.values())
    return report, 1 if missed and options.fail_on_miss else 0


def print_table(report: dict[str, Any]) -> None:
    if "error" in report:
        print(f"razao bench api: {report['error']}", file=sys.stderr)
        return
    lat, t, c = report["latency_ms"], report["targets"], report["checks"]
    verdict = {True: "PASS", False: "MISS"}
    print(f"{report['command']}  ({report['date']}, {report['machine']['nproc']} cores)")
    print(f"rate limits raised to 1000000/second for the run; setup {report['setup_s']:.1f}s "
          f"({report['options']['wallets']} wallets funded)")
    print(f"{'transfers/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'ok':>8}  non-201")
    print(f"{report['transfers_per_s']:>12.1f} {lat['p50']:>8.2f} {lat['p99']:>8.2f} {lat['max']:>8.2f} "
          f"{report['ok']:>8}  {report['non_201_by_status'] or '-'}"
          + (f"  transport errors: {report['transport_errors']}" if report["transport_errors"] else ""))
    print(f"client CPU {report['client_cpu']['cores']:.2f} cores, server CPU {report['server_cpu']['cores']:.2f} "
          f"cores, everything else (Postgres, Redis, kernel, other tenants) {report['other_cpu']['cores']:.2f} "
          f"cores (of {report['machine']['nproc']})")
    print(f"target transfers/s >= {t['transfers_per_s']['target']:.0f}: {verdict[t['transfers_per_s']['pass']]}; "
          f"p99 <= {t['p99_ms']['target']:.0f} ms: {verdict[t['p99_ms']['pass']]}")
    print(f"durability: {c['committed_total']} TransferCommitted in the store = {c['setup_transfers']} setup + "
          f"{c['acknowledged_total']} acknowledged: {'OK' if c['passed'] else 'FAILED'}")
