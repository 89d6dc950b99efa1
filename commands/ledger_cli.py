"""`razao ledger verify`: the auditor's offline check of the whole ledger log.

It replays every event from the store (no checkpoint), re-verifying each event's hash-chain link and each
balance transition it claims, then the invariants; it compares every stored checkpoint with the replay at the
checkpoint's position (a restart trusts the latest one); it prints the head of the chain, so two auditors can
compare one hash instead of the whole log. ``razao audit verify-log`` checks the same log with code of its own.
It only reads: it runs on a hot standby (or with a read-only role) and never creates a table, a function or a
database.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import psycopg
from eventsourcing.persistence import OperationalError as PersistenceOperationalError

from commands.bootstrap import open_ledger_app
from infra.settings import database_name, load_settings

#: The ledger's event table (the application "Ledger"'s events, as the eventsourcing recorder names it).
LEDGER_EVENTS_TABLE = "ledger_events"


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("ledger", help="ledger tools for operators and auditors")
    sub = parser.add_subparsers(dest="ledger_command", required=True)
    verify = sub.add_parser("verify", help="replay the whole log, verifying the hash chain and every balance")
    verify.add_argument("--dsn", help="Postgres DSN of the ledger (default: the configured one)")
    verify.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    dsn = args.dsn or load_settings().pg_dsn
    try:
        if not _has_table(dsn, LEDGER_EVENTS_TABLE):
            print(f"razao: error: database {database_name(dsn)!r} holds no ledger (no {LEDGER_EVENTS_TABLE} table)",
                  file=sys.stderr)
            return 2
        app = open_ledger_app(dsn, pool_size=1, read_only=True)
    except (psycopg.OperationalError, PersistenceOperationalError) as exc:
        # No server, no such database: nothing to verify (and none is created).
        print(f"razao: error: cannot open the ledger at {database_name(dsn)!r}: {str(exc).strip().splitlines()[-1]}",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        state, checkpoints = app.replay_checking_checkpoints()
    except AssertionError as exc:
        print(f"LEDGER VERIFICATION FAILED: {exc}")
        return 2
    finally:
        app.close()
    elapsed_s = time.perf_counter() - started
    debits = sum(a.debits_posted for a in state.accounts.values())
    credits = sum(a.credits_posted for a in state.accounts.values())
    print(f"verified {state.position} log positions in {elapsed_s:.2f} s")
    print(f"accounts: {len(state.accounts)}, open pending transfers: {len(state.pending)}")
    print(f"Σ debits posted = {debits}, Σ credits posted = {credits} (centavos)")
    print(f"checkpoints: {len(checkpoints)}, each equal to the log replayed to its position")
    print(f"chain head: {state.chain_hash}")
    return 0


def _has_table(dsn: str, table: str) -> bool:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:  # read only: never creates anything
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])
