"""The writer's hot path compiled with mypyc, used only when it was built from exactly these sources (ADR 0020).

``razao native build`` (run by ``scripts/bootstrap``) compiles the modules of ``COMPILED_MODULES`` with mypyc into
``native_dir()``, beside the interpreter that will load them, and writes a manifest with the SHA-256 of every
source it compiled and the Python it compiled for. On import, ``ledger/__init__.py`` calls ``activate``: when the
manifest matches the sources on disk byte for byte, the build's directory goes first on the package's search
path, and ``import ledger.model`` loads the compiled module; in every other case (no build, a source edited since,
another Python, ``RAZAO_NATIVE=off``) nothing changes and the same sources run interpreted. A stale build can
therefore never run code that differs from what is in the tree.

Stdlib only: this module runs inside every process's first ``import ledger``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import MutableSequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The writer's hot path: deciding, the post-states, the chain text, the idempotency index, the replies and the
# append. Left interpreted: ``ledger.command_types`` (commands are checked for type there before compiled code
# reads them), ``ledger.events`` (the library's metaclass builds its event classes) and ``ledger.writer`` (the
# batch loop; compiling it saved little, and its tests hold a batch by recognising its Python frame).
COMPILED_MODULES = (
    "ledger.application",
    "ledger.canonical",
    "ledger.index",
    "ledger.model",
    "ledger.reply",
)
# The shared library mypyc builds for the group; a submodule of ``ledger`` so it is found on the package's path.
GROUP_NAME = "ledger._compiled"
MANIFEST = "manifest.json"
ENV_SWITCH = "RAZAO_NATIVE"
ENV_DIR = "RAZAO_NATIVE_DIR"
OFF = f"{ENV_SWITCH}=off"
NOT_BUILT = "not built (razao native build)"

PACKAGE_DIR = Path(__file__).resolve().parent


def native_dir() -> Path:
    """Where the build lives: ``$RAZAO_NATIVE_DIR``, else beside the interpreter (the venv) that loads it."""
    configured = os.environ.get(ENV_DIR, "").strip()
    return Path(configured) if configured else Path(sys.prefix) / "razao-native"


def stem(module: str) -> str:
    """``ledger.model`` -> ``model``: the name of the module's file, and of its extension, in the package."""
    return module.rpartition(".")[2]


def source_digests(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """The SHA-256 of each compiled module's source in ``package_dir``."""
    return {m: hashlib.sha256((package_dir / f"{stem(m)}.py").read_bytes()).hexdigest() for m in COMPILED_MODULES}


def interpreter_tag() -> str:
    """What a compiled module is bound to: the implementation, its version and the platform."""
    return f"{sys.implementation.cache_tag}-{sys.version.split()[0]}-{sys.platform}"


@dataclass(frozen=True)
class NativeStatus:
    """Whether the compiled modules are in use, and why not when they are not."""

    active: bool
    reason: str
    directory: Path
    compiler: str = ""


def inspect() -> NativeStatus:
    """Compares the build's manifest with the sources and the interpreter; changes nothing."""
    directory = native_dir()
    if os.environ.get(ENV_SWITCH, "on").strip().lower() in ("off", "0", "false", "no"):
        return NativeStatus(False, OFF, directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return NativeStatus(False, NOT_BUILT, directory)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        built_for, sources, compiler = manifest["interpreter"], manifest["sources"], manifest["compiler"]
        if not (isinstance(built_for, str) and isinstance(sources, dict) and isinstance(compiler, str)):
            raise TypeError("interpreter, sources and compiler must be a text, a mapping and a text")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return NativeStatus(False, f"unreadable manifest ({exc})", directory)
    if built_for != interpreter_tag():
        return NativeStatus(False, f"built for {built_for}, this is {interpreter_tag()}", directory, compiler)
    if set(sources) != set(COMPILED_MODULES):
        return NativeStatus(False, f"built for other modules: {', '.join(sorted(sources))}", directory, compiler)
    current = source_digests()
    changed = sorted(m for m in COMPILED_MODULES if sources.get(m) != current[m])
    if changed:
        return NativeStatus(False, f"sources changed since the build: {', '.join(changed)}", directory, compiler)
    # Exactly the compiled modules and their group's library: anything else there would shadow a source too.
    found = {path.name.split(".", 1)[0] for path in (directory / "ledger").glob("*.so")}
    expected = {stem(m) for m in COMPILED_MODULES} | {stem(GROUP_NAME) + "__mypyc"}
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                             f"unexpected {', '.join(extra)}" if extra else "") if part)
        return NativeStatus(False, f"build incomplete or mixed: {detail}", directory, compiler)
    return NativeStatus(True, "compiled", directory, compiler)


def activate(package_path: MutableSequence[str]) -> NativeStatus:
    """Puts the build first on ``ledger``'s search path when it matches the sources exactly."""
    status = inspect()
    if status.active:
        package_path.insert(0, str(status.directory / "ledger"))
    elif status.reason not in (OFF, NOT_BUILT):  # a build is there, and cannot be used: say so
        log.warning("ledger runs interpreted: %s; run `razao native build`", status.reason)
    return status


def write_manifest(directory: Path, compiler: str, sources: dict[str, str]) -> None:
    """``sources``: the digests of the sources as they were read for the build (taken before compiling)."""
    manifest = {"interpreter": interpreter_tag(), "compiler": compiler, "sources": sources}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
