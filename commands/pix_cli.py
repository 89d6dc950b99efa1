"""`razao pix status` and `razao pix reconcile --from ISO --to ISO`.

Reconciliation credits through the ledger writer, which the running API process owns (ADR 0004), so the CLI asks
that API to run it (``POST /v1/reconciliation/runs``) with a service token minted like ``razao demo`` does, and
prints the report. ``status`` is the gateway's own (``infra.pix_gateway``): each PSP, whether it answers, and its
circuit breaker as last recorded by the API.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

import httpx

from commands.api.auth import mint_token, signing_key_for
from commands.api.bootstrap import load_api_settings
from commands.services import api_url
from infra.pix_gateway import cli_status

HTTP_TIMEOUT_S = 600.0
SERVICE_SUBJECT = "razao-pix-cli"


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
