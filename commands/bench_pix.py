"""`razao bench-pix --seconds N --json PATH`: PIX webhook ingestion, measured end to end (docs/benchmarks.md).

What runs: a fresh database on the configured Postgres, two sandbox PSPs and the command API (PIX on) as child
processes, exactly as `razao up` runs them. Before the clock starts, deposits are asked through the API (each a
charge at the sandbox) and paid at the sandbox with its webhooks off, so every Pix exists at the PSP (the platform
confirms each one there before crediting it). Then a lean open-loop load generator (raw asyncio sockets, keep-alive
HTTP/1.1, requests prebuilt and signed) posts the webhooks at a fixed rate, a share of them duplicates of Pix already
posted, and records each response.

Reported: Pix and POSTs accepted per second, response time p50/p99/max (from the moment each POST was due, so a
slow server is not hidden by a waiting client), the time from a Pix's first acceptance to its credit in the ledger
(from the PixReceived events' own timestamps) and the drain time after the last POST; then the ledger is checked:
exactly one credit per endToEndId, and the settlement account debited by exactly the sum of the unique Pix.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import hmac
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from commands.api.auth import ensure_dev_keys, mint_token
from infra.processes import free_port
from infra.sandbox_psp.launcher import RunningSandbox, start_sandbox
from infra.settings import drop_database, ensure_database, load_settings, with_database
from ledger.pix_state import SETTLEMENT_ACCOUNT_ID

TARGET_PIX_PER_S = 1_000
TARGET_P99_MS = 50.0
READY_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 180.0
PREP_CONNECTIONS = 32
CPF = "52998224725"
PIX_KEYS = ("5f8e0c1a-3b7d-4e2f-9a6c-1d2e3f4a5b6c", "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9")


def register_bench(subsystems: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``razao bench pix`` (a ``razao.bench`` entry point)."""
    _add_parser(subsystems, "pix")


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``razao bench-pix``: the same benchmark under its earlier name."""
    _add_parser(subparsers, "bench-pix")


def _add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    p = subparsers.add_parser(
        name, help="PIX webhooks ingested per second, p99 response time, time until credited",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds of load (default 10)")
    p.add_argument("--warmup-seconds", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    p.add_argument("--rate", type=float, default=1_000.0, help="offered Pix per second (default 1000)")
    p.add_argument("--pix-per-post", type=int, default=1, help="Pix in each webhook body (default 1)")
    p.add_argument("--duplicate-rate", type=float, default=0.05,
                   help="share of extra POSTs repeating a Pix already posted (default 0.05)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections to the API (default 64)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every number to this file")
    p.add_argument("--drain-timeout-s", type=float, default=DRAIN_TIMEOUT_S,
                   help=f"how long to wait for every credit after the load (default {DRAIN_TIMEOUT_S:.0f})")
    p.add_argument("--keep", action="store_true", help="keep the database and logs afterwards")
    p.set_defaults(func=run)


# ---- a lean HTTP/1.1 client -----------------------------------------------------------------------------------


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def raw_request(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _concurrently(host: str, port: int, requests: Sequence[bytes], connections: int) -> list[tuple[int, bytes]]:
    """Every request, as fast as ``connections`` keep-alive connections allow (preparation, not measured)."""
    results: list[tuple[int, bytes]] = [(0, b"")] * len(requests)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            while not queue.empty():
                i = queue.get_nowait()
                results[i] = await conn.request(requests[i])
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(min(connections, len(requests)) or 1)))
    return results


@dataclass
class Sample:
    index: int
    due: float
    done: float
    status: int


async def drive(host: str, port: int, requests: Sequence[bytes], rate_per_s: float,
                connections: int) -> tuple[list[Sample], float, float]:
    """Open loop: request i is due at start + i/rate; it waits for an idle connection if none is (counted in its
    latency). Returns the samples and the loop-time and wall-time of the start."""
    loop = asyncio.get_running_loop()
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        conn = Connection(host, port)
        await conn.open()
        idle.put_nowait(conn)
    samples: list[Sample] = []

    async def one(index: int, due: float) -> None:
        conn = await idle.get()
        try:
            status, _ = await conn.request(requests[index])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status = -1
            conn.close()
            conn = Connection(host, port)
        samples.append(Sample(index, due, loop.time(), status))
        idle.put_nowait(conn)

    start, wall_start = loop.time() + 0.05, time.time() + 0.05
    tasks = []
    for index in range(len(requests)):
        due = start + index / rate_per_s
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(index, due)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    return samples, start, wall_start


# ---- the platform under test ----------------------------------------------------------------------------------


@dataclass
class Platform:
    dsn: str
    state_dir: Path
    primary: RunningSandbox
    secondary: RunningSandbox
    api: subprocess.Popen[bytes]
    port: int
    children: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: str, sub: str) -> str:
        return mint_token(ensure_dev_keys(self.state_dir / "jwt"), sub, role, ttl_s=3600)


def start_platform(work: Path) -> Platform:
    settings = load_settings()
    dsn = with_database(settings.pg_dsn, f"razao_bench_pix_{uuid.uuid4().hex[:8]}")
    ensure_database(dsn)
    secret = uuid.uuid4().hex
    primary = start_sandbox("primary", client_secret=f"p{secret}", webhook_secret=f"pw{secret}", seed=1,
                            log_path=work / "primary.log", args=["--webhook-enabled", "false"])
    secondary = start_sandbox("secondary", ispb="20000002", pix_key=PIX_KEYS[1], client_secret=f"s{secret}",
                              webhook_secret=f"sw{secret}", seed=2, log_path=work / "secondary.log",
                              args=["--webhook-enabled", "false"])
    port = free_port("127.0.0.1")
    env = {**os.environ, "RAZAO_ENV": "development", "RAZAO_PG_DSN": dsn, "RAZAO_STATE_DIR": str(work),
           "RAZAO_REDIS_URL": settings.redis_url, "RAZAO_PIX_ENABLED": "true",
           "RAZAO_PIX_RECONCILE_INTERVAL_S": "0", "RAZAO_API_RATE_LIMIT_KEY_PREFIX": f"bench-pix-{secret[:8]}"}
    for name in ("CUSTOMER", "CUSTOMER_MONEY", "INTERNAL", "INTERNAL_MONEY", "ADDRESS", "ADDRESS_MONEY"):
        env[f"RAZAO_API_RATE_LIMIT_{name}"] = "100000/second"
    for name, sandbox in (("PRIMARY", primary), ("SECONDARY", secondary)):
        env.update({f"RAZAO_PSP_{name}_URL": sandbox.base_url, f"RAZAO_PSP_{name}_CLIENT_SECRET": sandbox.client_secret,
                    f"RAZAO_PSP_{name}_PIX_KEY": sandbox.pix_key,
                    f"RAZAO_PSP_{name}_WEBHOOK_SECRET": sandbox.webhook_secret})
    for name in ("RAZAO_JWT_PUBLIC_KEY_FILE", "RAZAO_JWT_PRIVATE_KEY_FILE", "RAZAO_JWT_HS256_SECRET"):
        env.pop(name, None)
    with (work / "api.log").open("wb") as log:
        api = subprocess.Popen([sys.executable, "-m", "commands.api", "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    platform = Platform(dsn, work, primary, secondary, api, port)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if api.poll() is not None:
            stop_platform(platform, keep=True)
            raise RuntimeError(f"the API exited at start; see {work / 'api.log'}")
        try:
            if httpx.get(f"{platform.url}/readyz", timeout=1.0).status_code == 200:
                return platform
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_platform(platform, keep=True)
    raise RuntimeError(f"the API was not ready in {READY_TIMEOUT_S:.0f}s; see {work / 'api.log'}")


def stop_platform(platform: Platform, *, keep: bool) -> None:
    if platform.api.poll() is None:
        platform.api.terminate()  # our own child, by its PID
        try:
            platform.api.wait(20)
        except subprocess.TimeoutExpired:
            platform.api.kill()
            platform.api.wait(10)
    platform.primary.stop()
    platform.secondary.stop()
    if not keep:
        drop_database(platform.dsn)


# ---- preparation: deposits asked and paid ---------------------------------------------------------------------


def prepare(platform: Platform, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """``count`` Pix that exist at the primary, each paying a deposit of one investor's wallet."""
    operator = platform.token("operator", "bench-pix-ops")
    headers = {"Authorization": f"Bearer {operator}", "Content-Type": "application/json"}
    party = httpx.post(f"{platform.url}/v1/parties", headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                       json={"kind": "investor", "name": "Bench Pix", "document": CPF, "email": "bench@example.com",
                             "phone": "+5511987654321"}, timeout=30).json()
    wallet_id = party["wallet_id"]
    host = f"127.0.0.1:{platform.port}"
    amounts = [f"{rng.randint(1, 99_999) / 100:.2f}" for _ in range(count)]
    requests = [raw_request("POST", "/v1/deposits", host, {**headers, "Idempotency-Key": uuid.uuid4().hex},
                            json.dumps({"valor": valor, "wallet_id": wallet_id}).encode()) for valor in amounts]
    answers = asyncio.run(_concurrently("127.0.0.1", platform.port, requests, PREP_CONNECTIONS))
    deposits = [json.loads(body) for status, body in answers if status == 201]
    if len(deposits) != count:
        raise RuntimeError(f"only {len(deposits)} of {count} deposits were created: {answers[0]}")
    sandbox = platform.primary
    pay_host = f"127.0.0.1:{sandbox.admin_port}"
    pays = [raw_request("POST", "/_sandbox/pay", pay_host, {"Content-Type": "application/json"},
                        json.dumps({"txid": d["txid"]}).encode()) for d in deposits]
    paid = asyncio.run(_concurrently("127.0.0.1", sandbox.admin_port, pays, PREP_CONNECTIONS))
    pix = [json.loads(body) for status, body in paid if status == 201]
    if len(pix) != count:
        raise RuntimeError(f"only {len(pix)} of {count} Pix were paid at the sandbox")
    return pix


def webhook_requests(platform: Platform, pix: list[dict[str, Any]], per_post: int, duplicate_rate: float,
                     rng: random.Random) -> tuple[list[bytes], list[list[str]]]:
    """Signed webhook POSTs, in order; duplicates repeat a body posted earlier. Also the endToEndIds of each."""
    secret = platform.primary.webhook_secret.encode()
    host = f"127.0.0.1:{platform.port}"
    bodies: list[tuple[bytes, list[str]]] = []
    for offset in range(0, len(pix), per_post):
        chunk = pix[offset:offset + per_post]
        bodies.append((json.dumps({"pix": chunk}, separators=(",", ":")).encode(),
                       [p["endToEndId"] for p in chunk]))
    ordered = list(bodies)
    for _ in range(int(len(bodies) * duplicate_rate)):
        position = rng.randint(1, len(ordered))
        ordered.insert(position, rng.choice(ordered[:position]))
    requests, e2eids = [], []
    for body, ids in ordered:
        signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        requests.append(raw_request("POST", "/v1/webhooks/psp/primary/pix", host, {
            "Content-Type": "application/json", "X-Psp-Id": "primary", "X-Razao-Signature": signature,
            "X-Razao-Delivery": uuid.uuid4().hex[:20]}, body))
        e2eids.append(ids)
    return requests, e2eids


# ---- measuring ------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def credits(dsn: str) -> list[tuple[str, datetime]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT convert_from(state, 'UTF8')::jsonb ->> 'end_to_end_id', "
            "convert_from(state, 'UTF8')::jsonb -> 'timestamp' ->> '_data_' "
            "FROM ledger_events WHERE topic = 'ledger.events:PixReceived'").fetchall()
    return [(str(e), datetime.fromisoformat(str(t))) for e, t in rows]


def run(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.rate <= 0 or not 1 <= args.pix_per_post <= 1000 or args.connections < 1:
        print("razao bench-pix: --seconds, --rate, --connections must be positive; --pix-per-post 1..1000")
        return 2
    rng = random.Random(20251129)  # reproducible load, not a secret
    work = Path(tempfile.mkdtemp(prefix="razao-bench-pix-"))
    unique_posts = math.ceil(args.rate / args.pix_per_post * (args.seconds + args.warmup_seconds))
    total_pix = unique_posts * args.pix_per_post
    print(f"bench-pix: starting two sandbox PSPs and the API (logs in {work})")
    platform = start_platform(work)
    try:
        started = time.monotonic()
        pix = prepare(platform, total_pix, rng)
        print(f"bench-pix: {total_pix} deposits asked and paid at the sandbox in {time.monotonic() - started:.1f}s")
        requests, e2eids = webhook_requests(platform, pix, args.pix_per_post, args.duplicate_rate, rng)
        post_rate = args.rate / args.pix_per_post * len(requests) / unique_posts
        print(f"bench-pix: posting {len(requests)} webhooks ({len(requests) - unique_posts} duplicates) at "
              f"{post_rate:.0f}/s over {args.connections} connections")
        # The load generator's own garbage collector must not pause it mid-run: a pause would show as the server's
        # latency (requests are timed from when they were due).
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            samples, _, wall_start = asyncio.run(drive("127.0.0.1", platform.port, requests, post_rate,
                                                       args.connections))
        finally:
            gc.enable()
        load_end = time.time()
        report = measure(platform, args, samples, e2eids, pix, wall_start, post_rate, load_end)
    finally:
        stop_platform(platform, keep=args.keep)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"bench-pix: numbers written to {args.json}")
    whole = report["credited"] == report["unique_pix"]
    return 0 if report["duplicate_credits"] == 0 and report["settlement_matches"] and whole else 1


def measure(platform: Platform, args: argparse.Namespace, samples: list[Sample], e2eids: list[list[str]],  # noqa: PLR0917
            pix: list[dict[str, Any]], wall_start: float, post_rate: float, load_end: float) -> dict[str, Any]:
    start = min(s.due for s in samples)
    warm = start + args.warmup_seconds
    measured = [s for s in samples if s.due >= warm]
    accepted = [s for s in measured if s.status == 202]
    window = max(s.done for s in measured) - warm if measured else float("nan")
    latencies_ms = [(s.done - s.due) * 1000 for s in measured]
    first_accepted: dict[str, float] = {}
    for sample in sorted(samples, key=lambda s: s.done):
        if sample.status == 202:
            for e2eid in e2eids[sample.index]:
                first_accepted.setdefault(e2eid, wall_start + (sample.done - start))
    unique = {p["endToEndId"]: p for p in pix}
    deadline = time.monotonic() + args.drain_timeout_s
    found = credits(platform.dsn)
    while len({e for e, _ in found}) < len(first_accepted) and time.monotonic() < deadline:
        time.sleep(0.25)
        found = credits(platform.dsn)
    drained = time.time()
    credited_at = {e: t.timestamp() for e, t in found}
    lags_ms = [(credited_at[e] - t) * 1000 for e, t in first_accepted.items() if e in credited_at]
    in_window = [credited_at[e] for e in credited_at]
    operator = platform.token("operator", "bench-pix-check")
    settlement = httpx.get(f"{platform.url}/v1/accounts/{SETTLEMENT_ACCOUNT_ID}", timeout=30,
                           headers={"Authorization": f"Bearer {operator}"}).json()
    expected_centavos = sum(int(p["valor"].replace(".", "")) for e, p in unique.items() if e in first_accepted)
    debited_centavos = int(settlement["debits_posted"].replace(".", ""))
    pix_in_window = sum(len(e2eids[s.index]) for s in accepted)
    timeline: list[dict[str, float]] = []
    for second in range(math.ceil(args.seconds)):
        bucket = [(s.done - s.due) * 1000 for s in measured if warm + second <= s.due < warm + second + 1]
        if bucket:
            timeline.append({"second": second, "posts": len(bucket), "p50_ms": round(percentile(bucket, 50), 1),
                             "p99_ms": round(percentile(bucket, 99), 1)})
    return {
        "seconds": args.seconds, "warmup_seconds": args.warmup_seconds, "offered_pix_per_s": args.rate,
        "pix_per_post": args.pix_per_post, "duplicate_rate": args.duplicate_rate, "connections": args.connections,
        "offered_posts_per_s": round(post_rate, 1),
        "posts": len(measured), "posts_accepted": len(accepted),
        "posts_failed": sum(1 for s in measured if s.status != 202),
        "posts_accepted_per_s": round(len(accepted) / window, 1),
        "pix_accepted_per_s": round(pix_in_window / window, 1),
        "latency_ms": {"p50": round(percentile(latencies_ms, 50), 2), "p90": round(percentile(latencies_ms, 90), 2),
                       "p99": round(percentile(latencies_ms, 99), 2), "max": round(max(latencies_ms), 2),
                       "mean": round(statistics.fmean(latencies_ms), 2)},
        "unique_pix": len(first_accepted), "credited": len(credited_at),
        "credit_lag_ms": {"p50": round(percentile(lags_ms, 50), 1), "p99": round(percentile(lags_ms, 99), 1),
                          "max": round(max(lags_ms), 1) if lags_ms else None},
        "credited_per_s": round(len(in_window) / (max(in_window) - min(in_window)), 1) if len(in_window) > 1 else None,
        "drain_after_last_post_s": round(drained - load_end, 2),
        "duplicate_credits": len(found) - len(credited_at),
        "settlement_debited": settlement["debits_posted"], "settlement_matches": debited_centavos == expected_centavos,
        "timeline": timeline,
        "targets": {"pix_per_s": TARGET_PIX_PER_S, "p99_ms": TARGET_P99_MS},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def print_report(r: dict[str, Any]) -> None:
    lat, lag = r["latency_ms"], r["credit_lag_ms"]
    print(f"\nPIX webhooks, {r['seconds']:.0f}s measured after {r['warmup_seconds']:.0f}s warm-up, offered "
          f"{r['offered_pix_per_s']:.0f} Pix/s ({r['pix_per_post']} per POST, {r['duplicate_rate']:.0%} duplicates)")
    print(f"  accepted          {r['pix_accepted_per_s']:>8.0f} Pix/s   {r['posts_accepted_per_s']:>8.0f} POST/s   "
          f"failed {r['posts_failed']}")
    print(f"  response time     p50 {lat['p50']:.1f} ms   p90 {lat['p90']:.1f} ms   p99 {lat['p99']:.1f} ms   "
          f"max {lat['max']:.1f} ms")
    print(f"  until credited    p50 {lag['p50']:.0f} ms   p99 {lag['p99']:.0f} ms   max {lag['max']} ms   "
          f"({r['credited_per_s']} credits/s; drained {r['drain_after_last_post_s']}s after the last POST)")
    print(f"  ledger            {r['credited']} of {r['unique_pix']} unique Pix credited, duplicate credits "
          f"{r['duplicate_credits']}, settlement debited {r['settlement_debited']} "
          f"({'matches' if r['settlement_matches'] else 'DOES NOT MATCH'} the unique Pix)")
    print("  per second (p99 ms)  " + " ".join(f"{t['p99_ms']:.0f}" for t in r["timeline"]))
    verdict = r["pix_accepted_per_s"] >= TARGET_PIX_PER_S and lat["p99"] <= TARGET_P99_MS
    print(f"  target ≥ {TARGET_PIX_PER_S} Pix/s with p99 ≤ {TARGET_P99_MS:.0f} ms: {'met' if verdict else 'NOT met'}")
