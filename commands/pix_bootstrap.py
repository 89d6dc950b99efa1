"""Wiring of the PIX side: the one place in ``commands`` that builds the PIX adapters from ``infra``.

``pix_options(settings)`` reads what the routes need (PSP names, webhook secrets) without connecting;
``pix_adapters(settings)`` builds the gateway (retries, breakers, failover), the Postgres payment routes and the
Postgres inbox, and is called by ``PixRuntime.start`` in the API's lifespan. Outside development, the sandbox PSPs'
development secrets are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from commands.api.settings import ApiSettings, UnsafeConfiguration
from commands.pix_runtime import PixAdapters, PixOptions
from infra.pix_gateway import (
    PostgresPaymentRoutes,
    PspConfig,
    breaker_state_recorder,
    build_gateway,
    load_psp_configs,
)
from infra.pix_inbox import PostgresPixInbox
from infra.sandbox_psp.services import PRIMARY, SECONDARY

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0

_DEVELOPMENT_SECRETS = frozenset({PRIMARY.client_secret, PRIMARY.webhook_secret, SECONDARY.client_secret,
                                  SECONDARY.webhook_secret, "sandbox-client-secret", "sandbox-webhook-secret"})


def _configs(settings: ApiSettings) -> tuple[PspConfig, PspConfig]:
    configs = load_psp_configs()
    if not settings.is_development:
        for config in configs:
            if config.client_secret in _DEVELOPMENT_SECRETS or config.webhook_secret in _DEVELOPMENT_SECRETS:
                raise UnsafeConfiguration(f"PSP {config.name} uses a sandbox development secret; set "
                                          f"RAZAO_PSP_{config.name.upper()}_CLIENT_SECRET and _WEBHOOK_SECRET")
            if not config.webhook_secret:
                raise UnsafeConfiguration(f"PSP {config.name} has no webhook secret")
    return configs


def pix_options(settings: ApiSettings) -> PixOptions:
    """The PIX options from the settings and the PSP configuration (``RAZAO_PSP_*``). Connects to nothing."""
    configs = _configs(settings)
    return PixOptions(
        psps=tuple(c.name for c in configs),
        webhook_secrets={c.name: c.webhook_secret.encode() for c in configs if c.webhook_secret},
        webhook_url=settings.pix_webhook_url or None,
        deposit_expiry_s=settings.pix_deposit_expiry_s,
        confirm_workers=settings.pix_confirm_workers,
        payout_workers=settings.pix_payout_workers,
        payout_delay_s_max=settings.pix_payout_delay_s_max,
        inbox_sweep_s=settings.pix_inbox_sweep_s,
        reconcile_interval_s=settings.pix_reconcile_interval_s,
        reconcile_window_s=settings.pix_reconcile_window_s,
        reconcile_lag_s=settings.pix_reconcile_lag_s,
    )


def _log_breaker(psp: str, old: str | None, new: str) -> None:
    log.warning("PSP %s circuit breaker: %s -> %s", psp, old, new)


def pix_adapters(settings: ApiSettings) -> PixAdapters:
    """The gateway, durable payment routes and the inbox (their pools open on first use)."""
    routes = PostgresPaymentRoutes(settings.pg_dsn)
    inbox = PostgresPixInbox(settings.pg_dsn)
    recorder = breaker_state_recorder(Path(settings.state_dir))
    gateway = build_gateway(routes=routes, listeners=[recorder, _log_breaker])
    for psp, state in gateway.breaker_states().items():  # so that `razao status` shows them from the start
        recorder(psp, None, state)
    urls = {config.name: config.base_url for config in _configs(settings)}

    def reachable(psp: str) -> bool:
        try:
            httpx.get(urls[psp] + "/", timeout=PROBE_TIMEOUT_S)
        except httpx.TransportError:
            return False
        return True

    return PixAdapters(gateway=gateway, routes=routes, inbox=inbox, setup=(routes.ensure_schema, inbox.ensure_schema),
                       close=(gateway.close, routes.close, inbox.close), reachable=reachable)
