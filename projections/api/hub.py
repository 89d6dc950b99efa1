"""The projection's position, as the query API sees it, and the fan-out of balance changes to SSE streams.

One thread listens on the projector's NOTIFY channel (each committed batch announces its position; the tracking row
is re-read every second as well, in case a notification was missed or the connection dropped). It wakes the reads
waiting for a ``min_position`` (read-your-writes) and, when streams are open, reads the new statement entries once
and hands each to the streams of the callers who may see that account.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from projections.limits import STREAM_FANOUT_ROWS_MAX, STREAM_QUEUE_EVENTS_MAX
from projections.schema import PROJECTION, notify_channel

log = logging.getLogger("razao.query.hub")
#: How often the tracking row is read even without a notification.
REFRESH_INTERVAL_S = 1.0


@dataclass(eq=False)
class Subscription:
    """One SSE stream: which accounts it follows (``None``: every account) or whose party's accounts."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any] | None]
    accounts: frozenset[str] | None = None
    party_id: str | None = None
    overflowed: bool = False

    def wants(self, row: dict[str, Any]) -> bool:
        if self.party_id is not None:
            return str(row["owner_id"]) == self.party_id and (self.accounts is None
                                                              or str(row["account_id"]) in self.accounts)
        return self.accounts is None or str(row["account_id"]) in self.accounts


@dataclass
class _Waiter:
    position: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None] = field(repr=False)


class Hub:
    def __init__(self, dsn: str, schema: str, entry_to_event: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.dsn, self.schema = dsn, schema
        self.entry_to_event = entry_to_event
        self.position = 0
        self.halted_reason: str | None = None
        self.connected = False
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        self._subscriptions: set[Subscription] = set()
        self._fanned_out = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        ident = sql.Identifier(schema)
        self._tracking_sql = sql.SQL("SELECT position, halted_reason FROM {}.tracking WHERE projection = %s").format(
            ident)
        self._entries_sql = sql.SQL(
            "SELECT e.*, a.owner_id, a.debit_normal FROM {0}.entries e JOIN {0}.accounts a USING (account_id) "
            "WHERE e.position > %s AND e.position <= %s ORDER BY e.position, e.account_id LIMIT %s").format(ident)

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="query-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                     application_name="razao-query-hub") as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(notify_channel(self.schema))))
                    self.connected = True
                    self._refresh(conn)
                    self._fanned_out = self.position
                    while not self._stop.is_set():
                        notified = False
                        gen = conn.notifies(timeout=REFRESH_INTERVAL_S)
                        try:
                            for notify in gen:
                                notified = True
                                self._advance(int(notify.payload))
                        finally:
                            gen.close()
                        if not notified:
                            self._refresh(conn)
                        self._fan_out(conn)
            except (psycopg.Error, OSError) as exc:
                self.connected = False
                log.warning("query hub lost the read database (%s); reconnecting", exc)
                self._stop.wait(1.0)

    def _refresh(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(self._tracking_sql, (PROJECTION,)).fetchone()
        if row is not None:
            self.halted_reason = row[1]
            self._advance(int(row[0]))

    # ---- read-your-writes -------------------------------------------------------------------------------------
    def _advance(self, position: int) -> None:
        with self._lock:
            if position <= self.position:
                return
            self.position = position
            ready = [w for w in self._waiters if w.position <= position]
            self._waiters = [w for w in self._waiters if w.position > position]
        for waiter in ready:
            waiter.loop.call_soon_threadsafe(_resolve, waiter.future)

    async def wait_for(self, position: int, timeout_s: float) -> bool:
        """Whether the projection reached ``position`` within ``timeout_s``."""
        if self.position >= position:
            return True
        loop = asyncio.get_running_loop()
        waiter = _Waiter(position, loop, loop.create_future())
        with self._lock:
            if self.position >= position:
                return True
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.future, timeout_s)
            return True
        except TimeoutError:
            return self.position >= position
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    # ---- streams ----------------------------------------------------------------------------------------------
    @property
    def subscribers(self) -> int:
        """Clients following the real-time stream now."""
        with self._lock:
            return len(self._subscriptions)

    def subscribe(self, accounts: frozenset[str] | None, party_id: str | None) -> Subscription:
        loop = asyncio.get_running_loop()
        subscription = Subscription(loop, asyncio.Queue(maxsize=STREAM_QUEUE_EVENTS_MAX), accounts, party_id)
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def changes(self, conn: psycopg.Connection[Any], after: int, upto: int) -> list[dict[str, Any]]:
        """Statement entries (with their account's owner and normal side) after ``after`` up to ``upto``."""
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(self._entries_sql, (after, upto, STREAM_FANOUT_ROWS_MAX)).fetchall()

    def _fan_out(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        if not subscriptions:
            self._fanned_out = self.position
            return
        while self._fanned_out < self.position:
            rows = self.changes(conn, self._fanned_out, self.position)
            if not rows:
                self._fanned_out = self.position
                break
            last = rows[-1]["position"]
            # A position's entries are never split between two reads: drop the last position unless the read
            # was short (then it holds all of them).
            if len(rows) == STREAM_FANOUT_ROWS_MAX and rows[0]["position"] != last:
                rows = [r for r in rows if r["position"] != last]
                last = rows[-1]["position"]
            for row in rows:
                event = self.entry_to_event(row)
                for subscription in subscriptions:
                    if subscription.wants(row):
                        subscription.loop.call_soon_threadsafe(_offer, subscription, event)
            self._fanned_out = last


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _offer(subscription: Subscription, event: dict[str, Any]) -> None:
    if subscription.overflowed:
        return
    try:
        subscription.queue.put_nowait(event)
    except asyncio.QueueFull:
        # A client that cannot keep up is dropped (it reconnects with Last-Event-ID) instead of growing memory.
        subscription.overflowed = True
