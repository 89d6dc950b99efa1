"""Fixtures for every test tier. Integration tests talk to real servers, never to fakes of them.

The `stack` fixture leases the backing servers for the test session through `razao stack up --owner`, as
scripts/test does: when the stack already runs (scripts/test, or a person's `razao up`) this only adds a
lease, and when pytest runs alone it starts what is missing and stops it again at the end. Tests that need
no server (tests/unit) never touch it.

Fixtures: `settings`, `pg_dsn` (the platform database), `pg_dsn_factory` and `fresh_database` (throwaway
databases), `redis_url`, `kafka_bootstrap`, and `razao` (runs the CLI as a user would).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from infra.settings import Settings, drop_database, ensure_database, load_settings, with_database

RAZAO_TIMEOUT_S = 600  # generous: the first fallback to embedded servers installs them with pip

RunRazao = Callable[..., "subprocess.CompletedProcess[str]"]


def _razao_argv() -> list[str]:
    script = Path(sys.executable).with_name("razao")
    return [str(script)] if script.exists() else [sys.executable, "-m", "infra.cli"]


def run_razao(
    *args: str, env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `razao ARGS` in a child process, as a person would, and fail the test with its output on error."""
    result = subprocess.run(
        [*_razao_argv(), *args],
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=RAZAO_TIMEOUT_S,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"`razao {' '.join(args)}` exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}",
            pytrace=False,
        )
    return result


@pytest.fixture(scope="session")
def razao() -> RunRazao:
    """`razao(*args, env=None, check=True)` runs the CLI in a child process and returns the completed run."""
    return run_razao


@pytest.fixture(scope="session")
def stack() -> Iterator[None]:
    """Hold a lease on the backing servers for the whole session (see the module docstring)."""
    owner = f"pytest-{os.getpid()}"
    run_razao("stack", "up", "--owner", owner, "--holder-pid", str(os.getpid()))
    yield
    run_razao("stack", "down", "--owner", owner)


@pytest.fixture(scope="session")
def settings(stack: None) -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def pg_dsn(settings: Settings) -> str:
    """The platform's own database (created by `razao stack up`). Tests that write should prefer
    `fresh_database`, so they neither see nor leave data of other tests."""
    return settings.pg_dsn


@pytest.fixture
def pg_dsn_factory(settings: Settings) -> Iterator[Callable[[], str]]:
    """Calling it creates an empty database `razao_test_<8 hex>` and returns its DSN; all are dropped after
    the test, even with connections still open."""
    created: list[str] = []

    def create() -> str:
        dsn = with_database(settings.pg_dsn, f"razao_test_{uuid.uuid4().hex[:8]}")
        ensure_database(dsn)
        created.append(dsn)
        return dsn

    yield create
    for dsn in created:
        drop_database(dsn)


@pytest.fixture
def fresh_database(pg_dsn_factory: Callable[[], str]) -> str:
    """The DSN of an empty database of its own, dropped after the test."""
    return pg_dsn_factory()


@pytest.fixture(scope="session")
def redis_url(settings: Settings) -> str:
    return settings.redis_url


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: Settings) -> str:
    return settings.kafka_bootstrap
