"""Prometheus metrics of the PIX flows, in the API's registry: webhooks, the inbox, payouts, reconciliation and the
PSP circuit breakers (one gauge per PSP and state, read at scrape time)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

BREAKER_STATES: Final = ("closed", "half-open", "open")
#: ``razao_pix_breaker_open`` is 0 closed, 1 half-open, 2 open (one number per PSP, for alerts and graphs).
BREAKER_LEVELS: Final = {"closed": 0, "half-open": 1, "open": 2}
CONFIRM_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class PixMetrics:
    webhooks: Counter
    notified: Counter
    processed: Counter
    confirm_latency: Histogram
    withdrawals: Counter
    refunds: Counter
    reconciled: Counter


def build_pix_metrics(registry: CollectorRegistry) -> PixMetrics:
    return PixMetrics(
        webhooks=Counter("razao_pix_webhook_deliveries", "Webhook POSTs by PSP and outcome", ["psp", "outcome"],
                         registry=registry),
        notified=Counter("razao_pix_webhook_pix", "Pix notified by webhooks: new or duplicate", ["psp", "kind"],
                         registry=registry),
        processed=Counter("razao_pix_inbox_processed", "Notified Pix processed, by result", ["result"],
                          registry=registry),
        confirm_latency=Histogram("razao_pix_confirm_seconds", "GET /pix/{e2eid} at the PSP", ["psp"],
                                  buckets=CONFIRM_BUCKETS_S, registry=registry),
        withdrawals=Counter("razao_pix_withdrawals", "Withdrawal steps by outcome", ["outcome"], registry=registry),
        refunds=Counter("razao_pix_refunds", "Devolução steps by outcome", ["outcome"], registry=registry),
        reconciled=Counter("razao_pix_reconciled", "Pix seen by reconciliation, by result", ["result"],
                           registry=registry),
    )


class BreakerCollector(Collector):
    """``razao_pix_breaker_state{psp,state}`` (1 for the current state, 0 for the others) and
    ``razao_pix_breaker_open{psp}`` (0 closed, 1 half-open, 2 open), read from the gateway at scrape time, and
    ``razao_pix_inbox_pending`` (notified Pix not processed yet, as of the inbox processor's last look)."""

    def __init__(self, states: Callable[[], dict[str, str]], pending: Callable[[], int]) -> None:
        self.states = states
        self.pending = pending

    def collect(self) -> Iterator[Metric]:
        states = self.states()
        per_state = GaugeMetricFamily("razao_pix_breaker_state", "PSP circuit breaker state (1 = current)",
                                      labels=["psp", "state"])
        level = GaugeMetricFamily("razao_pix_breaker_open", "PSP circuit breaker: 0 closed, 1 half-open, 2 open",
                                  labels=["psp"])
        for psp, state in states.items():
            for name in BREAKER_STATES:
                per_state.add_metric([psp, name], 1.0 if state == name else 0.0)
            level.add_metric([psp], float(BREAKER_LEVELS.get(state, 2)))
        yield per_state
        yield level
        yield GaugeMetricFamily("razao_pix_inbox_pending", "Notified Pix not processed yet", value=self.pending())
