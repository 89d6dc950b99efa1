"""The ledger writer's own cost per transfer, without client threads: ``python -m commands.profile_writer``.

Opens 10,000 funded wallets in a throwaway database, stops the writer thread and then drives the writer's batch
step (decide every command, save the batch in one transaction, resolve the futures) directly from this thread, on
pre-built batches of random transfers. It prints wall and CPU time per transfer; ``--profile`` adds a cProfile
table sorted by own time. This is what docs/benchmarks.md's "CPU per transfer" numbers come from; the full
benchmark is ``razao bench ledger``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
import uuid
from collections.abc import Sequence

from commands.bench import setup_ledger
from commands.bootstrap import build_ledger
from infra.settings import drop_database, load_settings, with_database
from ledger.model import CreateTransfer
from ledger.reply import Reply
from ledger.writer import _Submission

WALLETS = 10_000


def _batches(wallet_ids: Sequence[uuid.UUID], count: int, size: int, seed: int) -> list[list[_Submission]]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    batches = []
    for b in range(count):
        batch = []
        for i in range(size):
            debit, credit = rng.sample(wallet_ids, 2)
            batch.append(_Submission(CreateTransfer(f"profile:{b}:{i}", debit, credit, rng.randint(1, 10_000)),
                                     Reply()))
        batches.append(batch)
    return batches


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.profile_writer", description=__doc__)
    parser.add_argument("--batches", type=int, default=400, help="group commits to time (default 400)")
    parser.add_argument("--batch-size", type=int, default=64, help="transfers per group commit (default 64)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile table (slows everything down)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    dsn = with_database(load_settings().pg_dsn, f"razao_profile_{uuid.uuid4().hex[:8]}")
    runtime = build_ledger(dsn)
    try:
        setup = setup_ledger(runtime, WALLETS)
        writer = runtime.writer
        writer.stop()  # the thread stops and releases the lease; this thread becomes the writer
        writer._epoch = writer.lease.acquire()
        batches = _batches(setup.wallet_ids[:WALLETS], args.batches, args.batch_size, args.seed)
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
        for batch in batches:
            writer._process(batch)
        wall, cpu, own = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - own
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        failed = [s for batch in batches for s in batch if not s.future.done() or s.future.exception() is not None]
        if failed:
            print(f"{len(failed)} transfers failed, e.g. {failed[0].future.exception()!r}")
            return 3
        n = args.batches * args.batch_size
        print(f"{n} transfers in batches of {args.batch_size}: {1e6 * wall / n:.1f} µs wall and {1e6 * cpu / n:.1f} µs "
              f"CPU per transfer, {1e6 * own / n:.1f} µs of it in this thread ({n / wall:,.0f} transfers/s on one "
              "thread, no clients)")
        return 0
    finally:
        runtime.writer.lease.release()
        runtime.app.close()
        drop_database(dsn)


if __name__ == "__main__":
    raise SystemExit(main())
