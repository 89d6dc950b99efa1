"""The `razao` command: `stack up|down|status`, `up`, `down`, `status`, plus subcommands from plugins.

Plugins are the `razao.cli` entry points (see `infra.plugins`): each names a `register(subparsers)` that adds
its subparsers with `set_defaults(func=...)`; `func(args)` returns an exit code or None for success.

Plugins are loaded only when the command line does not name a built-in command, so a plugin that is broken
or half-written can never stand between a person and `razao down`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import psycopg

from infra import platform, stack
from infra.embedded import EmbeddedError
from infra.plugins import CLI_GROUP, discover
from infra.processes import ProcessError

BUILTIN_COMMANDS = frozenset({"stack", "up", "down", "status"})
# Failures of the environment, not of razao's code: reported in one line, without a traceback.
OPERATING_ERRORS = (stack.StackError, platform.PlatformError, EmbeddedError, ProcessError, psycopg.OperationalError)

Handler = Callable[[argparse.Namespace], "int | None"]


def _register_plugins(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for entry_point, register in discover(CLI_GROUP):
        if not callable(register):
            raise TypeError(f"{CLI_GROUP} entry point {entry_point.value} is not callable")
        register(subparsers)


def build_parser(*, with_plugins: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="razao", description="Run and inspect the Razão platform locally.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stack.register_cli(subparsers)
    platform.register_cli(subparsers)
    if with_plugins:
        _register_plugins(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    builtin = bool(arguments) and arguments[0] in BUILTIN_COMMANDS
    args = build_parser(with_plugins=not builtin).parse_args(arguments)
    handler: Handler = args.func
    try:
        code = handler(args)
    except OPERATING_ERRORS as exc:
        print(f"razao: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("razao: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
