"""Wiring of the write side: the one place that connects the ledger to Postgres (nothing connects at import)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from infra.postgres_store import (
    PostgresTransferLookup,
    PostgresWriterLease,
    check_durability,
    compress_checkpoints_with_lz4,
    postgres_env,
    schema_setup,
)
from infra.settings import ensure_database, load_settings
from ledger.application import LedgerApplication, ledger_env
from ledger.writer import LedgerWriter


@dataclass
class LedgerRuntime:
    app: LedgerApplication
    writer: LedgerWriter

    def close(self) -> None:
        self.writer.stop()
        self.app.close()


def open_ledger_app(dsn: str, *, pool_size: int = 4, read_only: bool = False) -> LedgerApplication:
    """The ledger application in the existing database at ``dsn``, for reading or for a writer.

    Opening it creates its tables and functions if needed (``CREATE ... IF NOT EXISTS``, ``CREATE OR REPLACE``),
    which Postgres does not serialise: processes opening the ledger at the same moment (the API and the relay under
    ``razao up``) take turns under the schema set-up lock, or one of them fails with "tuple concurrently updated".
    ``read_only`` opens it without any DDL, for readers that must not (or cannot) write: an auditor's replay on a
    hot standby, where even ``CREATE TABLE IF NOT EXISTS`` is refused.
    """
    if read_only:
        return LedgerApplication(env={**postgres_env(dsn, pool_size=pool_size), "CREATE_TABLE": "n", **ledger_env()})
    with schema_setup(dsn):
        app = LedgerApplication(env={**postgres_env(dsn, pool_size=pool_size), **ledger_env()})
        assert app.snapshots is not None
        compress_checkpoints_with_lz4(app.snapshots.recorder)
        return app


def build_ledger(
    dsn: str | None = None, *, start: bool = True, pool_size: int = 4, **writer_options: Any
) -> LedgerRuntime:
    """The ledger application on Postgres and its single writer (started unless ``start=False``).

    Raises ``WriterBusy`` when another process owns the writer.
    """
    dsn = dsn or load_settings().pg_dsn
    ensure_database(dsn)
    check_durability(dsn)
    app = open_ledger_app(dsn, pool_size=pool_size)
    holder = f"{socket.gethostname()}:{os.getpid()}"
    recorder = app.recorder
    writer = LedgerWriter(app, PostgresWriterLease(dsn, holder), PostgresTransferLookup(recorder),  # type: ignore[arg-type]
                          **writer_options)
    if start:
        try:
            writer.start()
        except BaseException:
            app.close()
            raise
    return LedgerRuntime(app, writer)
