"""Money leaving by PIX: withdrawals and devoluções followed to their end (ADR 0009).

The ledger holds the money first (``RequestWithdrawal``/``RequestRefund`` commit a pending transfer with the fact).
``PayoutProcessor`` (an asyncio task in the API process) then drives each one through the PSP and ends it in the
ledger: posted when the PSP confirms, voided when it definitely did not happen, and left held — asked again later,
with backoff — while the outcome is unknown or pending.

A Pix is never paid twice:

- a withdrawal's payment id is derived from the withdrawal id, and ``PUT /pagamentos/{idEnvio}`` is idempotent;
- the gateway pins a payment id to one PSP before its first byte leaves (``PaymentRoutes``, in Postgres), and never
  sends it elsewhere once it may have arrived;
- before sending an id that is already pinned (a retry, or the first attempt after a restart), the processor asks
  that PSP (``get_payment``): a final status settles it; only "not found there" sends again, with the same id, to
  the same PSP.

On start the processor reads every withdrawal and devolução still in progress from the ledger (the state is rebuilt
from the log), so a crash at any point resumes with the hold still in place.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final
from uuid import UUID

from commands.api.gateway import LedgerGateway
from commands.pix_metrics import PixMetrics
from ledger import errors
from ledger.pix import is_valid_end_to_end_id
from ledger.pix_flows import AlreadySettled, ReadPix, SettleRefund, SettleWithdrawal
from ledger.pix_state import REFUND_IN_PROGRESS, WITHDRAWAL_PROCESSING, Refund, Withdrawal
from ledger.ports import (
    PaymentIdConflict,
    PaymentOutcome,
    PaymentRoutes,
    PaymentStatus,
    PixGateway,
    PspNotFound,
    PspRejected,
    PspUnavailable,
    RefundOutcome,
    RefundState,
)

log = logging.getLogger(__name__)

#: Backoff between looks at a payout whose outcome is not final yet.
FOLLOW_DELAY_S_MIN: Final = 0.2
FOLLOW_DELAY_S_MAX: Final = 30.0
#: Payouts followed at once (each a thread blocked on a PSP call at most ``deadline_s``).
PAYOUT_WORKERS_MAX: Final = 32
REASON_LENGTH_MAX: Final = 200

assert FOLLOW_DELAY_S_MIN < FOLLOW_DELAY_S_MAX


def follow_delay_s(attempt: int, delay_s_max: float = FOLLOW_DELAY_S_MAX) -> float:
    return float(min(FOLLOW_DELAY_S_MIN * 2 ** max(attempt, 0), delay_s_max))


def _reason(text: object) -> str:
    """A PSP's words as the ledger stores them: printable, bounded."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in str(text or ""))
    return cleaned[:REASON_LENGTH_MAX] or "unspecified"


@dataclass(order=True)
class _Due:
    at: float
    kind: str = field(compare=False)
    id: UUID = field(compare=False)
    attempt: int = field(compare=False, default=0)


class PayoutProcessor:
    """Follows withdrawals and devoluções (see the module docstring)."""

    def __init__(self, ledger: LedgerGateway, gateway: PixGateway, routes: PaymentRoutes, metrics: PixMetrics, *,
                 workers: int = 8, delay_s_max: float = FOLLOW_DELAY_S_MAX) -> None:
        assert 0 < workers <= PAYOUT_WORKERS_MAX
        assert FOLLOW_DELAY_S_MIN <= delay_s_max <= FOLLOW_DELAY_S_MAX
        self.delay_s_max = delay_s_max
        self.ledger = ledger
        self.gateway = gateway
        self.routes = routes
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="pix-payout")
        self._heap: list[_Due] = []
        self._busy: set[UUID] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._wake = asyncio.Event()
        snapshot = await self.ledger.execute(ReadPix(open_work=True))
        for withdrawal_id in snapshot.withdrawals:
            self.follow_withdrawal(withdrawal_id)
        for refund_id in snapshot.refunds:
            self.follow_refund(refund_id)
        if snapshot.withdrawals or snapshot.refunds:
            log.info("PIX payouts resumed: %d withdrawals, %d devoluções in progress", len(snapshot.withdrawals),
                     len(snapshot.refunds))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pix-payouts")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def follow_withdrawal(self, withdrawal_id: UUID, delay_s: float = 0.0, attempt: int = 0) -> None:
        self._schedule(_Due(self._now() + delay_s, "withdrawal", withdrawal_id, attempt))

    def follow_refund(self, refund_id: UUID, delay_s: float = 0.0, attempt: int = 0) -> None:
        self._schedule(_Due(self._now() + delay_s, "refund", refund_id, attempt))

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _schedule(self, due: _Due) -> None:
        heapq.heappush(self._heap, due)
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            now = self._now()
            while self._heap and self._heap[0].at <= now:
                due = heapq.heappop(self._heap)
                if due.id in self._busy:  # already being followed: look again after it
                    heapq.heappush(self._heap, _Due(now + FOLLOW_DELAY_S_MIN, due.kind, due.id, due.attempt))
                    break
                self._busy.add(due.id)
                task = asyncio.get_running_loop().create_task(self._follow(due))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            timeout = self._heap[0].at - self._now() if self._heap else FOLLOW_DELAY_S_MAX
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.001))
            except TimeoutError:
                pass

    async def _follow(self, due: _Due) -> None:
        try:
            done = await (self._withdrawal(due.id) if due.kind == "withdrawal" else self._refund(due.id, due.attempt))
        except asyncio.CancelledError:
            raise
        except errors.LedgerError as exc:  # the ledger busy or stopping: the hold stays, look again later
            log.warning("following %s %s: %s (%s); will retry", due.kind, due.id, exc.code, exc.detail)
            done = False
        except Exception:  # a bug: keep the hold, say so loudly, and look again later
            log.exception("following %s %s failed; will retry", due.kind, due.id)
            done = False
        finally:
            self._busy.discard(due.id)
        if not done:
            delay_s = follow_delay_s(due.attempt, self.delay_s_max)
            self._schedule(_Due(self._now() + delay_s, due.kind, due.id, due.attempt + 1))

    # ---- withdrawals ------------------------------------------------------------------------------------------

    async def _withdrawal(self, withdrawal_id: UUID) -> bool:
        snapshot = await self.ledger.execute(ReadPix(withdrawals=(withdrawal_id,)))
        withdrawal = snapshot.withdrawals.get(withdrawal_id)
        if withdrawal is None or withdrawal.status != WITHDRAWAL_PROCESSING:
            return True
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._executor, self.pay, withdrawal)
        except PaymentIdConflict:
            log.critical("withdrawal %s: payment id %s is taken at the PSP by another payment; the hold stays "
                         "until a person looks", withdrawal.id, withdrawal.payment_id)
            self.metrics.withdrawals.labels("conflict").inc()
            return False
        if not outcome.definite:
            self.metrics.withdrawals.labels(outcome.status.value.lower()).inc()
            return False
        confirmed = outcome.status is PaymentStatus.CONFIRMED
        e2eid = outcome.end_to_end_id if is_valid_end_to_end_id(outcome.end_to_end_id) else None
        command = SettleWithdrawal(withdrawal.id, "CONFIRMED" if confirmed else "FAILED", outcome.psp,
                                   end_to_end_id=e2eid, reason=None if confirmed else _reason(outcome.reason))
        try:
            await self.ledger.execute(command)
        except AlreadySettled:
            log.critical("withdrawal %s ended in the ledger unlike the PSP says (%s)", withdrawal.id, outcome)
            return True
        self.metrics.withdrawals.labels("completed" if confirmed else "failed").inc()
        return True

    def pay(self, withdrawal: Withdrawal) -> PaymentOutcome:
        """Where this payment stands at its PSP, sending it (with its one id) only when no PSP has it. Blocking."""
        try:
            pinned = self.routes.psp_for(withdrawal.payment_id)
        except errors.LedgerUnavailable as exc:
            return PaymentOutcome(withdrawal.payment_id, "?", PaymentStatus.UNKNOWN, withdrawal.amount_centavos,
                                  reason=str(exc))
        if pinned is not None:
            try:
                outcome = self.gateway.get_payment(pinned, withdrawal.payment_id)
            except PspNotFound:
                # It never arrived there: sending again with the same id is safe, and goes to the same PSP.
                return self._send(withdrawal)
            except (PspUnavailable, PspRejected) as exc:
                return PaymentOutcome(withdrawal.payment_id, pinned, PaymentStatus.UNKNOWN,
                                      withdrawal.amount_centavos, reason=str(exc))
            if outcome.amount_centavos != withdrawal.amount_centavos:
                log.critical("payment %s at %s is for %d centavos, the withdrawal for %d", withdrawal.payment_id,
                             pinned, outcome.amount_centavos, withdrawal.amount_centavos)
                return PaymentOutcome(withdrawal.payment_id, pinned, PaymentStatus.UNKNOWN,
                                      withdrawal.amount_centavos, reason="amount differs at the PSP")
            return outcome
        return self._send(withdrawal)

    def _send(self, withdrawal: Withdrawal) -> PaymentOutcome:
        try:
            return self.gateway.send_payment(withdrawal.payment_id, withdrawal.pix_key, withdrawal.amount_centavos,
                                             description=f"Razão saque {withdrawal.id.hex[:8]}")
        except errors.LedgerUnavailable as exc:  # the routes store: nothing was sent
            return PaymentOutcome(withdrawal.payment_id, "?", PaymentStatus.UNKNOWN, withdrawal.amount_centavos,
                                  reason=str(exc))

    # ---- devoluções -------------------------------------------------------------------------------------------

    async def _refund(self, refund_id: UUID, attempt: int) -> bool:
        snapshot = await self.ledger.execute(ReadPix(refunds=(refund_id,)))
        refund = snapshot.refunds.get(refund_id)
        if refund is None or refund.status != REFUND_IN_PROGRESS:
            return True
        loop = asyncio.get_running_loop()
        final = await loop.run_in_executor(self._executor, self.refund_status, refund)
        if final is None:
            self.metrics.refunds.labels("pending").inc()
            return False
        status, return_id, reason = final
        try:
            await self.ledger.execute(SettleRefund(refund.id, status, return_id=return_id,  # type: ignore[arg-type]
                                                   reason=None if reason is None else _reason(reason)))
        except AlreadySettled:
            log.critical("devolução %s ended in the ledger unlike the PSP says (%s)", refund.refund_id, status)
            return True
        self.metrics.refunds.labels(status.lower()).inc()
        return True

    def refund_status(self, refund: Refund) -> tuple[str, str | None, str | None] | None:
        """The devolução's final ``(status, rtrId, reason)`` at its PSP, asking for it if the PSP does not have it
        yet; ``None`` while it is in progress or the PSP cannot be reached. Blocking."""
        try:
            try:
                outcome = self.gateway.get_refund(refund.psp, refund.end_to_end_id, refund.refund_id)
            except PspNotFound:
                outcome = self.gateway.request_refund(refund.psp, refund.end_to_end_id, refund.refund_id,
                                                      refund.amount_centavos, description=refund.description)
        except PspUnavailable:
            return None
        except PspNotFound:
            return "NAO_REALIZADO", None, "the PSP does not know this Pix"
        except PspRejected as exc:
            if exc.context.get("status") == 401:  # our credentials, not the devolução: try again later
                return None
            return "NAO_REALIZADO", None, exc.detail
        return _final(outcome)


def _final(outcome: RefundOutcome) -> tuple[str, str | None, str | None] | None:
    if outcome.status is RefundState.EM_PROCESSAMENTO:
        return None
    return outcome.status.value, outcome.return_id, outcome.reason
