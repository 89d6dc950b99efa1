"""What a checkpoint costs the ledger writer as the ledger grows: ``python -m commands.profile_checkpoint``.

For each size it fills a ``LedgerState`` with that many accounts (in memory, no database), changes some of them
as a run of transfers would between two checkpoints, and times, on this thread:

* the **capture**, which runs in the writer thread and stalls every command meanwhile: every account copied
  (``LedgerApplication.capture_checkpoint``) against what the writer uses (``CheckpointTables``), which takes
  the accounts by reference, all of them at its first capture and only those changed since after that, and
  leaves reading them to the build;
* after a restart, the **seeding** of the writer's tables from the checkpoint it started from (writer thread),
  and the first build, which makes those rows its table (background);
* the **build and encoding**, which run on a thread of their own and give the interpreter back at each ``pause``:
  the longest stretch between two pauses is the longest the writer thread can be kept waiting for the
  interpreter lock, beside the total.

With ``--insert`` it also saves each encoded checkpoint into a throwaway database on the configured Postgres,
once through the library's recorder and once through the one the ledger uses (``infra.postgres_store.
BinaryStateRecorder``), while a ticker thread wakes every millisecond: its longest wait is the longest the
insert held the interpreter lock, which is how long every command of the writer waits meanwhile.
``razao bench ledger`` measures the whole writer in service.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder

from commands.bootstrap import open_ledger_app
from infra.postgres_store import BinaryStateRecorder
from infra.settings import drop_database, ensure_database, load_settings, with_database
from ledger.application import CHECKPOINT_ROW_LISTS, CHECKPOINT_ROWS_CHUNK, CheckpointTables, LedgerApplication
from ledger.canonical import stored_text, stored_text_in_chunks
from ledger.model import Account, LedgerState


class Stretches:
    """A ``pause`` that records the time between calls: the longest stretch a build holds the interpreter."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._since = time.perf_counter()

    def restart(self) -> None:
        self.longest, self._since = 0.0, time.perf_counter()

    def __call__(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._since)
        self._since = now

    def finish(self) -> float:
        self()
        return self.longest


def _timed(work: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def _state(accounts: int) -> LedgerState:
    state = LedgerState()
    for n in range(accounts):
        account = Account(uuid.uuid4(), 986, 2, 1, "", 0, n, 0, 10_000_000, 1, None)
        state.accounts[account.id] = account
    return state


def _change(state: LedgerState, changed: int) -> None:
    """What ``changed`` accounts touched by transfers leave behind (balances moved, the account listed), taken
    at random, as transfers between random wallets would (the first ones in memory would be cheaper to copy)."""
    for account in random.Random(1).sample(list(state.accounts.values()), changed):  # noqa: S311 - a workload
        state._touch_account(account)  # the state's own bookkeeping of a transfer
        account.debits_posted += 1


def _encode(checkpoint: Any, pause: Callable[[], None] | None) -> bytes:
    state = {k: v for k, v in vars(checkpoint).items() if k not in ("originator_id", "originator_version")}
    state["class_version"] = type(checkpoint).class_version
    if pause is None:
        return stored_text(state)
    return stored_text_in_chunks(state, CHECKPOINT_ROW_LISTS, CHECKPOINT_ROWS_CHUNK, pause)


def profile(accounts: int, changed: int) -> tuple[dict[str, float], bytes]:
    state = _state(accounts)
    tables = CheckpointTables()
    full_build, capture_first_s = _timed(lambda: tables.capture(state))  # every account, by reference
    full_build()
    _change(state, changed)
    build_full, capture_full_s = _timed(lambda: LedgerApplication.capture_checkpoint(state))
    stretches = Stretches()
    build_changed, capture_changed_s = _timed(lambda: tables.capture(state, stretches))
    stretches.restart()  # the build's stretches start now
    checkpoint, build_s = _timed(build_changed)
    build_longest_s = stretches.finish()
    assert sorted(map(repr, checkpoint.accounts)) == sorted(map(repr, build_full().accounts))
    restarted, seeded = LedgerState(), CheckpointTables()
    restarted.position = checkpoint.position
    _, seed_s = _timed(lambda: seeded.seed(restarted, checkpoint))
    first_build = seeded.capture(restarted, first := Stretches())
    first.restart()
    _, first_build_s = _timed(first_build)
    first_build_longest_s = first.finish()
    _, encode_whole_s = _timed(lambda: _encode(checkpoint, None))
    chunks = Stretches()
    encoded, encode_chunked_s = _timed(lambda: _encode(checkpoint, chunks))
    return {"capture_all_ms": 1e3 * capture_full_s, "capture_first_ms": 1e3 * capture_first_s,
            "capture_changed_ms": 1e3 * capture_changed_s,
            "build_ms": 1e3 * build_s, "build_longest_ms": 1e3 * build_longest_s,
            "encode_whole_ms": 1e3 * encode_whole_s, "encode_chunked_ms": 1e3 * encode_chunked_s,
            "encode_longest_ms": 1e3 * chunks.finish(), "megabytes": len(encoded) / 1e6, "seed_ms": 1e3 * seed_s,
            "first_build_ms": 1e3 * first_build_s, "first_build_longest_ms": 1e3 * first_build_longest_s}, encoded


class Ticker:
    """A thread that sleeps a millisecond at a time and records its longest wait: while another thread holds the
    interpreter lock, it cannot wake."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def insert_costs(dsn: str, state: bytes) -> dict[str, float]:
    """Inserts ``state`` as one checkpoint row through the library's recorder and through the ledger's: the time
    of each insert and the longest stretch it held the interpreter lock."""
    app = open_ledger_app(dsn)
    try:
        assert app.snapshots is not None
        ours = app.snapshots.recorder
        assert isinstance(ours, BinaryStateRecorder)
        library = PostgresAggregateRecorder(ours.datastore, events_table_name=ours.events_table_name)
        costs: dict[str, float] = {}
        for name, recorder in (("library", library), ("ledger", ours)):
            stored = StoredEvent(originator_id=uuid.uuid4(), originator_version=1, topic="profile", state=state)
            with Ticker() as ticker:
                started = time.perf_counter()
                recorder.insert_events([stored])
                took_s = time.perf_counter() - started
            costs[f"{name}_ms"], costs[f"{name}_held_ms"] = 1e3 * took_s, 1e3 * ticker.longest
        return costs
    finally:
        app.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m commands.profile_checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", default="10000,100000,1000000",
                        help="ledger sizes, comma separated (default 10000,100000,1000000)")
    parser.add_argument("--changed", type=int, default=20_000,
                        help="accounts changed since the last checkpoint (default 20000; at most the size)")
    parser.add_argument("--insert", action="store_true",
                        help="also time saving each checkpoint into Postgres (a throwaway database)")
    args = parser.parse_args(argv)
    dsn = with_database(load_settings().pg_dsn, f"razao_profile_{uuid.uuid4().hex[:8]}") if args.insert else None
    if dsn is not None:
        ensure_database(dsn)
    try:
        _print_profiles(args, dsn)
    finally:
        if dsn is not None:
            drop_database(dsn)
    return 0


def _print_profiles(args: argparse.Namespace, dsn: str | None) -> None:
    print("accounts  changed | writer-thread capture ms: every account copied / the writer's: every account, "
          "changes | background build ms: total / "
          "longest stretch | encode ms: one call / in chunks / longest chunk | MB | after a restart: seed ms, "
          "first build ms total / longest")
    for accounts in (int(a) for a in args.accounts.split(",")):
        changed = min(args.changed, accounts)
        r, encoded = profile(accounts, changed)
        print(f"{accounts:>8} {changed:>8} | {r['capture_all_ms']:10.1f} / {r['capture_first_ms']:6.1f}, "
              f"{r['capture_changed_ms']:6.1f} | "
              f"{r['build_ms']:10.1f} / {r['build_longest_ms']:6.1f} | {r['encode_whole_ms']:8.1f} / "
              f"{r['encode_chunked_ms']:8.1f} / {r['encode_longest_ms']:6.1f} | {r['megabytes']:6.1f} | "
              f"{r['seed_ms']:5.1f}, {r['first_build_ms']:7.1f} / {r['first_build_longest_ms']:5.1f}")
        if dsn is not None:
            c = insert_costs(dsn, encoded)
            print(f"{'':>17} | insert ms (longest hold of the interpreter lock): library's recorder "
                  f"{c['library_ms']:.0f} ({c['library_held_ms']:.1f}), the ledger's {c['ledger_ms']:.0f} "
                  f"({c['ledger_held_ms']:.1f})")


if __name__ == "__main__":
    raise SystemExit(main())
