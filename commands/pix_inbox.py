"""Received Pix: the durable webhook inbox (group-committed) and the processor that confirms and credits (ADR 0009).

A webhook POST is answered only once its Pix are in the inbox (``pix_inbox``), durably: ``InboxWriter`` is a thread
that takes every POST queued while the previous transaction was committing and stores them all in one transaction
(the ledger writer's group commit, without its wait: at low load a POST waits for nobody, under load the batches
grow by themselves). Nothing is credited on the webhook's word.

``InboxProcessor`` (an asyncio task in the API process, woken after each insert and sweeping every second) takes
the due rows, asks each Pix's PSP for its own record of it (the BCB's advice: a notification is not proof) —
``GET /pix/{e2eid}``, or for a burst the PSP's list ``GET /pix?inicio&fim`` over exactly the burst's time span —
validates the PSP's answer against the spec like a webhook, and submits ``CreditReceivedPix`` with what the PSP said.
The ledger credits an endToEndId once (its key), so a row processed twice (a crash before the row was marked) is a
replay. Failures are retried with backoff; a Pix the PSP does not know after several attempts is ``rejected``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from commands.api.gateway import LedgerGateway, settle_waiters
from commands.pix_metrics import PixMetrics
from ledger import errors
from ledger.pix import InvalidPixPayload, ReceivedPix, format_valor, validate_pix
from ledger.pix_flows import CreditReceivedPix, ReceivedResult
from ledger.ports import (
    InboxDelivery,
    InboxEntry,
    NotifiedPix,
    PixGateway,
    PixInbox,
    PspNotFound,
    PspRejected,
    PspUnavailable,
)

log = logging.getLogger(__name__)

# ---- limits ---------------------------------------------------------------------------------------------------

#: Webhook POSTs one inbox transaction carries at most (each at most 1,000 Pix: ``WEBHOOK_PIX_ITEMS_MAX``).
INBOX_BATCH_DELIVERIES_MAX: Final = 500
#: POSTs waiting for the inbox writer before new ones are answered 503 (back-pressure; the PSP retries).
INBOX_QUEUE_DEPTH_MAX: Final = 20_000
#: How long a processing round waits for the ledger's answers before retrying the rows later.
LEDGER_WAIT_S_MAX: Final = 30.0
#: How long a webhook waits for its inbox commit before answering 503.
INBOX_WAIT_S_MAX: Final = 10.0
#: Rows one processing round takes.
PROCESS_BATCH_MAX: Final = 1_000
#: Rounds confirm Pix with the PSP's list (``GET /pix?inicio&fim``) for clusters of at least this many Pix notified
#: at most ``BULK_GAP`` apart, in windows of at most ``BULK_WINDOW`` (plus a margin each side); the rest one by one.
BULK_CONFIRM_MIN: Final = 8
BULK_GAP: Final = timedelta(seconds=30)
BULK_WINDOW: Final = timedelta(minutes=5)
BULK_MARGIN: Final = timedelta(milliseconds=1)
#: A Pix the PSP says it does not know is retried this many times (a PSP may answer a webhook before its own
#: read side has the Pix), then rejected.
NOT_FOUND_ATTEMPTS_MAX: Final = 5
RETRY_DELAY_S_MIN: Final = 0.5
RETRY_DELAY_S_MAX: Final = 60.0

assert INBOX_BATCH_DELIVERIES_MAX <= INBOX_QUEUE_DEPTH_MAX
assert RETRY_DELAY_S_MIN < RETRY_DELAY_S_MAX


def retry_delay_s(attempts: int) -> float:
    """Exponential backoff with jitter, bounded: 0.5 s, 1 s, 2 s ... 60 s."""
    base = float(min(RETRY_DELAY_S_MIN * 2 ** max(attempts, 0), RETRY_DELAY_S_MAX))
    return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not a secret


# ---- the inbox writer -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Queued:
    """A delivery waiting for the inbox writer, with whoever waits for it: a thread (``future``) or a coroutine
    (``waiter`` on ``loop``)."""

    delivery: InboxDelivery
    future: Future[set[str]] | None = None
    waiter: asyncio.Future[set[str]] | None = None
    loop: asyncio.AbstractEventLoop | None = None


class InboxWriter:
    """Group commit of webhook deliveries into the inbox, from one thread (see the module docstring)."""

    def __init__(self, inbox: PixInbox, *, deliveries_max: int = INBOX_BATCH_DELIVERIES_MAX) -> None:
        assert 0 < deliveries_max <= INBOX_BATCH_DELIVERIES_MAX
        self.inbox = inbox
        self.deliveries_max = deliveries_max
        self._queue: queue.Queue[_Queued | None] = queue.Queue(maxsize=INBOX_QUEUE_DEPTH_MAX)
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.deliveries = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pix-inbox-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, delivery: InboxDelivery) -> Future[set[str]]:
        """Queues a delivery; the future gets the endToEndIds of it that were new, once committed."""
        future: Future[set[str]] = Future()
        refusal = self._enqueue(_Queued(delivery, future=future))
        if refusal is not None:
            future.set_exception(refusal)
        return future

    async def append(self, delivery: InboxDelivery) -> set[str]:
        """Stores a delivery from the event loop; the endToEndIds of it that were new. Raises ``LedgerUnavailable``
        (no answer in time, or the store failed) or ``LedgerOverloaded``: answer 503, the PSP delivers again.

        The writer thread resolves all the waiters of a batch with one ``call_soon_threadsafe`` (a future and a
        wake-up per request cost more than the insert at a thousand webhooks a second)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[set[str]] = loop.create_future()
        refusal = self._enqueue(_Queued(delivery, waiter=waiter, loop=loop))
        if refusal is not None:
            raise refusal
        try:
            async with asyncio.timeout(INBOX_WAIT_S_MAX):
                return await waiter
        except TimeoutError:
            raise errors.LedgerUnavailable("no answer from the PIX inbox in time; deliver again") from None

    def _enqueue(self, queued: _Queued) -> errors.LedgerError | None:
        if self._thread is None:
            return errors.LedgerUnavailable("the PIX inbox is not running")
        try:
            self._queue.put_nowait(queued)
        except queue.Full:
            return errors.LedgerOverloaded("the PIX inbox is overloaded; deliver again later")
        return None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self.deliveries_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Queued]) -> None:
        outcomes: list[set[str] | BaseException]
        try:
            new = self.inbox.append([queued.delivery for queued in batch])
        except Exception as exc:
            log.error("PIX inbox batch of %d deliveries not stored: %r", len(batch), exc)
            failure = exc if isinstance(exc, errors.LedgerUnavailable) else errors.LedgerUnavailable(
                "the PIX inbox could not store the notification; deliver again")
            outcomes = [failure] * len(batch)
        else:
            self.batches += 1
            self.deliveries += len(batch)
            claimed: set[str] = set()
            outcomes = []
            for queued in batch:
                mine = {p.end_to_end_id for p in queued.delivery.items if p.end_to_end_id in new} - claimed
                claimed |= mine
                outcomes.append(mine)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[set[str]], Any]]] = {}
        for queued, outcome in zip(batch, outcomes, strict=True):
            if queued.future is not None:
                if isinstance(outcome, BaseException):
                    queued.future.set_exception(outcome)
                else:
                    queued.future.set_result(outcome)
            elif queued.waiter is not None and queued.loop is not None:
                by_loop.setdefault(queued.loop, []).append((queued.waiter, outcome))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(settle_waiters, pairs)  # one wake-up a batch
            except RuntimeError:  # the loop closed meanwhile (shutdown): nobody waits any more
                pass


# ---- the processor --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    end_to_end_id: str
    status: str | None  # a final inbox status, or None to retry
    note: str | None
    delay_s: float = 0.0


class InboxProcessor:
    """Confirms notified Pix with their PSP and credits them through the ledger (see the module docstring)."""

    def __init__(self, inbox: PixInbox, ledger: LedgerGateway, gateway: PixGateway, metrics: PixMetrics, *,
                 confirm_workers: int = 16, batch_max: int = PROCESS_BATCH_MAX, sweep_s: float = 1.0) -> None:
        assert 0 < batch_max <= PROCESS_BATCH_MAX and 0 < confirm_workers <= 64 and sweep_s > 0
        self.inbox = inbox
        self.ledger = ledger
        self.gateway = gateway
        self.metrics = metrics
        self.batch_max = batch_max
        self.sweep_s = sweep_s
        self._executor = ThreadPoolExecutor(confirm_workers, thread_name_prefix="pix-confirm")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Rows seen waiting in the last round (a gauge; counting the table on every scrape would cost a query).
        self.pending = 0

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pix-inbox-processor")

    async def stop(self) -> None:
        """Lets the round in progress finish (its credits are being committed), then stops."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=LEDGER_WAIT_S_MAX + 5.0)
            except TimeoutError:
                log.warning("PIX inbox round still running at stop; its rows will be processed at the next start")
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """Called (on the event loop) after new Pix were stored."""
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.sweep_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                while not self._stopping and await self.process_round():
                    pass
            except errors.LedgerError as exc:  # the inbox store or the ledger unavailable: the rows wait
                log.warning("PIX inbox round failed (%s: %s); retrying", exc.code, exc.detail)
                await asyncio.sleep(1.0)
            except Exception:
                # The inbox keeps every row until it is processed: log, wait, and sweep again (never drop a Pix).
                log.exception("PIX inbox round failed; retrying")
                await asyncio.sleep(1.0)

    async def process_round(self) -> bool:
        """Processes the rows due now; True when the round was full (more may be waiting).

        The whole round runs in a worker thread, so the event loop stays free for webhooks: it only gives the GIL
        up at the interpreter's switch interval instead of running a thousand validations in one go."""
        full, self.pending = await asyncio.to_thread(self.round)
        return full

    def round(self) -> tuple[bool, int]:
        """One processing round (blocking): confirmation first (the PSP's list for bursts, ``GET /pix/{e2eid}`` for
        the rest), then every confirmed Pix is submitted to the ledger writer at once (they share group commits)
        and awaited; the rows are then marked done or scheduled again. Returns (round was full, rows seen)."""
        entries = self.inbox.due(self.batch_max)
        if not entries:
            return False, 0
        by_psp: dict[str, list[InboxEntry]] = {}
        for entry in entries:
            by_psp.setdefault(entry.psp, []).append(entry)
        listed: dict[str, Mapping[str, Any]] = {}
        for psp, group in by_psp.items():
            listed.update(self._list(psp, group))
        unlisted = [entry for entry in entries if entry.end_to_end_id not in listed]
        answers: list[tuple[InboxEntry, Mapping[str, Any] | _Outcome]] = [
            (entry, listed[entry.end_to_end_id]) for entry in entries if entry.end_to_end_id in listed]
        answers.extend(zip(unlisted, self._executor.map(self._fetch, unlisted), strict=True))
        outcomes: list[_Outcome] = []
        confirmed: list[tuple[InboxEntry, ReceivedPix]] = []
        for entry, answer in answers:
            checked = answer if isinstance(answer, _Outcome) else _check(entry, answer)
            if isinstance(checked, _Outcome):
                outcomes.append(checked)
            else:
                confirmed.append((entry, checked))
        if confirmed:
            outcomes.extend(self._credit_all(confirmed))
        self.inbox.finish([(o.end_to_end_id, o.status, o.note) for o in outcomes if o.status is not None])
        self.inbox.retry([(o.end_to_end_id, o.note or "retry", o.delay_s) for o in outcomes if o.status is None])
        for outcome in outcomes:
            self.metrics.processed.labels(outcome.status or "retry").inc()
        return len(entries) >= self.batch_max, len(entries)

    def _list(self, psp: str, entries: list[InboxEntry]) -> dict[str, Mapping[str, Any]]:
        """The PSP's own records of these Pix, fetched with its list (``GET /pix?inicio&fim``) for each cluster of
        at least ``BULK_CONFIRM_MIN`` notified within a short time of each other: one call instead of one per Pix.
        What the list does not have is confirmed one by one (``GET /pix/{e2eid}``) afterwards."""
        if len(entries) < BULK_CONFIRM_MIN:
            return {}
        wanted = {entry.end_to_end_id for entry in entries}
        found: dict[str, Mapping[str, Any]] = {}
        for start, end in _clusters([entry.notified.processed_at for entry in entries]):
            started = time.perf_counter()
            try:
                items = list(self.gateway.list_received_pix(psp, start, end))
            except (PspUnavailable, PspRejected, PspNotFound, errors.LedgerUnavailable, ValueError) as exc:
                log.warning("listing %s's Pix failed (%s); confirming one by one", psp, exc)
                continue
            finally:
                self.metrics.confirm_latency.labels(psp).observe(time.perf_counter() - started)
            for item in items:
                e2eid = item.get("endToEndId") if isinstance(item, Mapping) else None
                if e2eid in wanted:
                    found[e2eid] = item
        return found

    def _fetch(self, entry: InboxEntry) -> Mapping[str, Any] | _Outcome:
        """``GET /pix/{e2eid}`` at the Pix's PSP (blocking): its record, or what to do with the row."""
        e2eid = entry.end_to_end_id
        started = time.perf_counter()
        try:
            return self.gateway.get_received_pix(entry.psp, e2eid)
        except PspNotFound:
            if entry.attempts + 1 >= NOT_FOUND_ATTEMPTS_MAX:
                log.warning("PIX %s notified by %s is unknown to that PSP: rejected, nothing credited", e2eid,
                            entry.psp)
                return _Outcome(e2eid, "rejected", "the PSP does not know this Pix")
            return _Outcome(e2eid, None, "not found at the PSP (yet)", retry_delay_s(entry.attempts))
        except (PspUnavailable, PspRejected, errors.LedgerUnavailable) as exc:
            return _Outcome(e2eid, None, f"confirmation failed: {exc}", retry_delay_s(entry.attempts))
        except ValueError as exc:  # a PSP name the gateway does not know (configuration changed)
            return _Outcome(e2eid, None, str(exc), RETRY_DELAY_S_MAX)
        finally:
            self.metrics.confirm_latency.labels(entry.psp).observe(time.perf_counter() - started)

    def _credit_all(self, confirmed: list[tuple[InboxEntry, ReceivedPix]]) -> list[_Outcome]:
        """Submits every credit to the ledger writer, then waits for them all (in a worker thread)."""
        writer = self.ledger.writer
        futures = [writer.submit(CreditReceivedPix(entry.end_to_end_id, entry.psp, pix.amount_centavos,
                                                   pix.processed_at, pix.txid, "webhook"))
                   for entry, pix in confirmed]
        deadline = time.monotonic() + LEDGER_WAIT_S_MAX
        outcomes = []
        for (entry, pix), future in zip(confirmed, futures, strict=True):
            try:
                result = future.result(timeout=max(deadline - time.monotonic(), 0.001))
            except TimeoutError:  # concurrent.futures.TimeoutError is TimeoutError since 3.11
                outcomes.append(_Outcome(entry.end_to_end_id, None, "ledger: no answer in time",
                                         retry_delay_s(entry.attempts)))
                continue
            except errors.LedgerError as exc:
                outcomes.append(_credit_refused(entry, exc))
                continue
            outcomes.append(_credited(entry, pix, result))
        return outcomes


def _check(entry: InboxEntry, data: Mapping[str, Any]) -> ReceivedPix | _Outcome:
    """The PSP's record of the Pix, validated like a webhook; or why it cannot be credited."""
    e2eid = entry.end_to_end_id
    try:
        confirmed = validate_pix(data)
    except InvalidPixPayload as exc:
        log.error("PSP %s answered an invalid Pix for %s: %s", entry.psp, e2eid, exc.detail)
        return _Outcome(e2eid, "invalid", f"the PSP's answer breaks the spec: {exc.detail}")
    if confirmed.end_to_end_id != e2eid:
        return _Outcome(e2eid, "invalid", f"the PSP answered another Pix ({confirmed.end_to_end_id})")
    return confirmed


def _credit_refused(entry: InboxEntry, exc: errors.LedgerError) -> _Outcome:
    e2eid = entry.end_to_end_id
    if isinstance(exc, errors.LedgerUnavailable | errors.LedgerOverloaded | errors.WriterBusy):
        return _Outcome(e2eid, None, f"ledger: {exc.detail}", retry_delay_s(entry.attempts))
    if isinstance(exc, errors.IdempotencyConflict):
        log.error("PIX %s was credited before with other data: %s", e2eid, exc.detail)
        return _Outcome(e2eid, "conflict", exc.detail)
    # e.g. the settlement account missing: an operator must act; keep the row and retry slowly.
    log.error("PIX %s not credited (%s): %s; retrying", e2eid, exc.code, exc.detail)
    return _Outcome(e2eid, None, f"{exc.code}: {exc.detail}", RETRY_DELAY_S_MAX)


def _credited(entry: InboxEntry, confirmed: ReceivedPix, result: ReceivedResult) -> _Outcome:
    received = result.received
    status = "credited" if received.suspense_reason is None else "suspense"
    return _Outcome(entry.end_to_end_id, status, _differences(entry.notified, confirmed) or received.suspense_reason)


def _clusters(moments: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Windows ``[first - margin, last + margin]`` covering runs of moments at most ``BULK_GAP`` apart and at most
    ``BULK_WINDOW`` long, each holding at least ``BULK_CONFIRM_MIN`` of them."""
    ordered = sorted(moments)
    windows: list[tuple[datetime, datetime]] = []
    run: list[datetime] = []
    for moment in ordered:
        if run and (moment - run[-1] > BULK_GAP or moment - run[0] > BULK_WINDOW):
            if len(run) >= BULK_CONFIRM_MIN:
                windows.append(_window(run[0], run[-1]))
            run = []
        run.append(moment)
    if len(run) >= BULK_CONFIRM_MIN:
        windows.append(_window(run[0], run[-1]))
    return windows


def _window(first: datetime, last: datetime) -> tuple[datetime, datetime]:
    """[first, last] and a millisecond: the spec's ``horario`` carries milliseconds, and a PSP may keep more
    precision than it notified. A wider margin would list (and parse) every Pix received meanwhile for nothing;
    a Pix this window misses (a PSP that rounds otherwise) is confirmed on its own."""
    return first, last + BULK_MARGIN


def _differences(notified: NotifiedPix, confirmed: ReceivedPix) -> str | None:
    """What the webhook said that the PSP's own record contradicts (the PSP's record is what is credited)."""
    notes = []
    if notified.amount_centavos != confirmed.amount_centavos:
        notes.append(f"notified valor {format_valor(notified.amount_centavos)}, the PSP says "
                     f"{format_valor(confirmed.amount_centavos)}")
    if notified.txid != confirmed.txid:
        notes.append(f"notified txid {notified.txid}, the PSP says {confirmed.txid}")
    return "; ".join(notes) or None


def notified_items(received: Sequence[ReceivedPix]) -> tuple[NotifiedPix, ...]:
    """What the inbox keeps of each validated Pix of a notification."""
    return tuple(NotifiedPix(p.end_to_end_id, p.amount_centavos, p.processed_at, p.txid) for p in received)


