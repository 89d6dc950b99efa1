"""The API's door to the ledger writer, from the event loop, without a thread hop per request.

``LedgerWriter.submit`` is non-blocking and thread safe: a request queues its command and awaits an asyncio
future that the writer thread resolves once the command's group-commit batch is durable (one wake-up of
the event loop per burst of replies, ``_Settler``). Thousands of requests awaiting at once therefore land in the
same batches (ADR 0004). Single transfers go further together: those submitted in one pass of the event loop
travel to the writer as one command of independent transfers, and each request gets its own answer (ADR 0024).

The writer's ``Reply`` is never cancelled from here: a request task cancelled by a timeout or a shutdown only
stops waiting, and a command the writer already took is still decided. The bridge copies the outcome one way only.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any
from uuid import UUID

from commands.api.limits import GATHERED_TRANSFERS_MAX, LEDGER_WAIT_S_MAX, READINESS_TIMEOUT_S
from ledger import errors
from ledger.command_types import CreateTransfer, CreateTransfers
from ledger.limits import WRITER_QUEUE_DEPTH_MAX
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


def settle_waiters(outcomes: Iterable[tuple[asyncio.Future[Any], Any]]) -> None:
    """On the event loop: each waiter gets its outcome, raised if it is an exception; one that gave up is skipped."""
    for waiter, outcome in outcomes:
        if waiter.done():  # the request gave up waiting (timeout or cancellation)
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


def _unavailable() -> errors.LedgerUnavailable:
    return errors.LedgerUnavailable(
        "no answer from the ledger in time; the outcome is unknown, retry with the same key"
    )


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(_unavailable())


def _expire_all(waiters: list[asyncio.Future[Any]]) -> None:
    for waiter in waiters:
        _expire(waiter)


class _Group:
    """The requests whose transfers went to the writer as one command, and the one timer they share."""

    __slots__ = ("expiry", "waiters")

    def __init__(self, waiters: list[asyncio.Future[Any]], expiry: asyncio.TimerHandle) -> None:
        self.waiters, self.expiry = waiters, expiry


class _Settler:
    """Carries commands from one event loop to the writer and the writer's replies back, a burst at a time.

    Both ways cost per crossing, not per request, so requests cross together:

    - **Replies.** The writer settles a whole group commit at once. Waking the event loop once per reply
      (``call_soon_threadsafe`` each time: a handle, a lock and a wake-up write, on the writer's thread) cost the
      writer more than deciding some of the transfers. Here the writer only appends to a deque, and wakes the loop
      only when no wake-up is already on its way; the loop then settles everything queued by then.
    - **Transfers** (ADR 0024). The single transfers that requests submit during one pass of the loop go to the
      writer as one ``CreateTransfers`` command at the end of it, or every ``GATHERED_TRANSFERS_MAX`` of them: one
      queue slot, one ``Reply`` and one callback for the group instead of one each, and one timer for the group
      instead of one per request. The writer decides each transfer of such a command exactly as it decides a
      command of its own (each in order, each answered with its own result or its own refusal, a refusal never
      touching the others), so a request cannot tell the difference, except that it costs the process less.
    """

    __slots__ = ("_flush_pending", "_ready", "_transfers", "_waiters", "_wake_pending", "loop", "transfers_in_flight",
                 "writer")

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: LedgerWriter) -> None:
        self.loop, self.writer = loop, writer
        self._ready: deque[tuple[Callable[[Any, Reply[Any]], None], Any, Reply[Any]]] = deque()
        self._wake_pending = False
        self._transfers: list[CreateTransfer] = []
        self._waiters: list[asyncio.Future[Any]] = []
        self._flush_pending = False
        self.transfers_in_flight = 0  # gathered or at the writer, not yet settled here

    # ---- on the loop: transfers gathered for the writer --------------------------------------------------------
    def add_transfer(self, transfer: CreateTransfer, waiter: asyncio.Future[Any]) -> None:
        if self.transfers_in_flight >= WRITER_QUEUE_DEPTH_MAX:
            # The writer's own queue refuses past this depth; counted here in transfers, as commands now hold many.
            waiter.set_exception(errors.LedgerOverloaded("the ledger is overloaded; retry with the same key"))
            return
        self.transfers_in_flight += 1
        self._transfers.append(transfer)
        self._waiters.append(waiter)
        if len(self._transfers) >= GATHERED_TRANSFERS_MAX:
            self._send()
        elif not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Scheduled by the first transfer gathered in a pass of the loop; runs after that pass."""
        self._flush_pending = False
        self._send()

    def _send(self) -> None:
        """What was gathered goes to the writer as one command: at the end of the loop's pass, or sooner once
        ``GATHERED_TRANSFERS_MAX`` are waiting (the writer then starts on them while the pass goes on)."""
        transfers, waiters = self._transfers, self._waiters
        if not transfers:  # sent as a full group since this pass's flush was scheduled
            return
        self._transfers, self._waiters = [], []
        command: WriterCommand = CreateTransfers(tuple(transfers)) if len(transfers) > 1 else transfers[0]
        group = _Group(waiters, self.loop.call_later(LEDGER_WAIT_S_MAX, _expire_all, waiters))
        self.writer.submit(command).add_done_callback(partial(self.on_done, self._settle_group, group))

    def _settle_group(self, group: _Group, done: Reply[Any]) -> None:
        group.expiry.cancel()
        waiters = group.waiters
        self.transfers_in_flight -= len(waiters)
        exc = done.exception()
        if exc is not None:  # the whole command was refused (overloaded, unavailable): each request gets its own copy
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(copy.copy(exc))
            return
        # A group of one went as the transfer itself, answered with its result rather than a list of one.
        outcomes = done.result() if len(waiters) > 1 else (done.result(),)
        settle_waiters(zip(waiters, outcomes, strict=True))

    # ---- from the writer's thread: replies ---------------------------------------------------------------------
    def on_done(self, settle: Callable[[Any, Reply[Any]], None], target: Any, done: Reply[Any]) -> None:
        """The reply's callback, on the writer's thread."""
        self._ready.append((settle, target, done))
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._drain)  # a closed loop raises; Reply logs it (nobody waits)

    def _drain(self) -> None:
        """On the loop. The flag is lowered before the deque is emptied: a reply appended after that either is
        taken by this drain or, seeing the flag down, schedules the next one; none is left behind."""
        self._wake_pending = False
        ready = self._ready
        while ready:
            settle, target, done = ready.popleft()
            settle(target, done)


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
            settler = self._settler = _Settler(loop, self.writer)
        waiter: asyncio.Future[Any] = loop.create_future()
        if type(command) is CreateTransfer and timeout_s == LEDGER_WAIT_S_MAX:
            settler.add_transfer(command, waiter)  # sent with the others of this pass; its group's timer
            return await waiter
        self.writer.submit(command).add_done_callback(partial(settler.on_done, _settle, waiter))
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
