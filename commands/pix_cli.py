"""`razao pix status`, `razao pix reconcile --from ISO --to ISO` and `razao pix prune-inbox --older-than-days N`.

Reconciliation credits through the ledger writer, which the running API process owns (ADR 0004), so the CLI asks
that API to run it (``POST /v1/reconciliation/runs``) with a service token minted like ``razao demo`` does, and
prints the report. ``status`` is the gateway's own (``infra.pix_gateway``): each PSP, whether it answers, and its
circuit breaker as last recorded by the API.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from commands.api.auth import mint_token, signing_key_for
from commands.api.bootstrap import load_api_settings
from commands.services import api_url
from infra.pix_gateway import cli_status
from infra.pix_inbox import PostgresPixInbox
from infra.settings import load_settings
from ledger.ports import LedgerUnavailable

HTTP_TIMEOUT_S = 600.0
SERVICE_SUBJECT = "razao-pix-cli"
#: The longest retention `prune-inbox` takes (about ten years).
DAYS_MAX = 3_660


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a UTC offset (e.g. 2025-03-01T12:00:00Z)")
    return moment


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pix = subparsers.add_parser("pix", help="PIX: PSPs and their breakers, reconciliation of received Pix")
    commands = pix.add_subparsers(dest="pix_command", required=True, metavar="SUBCOMMAND")
    status = commands.add_parser("status", help="each PSP: reachable, breaker state")
    status.set_defaults(func=cli_status)
    run = commands.add_parser("reconcile", help="credit every Pix the PSPs received in a window and the ledger lacks",
                              description="Lists the Pix each PSP received in [--from, --to] (GET /pix) and credits "
                                          "those the ledger has not (idempotent: run it as often as you like).")
    run.add_argument("--from", dest="start", type=_moment, required=True, help="window start, RFC 3339 with offset")
    run.add_argument("--to", dest="end", type=_moment, required=True, help="window end, RFC 3339 with offset")
    run.add_argument("--url", help="base URL of the command API (default: the one `razao up` started)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.set_defaults(func=reconcile)
    prune = commands.add_parser(
        "prune-inbox", help="delete finished webhook inbox rows (and, if asked, raw deliveries) older than N days",
        description="The webhook inbox keeps one row per received Pix and every raw delivery. Rows still waiting "
                    "are never deleted; a Pix delivered again after its row is gone is credited once all the same "
                    "(the ledger keeps every received Pix). Raw deliveries are audit evidence: delete them only "
                    "past your retention period.")
    prune.add_argument("--older-than-days", type=_days, required=True, metavar="N",
                       help="finished rows done more than N days ago (at least 1)")
    prune.add_argument("--deliveries-older-than-days", type=_days, metavar="M",
                       help="also the raw deliveries received more than M days ago (none waiting)")
    prune.set_defaults(func=prune_inbox)


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= days <= DAYS_MAX:
        raise argparse.ArgumentTypeError(f"days must be 1 to {DAYS_MAX}")
    return days


def prune_inbox(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    deliveries = args.deliveries_older_than_days
    inbox = PostgresPixInbox(load_settings().pg_dsn)
    try:
        inbox.ensure_schema()
        rows, bodies = inbox.prune(now - timedelta(days=args.older_than_days),
                                   deliveries_before=None if deliveries is None else now - timedelta(days=deliveries))
    except LedgerUnavailable as exc:
        print(f"razao pix prune-inbox: {exc.detail}")
        return 1
    finally:
        inbox.close()
    print(f"deleted {rows} finished inbox rows done before {args.older_than_days} days ago"
          + ("" if deliveries is None else f" and {bodies} raw deliveries received before {deliveries} days ago"))
    return 0


def reconcile(args: argparse.Namespace) -> int:
    settings = load_api_settings()
    url = args.url or api_url(settings.state_dir)
    token = mint_token(signing_key_for(settings), SERVICE_SUBJECT, "service", ttl_s=900)
    try:
        response = httpx.post(f"{url}/v1/reconciliation/runs", timeout=HTTP_TIMEOUT_S,
                              headers={"Authorization": f"Bearer {token}"},
                              json={"inicio": args.start.isoformat(), "fim": args.end.isoformat()})
    except httpx.TransportError as exc:
        print(f"razao pix reconcile: the command API at {url} does not answer ({exc}); it owns the ledger writer, "
              "so it must be running (`razao up`)")
        return 1
    report: dict[str, Any] = response.json()
    if response.status_code != 200:
        print(f"razao pix reconcile: {response.status_code} {report.get('code')}: {report.get('detail')}")
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"reconciled {report['inicio']} .. {report['fim']}: repaired {report['repaired']}")
    print(f"{'PSP':<12} {'LISTED':>7} {'ALREADY':>8} {'CREDITED':>9} {'SUSPENSE':>9} {'INVALID':>8} {'FAILED':>7}")
    for psp, counts in report["psps"].items():
        print(f"{psp:<12} {counts['listed']:>7} {counts['already_credited']:>8} {counts['credited']:>9} "
              f"{counts['suspense']:>9} {counts['invalid']:>8} {counts['failed']:>7}"
              + (f"  error: {counts['error']}" if counts["error"] else ""))
    failed = any(counts["error"] or counts["failed"] for counts in report["psps"].values())
    return 1 if failed else 0
