"""Queries: plain functions over the read tables of one schema (the query API never loads an aggregate).

Every listing is keyset-paginated by log position (newest first), which is stable under concurrent inserts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from projections.schema import PROJECTION

Row = dict[str, Any]
Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Signed:
    """An account's balance read on its normal side, in centavos (what a customer calls their balance)."""

    posted: int
    pending: int
    available: int


def signed(debit_normal: bool, debits_pending: int, debits_posted: int, credits_pending: int,
           credits_posted: int) -> Signed:
    """Posted, pending and available as TigerBeetle defines them, on the account's normal side.

    Credit-normal (wallets, escrow, revenue): posted = credits - debits; holds (pending debits) reduce what is
    available. Debit-normal (PIX settlement, loan receivable): the mirror image.
    """
    if debit_normal:
        return Signed(debits_posted - credits_posted, debits_pending - credits_pending,
                      debits_posted - credits_posted - credits_pending)
    return Signed(credits_posted - debits_posted, credits_pending - debits_pending,
                  credits_posted - debits_posted - debits_pending)


class Queries:
    def __init__(self, schema: str) -> None:
        s = sql.Identifier(schema)
        self._account = sql.SQL(
            "SELECT a.*, b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted, "
            "b.position AS balance_position, b.changed_at FROM {0}.accounts a JOIN {0}.balances b USING (account_id) "
            "WHERE a.account_id = %s").format(s)
        self._party_accounts = sql.SQL(
            "SELECT a.*, b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted, "
            "b.position AS balance_position, b.changed_at FROM {0}.accounts a JOIN {0}.balances b USING (account_id) "
            "WHERE a.owner_id = %s ORDER BY a.opened_position").format(s)
        self._party = sql.SQL("SELECT * FROM {0}.parties WHERE party_id = %s").format(s)
        self._statement = sql.SQL(
            "SELECT e.*, t.code, t.reference, t.key FROM {0}.entries e JOIN {0}.transfers t USING (transfer_id) "
            "WHERE e.account_id = %s AND e.position < %s AND e.recorded_at >= %s AND e.recorded_at < %s "
            "ORDER BY e.position DESC LIMIT %s").format(s)
        self._transfers = sql.SQL(
            "SELECT * FROM ((SELECT * FROM {0}.transfers WHERE debit_account_id = %s AND position < %s "
            "ORDER BY position DESC LIMIT %s) UNION ALL (SELECT * FROM {0}.transfers WHERE credit_account_id = %s "
            "AND position < %s ORDER BY position DESC LIMIT %s)) t ORDER BY position DESC LIMIT %s").format(s)
        self._transfer = sql.SQL("SELECT * FROM {0}.transfers WHERE transfer_id = %s").format(s)
        self._holds = sql.SQL(
            # A hold whose transfer is no longer pending was settled by a post or void at that transfer's position;
            # its row goes one position later, with the PendingTransferResolved (projections.projector).
            "SELECT h.*, t.key, t.reference, t.code FROM {0}.holds h JOIN {0}.transfers t USING (transfer_id) "
            "WHERE (h.debit_account_id = %s OR h.credit_account_id = %s) AND t.status = 'pending' "
            "ORDER BY h.position DESC LIMIT %s").format(s)
        # The log position and chain head the totals are as of, in the same statement (one snapshot): the
        # projector may commit between two statements.
        self._trial = sql.SQL(
            "SELECT a.code, count(*) AS accounts, sum(b.debits_pending) AS debits_pending, "
            "sum(b.debits_posted) AS debits_posted, sum(b.credits_pending) AS credits_pending, "
            "sum(b.credits_posted) AS credits_posted, h.position AS at_position, h.chain_hash AS at_chain_hash "
            "FROM {0}.accounts a JOIN {0}.balances b USING (account_id) "
            "JOIN {0}.tracking h ON h.projection = {1} "
            "GROUP BY a.code, h.position, h.chain_hash ORDER BY a.code").format(s, sql.Literal(PROJECTION))
        self._tracking = sql.SQL("SELECT position, chain_hash FROM {0}.tracking WHERE projection = {1}").format(
            s, sql.Literal(PROJECTION))
        self._history = sql.SQL(
            "SELECT e.*, t.code, t.reference, t.key FROM {0}.entries e JOIN {0}.transfers t USING (transfer_id) "
            "WHERE e.account_id = %s AND e.position <= %s AND e.recorded_at <= %s AND e.position < %s "
            "ORDER BY e.position DESC LIMIT %s").format(s)

    @staticmethod
    def _all(conn: Conn, statement: sql.Composable, params: tuple[Any, ...]) -> list[Row]:
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(statement, params).fetchall()

    def account(self, conn: Conn, account_id: str) -> Row | None:
        rows = self._all(conn, self._account, (account_id,))
        return rows[0] if rows else None

    def party(self, conn: Conn, party_id: str) -> Row | None:
        rows = self._all(conn, self._party, (party_id,))
        return rows[0] if rows else None

    def party_accounts(self, conn: Conn, party_id: str) -> list[Row]:
        return self._all(conn, self._party_accounts, (party_id,))

    def statement(self, conn: Conn, account_id: str, *, since: datetime, until: datetime, before: int,
                  limit: int) -> list[Row]:
        return self._all(conn, self._statement, (account_id, before, since, until, limit))

    def transfers(self, conn: Conn, account_id: str, before: int, limit: int) -> list[Row]:
        return self._all(conn, self._transfers, (account_id, before, limit, account_id, before, limit, limit))

    def transfer(self, conn: Conn, transfer_id: str) -> Row | None:
        rows = self._all(conn, self._transfer, (transfer_id,))
        return rows[0] if rows else None

    def holds(self, conn: Conn, account_id: str, limit: int) -> list[Row]:
        return self._all(conn, self._holds, (account_id, account_id, limit))

    def trial_balance(self, conn: Conn) -> list[Row]:
        return self._all(conn, self._trial, ())

    def head(self, conn: Conn) -> tuple[int, str | None]:
        """The log position the read models are at, and the chain hash of the event there (None before any)."""
        row = conn.execute(self._tracking).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, None)

    def history(self, conn: Conn, account_id: str, *, upto: int, until: datetime, before: int, limit: int) -> list[Row]:
        return self._all(conn, self._history, (account_id, upto, until, before, limit))
