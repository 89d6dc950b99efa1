"""``razao native build|status``: compiles the writer's hot path with mypyc (ADR 0020); ``ledger.native`` loads it.

The build copies the package's sources aside, compiles ``ledger.native.COMPILED_MODULES`` from the copies as one
mypyc group into a staging directory, writes the manifest (the SHA-256 of each copy, the interpreter) and then swaps
the staging directory into place, so a failed or interrupted build leaves the previous state (a good build, or none)
untouched. Without a C compiler or mypyc the build fails and the ledger keeps running the same sources interpreted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ledger import native


def build(force: bool = False) -> int:
    """Builds unless the current build already matches the sources; 0 on success, 1 when it could not build."""
    current = native.inspect()
    if current.active and not force:
        print(f"razao native: up to date in {current.directory} ({current.compiler})")
        return 0
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as exc:
        print(f"razao native: cannot build ({exc}); the ledger runs interpreted", file=sys.stderr)
        return 1
    compiler = f"mypyc {_version('mypy')}"
    target = native.native_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="razao-native-") as scratch:
        work = Path(scratch)
        sources = _copy_sources(work / "src")
        cwd = os.getcwd()
        os.chdir(work / "src")  # mypyc names modules from the paths and reads mypy.ini there
        try:
            extensions = mypycify(
                [f"ledger/{native.stem(m)}.py" for m in native.COMPILED_MODULES],
                opt_level="3",
                group_name=native.GROUP_NAME,
                target_dir=str(work / "c"),
            )
            staging = work / "lib"
            dist: Any = Distribution({"name": "razao-native", "ext_modules": extensions})
            command = dist.get_command_obj("build_ext")
            command.build_lib, command.build_temp = str(staging), str(work / "obj")
            dist.run_command("build_ext")
        except (Exception, SystemExit) as exc:  # distutils reports a compiler failure as SystemExit
            print(f"razao native: build failed ({exc}); the ledger runs interpreted", file=sys.stderr)
            return 1
        finally:
            os.chdir(cwd)
        native.write_manifest(staging, compiler, sources)
        _swap_in(staging, target)
    status = native.inspect()
    if not status.active:
        print(f"razao native: built, but not usable: {status.reason}", file=sys.stderr)
        return 1
    print(f"razao native: {len(native.COMPILED_MODULES)} modules compiled with {compiler} into {target} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


def _copy_sources(src: Path) -> dict[str, str]:
    """Copies the ``ledger`` package's sources into ``src`` (with a mypy.ini of its own, so the build is the same
    from a checkout or from an installed package) and returns the digests of the copies: what gets compiled."""
    package = src / "ledger"
    package.mkdir(parents=True)
    for path in native.PACKAGE_DIR.iterdir():
        if path.suffix == ".py" or path.name == "py.typed":
            shutil.copyfile(path, package / path.name)
    (src / "mypy.ini").write_text("[mypy]\n[mypy-eventsourcing.*]\nfollow_imports = silent\n", encoding="utf-8")
    return native.source_digests(package)


def _swap_in(staging: Path, target: Path) -> None:
    """Replaces ``target`` by ``staging``; a reader sees the old build or the new one, never half of one."""
    new = target.with_name(target.name + ".new")
    old = target.with_name(target.name + ".old")
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(staging, new)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def status() -> int:
    """What this interpreter runs: 0 when the compiled modules are in use, 1 when the ledger runs interpreted."""
    import ledger
    import ledger.model

    state = ledger.NATIVE
    loaded = Path(ledger.model.__file__ or "").name
    if state.active:
        print(f"ledger code: compiled with {state.compiler}; ledger.model from {loaded} in {state.directory}")
    else:
        print(f"ledger code: interpreted ({state.reason}); ledger.model from {loaded}")
    return 0 if state.active else 1


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("native", help="the ledger's compiled hot path (mypyc)")
    _add_commands(parser.add_subparsers(dest="native_command", required=True))


def _add_commands(sub: Any) -> None:
    run_build = sub.add_parser("build", help="compile the writer's hot path unless the build is up to date")
    run_build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    run_build.set_defaults(func=lambda args: build(args.force))
    run_status = sub.add_parser("status", help="say whether this interpreter runs the compiled modules")
    run_status.set_defaults(func=lambda args: status())


def main(argv: list[str] | None = None) -> int:
    # What `razao native` does, without loading every plugin of the `razao` command (scripts/bootstrap runs this).
    parser = argparse.ArgumentParser(prog="python -m infra.native_build")
    _add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
