"""Where the platform's backing servers are, for every process and test.

Resolution, per field: the environment variable first; then the stack state file written by `razao stack
up` (`<state_dir>/stack.json`), so that when the stack fell back to an embedded Postgres or Redis, or moved
Kafka to a free port, everything finds the real address; then the defaults for this machine.

One subtlety keeps "environment first" honest: when the variable holds exactly the address that `razao stack
up` was asked for and the stack serves it elsewhere, the stack's real address wins, because the variable was
the request and the state file records the answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infra.stack_state import Component, load_stack

REPO_ROOT = Path(__file__).resolve().parents[1]

ENV_PG_DSN = "RAZAO_PG_DSN"
ENV_REDIS_URL = "RAZAO_REDIS_URL"
ENV_KAFKA_BOOTSTRAP = "RAZAO_KAFKA_BOOTSTRAP"
ENV_STATE_DIR = "RAZAO_STATE_DIR"

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/razao"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_STATE_DIR = REPO_ROOT / ".state"

ADMIN_DATABASE = "postgres"
PG_CONNECT_TIMEOUT_S = 5

# Settings field -> (stack component, environment variable, default).
_SOURCES: dict[str, tuple[str, str, str]] = {
    "pg_dsn": ("postgres", ENV_PG_DSN, DEFAULT_PG_DSN),
    "redis_url": ("redis", ENV_REDIS_URL, DEFAULT_REDIS_URL),
    "kafka_bootstrap": ("kafka", ENV_KAFKA_BOOTSTRAP, DEFAULT_KAFKA_BOOTSTRAP),
}


@dataclass(frozen=True)
class Settings:
    """Addresses of the backing servers. `pg_dsn` names the platform's own database (`razao` by default)."""

    pg_dsn: str
    redis_url: str
    kafka_bootstrap: str
    state_dir: Path


def _env(environ: Mapping[str, str], name: str) -> str | None:
    # An empty variable means "not set": `RAZAO_PG_DSN= razao up` should not configure an empty DSN.
    return environ.get(name) or None


def state_dir_from(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    raw = _env(env, ENV_STATE_DIR)
    return Path(raw).expanduser().resolve() if raw else DEFAULT_STATE_DIR


def explicit_fields(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The Settings fields that the environment sets explicitly."""
    env = os.environ if environ is None else environ
    return frozenset(name for name, (_, var, _) in _SOURCES.items() if _env(env, var))


def requested_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Environment, then defaults, ignoring the state file: what `razao stack up` is asked to provide."""
    env = os.environ if environ is None else environ
    values = {name: _env(env, var) or default for name, (_, var, default) in _SOURCES.items()}
    return Settings(state_dir=state_dir_from(env), **values)


def _resolve(env_value: str | None, component: Component | None, default: str) -> str:
    if component is None:
        return env_value or default
    if env_value is None or env_value == component.requested:
        return component.url
    return env_value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Environment, then the live entries of the stack state file, then defaults (see the module doc)."""
    env = os.environ if environ is None else environ
    state_dir = state_dir_from(env)
    # A component we started that is no longer running (the machine rebooted, someone killed it) must not
    # send clients to its dead address; external servers are trusted as recorded.
    live = {
        name: component
        for name, component in load_stack(state_dir).items()
        if not component.started_by_us or component.process_alive()
    }
    values = {
        name: _resolve(_env(env, var), live.get(component), default)
        for name, (component, var, default) in _SOURCES.items()
    }
    return Settings(state_dir=state_dir, **values)


def database_name(dsn: str) -> str:
    """The database a DSN (URL or key=value form) names."""
    name = conninfo_to_dict(dsn).get("dbname")
    if not name:
        raise ValueError(f"the Postgres DSN {dsn!r} names no database")
    return str(name)


def with_database(dsn: str, dbname: str) -> str:
    """The same DSN pointing at another database on the same server, in the same form (URL or key=value)."""
    if "://" in dsn:
        return urlunsplit(urlsplit(dsn)._replace(path="/" + quote(dbname, safe="")))
    return make_conninfo(dsn, dbname=dbname)


def admin_dsn(dsn: str) -> str:
    """A DSN for the server's maintenance database, from which databases are created and dropped."""
    return with_database(dsn, ADMIN_DATABASE)


def ensure_database(dsn: str) -> bool:
    """Create the database named in `dsn` unless it exists; return whether it was created."""
    name = database_name(dsn)
    with psycopg.connect(admin_dsn(dsn), autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (errors.DuplicateDatabase, errors.UniqueViolation):
            # A concurrent ensure_database created it between our check and our CREATE: it exists now,
            # which is all the caller asked for. (Postgres reports that race as either error.)
            return False
    return True


def drop_database(dsn: str) -> None:
    """Drop the database named in `dsn` if it exists, disconnecting whoever is still connected to it."""
    name = database_name(dsn)
    if name == ADMIN_DATABASE:
        raise ValueError(f"refusing to drop the maintenance database {name!r}")
    with psycopg.connect(admin_dsn(dsn), autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S) as conn:
        # WITH (FORCE) terminates the remaining sessions first; without it a leaked connection in a test
        # would make the drop fail and leave the database behind.
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
