"""PSP adapters (ADR 0008): one HTTP client per PSP with retries and a circuit breaker, and a failover gateway
that implements ``ledger.ports.PixGateway`` over a primary and a secondary PSP.

The rules, in short:

- Explicit timeouts on every request (connect, read, write, pool), and a total deadline per call.
- Retries (tenacity, exponential backoff with full jitter, bounded attempts) only for idempotent calls: GETs, and
  PUTs whose path carries our identifier (a charge's txid, a devolução id, a payment's ``idEnvio``). A POST is
  tried once. Retried: connection failures, timeouts, 5xx and 429; never a 4xx or an open breaker.
- One circuit breaker per PSP (pybreaker state machine; failures = transport errors, 5xx, 429). We do not let
  pybreaker run the request: ``CircuitBreaker.call`` holds the breaker's lock for the whole call, which would
  serialise every request to a PSP. ``CircuitGate`` admits a call (one trial at a time when half-open), runs it
  unlocked, then feeds the outcome to pybreaker.
- New payments go to the first PSP whose breaker admits work (primary, else secondary). A payment is pinned to its
  PSP (``PaymentRoutes``) before its first byte leaves, and it never goes anywhere else once it may have arrived:
  a timeout or a 5xx after sending gives ``UNKNOWN``, to be resolved with ``get_payment`` at that same PSP. It
  moves to the next PSP only while it provably never left (connection refused, breaker open) and only within the
  call that pinned it.
- ``"110.00"`` strings exist only here: the port speaks centavos.

``infra`` imports nothing from ``ledger`` but ``ledger.ports``; received Pix are returned as the PSP's JSON for
``ledger.pix.validate_pix`` to check, the same check a webhook gets.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import psycopg
import pybreaker
import tenacity
from psycopg_pool import ConnectionPool

from ledger.ports import (
    ChargeCreated,
    LedgerUnavailable,
    PaymentIdConflict,
    PaymentOutcome,
    PaymentRoutes,
    PaymentStatus,
    PspNotFound,
    PspRejected,
    PspUnavailable,
    RefundOutcome,
    RefundState,
)

T = TypeVar("T")
StateListener = Callable[[str, str | None, str], None]  # (psp, old state or None, new state)

# ---- limits ---------------------------------------------------------------------------------------------------

ATTEMPTS_MAX_LIMIT: Final = 10
DEADLINE_S_MAX: Final = 60.0
PAGE_SIZE_MAX: Final = 1_000  # the spec's paginacao.itensPorPagina maximum
LIST_PAGES_MAX: Final = 1_000
TOKEN_REFRESH_MARGIN_S: Final = 30.0
PAYMENT_LOCK_STRIPES: Final = 64
IN_MEMORY_ROUTES_MAX: Final = 1_000_000
#: The spec's valor: ``\d{1,10}\.\d{2}``.
VALOR_CENTAVOS_MAX: Final = 9_999_999_999_99
ID_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9]{1,35}\Z")
TXID_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9]{26,35}\Z")
VALOR_PATTERN: Final = re.compile(r"\A[0-9]{1,10}\.[0-9]{2}\Z")
KEY_LENGTH_MAX: Final = 77

ENV_PREFIX: Final = "RAZAO_PSP_"


# ---- configuration --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PspConfig:
    """How to reach one PSP and how patient to be with it. Times in seconds."""

    name: str
    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    #: The platform's Pix key at this PSP: charges are made out to it and the webhook is registered under it.
    pix_key: str
    #: Verifies this PSP's webhook deliveries (used by the webhook ingestion, not by the gateway).
    webhook_secret: str = field(repr=False, default="")
    connect_timeout_s: float = 1.0
    read_timeout_s: float = 3.0
    deadline_s: float = 10.0
    attempts_max: int = 4
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    breaker_fail_max: int = 5
    breaker_reset_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", self.name):
            raise ValueError(f"PSP name {self.name!r}: lowercase letters, digits, underscores")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"PSP {self.name}: base_url must be http(s)")
        if not 1 <= self.attempts_max <= ATTEMPTS_MAX_LIMIT:
            raise ValueError(f"PSP {self.name}: attempts_max is 1..{ATTEMPTS_MAX_LIMIT}")
        if not 0 < self.connect_timeout_s <= self.deadline_s <= DEADLINE_S_MAX:
            raise ValueError(f"PSP {self.name}: 0 < connect_timeout_s <= deadline_s <= {DEADLINE_S_MAX}")
        if not 0 < self.read_timeout_s <= self.deadline_s:
            raise ValueError(f"PSP {self.name}: 0 < read_timeout_s <= deadline_s")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s < self.deadline_s:
            raise ValueError(f"PSP {self.name}: 0 < backoff_initial_s <= backoff_max_s < deadline_s")
        if self.breaker_fail_max < 1 or self.breaker_reset_timeout_s <= 0:
            raise ValueError(f"PSP {self.name}: breaker_fail_max >= 1 and breaker_reset_timeout_s > 0")


_TUNING: Final = {
    "CONNECT_TIMEOUT_S": ("connect_timeout_s", float), "READ_TIMEOUT_S": ("read_timeout_s", float),
    "DEADLINE_S": ("deadline_s", float), "ATTEMPTS_MAX": ("attempts_max", int),
    "BACKOFF_INITIAL_S": ("backoff_initial_s", float), "BACKOFF_MAX_S": ("backoff_max_s", float),
    "BREAKER_FAIL_MAX": ("breaker_fail_max", int), "BREAKER_RESET_TIMEOUT_S": ("breaker_reset_timeout_s", float),
}


def load_psp_configs(environ: Mapping[str, str] | None = None) -> tuple[PspConfig, PspConfig]:
    """Primary and secondary PSP settings: ``RAZAO_PSP_<NAME>_{URL,CLIENT_ID,CLIENT_SECRET,PIX_KEY,WEBHOOK_SECRET}``
    per PSP and ``RAZAO_PSP_<TUNING>`` (``READ_TIMEOUT_S``, ``DEADLINE_S``, ``ATTEMPTS_MAX``, ``BREAKER_FAIL_MAX``,
    ``BREAKER_RESET_TIMEOUT_S``...) for both, ``RAZAO_PSP_<NAME>_<TUNING>`` for one. Defaults: the sandbox PSPs that
    ``razao up`` starts."""
    from infra.sandbox_psp.services import profiles  # the development defaults live with the sandbox

    env = os.environ if environ is None else environ
    configs = []
    for profile in profiles(env):
        prefix = f"{ENV_PREFIX}{profile.name.upper()}_"
        tuning: dict[str, Any] = {}
        for suffix, (attribute, kind) in _TUNING.items():
            text = env.get(prefix + suffix) or env.get(ENV_PREFIX + suffix)
            if text:
                tuning[attribute] = kind(text)
        configs.append(PspConfig(
            name=profile.name,
            base_url=env.get(prefix + "URL") or profile.base_url,
            client_id=env.get(prefix + "CLIENT_ID") or profile.client_id,
            client_secret=env.get(prefix + "CLIENT_SECRET") or profile.client_secret,
            pix_key=env.get(prefix + "PIX_KEY") or profile.pix_key,
            webhook_secret=env.get(prefix + "WEBHOOK_SECRET") or profile.webhook_secret,
            **tuning,
        ))
    return configs[0], configs[1]


# ---- valor and date-time at the edge --------------------------------------------------------------------------


def format_valor(amount_centavos: int) -> str:
    if type(amount_centavos) is not int or not 0 < amount_centavos <= VALOR_CENTAVOS_MAX:
        raise ValueError(f"a Pix amount is 1 to {VALOR_CENTAVOS_MAX} centavos, got {amount_centavos!r}")
    whole, cents = divmod(amount_centavos, 100)
    return f"{whole}.{cents:02d}"


def parse_valor(text: object) -> int:
    if not isinstance(text, str) or VALOR_PATTERN.fullmatch(text) is None:
        raise _Malformed(f"valor {text!r} is not like '110.00'")
    whole, cents = text.split(".")
    return int(whole) * 100 + int(cents)


def _rfc3339(moment: datetime, timespec: str = "seconds") -> str:
    if moment.tzinfo is None:
        raise ValueError("use aware datetimes")
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _parse_rfc3339(text: object) -> datetime:
    if not isinstance(text, str):
        raise _Malformed(f"date-time {text!r} is not a string")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise _Malformed(f"date-time {text!r} is not RFC 3339") from exc


# ---- errors inside the adapter --------------------------------------------------------------------------------


class _Malformed(Exception):
    """The PSP answered 2xx with a body we cannot read: a broken PSP, reported as unavailable."""


class _Transient(Exception):
    """One attempt failed in a way worth retrying (if the call is idempotent). ``reached``: the request may have
    been received and carried out by the PSP."""

    def __init__(self, detail: str, *, reached: bool, retryable: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reached = reached
        self.retryable = retryable


class _AuthRefused(Exception):
    """The PSP refused our client credentials: configuration, not an outage."""


class PspCallFailed(Exception):
    """Every attempt of a call failed. ``reached``: at least one attempt may have been carried out by the PSP."""

    def __init__(self, psp: str, detail: str, *, reached: bool) -> None:
        super().__init__(f"{psp}: {detail}")
        self.psp = psp
        self.detail = detail
        self.reached = reached


# ---- circuit breaker ------------------------------------------------------------------------------------------


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, psp: str, callbacks: Sequence[StateListener]) -> None:
        self.psp = psp
        self.callbacks = list(callbacks)

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: pybreaker.CircuitBreakerState | None,
                     new_state: pybreaker.CircuitBreakerState) -> None:
        for callback in self.callbacks:
            callback(self.psp, old_state.name if old_state is not None else None, new_state.name)


class CircuitGate:
    """A pybreaker ``CircuitBreaker`` used as a state machine around calls it does not run itself (see the module
    docstring). Failures are ``_Transient`` errors only; a 4xx is the PSP working as designed."""

    def __init__(self, psp: str, fail_max: int, reset_timeout_s: float, listeners: Sequence[StateListener]) -> None:
        self._storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=reset_timeout_s, state_storage=self._storage, name=psp,
            exclude=[lambda exc: not isinstance(exc, _Transient)], listeners=[_Listener(psp, listeners)],
            throw_new_error_on_trip=False,
        )
        self._lock = threading.Lock()
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self.breaker.current_state)

    @property
    def fail_counter(self) -> int:
        return int(self.breaker.fail_counter)

    def admits_new_work(self) -> bool:
        """Whether a call now would be let through (closed; open past its reset timeout; half-open and idle)."""
        with self._lock:
            state = self.breaker.current_state
            if state == pybreaker.STATE_CLOSED:
                return True
            if state == pybreaker.STATE_OPEN:
                return self._reset_timeout_elapsed()
            return not self._trial_in_flight

    def guard(self, call: Callable[[], T]) -> T:
        """Runs ``call`` if the breaker admits it (else raises ``pybreaker.CircuitBreakerError``) and records its
        outcome. The call's own result or exception always reaches the caller."""
        trial = self._admit()
        try:
            try:
                result = call()
            except Exception as exc:
                self._record(exc)
                raise
            self._record(None)
            return result
        finally:
            if trial:
                with self._lock:
                    self._trial_in_flight = False

    def _admit(self) -> bool:
        with self._lock:
            state = self.breaker.current_state
            if state == pybreaker.STATE_CLOSED:
                return False
            if state == pybreaker.STATE_OPEN:
                if not self._reset_timeout_elapsed():
                    raise pybreaker.CircuitBreakerError("circuit open")
                self.breaker.half_open()
            if self._trial_in_flight:
                raise pybreaker.CircuitBreakerError("circuit half-open: a trial call is in flight")
            self._trial_in_flight = True
            return True

    def _reset_timeout_elapsed(self) -> bool:
        opened_at = self._storage.opened_at
        return opened_at is None or datetime.now(UTC) >= opened_at + timedelta(seconds=self.breaker.reset_timeout)

    def _record(self, exc: Exception | None) -> None:
        def replay() -> None:
            if exc is not None:
                raise exc

        try:
            self.breaker.call(replay)
        except pybreaker.CircuitBreakerError:
            pass  # opened meanwhile by another call: it did not look at this outcome, which is fine
        except Exception as replayed:
            if replayed is not exc:
                raise


# ---- one PSP --------------------------------------------------------------------------------------------------


class PspClient:
    """HTTP client for one PSP: OAuth2 client credentials, explicit timeouts, retries for idempotent calls, breaker.

    Thread-safe (httpx.Client is; the token and the breaker have their own locks).
    """

    def __init__(self, config: PspConfig, *, listeners: Sequence[StateListener] = (),
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.name = config.name
        self.gate = CircuitGate(config.name, config.breaker_fail_max, config.breaker_reset_timeout_s, listeners)
        self._http = httpx.Client(base_url=config.base_url, transport=transport, follow_redirects=False,
                                  headers={"User-Agent": "razao-pix-gateway/1", "Accept": "application/json"},
                                  timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s))
        self._sleep = sleep
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_expires_at = 0.0

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, *, idempotent: bool, json_body: object = None,
             params: Mapping[str, str] | None = None) -> httpx.Response:
        """One logical call: retried (if ``idempotent``) within ``deadline_s``; returns any non-5xx, non-429
        response. Raises ``PspCallFailed`` (with ``reached``), ``_AuthRefused``."""
        config = self.config
        deadline = time.monotonic() + config.deadline_s
        reached = False

        def attempt() -> httpx.Response:
            nonlocal reached
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0.005:
                raise _Transient("deadline exceeded", reached=False, retryable=False)
            try:
                return self.gate.guard(lambda: self._once(method, path, json_body, params, remaining_s))
            except pybreaker.CircuitBreakerError as exc:
                raise _Transient(f"circuit breaker: {exc}", reached=False, retryable=False) from exc
            except _Transient as exc:
                reached = reached or exc.reached
                raise

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(config.attempts_max if idempotent else 1)
            | tenacity.stop_before_delay(config.deadline_s),
            wait=tenacity.wait_random_exponential(multiplier=config.backoff_initial_s, max=config.backoff_max_s),
            retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, _Transient) and exc.retryable),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Transient as exc:
            raise PspCallFailed(self.name, exc.detail, reached=reached) from exc

    def _timeout(self, remaining_s: float) -> httpx.Timeout:
        connect = min(self.config.connect_timeout_s, remaining_s)
        read = min(self.config.read_timeout_s, remaining_s)
        return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)

    def _once(self, method: str, path: str, json_body: object, params: Mapping[str, str] | None,
              remaining_s: float) -> httpx.Response:
        timeout = self._timeout(remaining_s)
        token = self._bearer(timeout)
        response = self._send(method, path, json_body=json_body, params=params, timeout=timeout, token=token)
        if response.status_code == 401:  # expired or revoked early: a 401 was not carried out, so asking again is safe
            self._forget(token)
            response = self._send(method, path, json_body=json_body, params=params, timeout=timeout,
                                  token=self._bearer(timeout))
        if response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code} from {method} {path}", reached=True)
        if response.status_code == 429:
            raise _Transient(f"HTTP 429 from {method} {path}", reached=False)
        return response

    def _send(self, method: str, path: str, *, json_body: object, params: Mapping[str, str] | None,
              timeout: httpx.Timeout, token: str) -> httpx.Response:
        try:
            return self._http.request(method, path, json=json_body, params=params, timeout=timeout,
                                      headers={"Authorization": f"Bearer {token}"})
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _Transient(f"{type(exc).__name__} on {method} {path}: {exc}", reached=False) from exc
        except httpx.TransportError as exc:  # timeouts after sending, resets: it may have been carried out
            raise _Transient(f"{type(exc).__name__} on {method} {path}: {exc}", reached=True) from exc

    def _bearer(self, timeout: httpx.Timeout) -> str:
        with self._token_lock:
            if self._token is not None and time.monotonic() < self._token_expires_at:
                return self._token
            try:
                response = self._http.post("/oauth/token", data={"grant_type": "client_credentials"},
                                           auth=(self.config.client_id, self.config.client_secret), timeout=timeout)
            except httpx.TransportError as exc:
                raise _Transient(f"token: {type(exc).__name__}: {exc}", reached=False) from exc
            if response.status_code >= 500 or response.status_code == 429:
                raise _Transient(f"token: HTTP {response.status_code}", reached=False)
            if response.status_code != 200:
                raise _AuthRefused(f"{self.name} refused our client credentials (HTTP {response.status_code})")
            try:
                body = response.json()
                token, lifetime_s = str(body["access_token"]), float(body.get("expires_in", 300))
            except (ValueError, KeyError, TypeError) as exc:
                raise _Transient(f"token: unreadable answer: {exc}", reached=False) from exc
            self._token = token
            self._token_expires_at = time.monotonic() + max(lifetime_s - TOKEN_REFRESH_MARGIN_S, 1.0)
            return token

    def _forget(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None


# ---- payment routes -------------------------------------------------------------------------------------------


class InMemoryPaymentRoutes:
    """``PaymentRoutes`` for tests and development: forgets everything on restart (see ``PostgresPaymentRoutes``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, str] = {}

    def psp_for(self, payment_id: str) -> str | None:
        with self._lock:
            return self._routes.get(payment_id)

    def pin(self, payment_id: str, psp: str) -> str:
        with self._lock:
            if payment_id not in self._routes and len(self._routes) >= IN_MEMORY_ROUTES_MAX:
                raise LedgerUnavailable("in-memory payment routes are full; use PostgresPaymentRoutes")
            return self._routes.setdefault(payment_id, psp)

    def move(self, payment_id: str, from_psp: str, to_psp: str) -> bool:
        with self._lock:
            if self._routes.get(payment_id) != from_psp:
                return False
            self._routes[payment_id] = to_psp
            return True


class PostgresPaymentRoutes:
    """``PaymentRoutes`` in a Postgres table, so a restarted process still sends a retried payment to its PSP.

    One row per payment id; ``pin`` is an insert that loses to an existing row, ``move`` a compare-and-set update.
    Raises ``LedgerUnavailable`` when the database cannot be reached (then nothing is sent).
    """

    DDL: Final = (
        "CREATE TABLE IF NOT EXISTS pix_payment_routes ("
        " payment_id text PRIMARY KEY,"
        " psp text NOT NULL,"
        " pinned_at timestamptz NOT NULL DEFAULT now(),"
        " moved_from text)"
    )

    def __init__(self, dsn: str, *, pool_size_max: int = 4, connect_timeout_s: int = 5) -> None:
        self._pool = ConnectionPool(dsn, min_size=1, max_size=pool_size_max, open=True,
                                    kwargs={"autocommit": True, "connect_timeout": connect_timeout_s})

    def close(self) -> None:
        self._pool.close()

    def ensure_schema(self) -> None:
        self._run(lambda conn: conn.execute(self.DDL))

    def psp_for(self, payment_id: str) -> str | None:
        row = self._run(lambda conn: conn.execute(
            "SELECT psp FROM pix_payment_routes WHERE payment_id = %s", (payment_id,)).fetchone())
        return None if row is None else str(row[0])

    def pin(self, payment_id: str, psp: str) -> str:
        def pin(conn: Any) -> str:
            conn.execute("INSERT INTO pix_payment_routes (payment_id, psp) VALUES (%s, %s) "
                         "ON CONFLICT (payment_id) DO NOTHING", (payment_id, psp))
            row = conn.execute("SELECT psp FROM pix_payment_routes WHERE payment_id = %s", (payment_id,)).fetchone()
            return str(row[0])

        return self._run(pin)

    def move(self, payment_id: str, from_psp: str, to_psp: str) -> bool:
        cursor = self._run(lambda conn: conn.execute(
            "UPDATE pix_payment_routes SET psp = %s, moved_from = %s WHERE payment_id = %s AND psp = %s",
            (to_psp, from_psp, payment_id, from_psp)))
        return bool(cursor.rowcount == 1)

    def _run(self, work: Callable[[Any], T]) -> T:
        try:
            with self._pool.connection() as conn:
                return work(conn)
        except psycopg.OperationalError as exc:
            raise LedgerUnavailable(f"payment routes store unavailable: {exc}") from exc


# ---- the gateway ----------------------------------------------------------------------------------------------


class FailoverPixGateway:
    """``ledger.ports.PixGateway`` over PSPs in priority order (primary first). See the module docstring."""

    def __init__(self, clients: Sequence[PspClient], routes: PaymentRoutes | None = None) -> None:
        if not clients:
            raise ValueError("a gateway needs at least one PSP")
        names = [client.name for client in clients]
        if len(set(names)) != len(names):
            raise ValueError(f"PSP names must be distinct: {names}")
        self._clients = {client.name: client for client in clients}
        self._order = tuple(clients)
        self._routes: PaymentRoutes = routes if routes is not None else InMemoryPaymentRoutes()
        self._stripes = [threading.Lock() for _ in range(PAYMENT_LOCK_STRIPES)]

    @property
    def psps(self) -> tuple[str, ...]:
        return tuple(client.name for client in self._order)

    def close(self) -> None:
        for client in self._order:
            client.close()

    def client(self, psp: str) -> PspClient:
        try:
            return self._clients[psp]
        except KeyError:
            raise ValueError(f"unknown PSP {psp!r}; known: {', '.join(self._clients)}") from None

    def breaker_states(self) -> dict[str, str]:
        return {client.name: client.gate.state for client in self._order}

    def breaker_snapshot(self) -> dict[str, dict[str, Any]]:
        """For metrics and ``razao pix status``: state and consecutive failures per PSP."""
        return {c.name: {"state": c.gate.state, "fail_counter": c.gate.fail_counter} for c in self._order}

    # ---- charges --------------------------------------------------------------------------------------------

    def create_charge(self, txid: str, amount_centavos: int, *, expires_in_s: int,
                      payer_request: str | None = None) -> ChargeCreated:
        """``PUT /cob/{txid}`` at the first PSP that takes it. A charge is not money: if the primary's answer is
        lost, making the same txid at the secondary is harmless, since only the returned BR Code is shown."""
        if not TXID_PATTERN.fullmatch(txid):
            raise ValueError("txid must be 26 to 35 letters or digits")
        if type(expires_in_s) is not int or expires_in_s <= 0:
            raise ValueError("expires_in_s must be a positive integer")
        valor = format_valor(amount_centavos)
        failures: list[str] = []
        candidates = self._admitting()
        if not candidates:
            raise PspUnavailable("every PSP's circuit breaker is open")
        for client in candidates:
            body: dict[str, Any] = {"calendario": {"expiracao": expires_in_s}, "valor": {"original": valor},
                                    "chave": client.config.pix_key}
            if payer_request is not None:
                body["solicitacaoPagador"] = payer_request
            try:
                response = self._call(client, "PUT", f"/cob/{txid}", idempotent=True, json_body=body)
            except PspCallFailed as exc:
                failures.append(str(exc))
                continue
            data = self._expect(client, response, (200, 201))
            try:
                return ChargeCreated(
                    psp=client.name, txid=str(data["txid"]), amount_centavos=parse_valor(data["valor"]["original"]),
                    pix_copia_e_cola=str(data.get("pixCopiaECola", "")), location=str(data.get("location", "")),
                    created_at=_parse_rfc3339(data["calendario"]["criacao"]),
                    expires_in_s=int(data["calendario"]["expiracao"]), status=str(data["status"]),
                )
            except (KeyError, TypeError, ValueError, _Malformed) as exc:
                raise PspUnavailable(f"{client.name} answered an unreadable charge: {exc}", psp=client.name) from exc
        raise PspUnavailable("no PSP could create the charge: " + "; ".join(failures))

    def get_charge(self, psp: str, txid: str) -> Mapping[str, Any]:
        client = self.client(psp)
        return self._expect(client, self._read(client, f"/cob/{_segment(txid)}"), (200,))

    # ---- received Pix ---------------------------------------------------------------------------------------

    def get_received_pix(self, psp: str, end_to_end_id: str) -> Mapping[str, Any]:
        client = self.client(psp)
        return self._expect(client, self._read(client, f"/pix/{_segment(end_to_end_id)}"), (200,))

    def list_received_pix(self, psp: str, start: datetime, end: datetime, *,
                          page_size: int = PAGE_SIZE_MAX) -> Iterator[Mapping[str, Any]]:
        """Every Pix received in [start, end], in the PSP's order, fetching page after page (``GET /pix``)."""
        if not 1 <= page_size <= PAGE_SIZE_MAX:
            raise ValueError(f"page_size is 1..{PAGE_SIZE_MAX}")
        client = self.client(psp)
        # Milliseconds, like the spec's own horario: whole seconds would make a window listing one burst of Pix carry
        # up to a second of every other Pix with it.
        params = {"inicio": _rfc3339(start, "milliseconds"), "fim": _rfc3339(end, "milliseconds"),
                  "paginacao.itensPorPagina": str(page_size)}
        for page in range(LIST_PAGES_MAX):
            params["paginacao.paginaAtual"] = str(page)
            data = self._expect(client, self._read(client, "/pix", params), (200,))
            items = data.get("pix", [])
            if not isinstance(items, list):
                raise PspUnavailable(f"{psp} answered a malformed Pix list", psp=psp)
            yield from items
            try:
                pages = int(data["parametros"]["paginacao"]["quantidadeDePaginas"])
            except (KeyError, TypeError, ValueError) as exc:
                raise PspUnavailable(f"{psp} answered no paginacao", psp=psp) from exc
            if page + 1 >= pages:
                return
        raise PspRejected(f"more than {LIST_PAGES_MAX} pages: ask for a shorter window", psp=psp)

    # ---- sending --------------------------------------------------------------------------------------------

    def send_payment(self, payment_id: str, key: str, amount_centavos: int, *,
                     description: str | None = None) -> PaymentOutcome:
        """Sends a Pix to ``key``, idempotent by ``payment_id`` (``PUT /pagamentos/{idEnvio}``). See the module
        docstring for routing; never raises for the network or the PSPs, only ``PaymentIdConflict``, ``ValueError``
        for bad arguments and ``LedgerUnavailable`` when the routes store is down (then nothing was sent)."""
        if not ID_PATTERN.fullmatch(payment_id):
            raise ValueError("payment_id must be 1 to 35 letters or digits")
        if not isinstance(key, str) or not 0 < len(key) <= KEY_LENGTH_MAX:
            raise ValueError(f"key must be a Pix key of 1 to {KEY_LENGTH_MAX} characters")
        body: dict[str, Any] = {"valor": format_valor(amount_centavos), "favorecido": {"chave": key}}
        if description is not None:
            body["infoPagador"] = description
        with self._stripes[hash(payment_id) % PAYMENT_LOCK_STRIPES]:
            pinned = self._routes.psp_for(payment_id)
            if pinned is not None:
                return self._send_at(self.client(pinned), payment_id, body, amount_centavos, fresh=False)[0]
            candidates = self._admitting()
            if not candidates:
                return PaymentOutcome(payment_id, self._order[0].name, PaymentStatus.FAILED, amount_centavos,
                                      reason="PSP_UNAVAILABLE")
            current = candidates[0]
            winner = self._routes.pin(payment_id, current.name)
            if winner != current.name:  # pinned meanwhile by another process: follow it
                return self._send_at(self.client(winner), payment_id, body, amount_centavos, fresh=False)[0]
            outcome, never_left = self._send_at(current, payment_id, body, amount_centavos, fresh=True)
            for following in candidates[1:]:
                if not never_left or not following.gate.admits_new_work():
                    break
                if not self._routes.move(payment_id, current.name, following.name):
                    break
                current = following
                outcome, never_left = self._send_at(current, payment_id, body, amount_centavos, fresh=True)
            return outcome

    def _send_at(self, client: PspClient, payment_id: str, body: Mapping[str, Any], amount_centavos: int, *,
                 fresh: bool) -> tuple[PaymentOutcome, bool]:
        """The outcome at ``client``, and whether the payment provably never left for it (only when ``fresh``:
        for an id pinned earlier, an earlier call may have sent it)."""
        try:
            response = self._call(client, "PUT", f"/pagamentos/{payment_id}", idempotent=True, json_body=body)
        except (PspCallFailed, PspRejected) as exc:  # PspRejected here: our credentials refused, nothing sent
            reached = isinstance(exc, PspCallFailed) and exc.reached
            if fresh and not reached:
                return PaymentOutcome(payment_id, client.name, PaymentStatus.FAILED, amount_centavos,
                                      reason="PSP_UNAVAILABLE"), True
            return PaymentOutcome(payment_id, client.name, PaymentStatus.UNKNOWN, amount_centavos,
                                  reason=str(exc)[:200]), False
        if response.status_code in (200, 201):
            try:
                return self._payment_outcome(client, self._expect(client, response, (200, 201))), False
            except PspUnavailable as exc:  # a 2xx we cannot read: it was carried out, we do not know how
                return PaymentOutcome(payment_id, client.name, PaymentStatus.UNKNOWN, amount_centavos,
                                      reason=str(exc)[:200]), False
        if response.status_code == 409:
            raise PaymentIdConflict("this payment id was used with another key or amount", psp=client.name,
                                    payment_id=payment_id)
        if 400 <= response.status_code < 500:  # refused before doing anything: definite
            problem = _problem(response)
            reason = str(problem.get("detail") or problem.get("title") or f"HTTP {response.status_code}")
            return PaymentOutcome(payment_id, client.name, PaymentStatus.FAILED, amount_centavos,
                                  reason=reason[:200]), False
        return PaymentOutcome(payment_id, client.name, PaymentStatus.UNKNOWN, amount_centavos,
                              reason=f"unexpected HTTP {response.status_code}"), False

    def get_payment(self, psp: str, payment_id: str) -> PaymentOutcome:
        client = self.client(psp)
        return self._payment_outcome(client, self._expect(client, self._read(client, f"/pagamentos/"
                                                                             f"{_segment(payment_id)}"), (200,)))

    @staticmethod
    def _payment_outcome(client: PspClient, data: Mapping[str, Any]) -> PaymentOutcome:
        statuses = {"REALIZADO": PaymentStatus.CONFIRMED, "NAO_REALIZADO": PaymentStatus.FAILED,
                    "EM_PROCESSAMENTO": PaymentStatus.PENDING}
        try:
            status = statuses[str(data["status"])]
            return PaymentOutcome(
                payment_id=str(data["idEnvio"]), psp=client.name, status=status,
                amount_centavos=parse_valor(data["valor"]), end_to_end_id=data.get("endToEndId"),
                reason=(str(data.get("motivo") or "NAO_REALIZADO")[:200] if status is PaymentStatus.FAILED else None),
            )
        except (KeyError, TypeError, _Malformed) as exc:
            raise PspUnavailable(f"{client.name} answered an unreadable payment: {exc}", psp=client.name) from exc

    # ---- devoluções -----------------------------------------------------------------------------------------

    def request_refund(self, psp: str, end_to_end_id: str, refund_id: str, amount_centavos: int, *,
                       description: str | None = None) -> RefundOutcome:
        """``PUT /pix/{e2eid}/devolucao/{id}`` at the PSP that received the Pix (idempotent by ``refund_id``)."""
        if not ID_PATTERN.fullmatch(refund_id):
            raise ValueError("refund_id must be 1 to 35 letters or digits")
        client = self.client(psp)
        body: dict[str, Any] = {"valor": format_valor(amount_centavos)}
        if description is not None:
            body["descricao"] = description
        path = f"/pix/{_segment(end_to_end_id)}/devolucao/{refund_id}"
        try:
            response = self._call(client, "PUT", path, idempotent=True, json_body=body)
        except PspCallFailed as exc:
            raise PspUnavailable(f"devolução outcome unknown; retry with the same id: {exc.detail}", psp=psp,
                                 outcome_unknown=exc.reached) from exc
        return self._refund_outcome(client, end_to_end_id, self._expect(client, response, (200, 201)))

    def get_refund(self, psp: str, end_to_end_id: str, refund_id: str) -> RefundOutcome:
        client = self.client(psp)
        path = f"/pix/{_segment(end_to_end_id)}/devolucao/{_segment(refund_id)}"
        return self._refund_outcome(client, end_to_end_id, self._expect(client, self._read(client, path), (200,)))

    @staticmethod
    def _refund_outcome(client: PspClient, end_to_end_id: str, data: Mapping[str, Any]) -> RefundOutcome:
        try:
            return RefundOutcome(psp=client.name, end_to_end_id=end_to_end_id, refund_id=str(data["id"]),
                                 return_id=str(data["rtrId"]), amount_centavos=parse_valor(data["valor"]),
                                 status=RefundState(data["status"]), reason=data.get("motivo"))
        except (KeyError, TypeError, ValueError, _Malformed) as exc:
            raise PspUnavailable(f"{client.name} answered an unreadable devolução: {exc}", psp=client.name) from exc

    # ---- webhook --------------------------------------------------------------------------------------------

    def register_webhook(self, url_template: str) -> dict[str, str]:
        """``PUT /webhook/{chave}`` at every PSP; ``{psp}`` in the template becomes the PSP's name. The PSP posts
        to ``{webhookUrl}/pix`` (the spec's callback path)."""
        results: dict[str, str] = {}
        for client in self._order:
            url = url_template.replace("{psp}", client.name)
            try:
                response = self._call(client, "PUT", f"/webhook/{_segment(client.config.pix_key)}", idempotent=True,
                                      json_body={"webhookUrl": url})
                self._expect(client, response, (200, 201, 204), body=False)
                results[client.name] = "ok"
            except (PspCallFailed, PspRejected, PspUnavailable, PspNotFound) as exc:
                results[client.name] = str(exc)
        return results

    # ---- plumbing -------------------------------------------------------------------------------------------

    def _admitting(self) -> list[PspClient]:
        return [client for client in self._order if client.gate.admits_new_work()]

    @staticmethod
    def _call(client: PspClient, method: str, path: str, *, idempotent: bool, json_body: object = None,
              params: Mapping[str, str] | None = None) -> httpx.Response:
        try:
            return client.call(method, path, idempotent=idempotent, json_body=json_body, params=params)
        except _AuthRefused as exc:
            raise PspRejected(str(exc), psp=client.name, status=401) from exc

    def _read(self, client: PspClient, path: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        try:
            return self._call(client, "GET", path, idempotent=True, params=params)
        except PspCallFailed as exc:
            raise PspUnavailable(str(exc), psp=client.name) from exc

    @staticmethod
    def _expect(client: PspClient, response: httpx.Response, ok: tuple[int, ...], *,
                body: bool = True) -> dict[str, Any]:
        if response.status_code in ok:
            if not body:
                return {}
            try:
                data = response.json()
            except ValueError as exc:
                raise PspUnavailable(f"{client.name} answered non-JSON", psp=client.name) from exc
            if not isinstance(data, dict):
                raise PspUnavailable(f"{client.name} answered a non-object", psp=client.name)
            return data
        problem = _problem(response)
        if response.status_code == 404:
            raise PspNotFound(str(problem.get("title") or "not found"), psp=client.name, problem=problem)
        raise PspRejected(str(problem.get("detail") or problem.get("title") or f"HTTP {response.status_code}"),
                          psp=client.name, status=response.status_code, problem=problem)


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"status": response.status_code, "title": response.text[:200]}
    return data if isinstance(data, dict) else {"status": response.status_code}


def _segment(value: str) -> str:
    """A path segment: identifiers are validated alphanumerics, but keys (e-mails, +phones) need quoting."""
    return urllib.parse.quote(value, safe="")


def build_gateway(environ: Mapping[str, str] | None = None, *, routes: PaymentRoutes | None = None,
                  listeners: Sequence[StateListener] = ()) -> FailoverPixGateway:
    """The platform's gateway from the environment (``load_psp_configs``). Pass durable ``routes``
    (``PostgresPaymentRoutes``) in any process that sends money; the default forgets routes on restart."""
    primary, secondary = load_psp_configs(environ)
    return FailoverPixGateway([PspClient(primary, listeners=listeners), PspClient(secondary, listeners=listeners)],
                              routes=routes)


# ---- breaker state for `razao pix status` ---------------------------------------------------------------------

BREAKER_STATE_FILE: Final = Path("pix") / "breakers.json"


def breaker_state_recorder(state_dir: Path) -> StateListener:
    """A listener that records each PSP's breaker state in ``<state_dir>/pix/breakers.json`` (last writer wins), so
    ``razao pix status`` can show it. Give it to ``build_gateway(listeners=...)`` in the process that sends."""
    path = state_dir / BREAKER_STATE_FILE
    lock = threading.Lock()

    def record(psp: str, old: str | None, new: str) -> None:
        with lock:
            try:
                states = json.loads(path.read_text()) if path.exists() else {}
            except (OSError, ValueError):
                states = {}
            states[psp] = {"state": new, "previous": old, "since": _rfc3339(datetime.now(UTC)), "pid": os.getpid()}
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(states, indent=2, sort_keys=True))
            temporary.replace(path)

    return record


def _cli_status(_args: argparse.Namespace) -> int:
    from infra.settings import state_dir_from

    path = state_dir_from() / BREAKER_STATE_FILE
    try:
        recorded = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        recorded = {}
    print(f"{'PSP':<12} {'REACHABLE':<10} {'BREAKER':<10} {'SINCE':<22} URL")
    all_well = True
    for config in load_psp_configs():
        try:
            httpx.get(config.base_url + "/", timeout=1.0)
            reachable = True
        except httpx.TransportError:
            reachable = False
        breaker = recorded.get(config.name, {})
        all_well = all_well and reachable and breaker.get("state", "closed") == "closed"
        print(f"{config.name:<12} {'yes' if reachable else 'no':<10} {breaker.get('state', 'closed'):<10} "
              f"{breaker.get('since', '-'):<22} {config.base_url}")
    print(f"(breaker states as last recorded by the sending process in {path})")
    return 0 if all_well else 1


def cli_status(args: argparse.Namespace) -> int:
    """``razao pix status`` (public, so that the ``pix`` CLI of ``commands`` can offer it beside ``reconcile``)."""
    return _cli_status(args)


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``razao pix status``: the PSPs, whether they answer, and their breaker states."""
    pix = subparsers.add_parser("pix", help="PIX PSPs: reachability and circuit breakers")
    pix_commands = pix.add_subparsers(dest="pix_command", required=True, metavar="SUBCOMMAND")
    status = pix_commands.add_parser("status", help="each PSP: reachable, breaker state")
    status.set_defaults(func=_cli_status)
