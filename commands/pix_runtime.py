"""The PIX side of the API process (ADR 0009): what the webhook and PIX routes need, started after the ledger writer.

``PixRuntime`` is built by ``commands.api.bootstrap`` without connecting anything; ``start(ledger)`` (in the
lifespan) builds the adapters (``commands.pix_bootstrap``: PSP gateway, Postgres payment routes and inbox), creates
the inbox tables, opens the platform's PIX settlement and suspense accounts (idempotent), and starts the inbox
writer, the inbox processor, the payout processor, the periodic reconciler and the webhook registration at the PSPs.
``stop`` undoes it in reverse order, before the ledger writer stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from commands.api.gateway import LedgerGateway
from commands.pix_inbox import InboxProcessor, InboxWriter
from commands.pix_metrics import PixMetrics
from commands.pix_payouts import PayoutProcessor
from commands.pix_reconcile import PeriodicReconciler
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.model import OpenAccount
from ledger.pix_state import SETTLEMENT_ACCOUNT_ID, SUSPENSE_ACCOUNT_ID
from ledger.ports import PaymentRoutes, PixGateway, PixInbox

log = logging.getLogger(__name__)

#: Attempts to register the webhook URL at a PSP at start (a PSP may start after the API).
WEBHOOK_REGISTRATION_ATTEMPTS_MAX = 30
WEBHOOK_REGISTRATION_INTERVAL_S = 2.0


@dataclass(frozen=True)
class PixOptions:
    """What the PIX side needs to know before it runs: the PSPs, their webhook secrets, and its tuning."""

    psps: tuple[str, ...]
    webhook_secrets: Mapping[str, bytes] = field(repr=False)
    #: Where the PSPs post, with ``{psp}`` for the PSP's name (the PSP appends ``/pix``); None: do not register.
    webhook_url: str | None
    deposit_expiry_s: int = 3600
    confirm_workers: int = 16
    payout_workers: int = 8
    #: The longest wait between two looks at a payout whose outcome is not final.
    payout_delay_s_max: float = 30.0
    inbox_sweep_s: float = 1.0
    reconcile_interval_s: float = 300.0
    reconcile_window_s: float = 7200.0
    reconcile_lag_s: float = 30.0


@dataclass
class PixAdapters:
    """The infrastructure behind the PIX ports, built in ``start`` (``commands.pix_bootstrap``)."""

    gateway: PixGateway
    routes: PaymentRoutes
    inbox: PixInbox
    setup: Sequence[Callable[[], None]] = ()
    close: Sequence[Callable[[], None]] = ()
    #: Whether a PSP answers at all (a plain probe outside the gateway, so it does not feed the breaker).
    reachable: Callable[[str], bool] = lambda _psp: True


class PixRuntime:
    """The PIX components of one API process; see the module docstring."""

    def __init__(self, options: PixOptions, metrics: PixMetrics, adapters: Callable[[], PixAdapters]) -> None:
        self.options = options
        self.metrics = metrics
        self._build_adapters = adapters
        self.adapters: PixAdapters | None = None
        self.inbox_writer: InboxWriter | None = None
        self.processor: InboxProcessor | None = None
        self.payouts: PayoutProcessor | None = None
        self.reconciler: PeriodicReconciler | None = None
        self.ledger: LedgerGateway | None = None
        self.webhook_registration: dict[str, str] = {}
        self._registration: asyncio.Task[None] | None = None

    @property
    def psps(self) -> tuple[str, ...]:
        return self.options.psps

    @property
    def gateway(self) -> PixGateway:
        assert self.adapters is not None, "PIX is not started"
        return self.adapters.gateway

    def webhook_secret(self, psp: str) -> bytes | None:
        return self.options.webhook_secrets.get(psp)

    def breaker_states(self) -> dict[str, str]:
        return self.adapters.gateway.breaker_states() if self.adapters is not None else {}

    def pending(self) -> int:
        return self.processor.pending if self.processor is not None else 0

    async def start(self, ledger: LedgerGateway) -> None:
        """Starts everything; the PIX routes answer only once this returned (``ledger`` is set last)."""
        self.adapters = adapters = await asyncio.to_thread(self._build_adapters)
        for setup in adapters.setup:
            await asyncio.to_thread(setup)
        for account_id, code in ((SETTLEMENT_ACCOUNT_ID, AccountCode.PIX_SETTLEMENT),
                                 (SUSPENSE_ACCOUNT_ID, AccountCode.SUSPENSE)):
            await ledger.execute(OpenAccount(account_id, int(code), int(REQUIRED_FLAGS[code]),
                                             reference=f"pix:{code.name.lower()}"))
        self.inbox_writer = InboxWriter(adapters.inbox)
        self.inbox_writer.start()
        options = self.options
        self.processor = InboxProcessor(adapters.inbox, ledger, adapters.gateway, self.metrics,
                                        confirm_workers=options.confirm_workers, sweep_s=options.inbox_sweep_s)
        await self.processor.start()
        self.payouts = PayoutProcessor(ledger, adapters.gateway, adapters.routes, self.metrics,
                                       workers=options.payout_workers, delay_s_max=options.payout_delay_s_max)
        await self.payouts.start()
        self.reconciler = PeriodicReconciler(ledger, adapters.gateway, options.psps, self.metrics,
                                             interval_s=options.reconcile_interval_s,
                                             window_s=options.reconcile_window_s, lag_s=options.reconcile_lag_s)
        await self.reconciler.start()
        if options.webhook_url:
            self._registration = asyncio.get_running_loop().create_task(self._register(options.webhook_url))
        self.ledger = ledger
        log.info("PIX ready: PSPs %s, webhook %s", ", ".join(options.psps), options.webhook_url or "(not registered)")

    async def stop(self) -> None:
        if self._registration is not None:
            self._registration.cancel()
            await asyncio.gather(self._registration, return_exceptions=True)
        for component in (self.reconciler, self.payouts, self.processor):
            if component is not None:
                await component.stop()
        if self.inbox_writer is not None:
            await asyncio.to_thread(self.inbox_writer.stop)
        if self.adapters is not None:
            for close in self.adapters.close:
                await asyncio.to_thread(close)
        self.ledger = None

    async def _register(self, url: str) -> None:
        """Registers the webhook at every PSP, retrying those that do not answer yet (bounded)."""
        assert self.adapters is not None
        adapters = self.adapters
        pending = set(self.options.psps)
        for attempt in range(WEBHOOK_REGISTRATION_ATTEMPTS_MAX):
            # A PSP that is still starting (`razao up` starts the API first) would only feed its breaker.
            answering = [await asyncio.to_thread(adapters.reachable, psp) for psp in sorted(pending)]
            if not all(answering) and attempt + 1 < WEBHOOK_REGISTRATION_ATTEMPTS_MAX:
                await asyncio.sleep(WEBHOOK_REGISTRATION_INTERVAL_S)
                continue
            results = await asyncio.to_thread(adapters.gateway.register_webhook, url)
            for psp, result in results.items():
                if psp in pending:
                    self.webhook_registration[psp] = result
                    if result == "ok":
                        pending.discard(psp)
            if not pending:
                log.info("PIX webhook registered at %s: %s", ", ".join(self.options.psps), url)
                return
            await asyncio.sleep(WEBHOOK_REGISTRATION_INTERVAL_S)
        log.error("PIX webhook not registered at %s: %s", ", ".join(sorted(pending)),
                  {psp: self.webhook_registration.get(psp) for psp in pending})

