"""The sandbox PSP's identity (fixed for a process) and its knobs (changed at run time by ``POST /_sandbox/config``).

Every knob can also be given at start as a CLI flag (``--latency-ms 50``) or an environment variable
(``RAZAO_SANDBOX_PSP_LATENCY_MS=50``); the flag wins. Lists are comma-separated there, JSON arrays in the API.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

ENV_PREFIX: Final = "RAZAO_SANDBOX_PSP_"
OUTAGE_MODES: Final = ("none", "refuse", "503")

# Limits on knob values: a sandbox must not be configurable into holding a connection for an hour.
HANG_MS_MAX: Final = 600_000
LATENCY_MS_MAX: Final = 60_000
DELAY_MS_MAX: Final = 600_000
WEBHOOK_BATCH_MAX: Final = 1_000  # the platform refuses larger webhook bodies (ledger.pix.WEBHOOK_PIX_ITEMS_MAX)
WEBHOOK_ATTEMPTS_MAX: Final = 20
OUTAGE_S_MAX: Final = 3_600.0


class KnobError(ValueError):
    """A knob name or value is not acceptable; the message says which and why."""


@dataclass
class Knobs:
    """What the sandbox does to requests and notifications. Faults apply to PSP API paths that start with one of
    ``fault_paths`` (never to ``/_sandbox/*``)."""

    #: Added to every faultable response, plus up to ``latency_jitter_ms`` at random.
    latency_ms: int = 0
    latency_jitter_ms: int = 0
    #: Probability of answering 503 *before* doing anything.
    error_rate: float = 0.0
    #: Probability of doing the work and then answering 500 (the client cannot know it was done).
    error_after_rate: float = 0.0
    #: The next N faultable requests answer 503 before doing anything (deterministic failures for tests).
    fail_next: int = 0
    #: Probability of doing the work and then holding the response for ``hang_ms`` (past the client's timeout).
    timeout_rate: float = 0.0
    hang_ms: int = 30_000
    #: ``refuse``: the API port stops listening (connection refused) and open connections are dropped;
    #: ``503``: every API request answers 503. ``outage_s`` > 0 ends the outage by itself after that long.
    outage: str = "none"
    outage_s: float = 0.0
    fault_paths: list[str] = field(default_factory=lambda: ["/"])
    #: Webhooks: off (lost notifications), late, batched, duplicated, retried on non-2xx.
    webhook_enabled: bool = True
    #: A notification is held ``webhook_delay_ms`` with probability ``webhook_delay_rate`` (late delivery).
    webhook_delay_ms: int = 0
    webhook_delay_rate: float = 1.0
    #: Notifications queued within this window go out in one POST, up to ``webhook_batch_max`` Pix.
    webhook_batch_window_ms: int = 0
    webhook_batch_max: int = 100
    #: Probability that a delivered POST is delivered once more (at-least-once).
    webhook_duplicate_rate: float = 0.0
    #: Attempts per POST while the platform answers non-2xx or cannot be reached, backoff doubling from this.
    webhook_attempts_max: int = 6
    webhook_retry_backoff_ms: int = 200
    webhook_timeout_s: float = 5.0
    #: The spec posts to ``{webhookUrl}/pix``; set false to post to ``webhookUrl`` itself.
    webhook_append_pix: bool = True
    #: Payments we are asked to send: time to settle (0 = the PUT answers the final status), refusals.
    payment_settle_ms: int = 0
    payment_reject_rate: float = 0.0
    payment_reject_keys: list[str] = field(default_factory=list)
    #: Devoluções: time from EM_PROCESSAMENTO to the final status, refusals (NAO_REALIZADO).
    refund_settle_ms: int = 100
    refund_reject_rate: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: Mapping[str, object]) -> Knobs:
        """A copy with ``changes`` applied (JSON-typed values); raises ``KnobError`` listing what is wrong."""
        unknown = sorted(set(changes) - set(KNOB_TYPES))
        if unknown:
            raise KnobError(f"unknown knob(s): {', '.join(unknown)}")
        values = self.to_json()
        for name, value in changes.items():
            values[name] = _checked(name, value)
        return Knobs(**values)


KNOB_TYPES: Final[dict[str, type]] = {f.name: type(getattr(Knobs(), f.name)) for f in dataclasses.fields(Knobs)}


def _checked(name: str, value: object) -> object:
    kind = KNOB_TYPES[name]
    if kind is bool:
        if not isinstance(value, bool):
            raise KnobError(f"{name} must be true or false")
        return value
    if kind is int:
        if type(value) is not int or value < 0:
            raise KnobError(f"{name} must be a non-negative integer")
        _bounded(name, value)
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise KnobError(f"{name} must be a non-negative number")
        if name.endswith("_rate") and value > 1:
            raise KnobError(f"{name} is a probability, from 0 to 1")
        _bounded(name, value)
        return float(value)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value) or len(value) > 1_000:
            raise KnobError(f"{name} must be a list of at most 1000 strings")
        return list(value)
    if name == "outage" and value not in OUTAGE_MODES:
        raise KnobError(f"outage must be one of {', '.join(OUTAGE_MODES)}")
    if not isinstance(value, str):
        raise KnobError(f"{name} must be a string")
    return value


def _bounded(name: str, value: float) -> None:
    bounds = {
        "hang_ms": HANG_MS_MAX, "latency_ms": LATENCY_MS_MAX, "latency_jitter_ms": LATENCY_MS_MAX,
        "webhook_delay_ms": DELAY_MS_MAX, "webhook_batch_window_ms": DELAY_MS_MAX,
        "webhook_batch_max": WEBHOOK_BATCH_MAX, "webhook_attempts_max": WEBHOOK_ATTEMPTS_MAX,
        "webhook_retry_backoff_ms": DELAY_MS_MAX, "webhook_timeout_s": 60.0, "payment_settle_ms": DELAY_MS_MAX,
        "refund_settle_ms": DELAY_MS_MAX, "outage_s": OUTAGE_S_MAX, "fail_next": 1_000_000,
    }
    if name in bounds and value > bounds[name]:
        raise KnobError(f"{name} is at most {bounds[name]}")
    if name in ("webhook_batch_max", "webhook_attempts_max") and value < 1:
        raise KnobError(f"{name} is at least 1")


def knob_from_text(name: str, text: str) -> object:
    """A knob value from a CLI flag or an environment variable."""
    kind = KNOB_TYPES[name]
    try:
        if kind is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return _checked(name, text.lower() in ("1", "true", "yes"))
        if kind is int:
            return _checked(name, int(text))
        if kind is float:
            return _checked(name, float(text))
        if kind is list:
            return _checked(name, [item for item in text.split(",") if item])
    except ValueError as exc:
        raise KnobError(f"{name}: cannot read {text!r}") from exc
    return _checked(name, text)


@dataclass(frozen=True)
class Identity:
    """Who this sandbox PSP is. ``pix_key`` is the platform's receiving key here: charges use it and the webhook is
    registered under it. Secrets are development values; never reuse them anywhere real."""

    psp_id: str = "primary"
    host: str = "127.0.0.1"
    port: int = 8701
    #: A second listener serving only ``/_sandbox/*``; it stays up during a ``refuse`` outage. 0: none.
    admin_port: int = 0
    ispb: str = "10000001"
    #: ISPB of the payer's PSP for simulated received Pix (their endToEndIds start with it).
    payer_ispb: str = "30000003"
    pix_key: str = "5f8e0c1a-3b7d-4e2f-9a6c-1d2e3f4a5b6c"
    receiver_name: str = "RAZAO PLATAFORMA"
    receiver_city: str = "SAO PAULO"
    client_id: str = "razao"
    client_secret: str = "sandbox-client-secret"  # noqa: S105 - a development default, documented as such
    webhook_secret: str = "sandbox-webhook-secret"  # noqa: S105 - a development default, documented as such
    #: Deliver webhooks only to loopback addresses unless told otherwise.
    allow_remote_webhooks: bool = False
    seed: int | None = None


def webhook_url_problem(url: object, allow_remote: bool) -> str | None:
    """Why ``url`` cannot be a webhook URL here, or None."""
    if not isinstance(url, str) or not url or len(url) > 2_000:
        return "webhookUrl must be a URL of at most 2000 characters"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "webhookUrl must be an http(s) URL with a host"
    if allow_remote:
        return None
    host = parts.hostname
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return "the sandbox delivers webhooks only to loopback addresses (start it with --allow-remote-webhooks)"
