"""`razao api serve`: run the command API in the foreground (`razao up` runs it in the background)."""

from __future__ import annotations

from typing import Any

from commands.api.server import add_arguments, serve


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("api", help="the command API (HTTP)")
    sub = parser.add_subparsers(dest="api_command", required=True)
    run = sub.add_parser("serve", help="run the command API in the foreground")
    add_arguments(run)
    run.set_defaults(func=serve)
