"""Entry points through which other packages extend razao without infra importing them.

import-linter forbids `infra` from importing `commands` or `projections`, yet `razao` must offer their
subcommands and start their services. So they declare entry points in pyproject.toml:

    [project.entry-points."razao.cli"]        # value: register(subparsers) adding subcommands
    [project.entry-points."razao.services"]   # value: services(settings) -> iterable of ServiceSpec
    [project.entry-points."razao.bench"]      # value: register(subsystems) adding `razao bench <name>`

An entry point whose module does not exist yet (declared ahead of its code) is skipped with a one-line
warning.
Every other failure, such as an exception while its module imports, is a bug in that plugin and propagates.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points

CLI_GROUP = "razao.cli"
SERVICES_GROUP = "razao.services"
#: Benchmarks of other packages under `razao bench` (its parser belongs to commands.bench).
BENCH_GROUP = "razao.bench"


def _module_is_missing(exc: ModuleNotFoundError, module: str) -> bool:
    # Only the entry point's own module (or a parent package) counts as "not written yet". A module that
    # exists but imports something missing has a real error, which must not be reduced to a warning.
    return exc.name is not None and (module == exc.name or module.startswith(exc.name + "."))


def load(entry_point: EntryPoint) -> object | None:
    """What an entry point names, or None (after a warning on stderr) if its module or name is absent."""
    try:
        target: object = importlib.import_module(entry_point.module)
    except ModuleNotFoundError as exc:
        if not _module_is_missing(exc, entry_point.module):
            raise
        print(
            f"razao: warning: skipping {entry_point.group} entry point {entry_point.name!r}: "
            f"module {entry_point.module} does not exist",
            file=sys.stderr,
        )
        return None
    for attribute in (entry_point.attr or "").split("."):
        if not attribute:
            continue
        if not hasattr(target, attribute):
            print(
                f"razao: warning: skipping {entry_point.group} entry point {entry_point.name!r}: "
                f"{entry_point.value} does not exist",
                file=sys.stderr,
            )
            return None
        target = getattr(target, attribute)
    return target


def discover(group: str) -> Iterator[tuple[EntryPoint, object]]:
    """Each loadable entry point of `group`, in name order, with the object it names."""
    for entry_point in sorted(entry_points(group=group), key=lambda ep: ep.name):
        target = load(entry_point)
        if target is not None:
            yield entry_point, target
