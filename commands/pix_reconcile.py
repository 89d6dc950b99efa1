"""Reconciliation of received Pix: the PSPs' own lists against the ledger, repairing missing credits (ADR 0009).

Webhooks get lost (the PSP gives up retrying, our answer is lost, a Pix without txid is never notified). The PSP's
list of received Pix (``GET /pix?inicio&fim``) is the truth: every Pix in it that the ledger has not credited is
credited now with ``CreditReceivedPix`` (source ``reconciliation``) — to its deposit's wallet when it matches one,
else to suspense. The ledger credits an endToEndId once, so running this any number of times, or while webhooks
for the same Pix are being processed, credits nothing twice.

It runs periodically in the API process (``PeriodicReconciler``: every ``interval_s``, over the last ``window_s``
ending ``lag_s`` ago, so webhooks get the first chance) and on demand: ``POST /v1/reconciliation/runs`` and
``razao pix reconcile --from ISO --to ISO``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from commands.api.gateway import LedgerGateway
from commands.pix_metrics import PixMetrics
from ledger import errors
from ledger.pix import InvalidPixPayload, ReceivedPix, validate_pix
from ledger.pix_flows import CreditReceivedPix, ReadPix, ReceivedResult
from ledger.ports import PixGateway, PspNotFound, PspRejected, PspUnavailable

log = logging.getLogger(__name__)

#: The longest window one run may cover (the PSP pages 1,000 Pix at a time; the gateway stops at 1,000 pages).
RECONCILE_WINDOW_MAX: Final = timedelta(days=31)
#: Endtoendids asked of the ledger per read, and credits in flight at once.
LEDGER_CHUNK_MAX: Final = 5_000


@dataclass
class PspReport:
    listed: int = 0
    already_credited: int = 0
    credited: int = 0
    suspense: int = 0
    invalid: int = 0
    failed: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"listed": self.listed, "already_credited": self.already_credited, "credited": self.credited,
                "suspense": self.suspense, "invalid": self.invalid, "failed": self.failed, "error": self.error}


@dataclass
class ReconcileReport:
    start: datetime
    end: datetime
    psps: dict[str, PspReport] = field(default_factory=dict)

    @property
    def repaired(self) -> int:
        return sum(r.credited + r.suspense for r in self.psps.values())

    def to_json(self) -> dict[str, Any]:
        return {"inicio": self.start.isoformat(), "fim": self.end.isoformat(), "repaired": self.repaired,
                "psps": {name: report.to_json() for name, report in self.psps.items()}}


def check_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise errors.InvalidRequest("inicio and fim need a UTC offset", field="inicio")
    if end < start:
        raise errors.InvalidRequest("fim is before inicio", field="fim")
    if end - start > RECONCILE_WINDOW_MAX:
        raise errors.InvalidRequest(f"a run covers at most {RECONCILE_WINDOW_MAX.days} days", field="fim")


async def reconcile(ledger: LedgerGateway, gateway: PixGateway, psps: Sequence[str], start: datetime,  # noqa: PLR0917
                    end: datetime, metrics: PixMetrics | None = None) -> ReconcileReport:
    """Credits every Pix the PSPs list in [start, end] that the ledger lacks. Raises ``InvalidRequest``."""
    check_window(start, end)
    report = ReconcileReport(start, end)
    for psp in psps:
        report.psps[psp] = psp_report = PspReport()
        try:
            items = await asyncio.to_thread(_listing, gateway, psp, start, end)
        except (PspUnavailable, PspRejected, PspNotFound) as exc:
            psp_report.error = str(exc)
            log.warning("reconciliation: %s could not list its Pix: %s", psp, exc)
            continue
        psp_report.listed = len(items)
        valid: dict[str, ReceivedPix] = {}
        for item in items:
            try:
                pix = validate_pix(item)
            except InvalidPixPayload as exc:
                psp_report.invalid += 1
                log.error("reconciliation: %s listed a Pix that breaks the spec: %s", psp, exc.detail)
                continue
            valid[pix.end_to_end_id] = pix
        e2eids = list(valid)
        for offset in range(0, len(e2eids), LEDGER_CHUNK_MAX):
            chunk = e2eids[offset:offset + LEDGER_CHUNK_MAX]
            snapshot = await ledger.execute(ReadPix(received=tuple(chunk)))
            missing = [valid[e] for e in chunk if e not in snapshot.received]
            psp_report.already_credited += len(chunk) - len(missing)
            results = await asyncio.gather(*(_credit(ledger, psp, pix) for pix in missing), return_exceptions=True)
            for pix, result in zip(missing, results, strict=True):
                _count(psp_report, pix, result)
    if metrics is not None:
        for psp_report in report.psps.values():
            for name in ("already_credited", "credited", "suspense", "invalid", "failed"):
                metrics.reconciled.labels(name).inc(getattr(psp_report, name))
    if report.repaired:
        log.warning("reconciliation %s..%s credited %d Pix that no webhook had", start, end, report.repaired)
    return report


def _listing(gateway: PixGateway, psp: str, start: datetime, end: datetime) -> list[Mapping[str, Any]]:
    return list(gateway.list_received_pix(psp, start, end))


async def _credit(ledger: LedgerGateway, psp: str, pix: ReceivedPix) -> ReceivedResult:
    result: ReceivedResult = await ledger.execute(CreditReceivedPix(
        pix.end_to_end_id, psp, pix.amount_centavos, pix.processed_at, pix.txid, "reconciliation"))
    return result


def _count(report: PspReport, pix: ReceivedPix, result: ReceivedResult | BaseException) -> None:
    if isinstance(result, BaseException):
        report.failed += 1
        log.error("reconciliation: Pix %s not credited: %r", pix.end_to_end_id, result)
    elif result.replayed:  # credited meanwhile (a webhook won the race)
        report.already_credited += 1
    elif result.received.suspense_reason is None:
        report.credited += 1
    else:
        report.suspense += 1


class PeriodicReconciler:
    """Runs ``reconcile`` over ``[now - window_s - lag_s, now - lag_s]`` every ``interval_s`` (0 disables it)."""

    def __init__(self, ledger: LedgerGateway, gateway: PixGateway, psps: Sequence[str], metrics: PixMetrics, *,
                 interval_s: float, window_s: float, lag_s: float) -> None:
        assert interval_s >= 0 and window_s > 0 and lag_s >= 0
        assert timedelta(seconds=window_s) <= RECONCILE_WINDOW_MAX
        self.ledger, self.gateway, self.psps, self.metrics = ledger, gateway, tuple(psps), metrics
        self.interval_s, self.window_s, self.lag_s = interval_s, window_s, lag_s
        self._task: asyncio.Task[None] | None = None
        self.last: ReconcileReport | None = None

    async def start(self) -> None:
        if self.interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pix-reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            end = datetime.now(UTC) - timedelta(seconds=self.lag_s)
            try:
                self.last = await reconcile(self.ledger, self.gateway, self.psps,
                                            end - timedelta(seconds=self.window_s), end, self.metrics)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic PIX reconciliation failed; next run in %.0f s", self.interval_s)
