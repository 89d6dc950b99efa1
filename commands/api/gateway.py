"""The API's door to the ledger writer, from the event loop, without a thread hop per request.

``LedgerWriter.submit`` is non-blocking and thread safe: a request queues its command and awaits an asyncio
future that the writer thread resolves once the command's group-commit batch is durable (one wake-up of
the event loop per burst of replies, ``_Settler``). Thousands of requests awaiting at once therefore land in the
same batches (ADR 0004).

The writer's ``Reply`` is never cancelled from here: a request task cancelled by a timeout or a shutdown only
stops waiting, and a command the writer already took is still decided. The bridge copies the outcome one way only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import Any
from uuid import UUID

from commands.api.limits import LEDGER_WAIT_S_MAX, READINESS_TIMEOUT_S
from ledger import errors
from ledger.model import Account
from ledger.parties import Party
from ledger.reply import Reply
from ledger.writer import LedgerWriter, ReadAccounts, ReadParties, WriterCommand


def _settle(waiter: asyncio.Future[Any], done: Reply[Any]) -> None:
    if waiter.done():  # the request gave up waiting (timeout or cancellation); the outcome is dropped
        return
    exc = done.exception()
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(done.result())


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(errors.LedgerUnavailable(
            "no answer from the ledger in time; the outcome is unknown, retry with the same key"
        ))


class _Settler:
    """Carries settled replies from the writer thread to one event loop, a burst at a time.

    The writer settles a whole group commit at once. Waking the event loop once per reply
    (``call_soon_threadsafe`` each time: a handle, a lock and a wake-up write, on the writer's thread) cost the
    writer more than deciding some of the transfers. Here the writer only appends to a deque, and wakes the loop
    only when no wake-up is already on its way; the loop then settles everything queued by then.
    """

    __slots__ = ("_ready", "_wake_pending", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ready: deque[tuple[asyncio.Future[Any], Reply[Any]]] = deque()
        self._wake_pending = False

    def on_done(self, waiter: asyncio.Future[Any], done: Reply[Any]) -> None:
        """The reply's callback, on the writer's thread."""
        self._ready.append((waiter, done))
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._drain)  # a closed loop raises; Reply logs it (nobody waits)

    def _drain(self) -> None:
        """On the loop. The flag is lowered before the deque is emptied: a reply appended after that either is
        taken by this drain or, seeing the flag down, schedules the next one; none is left behind."""
        self._wake_pending = False
        ready = self._ready
        while ready:
            _settle(*ready.popleft())


class LedgerGateway:
    """Awaitable calls into the single ledger writer."""

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer
        self._settler: _Settler | None = None

    async def execute(self, command: WriterCommand, timeout_s: float = LEDGER_WAIT_S_MAX) -> Any:
        """The command's result once committed; its ``LedgerError`` otherwise.

        Raises ``LedgerUnavailable`` when no answer comes in time (the outcome is then unknown: retrying with
        the same Idempotency-Key is safe).
        """
        loop = asyncio.get_running_loop()
        settler = self._settler
        if settler is None or settler.loop is not loop:  # one loop in service; tests may run several in turn
            settler = self._settler = _Settler(loop)
        waiter: asyncio.Future[Any] = loop.create_future()
        self.writer.submit(command).add_done_callback(partial(settler.on_done, waiter))
        # A timer that fails the waiter, rather than ``asyncio.timeout``: no cancellation to undo, and about half
        # the cost on a path every money request takes (2-3 µs against 5-6 µs on uvloop, timed around an awaited
        # future that is already done).
        expiry = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        finally:
            expiry.cancel()

    async def accounts(self, *account_ids: UUID) -> dict[UUID, Account]:
        found: dict[UUID, Account] = await self.execute(ReadAccounts(tuple(account_ids)))
        return found

    async def parties(self, *party_ids: UUID) -> dict[UUID, Party]:
        found: dict[UUID, Party] = await self.execute(ReadParties(tuple(party_ids)))
        return found

    def position(self) -> int:
        """The writer's committed log position (read after a consistent read: at or after it)."""
        return self.writer.stats().position

    async def ready(self) -> bool:
        """Whether the writer thread answers a read in time."""
        if self.writer.fatal is not None:
            return False
        try:
            await self.execute(ReadAccounts(()), timeout_s=READINESS_TIMEOUT_S)
        except errors.LedgerError:
            return False
        return True

    async def position_of(self, aggregate_ids: tuple[UUID, ...], *event_names: str) -> int:
        """The log position of the latest of these aggregates' events named so (one indexed query).

        A registration, opening or closing replayed by the ledger comes back without its position, and a fresh
        one carries the position of its whole batch; both are answered with the position of the event itself,
        so a replay renders exactly the body of the original response.
        """
        try:
            rows = await asyncio.to_thread(self.writer.lookup.find, aggregate_ids)
        except Exception as exc:  # the write is durable; only its position could not be read now
            raise errors.LedgerUnavailable(
                f"the ledger store did not answer ({type(exc).__name__}); retry with the same key"
            ) from None
        positions = [position for position, stored in rows if stored.topic.rpartition(":")[2] in event_names]
        assert positions, f"committed events of {aggregate_ids} not found in the store"
        return max(positions)
