"""The plain-SQL baseline ledger that `razao bench ledger` compares the event-sourced ledger against.

What a careful team would write without an event store, in the shape of pgledger: a balance row per account and
a row per transfer, one Postgres transaction per transfer. The transfer runs in a PL/pgSQL function, as pgledger's
``create_transfer`` does, so a transfer costs one round trip (the same statements sent one by one, even pipelined,
measured less than half as fast here). The function updates the two balance rows in account-id order, so two
opposite transfers cannot deadlock, and a ``CHECK (balance >= 0)`` refuses any debit that would overdraw.

Everything is tilted in the baseline's favour, so that the ratio is not flattering by construction: every client
owns one connection for the whole run (a pool handing out a connection per transfer would only add its own
locking), the statement is prepared, and the transfer table has no foreign keys (pgledger's have them; the bench
only ever names existing accounts, and the two extra index probes per insert would only slow the baseline down).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import psycopg
from psycopg import errors as pg_errors

CONNECT_TIMEOUT_S = 5
#: The refusal code of an overdraft, named like the ledger's so both tallies read alike.
INSUFFICIENT_FUNDS = "SQL_INSUFFICIENT_FUNDS"

_SCHEMA = """
CREATE TABLE bench_sql_accounts (
    id bigint PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0)
);
CREATE TABLE bench_sql_transfers (
    id text PRIMARY KEY,
    debit_account_id bigint NOT NULL,
    credit_account_id bigint NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    CHECK (debit_account_id <> credit_account_id)
);
CREATE FUNCTION bench_sql_transfer(p_id text, p_debit bigint, p_credit bigint, p_amount bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- Lock the two balance rows in id order so that A->B and B->A never deadlock.
    IF p_debit < p_credit THEN
        UPDATE bench_sql_accounts SET balance = balance - p_amount WHERE id = p_debit;
        UPDATE bench_sql_accounts SET balance = balance + p_amount WHERE id = p_credit;
    ELSE
        UPDATE bench_sql_accounts SET balance = balance + p_amount WHERE id = p_credit;
        UPDATE bench_sql_accounts SET balance = balance - p_amount WHERE id = p_debit;
    END IF;
    INSERT INTO bench_sql_transfers (id, debit_account_id, credit_account_id, amount)
        VALUES (p_id, p_debit, p_credit, p_amount);
END $$;
"""


@dataclass(frozen=True)
class BaselineTotals:
    """What the baseline tables hold after a run, to check that nothing was lost or created."""

    accounts: int
    balance_total_centavos: int
    transfers: int
    negative_accounts: int


def create_schema(dsn: str, accounts: int, opening_balance_centavos: int) -> None:
    """Creates the baseline tables in the (fresh) bench database and funds ``accounts`` accounts (0..n-1)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(_SCHEMA)
        conn.execute(
            "INSERT INTO bench_sql_accounts (id, balance) SELECT g, %s FROM generate_series(0, %s) g",
            (opening_balance_centavos, accounts - 1),
        )
        conn.execute("VACUUM ANALYZE bench_sql_accounts")


def totals(dsn: str) -> BaselineTotals:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(balance), 0), count(*) FILTER (WHERE balance < 0) FROM bench_sql_accounts"
        ).fetchone()
        transfers = conn.execute("SELECT count(*) FROM bench_sql_transfers").fetchone()
    assert row is not None and transfers is not None
    return BaselineTotals(int(row[0]), int(row[1]), int(transfers[0]), int(row[2]))


class SqlClient:
    """One baseline client: one connection, one transaction per transfer (autocommit around the function)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)

    def transfer(self, transfer_id: str, debit: int, credit: int, amount_centavos: int) -> str | None:
        """Commits one transfer; ``None`` when committed, else the refusal code."""
        try:
            self.conn.execute(
                "SELECT bench_sql_transfer(%s, %s, %s, %s)", (transfer_id, debit, credit, amount_centavos),
                prepare=True,
            )
        except pg_errors.CheckViolation:
            return INSUFFICIENT_FUNDS
        return None

    def close(self) -> None:
        self.conn.close()


def random_pair(rng: random.Random, accounts: int) -> tuple[int, int]:
    debit = rng.randrange(accounts)
    credit = rng.randrange(accounts - 1)
    return debit, credit + (credit >= debit)
