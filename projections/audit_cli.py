"""``razao audit verify-log``: the independent check of the ledger's raw log (``projections.log_audit``).

``--upto POSITION`` stops at a log position and prints the chain head there; ``--expect-head HASH`` fails unless
the head is that hash, so a head published earlier (in a report, a signed statement) can be checked against the log
as it is today: an event changed, removed or inserted at or before that position changes the head.
Exit status: 0 verified, 1 the log breaks a rule (the first one found is printed), 2 no ledger could be read.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import psycopg

from projections.bootstrap import load_read_settings
from projections.log_audit import EVENTS_TABLE, LogInvalid, audit_database

_HASH = re.compile(r"[0-9a-f]{64}")


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("audit", help="independent checks of the ledger for auditors")
    sub = parser.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser(
        "verify-log", help="recompute the hash chain and every balance from the raw log, with code of its own",
        description="Recomputes every event's hash-chain link and every balance it claims from the stored bytes, "
                    "with code that shares nothing with the ledger's (docs/events.md gives the rules).")
    verify.add_argument("--dsn", help="Postgres DSN of the ledger (default: the configured one)")
    verify.add_argument("--upto", type=int, metavar="POSITION", help="stop at this log position")
    verify.add_argument("--expect-head", metavar="HASH", help="fail unless the chain head is this hash")
    verify.set_defaults(func=run_verify_log)


def run_verify_log(args: argparse.Namespace) -> int:
    if args.upto is not None and args.upto < 0:
        print("razao: error: --upto must be a log position (0 or more)", file=sys.stderr)
        return 2
    if args.expect_head is not None and not _HASH.fullmatch(args.expect_head):
        print("razao: error: --expect-head must be 64 lowercase hexadecimal digits", file=sys.stderr)
        return 2
    dsn = args.dsn or load_read_settings().ledger_dsn
    try:
        result = audit_database(dsn, args.upto)
    except LogInvalid as exc:
        where = "" if exc.position is None else f" at position {exc.position}"
        print(f"LOG VERIFICATION FAILED{where}: {exc}")
        return 1
    except psycopg.errors.UndefinedTable:
        print(f"razao: error: that database holds no ledger (no {EVENTS_TABLE} table)", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"razao: error: cannot read the ledger: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    upto = "" if args.upto is None else f" (up to position {args.upto})"
    print(f"verified {result.events} events{upto}, the last at position {result.last_position}")
    print("by type: " + ", ".join(f"{name} {count}" for name, count in sorted(result.by_type.items())))
    print(f"accounts: {result.accounts}, open pending transfers: {result.open_pending}")
    dp, dposted, cp, cposted = result.totals
    print(f"Σ debits posted = {dposted}, Σ credits posted = {cposted} (centavos)")
    print(f"Σ debits pending = {dp}, Σ credits pending = {cp} (centavos)")
    print(f"chain head: {result.chain_head}")
    if args.expect_head is not None and result.chain_head != args.expect_head:
        print(f"LOG VERIFICATION FAILED: the chain head is not the expected {args.expect_head}")
        return 1
    return 0
