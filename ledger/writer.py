"""The single ledger writer: group commit over an in-memory state (DESIGN §3, the TigerBeetle shape).

Callers on any thread ``submit`` commands and wait on a ``Reply`` (a lean ``Future``). The writer thread decides
each command against the in-memory state as it arrives (a refused command is rolled back alone and never fails
its batch-mates) and gathers the events of those that arrived within a bounded time and count into one batch; the
committer thread saves each batch in one transaction, while the writer thread decides the next (ADR 0023).
Replies are resolved only after their batch committed, so an acknowledged command is durable.

If a save fails, its outcome is unknown (the commit may have happened before the connection broke), so the
writer does not guess: every command of the batch, and of the batch decided on top of it, gets
``LedgerUnavailable`` (safe to retry with the same key) and the state is reloaded from the store.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import ledger
from ledger import errors
from ledger.application import CheckpointTables, LedgerApplication
from ledger.command_types import (
    CloseAccount,
    Command,
    CreateLinkedTransfers,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
)
from ledger.events import TRANSFER_COMMITTED_TOPIC, LedgerEvent
from ledger.index import IdFilter
from ledger.limits import (
    CHECKPOINT_EVENTS_INTERVAL,
    COMMAND_TIMEOUT_S_MAX,
    GC_FREEZE_EVENTS_INTERVAL,
    GROUP_COMMIT_COMMANDS_MAX,
    GROUP_COMMIT_EVENTS_MAX,
    GROUP_COMMIT_WAIT_MS_MAX,
    WRITER_QUEUE_DEPTH_MAX,
)
from ledger.model import (
    Account,
    AccountResult,
    Decider,
    LedgerState,
    TransferResult,
    check_linked,
    check_many,
    flatten_ids,
    linked_batch_id_of,
    result_of,
)
from ledger.parties import Party, RegisterParty
from ledger.pix_flows import PIX_COMMANDS, PixCommand, ReadPix
from ledger.pix_flows import decide as decide_pix
from ledger.pix_flows import read as read_pix
from ledger.pix_flows import replay as replay_pix
from ledger.pix_flows import with_position as pix_with_position
from ledger.ports import TransferLookup, WriterLease
from ledger.reply import Reply

log = logging.getLogger(__name__)

#: The interpreter's thread switch interval in a process running a writer (CPython's default is 5 ms). The
#: committer, back from Postgres, and the event loop, with replies to send, wait for the interpreter lock while the
#: writer thread decides; after this long the holder is asked to let go. At 5 ms the writer thread kept it for
#: whole batches, and the API's clients came back in one cohort instead of two (ADR 0023).
SWITCH_INTERVAL_S = 0.001
#: How long stopping waits for a checkpoint being saved in the background (it is only an optimisation).
CHECKPOINT_JOIN_S_MAX = 60.0
#: A background checkpoint sleeps this long between chunks, so the threads serving requests keep the interpreter.
CHECKPOINT_PAUSE_S = 0.005


def _yield_interpreter() -> None:
    time.sleep(CHECKPOINT_PAUSE_S)


#: Ids per chunk handed from the stream of committed ids to the writer thread (a few ms of filter adds).
COMMITTED_IDS_CHUNK = 2_000
#: Chunks the stream may read ahead of the writer thread (bounds its memory on a long log).
COMMITTED_IDS_CHUNKS_AHEAD = 16
#: How long the writer thread adds streamed ids between two batches while commands are waiting.
COMMITTED_IDS_ABSORB_S = 0.002
#: How often an idle writer looks for streamed ids (it otherwise waits up to a second for a command).
COMMITTED_IDS_IDLE_POLL_S = 0.01
#: How long stopping the writer waits for a stream of committed ids to give its connection back.
COMMITTED_IDS_JOIN_S = 5.0
#: A failed stream reports its error after this long, so a store that is down is not asked again at once.
COMMITTED_IDS_RETRY_S = 1.0


class CommittedIdStream:
    """Reads the id of every transfer committed up to ``upto`` on a thread of its own, in chunks the writer thread
    adds to its state's filter between batches (``absorb``): only the writer thread ever touches the filter.

    Until every id is in, the state says its filter is incomplete, and every transfer id its index does not hold
    is looked up in the store (``LedgerState.needs_lookup``): a starting writer serves at once, more slowly,
    instead of being unavailable for seconds per million committed transfers (ADR 0015).
    """

    def __init__(self, lookup: TransferLookup, upto: int) -> None:
        self.upto = upto
        self.added = 0
        self.started = time.monotonic()
        self._chunks: queue.Queue[list[int] | Exception | None] = queue.Queue(COMMITTED_IDS_CHUNKS_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stream, args=(lookup,), name="ledger-committed-ids",
                                        daemon=True)
        self._thread.start()

    def _stream(self, lookup: TransferLookup) -> None:
        try:
            chunk: list[int] = []
            for transfer_id in lookup.originator_ids(TRANSFER_COMMITTED_TOPIC, upto=self.upto):
                chunk.append(transfer_id.int)
                if len(chunk) >= COMMITTED_IDS_CHUNK:
                    if not self._put(chunk):
                        return
                    chunk = []
            if chunk and not self._put(chunk):
                return
            self._put(None)
        except Exception as exc:
            self._stop.wait(COMMITTED_IDS_RETRY_S)
            self._put(exc)

    def _put(self, item: list[int] | Exception | None) -> bool:
        """Hands ``item`` over, waiting while the writer is behind; False if the stream was cancelled."""
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def absorb(self, committed_ids: IdFilter, budget_s: float | None) -> bool:
        """In the writer thread: adds the ids streamed so far to ``committed_ids`` for about ``budget_s`` (None:
        every chunk ready); True once the last one is in. Raises the stream's error, if it failed."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        add = committed_ids.add
        while deadline is None or time.monotonic() < deadline:
            try:
                item = self._chunks.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            if isinstance(item, Exception):
                raise item
            for value in item:
                add(value)
            self.added += len(item)
        return False

    def cancel(self, wait_s: float = 0.0) -> None:
        """Stops the stream; waits up to ``wait_s`` for its thread to give its connection back."""
        self._stop.set()
        if wait_s:
            self._thread.join(wait_s)


@dataclass(frozen=True, slots=True)
class ReadAccounts:
    """A consistent read of accounts, served by the writer between batches (not a state change)."""

    account_ids: tuple[UUID, ...]


@dataclass(frozen=True, slots=True)
class ReadParties:
    party_ids: tuple[UUID, ...]


@dataclass(frozen=True, slots=True)
class PartyResult:
    party: Party
    wallet: Account
    position: int | None = None
    replayed: bool = False


#: Everything the writer accepts: ledger and PIX commands (state changes) and consistent reads.
WriterCommand = Command | PixCommand | ReadAccounts | ReadParties | ReadPix
_LEDGER_COMMANDS = (OpenAccount, CloseAccount, CreateTransfer, CreateLinkedTransfers, CreateTransfers, RegisterParty)


@dataclass(slots=True)
class _Submission:
    command: WriterCommand
    future: Reply[Any]
    #: ``time.monotonic()`` when it was queued: the group-commit window runs from the oldest command's arrival.
    queued_at: float = 0.0


class _Batch:
    """Commands decided together and saved in one transaction: the events (in log order) and, per command that
    was not refused, how to build its result once the batch committed."""

    __slots__ = ("done", "events", "first_at", "outcome")

    def __init__(self) -> None:
        self.events: list[LedgerEvent] = []
        self.done: list[tuple[_Submission, Builder]] = []
        #: ``time.monotonic()`` when its first command arrived: the group-commit window runs from there.
        self.first_at = 0.0
        #: Set by the committer: the events' log positions, or why they were not saved.
        self.outcome: list[int] | BaseException | None = None

    def __bool__(self) -> bool:
        return bool(self.events or self.done)


#: Put in the writer's queue by the committer when a save was answered, to wake a writer waiting for commands.
_WAKE = _Submission(ReadAccounts(()), Reply())


@dataclass(frozen=True, slots=True)
class WriterStats:
    batches: int
    commands: int
    events: int
    position: int


Clock = Callable[[], datetime]
#: Builds a command's result once its batch committed, from the log positions the batch was given.
Builder = Callable[[dict[UUID, int]], Any]


def _claim(submission: _Submission) -> bool:
    """Marks a submission's future running (it can no longer be cancelled); False if its caller cancelled it.

    A re-queued submission is already running. Without this, a caller cancelling its future (a request that
    timed out) would make the writer's later ``set_result`` raise ``InvalidStateError`` in the writer thread.
    """
    return submission.future.running() or submission.future.set_running_or_notify_cancel()


def _refuse(submissions: Iterable[_Submission], error: errors.LedgerError) -> None:
    """Answers ``error`` to each of ``submissions`` not answered yet."""
    for submission in submissions:
        if not submission.future.done():
            submission.future.set_exception(error)


def utc_now() -> datetime:
    return datetime.now(UTC)


class LedgerWriter:
    """Owns the ledger state and is the only thing that appends to the ledger's event log."""

    def __init__(
        self,
        app: LedgerApplication,
        lease: WriterLease,
        lookup: TransferLookup,
        *,
        clock: Clock = utc_now,
        commands_max: int = GROUP_COMMIT_COMMANDS_MAX,
        wait_ms: float = GROUP_COMMIT_WAIT_MS_MAX,
        checkpoint_interval: int = CHECKPOINT_EVENTS_INTERVAL,
        checkpoint_in_background: bool = False,
    ) -> None:
        assert 0 < commands_max <= GROUP_COMMIT_COMMANDS_MAX
        assert 0 <= wait_ms <= GROUP_COMMIT_WAIT_MS_MAX
        self.app = app
        self.lease = lease
        self.lookup = lookup
        self.clock = clock
        self.commands_max = commands_max
        self.wait_s = wait_ms / 1000
        self.checkpoint_interval = checkpoint_interval
        #: Build and save checkpoints on a thread of their own (the writer only captures the state): for processes
        #: that serve requests, where encoding a large state in the writer thread would stall every answer.
        self.checkpoint_in_background = checkpoint_in_background
        self._checkpointer: threading.Thread | None = None
        #: Rows of the last checkpoint, so the next one copies only what changed since (one build at a time).
        self._checkpoint_tables = CheckpointTables()
        #: Reads the ids committed before the state's checkpoint while the writer serves (None once they are in).
        self._id_stream: CommittedIdStream | None = None
        # SimpleQueue (in C, no condition variable) costs a tenth of queue.Queue per put and get on the hot path;
        # its depth limit is checked in ``submit`` (a few commands over the limit under a race are harmless).
        self._queue: queue.SimpleQueue[_Submission | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._committer: threading.Thread | None = None
        #: Batches handed to the committer (None stops it), and handed back with their outcome.
        self._commits: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._committed: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self._open = _Batch()
        self._in_flight: _Batch | None = None
        self._checkpoint_due = False
        self._epoch: int | None = None
        self._state: LedgerState | None = None
        self._last_checkpoint = 0
        self._unfrozen_events = 0
        self._stats = [0, 0, 0]
        self.fatal: BaseException | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> LedgerWriter:
        """Takes the writer lease, rebuilds the state from the store and starts the writer thread."""
        self._epoch = self.lease.acquire()
        try:
            self._state = self._load_state()
        except BaseException:
            self.lease.release()
            raise
        self._last_checkpoint = self._state.checkpoint_position
        gc.freeze()  # the state just loaded lives as long as the writer
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:  # process-wide: only ever lowered
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._committer = threading.Thread(target=self._commit_loop, name="ledger-committer", daemon=True)
        self._committer.start()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()
        log.info("ledger writer started at position %d; ledger code %s", self._state.position,
                 f"compiled ({ledger.NATIVE.compiler})" if ledger.NATIVE.active else
                 f"interpreted ({ledger.NATIVE.reason})")
        return self

    def _load_state(self, previous: LedgerState | None = None) -> LedgerState:
        """The state from the store (at start, and after a failed save), with every committed transfer id in its
        filter: a key committed before the checkpoint must be found however the state was loaded.

        After a failed save the ``previous`` state's filter is kept: it holds every id committed up to its
        position, and the ids of the batch whose outcome is unknown (an id that was not committed only costs a
        lookup that finds nothing). Streaming every committed id again would keep the ledger unavailable for
        seconds per million transfers, after every failure of the store.
        """
        # New tables for the new state (a checkpoint of the last one may still be building from the old ones).
        self._checkpoint_tables = CheckpointTables()
        known = None
        if previous is not None and previous.committed_ids_complete:
            known = (previous.committed_ids, previous.position)
        state = self.app.load_state(tables=self._checkpoint_tables, known_ids=known)
        self._cancel_id_stream()
        if not state.committed_ids_complete:
            # The checkpoint holds accounts, not transfers: the ids committed before it are streamed in while the
            # writer serves. Frozen first: the state just loaded lives as long as the writer, and the stream's
            # short-lived ids would otherwise set off full collections that walk all of it.
            gc.freeze()
            self._id_stream = CommittedIdStream(self.lookup, state.position)
        return state

    def _absorb_ids(self, busy: bool) -> None:
        """Adds streamed committed ids to the state's filter: a few ms' worth when commands wait, else all ready."""
        stream, state = self._id_stream, self._state
        assert stream is not None and state is not None
        try:
            finished = stream.absorb(state.committed_ids, COMMITTED_IDS_ABSORB_S if busy else None)
        except Exception as exc:  # the ids read so far stay in the filter (an id there twice is harmless)
            log.error("streaming the committed transfer ids failed (%r); starting again", exc)
            self._id_stream = CommittedIdStream(self.lookup, stream.upto)
            return
        if finished:
            state.committed_ids_complete = True
            self._id_stream = None
            log.info("ledger writer: %d committed transfer ids loaded in %.1f s (filter of %d KB)",
                     stream.added, time.monotonic() - stream.started, state.committed_ids.nbytes // 1024)

    def _cancel_id_stream(self, wait_s: float = 0.0) -> None:
        if self._id_stream is not None:
            self._id_stream.cancel(wait_s)
            self._id_stream = None

    def stop(self) -> None:
        """Finishes the commands already queued, then stops and releases the lease."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._committer is not None:  # the writer thread stopped it after its last batch
            self._committer.join()
            self._committer = None
        if self._checkpointer is not None:  # a checkpoint being saved finishes under this writer's lease
            self._checkpointer.join(CHECKPOINT_JOIN_S_MAX)
            self._checkpointer = None
        self._cancel_id_stream(COMMITTED_IDS_JOIN_S)
        self.lease.release()

    def __enter__(self) -> LedgerWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def state(self) -> LedgerState:
        """The live state. Only for tests and tools, and only while nothing is being written."""
        assert self._state is not None
        return self._state

    def stats(self) -> WriterStats:
        batches, commands, events = self._stats
        return WriterStats(batches, commands, events, self._state.position if self._state else 0)

    # ---- the calls ------------------------------------------------------------------------------------------
    def submit(self, command: WriterCommand) -> Reply[Any]:
        """Queues a command; the reply gets its result or its ``LedgerError`` once its batch committed."""
        future: Reply[Any] = Reply()
        if self.fatal is not None or self._thread is None:
            future.set_exception(errors.LedgerUnavailable("the ledger writer is not running"))
            return future
        if self._queue.qsize() >= WRITER_QUEUE_DEPTH_MAX:
            future.set_exception(errors.LedgerOverloaded("the ledger is overloaded; retry with the same key"))
        else:
            self._queue.put(_Submission(command, future, time.monotonic()))
        return future

    def execute(self, command: WriterCommand, timeout_s: float = COMMAND_TIMEOUT_S_MAX) -> Any:
        """Submits and waits. Raises the command's ``LedgerError``; ``LedgerUnavailable`` on timeout."""
        future = self.submit(command)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            raise errors.LedgerUnavailable(
                "no answer from the ledger in time; the outcome is unknown, retry with the same key"
            ) from None

    def open_account(self, command: OpenAccount) -> AccountResult:
        result: AccountResult = self.execute(command)
        return result

    def close_account(self, command: CloseAccount) -> AccountResult:
        result: AccountResult = self.execute(command)
        return result

    def transfer(self, command: CreateTransfer) -> TransferResult:
        result: TransferResult = self.execute(command)
        return result

    def linked(self, command: CreateLinkedTransfers) -> list[TransferResult]:
        result: list[TransferResult] = self.execute(command)
        return result

    def register_party(self, command: RegisterParty) -> PartyResult:
        result: PartyResult = self.execute(command)
        return result

    def parties(self, *party_ids: UUID) -> dict[UUID, Party]:
        """Copies of the named parties (unknown ids are left out)."""
        result: dict[UUID, Party] = self.execute(ReadParties(tuple(party_ids)))
        return result

    def accounts(self, *account_ids: UUID) -> dict[UUID, Account]:
        """Consistent copies of the named accounts (unknown ids are left out)."""
        result: dict[UUID, Account] = self.execute(ReadAccounts(tuple(account_ids)))
        return result

    # ---- the writer thread: deciding ------------------------------------------------------------------------
    # Two threads share a batch's life (ADR 0023). The writer thread decides each command as it arrives, adding
    # its events to the open batch; the committer thread saves one batch at a time. While a batch is being saved,
    # the commands arriving meanwhile are decided on top of it, and the open batch is handed over as soon as the
    # save is answered. Deciding (CPU, holding the interpreter lock) thus overlaps with Postgres's commit (I/O,
    # not holding it), instead of the two taking turns. Only the writer thread touches the state.
    def _run(self) -> None:
        try:
            self._pipeline()
        except BaseException as exc:  # a broken invariant: stop loudly, refuse everything after
            self.fatal = exc
            log.critical("ledger writer stopped: %r", exc, exc_info=exc)
            failure = errors.LedgerUnavailable("the ledger writer stopped on an internal error")
            self._fail(self._open, failure)
            self._finish_in_flight(failure)
            self._drain_with(failure)
            raise
        finally:
            self._commits.put(None)

    def _finish_in_flight(self, failure: errors.LedgerError) -> None:
        """On the way out: the batch being saved was decided before anything broke, so it gets its true answer
        once the committer has one, and ``failure`` only if it has none in time."""
        batch = self._in_flight
        if batch is None:
            return
        with contextlib.suppress(queue.Empty):
            self._committed.get(timeout=COMMAND_TIMEOUT_S_MAX)  # only one batch is ever in flight: this one
        if isinstance(batch.outcome, list):
            try:
                self._answer(batch, batch.outcome)
                return
            except BaseException as exc:  # answered below, whatever is left
                log.critical("a committed batch could not be answered: %r", exc)
        self._fail(batch, failure)

    def _pipeline(self) -> None:
        stopping = False
        while True:
            if self._in_flight is not None:
                try:
                    self._settle(self._committed.get_nowait())
                except queue.Empty:
                    pass
            if self._in_flight is None:
                if self._checkpoint_due and not self._open:
                    self._checkpoint_due = False
                    self._checkpoint(self.state)
                if self._open and (stopping or self._checkpoint_due or self._open_full()
                                   or time.monotonic() >= self._open.first_at + self.wait_s):
                    self._hand_over()
            if stopping and self._in_flight is None and not self._open:
                return
            if stopping or self._checkpoint_due or self._open_full():
                # Nothing more is taken now: wait for the save in flight (the open batch goes next).
                if self._in_flight is not None:
                    self._settle(self._committed.get())
                continue
            chunk, stopping = self._take()
            if chunk:
                self._decide_in_turn(chunk)
            elif not stopping and self._in_flight is None and not self._open:
                self._idle()

    def _open_full(self) -> bool:
        return len(self._open.done) >= self.commands_max or len(self._open.events) >= GROUP_COMMIT_EVENTS_MAX

    def _take(self) -> tuple[list[_Submission], bool]:
        """The commands queued now (waiting for the first one), up to what the open batch still takes; True once
        the queue's end was reached (``stop``).

        With no save in flight, the wait for the first one ends when the open batch's window does. The window is
        counted from when its first command arrived, not from when the writer got to it: a command that already
        waited for the previous batch to commit waits no longer. With a save in flight, the committer's answer
        wakes the wait.
        """
        if self._in_flight is None and self._open:
            timeout = max(0.0, self._open.first_at + self.wait_s - time.monotonic())
        else:
            timeout = 1.0 if self._id_stream is None else COMMITTED_IDS_IDLE_POLL_S
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return [], False
        chunk: list[_Submission] = []
        room = self.commands_max - len(self._open.done)
        while True:
            if item is None:
                return chunk, True
            if item is not _WAKE and _claim(item):
                chunk.append(item)
                if len(chunk) >= room:
                    return chunk, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return chunk, False

    def _decide_in_turn(self, chunk: list[_Submission]) -> None:
        """Decides ``chunk``, handing the open batch to an idle committer between commands once its window is over.

        The committer then saves the first commands while the writer decides the rest, rather than waiting for the
        whole chunk: what keeps a save and deciding overlapped when commands arrive in a few large ones (the API's
        gateway sends each pass of its event loop as one command, ADR 0024) rather than as many small ones.
        """
        first = 0
        while self._in_flight is None and len(chunk) - first > 1:
            self._decide_chunk(chunk[first:first + 1])
            first += 1
            if self._open and (self._open_full() or time.monotonic() >= self._open.first_at + self.wait_s):
                self._hand_over()
        self._decide_chunk(chunk[first:] if first else chunk)

    def _decide_chunk(self, chunk: list[_Submission]) -> None:
        """Decides ``chunk`` into the open batch (a refused command is answered at once, alone)."""
        state = self.state
        now = self.clock()
        if not state.index_complete:
            try:
                self._recall_transfers(state, chunk)
            except Exception as exc:
                log.error("transfer lookup failed (%r); %d commands answered unavailable", exc, len(chunk))
                _refuse(chunk, errors.LedgerUnavailable("the ledger store could not be read; retry with the same key"))
                return
        batch = self._open
        if not batch:
            batch.first_at = chunk[0].queued_at
            batch.events.extend(self._expiries(state, now))
        try:
            self._decide_batch(Decider(state), chunk, now, batch.events, batch.done)
        except BaseException:
            # A broken invariant: nobody in this chunk may be left waiting (the rest is answered by ``_run``).
            _refuse(chunk, errors.LedgerUnavailable("the ledger writer stopped on an internal error"))
            raise

    def _idle(self) -> None:
        """With no commands coming: committed ids keep streaming in, and pending transfers still time out."""
        if self._id_stream is not None:
            self._absorb_ids(busy=False)
        events = self._expiries(self.state, self.clock())
        if events:
            self._open.events.extend(events)
            self._open.first_at = 0.0  # nobody waits for batch-mates: saved at once

    def _hand_over(self) -> None:
        if self._id_stream is not None:
            self._absorb_ids(busy=True)
        batch, self._open = self._open, _Batch()
        self._in_flight = batch
        self._commits.put(batch)

    def _drain_with(self, error: errors.LedgerError) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item is not _WAKE and not item.future.done():
                item.future.set_exception(error)

    @staticmethod
    def _fail(batch: _Batch, error: errors.LedgerError) -> None:
        _refuse((submission for submission, _ in batch.done), error)

    def _expiries(self, state: LedgerState, now: datetime) -> list[LedgerEvent]:
        decider = Decider(state)
        events: list[LedgerEvent] = []
        for pending in state.due_expiries(now):
            event = decider.expire(pending, now)
            state.apply(event, verify_chain=False)
            events.append(event)
        return events

    def _process(self, batch: list[_Submission]) -> None:
        """One batch decided, saved and answered on the calling thread, without the committer (profiling)."""
        self._decide_chunk(batch)
        saving, self._open = self._open, _Batch()
        saving.outcome = self._save_batch(saving)
        self._settle(saving)

    def _decide_batch(self, decider: Decider, batch: list[_Submission], now: datetime,
                      events: list[LedgerEvent], done: list[tuple[_Submission, Builder]]) -> None:
        for submission in batch:
            if len(events) >= GROUP_COMMIT_EVENTS_MAX:
                # A full batch: leave the rest for the next one (its own transaction) rather than grow this one.
                self._queue_front(submission)
                continue
            try:
                new_events, build = self._decide(decider, submission.command, now)
            except errors.LedgerError as exc:
                submission.future.set_exception(exc)
                continue
            events.extend(new_events)
            done.append((submission, build))

    def _queue_front(self, submission: _Submission) -> None:
        # The queue has no push-front; re-queue at the back. Order between unrelated commands is not promised.
        # An accepted command is never refused later for depth: it may take the queue a little over its limit.
        self._queue.put(submission)

    def _recall_transfers(self, state: LedgerState, batch: list[_Submission]) -> None:
        unknown = {
            i for i in flatten_ids(s.command for s in batch if isinstance(s.command, _LEDGER_COMMANDS))
            if state.needs_lookup(i)
        }
        if unknown:
            self.app.load_transfers(self.lookup, state, unknown)

    # ---- the committer thread: saving -----------------------------------------------------------------------
    def _commit_loop(self) -> None:
        """Saves each batch handed over, in order, one transaction each, and hands it back with its outcome."""
        while (batch := self._commits.get()) is not None:
            batch.outcome = self._save_batch(batch)
            self._committed.put(batch)
            self._queue.put(_WAKE)

    def _save_batch(self, batch: _Batch) -> list[int] | BaseException:
        if not batch.events:
            return []
        try:
            return self.app.append(batch.events, writer_epoch=self._epoch)
        except BaseException as exc:  # the writer thread decides what the failure means
            return exc

    # ---- the writer thread: answering -----------------------------------------------------------------------
    def _settle(self, batch: _Batch) -> None:
        """Answers a saved batch: results once it committed; after a failure, the open batch (decided on top of
        it) is refused with it and the state reloaded from the store."""
        self._in_flight = None
        state = self.state
        outcome = batch.outcome
        if isinstance(outcome, errors.WriterFenced):
            # Another writer owns the ledger now: this one must never write again.
            fenced = errors.LedgerUnavailable("this ledger writer was fenced off")
            self._fail(batch, fenced)
            self._fail(self._open, fenced)
            raise outcome
        if isinstance(outcome, BaseException) or outcome is None:
            log.error("ledger batch of %d events not saved (%r); reloading state from the store",
                      len(batch.events), outcome)
            unavailable = errors.LedgerUnavailable(
                "the ledger store failed; the outcome is unknown, retry with the same key"
            )
            self._fail(batch, unavailable)
            self._fail(self._open, unavailable)
            self._open = _Batch()
            self._reload()
            return
        self._answer(batch, outcome)
        if state.position - self._last_checkpoint >= self.checkpoint_interval:
            # Taken once nothing is open or in flight: a checkpoint is the state at one log position.
            self._checkpoint_due = True

    def _answer(self, batch: _Batch, outcome: list[int]) -> None:
        """The state learns the committed batch's log positions, and every command of it gets its result."""
        state = self.state
        positions: dict[UUID, int] = {}
        if outcome:
            for event, position in zip(batch.events, outcome, strict=True):
                if event.originator_version == 1:
                    positions[event.originator_id] = position
                    state.set_position(event.originator_id, position)
            state.position = max(state.position, *outcome)
            self._stats[2] += len(outcome)
        # The open batch's transfers are not committed yet: they stay in the index, however old it grows.
        state.trim_index(keep_newest=len(self._open.events))
        self._freeze_heap(len(outcome))
        self._stats[0] += 1
        self._stats[1] += len(batch.done)
        for submission, build in batch.done:
            submission.future.set_result(build(positions))

    def _freeze_heap(self, new_events: int) -> None:
        """Moves what the writer keeps (state, index) out of the cyclic garbage collector's reach.

        The index holds several tracked objects per transfer; without this, every full collection walks all of
        them and pauses every thread for hundreds of milliseconds once the ledger holds 10⁵ transfers. Frozen
        objects are still freed by reference counting. What is never collected is cyclic garbage frozen with
        them: cycles already dead at a freeze, or alive then and left in a cycle later. The writer's state has no
        cycles. In the API process, after 20,000 transfers, unfreezing and collecting found 53 to 63 such objects.
        """
        self._unfrozen_events += new_events
        if self._unfrozen_events >= GC_FREEZE_EVENTS_INTERVAL:
            gc.freeze()
            self._unfrozen_events = 0

    def _checkpoint(self, state: LedgerState) -> None:
        if self.checkpoint_in_background:
            self._checkpoint_in_background(state)
            return
        try:
            self.app.save_checkpoint(self._checkpoint_tables.capture(state)())
            self._last_checkpoint = state.position
        except Exception as exc:  # a checkpoint is an optimisation; the log stays the truth
            log.warning("ledger checkpoint at %d not written: %r", state.position, exc)

    def _checkpoint_in_background(self, state: LedgerState) -> None:
        """Captures what changed since the last checkpoint now (cheap copies) and builds and saves the checkpoint
        on another thread, one at a time: while one is being saved, later batches do not start another."""
        if self._checkpointer is not None and self._checkpointer.is_alive():
            return
        build, position = self._checkpoint_tables.capture(state, _yield_interpreter), state.position

        def save() -> None:
            try:
                self.app.save_checkpoint(build(), _yield_interpreter)
                self._last_checkpoint = position
            except Exception as exc:  # a checkpoint is an optimisation; the log stays the truth
                log.warning("ledger checkpoint at %d not written: %r", position, exc)

        self._checkpointer = threading.Thread(target=save, name="ledger-checkpoint", daemon=True)
        self._checkpointer.start()

    def _reload(self) -> None:
        previous = self._state
        while True:
            try:
                self._state = self._load_state(previous)
                return
            except Exception as exc:
                log.error("ledger state reload failed (%r); retrying", exc)
                self._drain_with(errors.LedgerUnavailable("the ledger store is unavailable; retry later"))
                time.sleep(0.5)

    # ---- deciding one command -------------------------------------------------------------------------------
    def _decide(
        self, decider: Decider, command: WriterCommand, now: datetime
    ) -> tuple[list[LedgerEvent], Builder]:
        """Events of one command (already applied to the state) and how to build its result after commit."""
        state = decider.state
        if isinstance(command, ReadAccounts):
            found = {i: replace(state.accounts[i]) for i in command.account_ids if i in state.accounts}
            return [], lambda _: found
        if isinstance(command, ReadParties):
            parties = {i: replace(state.parties[i]) for i in command.party_ids if i in state.parties}
            return [], lambda _: parties
        if isinstance(command, ReadPix):
            snapshot = read_pix(state, command)
            return [], lambda _: snapshot
        if isinstance(command, PIX_COMMANDS):
            return self._decide_pix(decider, command, now)
        if isinstance(command, CreateTransfer):
            return self._decide_single(decider, command, now)
        if isinstance(command, CreateTransfers):
            return self._decide_many(decider, command, now)
        if isinstance(command, CreateLinkedTransfers):
            check_linked(command)
            return self._decide_linked(decider, command.transfers, now, linked_batch_id_of(command))
        if isinstance(command, RegisterParty):
            return self._decide_party(decider, command, now)
        decided = decider.open_account(command, now) if isinstance(command, OpenAccount) else (
            decider.close_account(command, now)
        )
        if isinstance(decided, AccountResult):
            account = replace(decided.account)
            return [], lambda _: AccountResult(account, replayed=True)
        state.apply(decided, verify_chain=False)
        account = replace(state.accounts[decided.originator_id])
        account_id = decided.originator_id
        return [decided], lambda positions: AccountResult(account, position=positions.get(account_id))

    @staticmethod
    def _decide_pix(decider: Decider, command: PixCommand, now: datetime) -> tuple[list[LedgerEvent], Builder]:
        """A PIX flow (ledger.pix_flows): a replay, or its transfers and PIX event under one undo journal, so a
        refused command leaves nothing behind for its batch-mates."""
        state = decider.state
        replayed = replay_pix(state, command)
        if replayed is not None:
            return [], lambda _: pix_with_position(state, replayed)
        state.begin()
        try:
            events, build = decide_pix(decider, command, now)
        except errors.LedgerError:
            state.rollback()
            raise
        state.commit()
        return events, build

    def _decide_party(
        self, decider: Decider, command: RegisterParty, now: datetime
    ) -> tuple[list[LedgerEvent], Builder]:
        state = decider.state
        decided = decider.register_party(command, now)
        if isinstance(decided, Party):
            party = replace(decided)
            wallet = replace(state.accounts[party.wallet_id])
            return [], lambda _: PartyResult(party, wallet, replayed=True)
        state.begin()
        for event in decided:
            state.apply(event, verify_chain=False)
        state.commit()
        party = replace(state.parties[command.party_id])
        wallet = replace(state.accounts[party.wallet_id])
        return decided, lambda positions: PartyResult(party, wallet, position=positions.get(party.id))

    @staticmethod
    def _decide_single(decider: Decider, transfer: CreateTransfer, now: datetime) -> tuple[list[LedgerEvent], Builder]:
        """One transfer: what ``_decide_linked`` does for a batch of one, on the path most commands take.

        ``Decider.transfer`` validates everything before anything is applied, so a refusal leaves nothing to undo.
        """
        state = decider.state
        replay = decider.replay_of(transfer)
        if replay is not None:
            # The entry is captured now: a later command of this batch may evict it from the index.
            replayed = state.transfers[transfer.transfer_id]
            return [], lambda positions: result_of(replayed, True, positions.get(replayed.id))
        events = decider.transfer(transfer, now, None)
        for event in events:
            state.apply(event, verify_chain=False)
        entry = state.transfers[transfer.transfer_id]
        return events, lambda positions: result_of(entry, False, positions.get(entry.id))

    @classmethod
    def _decide_many(cls, decider: Decider, command: CreateTransfers, now: datetime,
                     ) -> tuple[list[LedgerEvent], Builder]:
        """Independent transfers: each decided as a single one; the result lists, in order, each transfer's
        ``TransferResult`` or the ``LedgerError`` that refused it (a refusal records nothing)."""
        check_many(command)
        events: list[LedgerEvent] = []
        outcomes: list[Builder | errors.LedgerError] = []
        for transfer in command.transfers:
            try:
                new_events, build = cls._decide_single(decider, transfer, now)
            except errors.LedgerError as exc:
                outcomes.append(exc.with_traceback(None))  # its frames would hold this list: a reference cycle
                continue
            events.extend(new_events)
            outcomes.append(build)

        def build_all(positions: dict[UUID, int]) -> list[TransferResult | errors.LedgerError]:
            return [o if isinstance(o, errors.LedgerError) else o(positions) for o in outcomes]

        return events, build_all

    def _decide_linked(
        self, decider: Decider, transfers: tuple[CreateTransfer, ...], now: datetime,
        linked_batch_id: UUID | None,
    ) -> tuple[list[LedgerEvent], Builder]:
        state = decider.state
        replays = [decider.replay_of(t) for t in transfers]
        if all(r is not None for r in replays):
            # The index entries are captured now: a later command of this batch may evict them from the index.
            replayed_entries = [state.transfers[t.transfer_id] for t in transfers]

            def build_replay(positions: dict[UUID, int]) -> Any:
                return [result_of(e, True, positions.get(e.id)) for e in replayed_entries]

            return [], build_replay
        if any(r is not None for r in replays):
            first = next(t for t, r in zip(transfers, replays, strict=True) if r is not None)
            raise errors.IdempotencyConflict(
                f"key {first.key!r} was already committed outside this linked batch", field="key", key=first.key
            )
        # A linked batch applies each transfer before deciding the next, so a later refusal must undo the earlier ones.
        state.begin()
        events: list[LedgerEvent] = []
        entries = []
        failures: list[dict[str, Any]] = []
        for index, transfer in enumerate(transfers):
            try:
                new_events = decider.transfer(transfer, now, linked_batch_id)
            except errors.LedgerError as exc:
                failures.append({"index": index, **exc.to_dict()})
                break
            for event in new_events:
                state.apply(event, verify_chain=False)
            entries.append(state.transfers[transfer.transfer_id])
            events.extend(new_events)
        if failures:
            state.rollback()
            failed_at = failures[0]["index"]
            results = [
                failures[0] if i == failed_at else {"index": i, "code": errors.LinkedTransferFailed.code}
                for i in range(len(transfers))
            ]
            raise errors.LinkedBatchFailed(
                f"linked batch refused: transfer {failed_at} failed with {failures[0]['code']}", results=results
            )
        state.commit()

        def build(positions: dict[UUID, int]) -> Any:
            return [result_of(e, False, positions.get(e.id)) for e in entries]

        return events, build
