"""The PSP gateway against two real sandbox PSPs: retries only where idempotent, the breaker, failover, half-open
recovery, and the rule that a payment whose outcome is unknown is never sent to another PSP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.pix_gateway import (
    FailoverPixGateway,
    InMemoryPaymentRoutes,
    PostgresPaymentRoutes,
    PspCallFailed,
    PspClient,
    PspConfig,
)
from infra.sandbox_psp.launcher import RunningSandbox, start_sandbox
from ledger import pix
from ledger.ports import PaymentIdConflict, PaymentStatus, PspNotFound, PspUnavailable, RefundState

RESET_S = 0.6
TXID = "razao0deposito0000000000000001"
KEY = "52998224725"

Events = list[tuple[str, str | None, str]]


@pytest.fixture(scope="module")
def psps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningSandbox, RunningSandbox]]:
    logs = tmp_path_factory.mktemp("psps")
    primary = start_sandbox("primary", seed=1, log_path=logs / "primary.log")
    secondary = start_sandbox("secondary", ispb="20000002", pix_key="0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9", seed=2,
                              client_secret="other-secret", log_path=logs / "secondary.log")
    yield primary, secondary
    primary.stop()
    secondary.stop()


@pytest.fixture
def primary(psps: tuple[RunningSandbox, RunningSandbox]) -> RunningSandbox:
    psps[0].reset()
    return psps[0]


@pytest.fixture
def secondary(psps: tuple[RunningSandbox, RunningSandbox]) -> RunningSandbox:
    psps[1].reset()
    return psps[1]


def config(sandbox: RunningSandbox, **overrides: Any) -> PspConfig:
    values: dict[str, Any] = {
        "name": sandbox.psp_id, "base_url": sandbox.base_url, "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret, "pix_key": sandbox.pix_key, "webhook_secret": sandbox.webhook_secret,
        "connect_timeout_s": 0.3, "read_timeout_s": 0.4, "deadline_s": 1.5, "attempts_max": 3,
        "backoff_initial_s": 0.02, "backoff_max_s": 0.1, "breaker_fail_max": 3, "breaker_reset_timeout_s": RESET_S,
    }
    return PspConfig(**{**values, **overrides})


@pytest.fixture
def events() -> Events:
    return []


@pytest.fixture
def gateway(primary: RunningSandbox, secondary: RunningSandbox, events: Events) -> Iterator[FailoverPixGateway]:
    built = FailoverPixGateway([PspClient(config(primary), listeners=[lambda *e: events.append(e)]),
                                PspClient(config(secondary), listeners=[lambda *e: events.append(e)])])
    yield built
    built.close()


def requests_to(sandbox: RunningSandbox, method: str, prefix: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.requests() if r["method"] == method and r["path"].startswith(prefix)]


def wait_for_reset() -> None:
    time.sleep(RESET_S + 0.1)


# ---- the happy path, every method -----------------------------------------------------------------------------


def test_every_gateway_method_against_the_primary(gateway: FailoverPixGateway, primary: RunningSandbox,
                                                  secondary: RunningSandbox) -> None:
    charge = gateway.create_charge(TXID, 110_00, expires_in_s=600, payer_request="Depósito")
    assert (charge.psp, charge.txid, charge.amount_centavos, charge.status) == ("primary", TXID, 110_00, "ATIVA")
    assert charge.pix_copia_e_cola.startswith("000201") and charge.expires_in_s == 600
    assert gateway.get_charge("primary", TXID)["status"] == "ATIVA"

    e2eid = primary.pay(txid=TXID)["endToEndId"]
    received = pix.validate_pix(gateway.get_received_pix("primary", e2eid))
    assert (received.end_to_end_id, received.txid, received.amount_centavos) == (e2eid, TXID, 110_00)
    for n in range(4):
        primary.pay(txid=f"{n}" * 26, valor="1.00", force=True)
    now = datetime.now(UTC)
    listed = list(gateway.list_received_pix("primary", now - timedelta(hours=1), now + timedelta(hours=1),
                                            page_size=2))
    assert len(listed) == 5 and listed[0]["endToEndId"] == e2eid

    refund = gateway.request_refund("primary", e2eid, "dev1", 10_00, description="estorno")
    assert (refund.status, refund.amount_centavos, refund.return_id[:9]) == (
        RefundState.EM_PROCESSAMENTO, 10_00, "D10000001")
    assert gateway.request_refund("primary", e2eid, "dev1", 10_00, description="estorno") == refund
    deadline = time.monotonic() + 3
    while gateway.get_refund("primary", e2eid, "dev1").status is not RefundState.DEVOLVIDO:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    outcome = gateway.send_payment("saque1", KEY, 25_00, description="saque")
    assert (outcome.status, outcome.psp, outcome.amount_centavos) == (PaymentStatus.CONFIRMED, "primary", 25_00)
    assert outcome.definite and pix.is_valid_end_to_end_id(outcome.end_to_end_id)
    assert gateway.get_payment("primary", "saque1") == outcome

    assert gateway.register_webhook("http://127.0.0.1:9/webhooks/{psp}") == {"primary": "ok", "secondary": "ok"}
    for sandbox in (primary, secondary):
        token = sandbox.token()
        registered = httpx.get(f"{sandbox.base_url}/webhook/{sandbox.pix_key}",
                               headers={"Authorization": f"Bearer {token}"}).json()
        assert registered["webhookUrl"] == f"http://127.0.0.1:9/webhooks/{sandbox.psp_id}"
    assert gateway.breaker_states() == {"primary": "closed", "secondary": "closed"}


def test_errors_of_the_psp_are_typed(gateway: FailoverPixGateway, primary: RunningSandbox) -> None:
    with pytest.raises(PspNotFound):
        gateway.get_received_pix("primary", "E12345678202009091221abcdef12345")
    with pytest.raises(PspNotFound):
        gateway.get_payment("primary", "never")
    assert len(requests_to(primary, "GET", "/pix/")) == 1  # a 404 is an answer, not retried
    gateway.send_payment("p1", KEY, 1_00)
    with pytest.raises(PaymentIdConflict):
        gateway.send_payment("p1", KEY, 2_00)
    primary.configure(payment_reject_keys=["naoexiste@example.com"])
    refused = gateway.send_payment("p2", "naoexiste@example.com", 1_00)
    assert refused.status is PaymentStatus.FAILED and refused.definite and "DICT" in (refused.reason or "")
    invalid = gateway.send_payment("p3", "not a key", 1_00)
    assert invalid.status is PaymentStatus.FAILED and invalid.psp == "primary"
    assert gateway.breaker_states()["primary"] == "closed"  # 4xx answers are the PSP working


# ---- retries --------------------------------------------------------------------------------------------------


def test_idempotent_calls_are_retried(gateway: FailoverPixGateway, primary: RunningSandbox) -> None:
    primary.configure(fail_next=2, fault_paths=["/cob"])
    assert gateway.create_charge(TXID, 5_00, expires_in_s=60).psp == "primary"
    assert [r["fault"] for r in requests_to(primary, "PUT", "/cob")] == ["fail_next", "fail_next", None]

    e2eid = primary.pay(txid=TXID)["endToEndId"]
    primary.configure(fail_next=2, fault_paths=["/pix"])
    gateway.get_received_pix("primary", e2eid)
    assert len(requests_to(primary, "GET", "/pix/")) == 3


def test_a_post_is_never_retried(gateway: FailoverPixGateway, primary: RunningSandbox) -> None:
    primary.configure(fail_next=1, fault_paths=["/cob"])
    client = gateway.client("primary")
    body = {"calendario": {"expiracao": 60}, "valor": {"original": "1.00"}, "chave": primary.pix_key}
    with pytest.raises(PspCallFailed) as caught:
        client.call("POST", "/cob", idempotent=False, json_body=body)
    assert caught.value.reached  # a 503 after sending: the PSP may have created it
    assert len(requests_to(primary, "POST", "/cob")) == 1
    assert client.call("POST", "/cob", idempotent=False, json_body=body).status_code == 201


def test_retries_stop_at_the_deadline(primary: RunningSandbox, secondary: RunningSandbox) -> None:
    primary.configure(timeout_rate=1.0, hang_ms=3000, fault_paths=["/pix"])
    gateway = FailoverPixGateway([PspClient(config(primary, attempts_max=10, deadline_s=1.0, breaker_fail_max=50))])
    started = time.monotonic()
    with pytest.raises(PspUnavailable):
        gateway.get_received_pix("primary", "E12345678202009091221abcdef12345")
    assert time.monotonic() - started < 1.3
    assert 2 <= len(requests_to(primary, "GET", "/pix/")) < 10
    gateway.close()


# ---- breaker and failover -------------------------------------------------------------------------------------


def test_primary_down_opens_its_breaker_and_new_payments_go_to_the_secondary(
        gateway: FailoverPixGateway, primary: RunningSandbox, secondary: RunningSandbox, events: Events) -> None:
    primary.configure(outage="refuse")
    first = gateway.send_payment("p1", KEY, 10_00)
    # Connection refused on every attempt: provably never sent, so it moved to the secondary.
    assert (first.status, first.psp) == (PaymentStatus.CONFIRMED, "secondary")
    assert gateway.breaker_states() == {"primary": "open", "secondary": "closed"}
    assert events == [("primary", "closed", "open")]
    started = time.monotonic()
    second = gateway.send_payment("p2", KEY, 20_00)
    assert (second.status, second.psp) == (PaymentStatus.CONFIRMED, "secondary")
    assert time.monotonic() - started < 0.2  # the open breaker skips the primary at once
    assert gateway.create_charge(TXID, 5_00, expires_in_s=60).psp == "secondary"
    assert secondary.state()["payments"] == ["p1", "p2"]


def test_a_5xx_after_sending_is_unknown_and_stays_with_its_psp(
        gateway: FailoverPixGateway, primary: RunningSandbox, secondary: RunningSandbox) -> None:
    with pytest.raises(PspNotFound):  # a first call, so that the gateway holds a token before the outage
        gateway.get_payment("primary", "warm-up")
    primary.configure(outage="503")
    unknown = gateway.send_payment("p1", KEY, 10_00)
    assert (unknown.status, unknown.psp, unknown.definite) == (PaymentStatus.UNKNOWN, "primary", False)
    assert len(requests_to(primary, "PUT", "/pagamentos")) == 3  # an idempotent PUT: retried
    assert gateway.breaker_states()["primary"] == "open"
    moved_on = gateway.send_payment("p2", KEY, 20_00)
    assert moved_on.psp == "secondary"
    assert secondary.state()["payments"] == ["p2"]  # p1 was never sent there

    primary.configure(outage="none")
    wait_for_reset()
    with pytest.raises(PspNotFound):  # the 503s came before anything was done: safe to send again...
        gateway.get_payment("primary", "p1")
    again = gateway.send_payment("p1", KEY, 10_00)  # ...and the same id goes back to the PSP that saw it first
    assert (again.status, again.psp) == (PaymentStatus.CONFIRMED, "primary")
    assert secondary.state()["payments"] == ["p2"]


def test_a_payment_that_could_not_get_a_token_never_left(
        gateway: FailoverPixGateway, primary: RunningSandbox, secondary: RunningSandbox) -> None:
    primary.configure(outage="503")  # the token endpoint answers 503 too: the payment itself was never sent
    moved = gateway.send_payment("p1", KEY, 10_00)
    assert (moved.status, moved.psp) == (PaymentStatus.CONFIRMED, "secondary")
    assert requests_to(primary, "PUT", "/pagamentos") == []


def test_the_breaker_recovers_through_half_open(gateway: FailoverPixGateway, primary: RunningSandbox,
                                                events: Events) -> None:
    primary.configure(outage="refuse")
    assert gateway.send_payment("p1", KEY, 1_00).psp == "secondary"
    wait_for_reset()
    # Still down: the half-open trial fails, the breaker opens again, and the payment moves on.
    assert gateway.send_payment("p2", KEY, 1_00).psp == "secondary"
    assert events[-2:] == [("primary", "open", "half-open"), ("primary", "half-open", "open")]
    primary.configure(outage="none")
    assert gateway.send_payment("p3", KEY, 1_00).psp == "secondary"  # reset timeout not elapsed yet
    wait_for_reset()
    recovered = gateway.send_payment("p4", KEY, 1_00)
    assert (recovered.status, recovered.psp) == (PaymentStatus.CONFIRMED, "primary")
    assert events[-2:] == [("primary", "open", "half-open"), ("primary", "half-open", "closed")]
    assert gateway.breaker_states() == {"primary": "closed", "secondary": "closed"}


def test_a_timeout_is_unknown_never_resent_elsewhere_and_resolved_at_the_same_psp(
        gateway: FailoverPixGateway, primary: RunningSandbox, secondary: RunningSandbox) -> None:
    primary.configure(timeout_rate=1.0, hang_ms=2000, fault_paths=["/pagamentos"])
    unknown = gateway.send_payment("saque9", KEY, 50_00)
    assert (unknown.status, unknown.psp) == (PaymentStatus.UNKNOWN, "primary")
    assert "ReadTimeout" in (unknown.reason or "")
    assert gateway.breaker_states()["primary"] == "open"  # three timeouts
    # A retry by the caller while the primary's breaker is open still goes nowhere else.
    retried = gateway.send_payment("saque9", KEY, 50_00)
    assert (retried.status, retried.psp) == (PaymentStatus.UNKNOWN, "primary")
    assert secondary.state()["payments"] == []

    primary.configure(timeout_rate=0.0)
    wait_for_reset()
    resolved = gateway.get_payment("primary", "saque9")
    assert (resolved.status, resolved.psp, resolved.amount_centavos) == (PaymentStatus.CONFIRMED, "primary", 50_00)
    assert gateway.send_payment("saque9", KEY, 50_00) == resolved  # the PSP's idempotent replay
    assert primary.state()["payments"] == ["saque9"] and secondary.state()["payments"] == []


def test_when_every_breaker_is_open_nothing_is_sent(primary: RunningSandbox, secondary: RunningSandbox) -> None:
    primary.configure(outage="refuse")
    secondary.configure(outage="refuse")
    gateway = FailoverPixGateway([PspClient(config(primary)), PspClient(config(secondary))])
    failed = gateway.send_payment("p1", KEY, 1_00)
    assert (failed.status, failed.reason, failed.definite) == (PaymentStatus.FAILED, "PSP_UNAVAILABLE", True)
    assert gateway.breaker_states() == {"primary": "open", "secondary": "open"}
    assert gateway.send_payment("p2", KEY, 1_00).reason == "PSP_UNAVAILABLE"
    with pytest.raises(PspUnavailable):
        gateway.create_charge(TXID, 1_00, expires_in_s=60)
    gateway.close()


# ---- durable routes -------------------------------------------------------------------------------------------


def test_routes_in_postgres_survive_a_restart(fresh_database: str, primary: RunningSandbox,
                                              secondary: RunningSandbox, tmp_path: Path) -> None:
    routes = PostgresPaymentRoutes(fresh_database)
    routes.ensure_schema()
    before = FailoverPixGateway([PspClient(config(primary)), PspClient(config(secondary))], routes=routes)
    primary.configure(timeout_rate=1.0, hang_ms=2000, fault_paths=["/pagamentos"])
    assert before.send_payment("p1", KEY, 1_00).status is PaymentStatus.UNKNOWN
    before.close()
    routes.close()

    # A new process: fresh breakers, new connections, the same table. The primary is now refusing connections.
    primary.configure(timeout_rate=0.0, outage="refuse")
    routes = PostgresPaymentRoutes(fresh_database)
    after = FailoverPixGateway([PspClient(config(primary)), PspClient(config(secondary))], routes=routes)
    stuck = after.send_payment("p1", KEY, 1_00)
    assert (stuck.status, stuck.psp) == (PaymentStatus.UNKNOWN, "primary")  # pinned: not moved, though refused
    assert after.send_payment("p2", KEY, 1_00).psp == "secondary"  # a new id may go elsewhere
    assert (routes.psp_for("p1"), routes.psp_for("p2")) == ("primary", "secondary")
    primary.configure(outage="none")
    wait_for_reset()
    assert after.get_payment("primary", "p1").status is PaymentStatus.CONFIRMED
    assert secondary.state()["payments"] == ["p2"]
    after.close()
    routes.close()


def test_in_memory_routes_are_the_default(gateway: FailoverPixGateway) -> None:
    assert isinstance(gateway._routes, InMemoryPaymentRoutes)
