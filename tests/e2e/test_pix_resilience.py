"""PSP failures end to end: the primary goes down, its breaker opens, new payments and charges fail over to the
secondary, the breaker recovers through half-open; a payment whose outcome is unknown at the primary is never sent
anywhere else, and is settled once the primary answers again. A kill -9 of the platform in the middle of a
withdrawal leaves it held, and the restarted platform resolves it without paying twice."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infra.settings import Settings
from tests.e2e.conftest import new_key
from tests.e2e.pix_support import BREAKER_RESET_S, PixPlatform, start_platform, stop_platform

CPF_KEY = "52998224725"


@pytest.fixture
def platform(settings: Settings, tmp_path: Any) -> Iterator[PixPlatform]:
    built = start_platform(settings, tmp_path / "pix")
    yield built
    stop_platform(built)


def funded(pix: PixPlatform, valor: str) -> tuple[dict[str, Any], httpx.Client]:
    party, client = pix.investor()
    deposit = pix.deposit(client, valor)
    pix.primary.pay(txid=deposit["txid"])
    pix.wait_for("the deposit", lambda: pix.wallet(party["wallet_id"])["posted"] == valor)
    return party, client


def withdraw(client: httpx.Client, valor: str) -> dict[str, Any]:
    response = client.post("/v1/withdrawals", json={"valor": valor, "pix_key": CPF_KEY},
                           headers={"Idempotency-Key": new_key()})
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()
    return data


def breaker(pix: PixPlatform, psp: str) -> float:
    for line in pix.metrics().splitlines():
        if line.startswith(f'razao_pix_breaker_open{{psp="{psp}"}}'):
            return float(line.split()[-1])
    raise AssertionError("no breaker metric")


def payments(sandbox: Any) -> list[str]:
    return list(sandbox.state()["payments"])


def test_primary_down_breaker_opens_payments_fail_over_and_it_recovers(platform: PixPlatform, razao: Any) -> None:
    pix = platform
    party, ana = funded(pix, "100.00")
    assert breaker(pix, "primary") == 0
    pix.primary.configure(outage="refuse")
    first = pix.settled_withdrawal(withdraw(ana, "10.00")["id"])
    assert first["status"] == "COMPLETED" and first["psp"] == "secondary"  # never left the primary: moved
    assert breaker(pix, "primary") == 2  # open
    before = len(pix.primary.requests())
    second = pix.settled_withdrawal(withdraw(ana, "10.00")["id"])
    assert second["psp"] == "secondary" and len(pix.primary.requests()) == before  # straight to the secondary
    bruno, bruno_client = pix.investor()
    charge = pix.deposit(bruno_client, "5.00")
    assert charge["psp"] == "secondary"  # charges fail over too
    paid = pix.secondary.pay(txid=charge["txid"])
    received = pix.wait_for("the credit from the secondary", lambda: pix.received(paid["endToEndId"]))
    assert received["psp"] == "secondary" and received["credit_account_id"] == bruno["wallet_id"]

    pix.primary.configure(outage="none")
    time.sleep(BREAKER_RESET_S + 0.2)
    third = pix.settled_withdrawal(withdraw(ana, "10.00")["id"])
    assert third["psp"] == "primary"  # the half-open trial succeeded
    assert breaker(pix, "primary") == 0
    recorded = json.loads((pix.api.state_dir / "pix" / "breakers.json").read_text())
    assert recorded["primary"]["state"] == "closed" and recorded["primary"]["previous"] == "half-open"
    assert pix.wallet(party["wallet_id"])["posted"] == "70.00"
    env = {**os.environ, "RAZAO_STATE_DIR": str(pix.api.state_dir)}
    status = razao("status", env=env, check=False).stdout
    assert "BREAKER" in status and "primary" in status and "closed" in status


def test_an_unknown_outcome_is_never_sent_elsewhere_and_is_settled_later(platform: PixPlatform) -> None:
    pix = platform
    party, ana = funded(pix, "50.00")
    # The primary does the work, then never answers in time: the outcome is unknown to the platform.
    pix.primary.configure(timeout_rate=1.0, hang_ms=5_000, fault_paths=["/pagamentos"])
    created = withdraw(ana, "20.00")
    payment_id = created["payment_id"]
    pix.wait_for("the payment to reach the primary", lambda: payment_id in payments(pix.primary))
    time.sleep(4.0)  # several attempts and looks, all unanswered
    assert pix.withdrawal(created["id"])["status"] == "PROCESSING"
    assert pix.wallet(party["wallet_id"])["pending"] == "20.00"
    assert payment_id not in payments(pix.secondary)
    # A new payment meanwhile goes to the secondary (breaker open) or, during a half-open trial, to the primary,
    # where it is stuck the same way; either way it lives at one PSP only.
    other = withdraw(ana, "5.00")
    pix.primary.configure(timeout_rate=0.0, fault_paths=["/"])
    done = pix.settled_withdrawal(created["id"], timeout_s=45)
    assert done["status"] == "COMPLETED" and done["psp"] == "primary"
    assert payments(pix.primary).count(payment_id) == 1 and payment_id not in payments(pix.secondary)
    other_done = pix.settled_withdrawal(other["id"], timeout_s=45)
    assert other_done["status"] == "COMPLETED"
    assert (other["payment_id"] in payments(pix.primary)) != (other["payment_id"] in payments(pix.secondary))
    wallet = pix.wallet(party["wallet_id"])
    assert (wallet["posted"], wallet["pending"]) == ("25.00", "0.00")


def test_kill_9_in_the_middle_of_a_withdrawal_pays_once_and_resolves_the_hold(platform: PixPlatform) -> None:
    pix = platform
    party, ana = funded(pix, "90.00")
    pix.primary.configure(timeout_rate=1.0, hang_ms=30_000, fault_paths=["/pagamentos"])
    created = withdraw(ana, "35.00")
    payment_id = created["payment_id"]
    pix.wait_for("the payment to reach the primary", lambda: payment_id in payments(pix.primary))
    pix.kill_api()  # SIGKILL while the platform waits for the PSP's answer
    pix.primary.configure(timeout_rate=0.0, fault_paths=["/"])
    pix.restart_api()
    done = pix.settled_withdrawal(created["id"], timeout_s=45)
    assert done["status"] == "COMPLETED" and done["psp"] == "primary"
    assert payments(pix.primary).count(payment_id) == 1 and payment_id not in payments(pix.secondary)
    wallet = pix.wallet(party["wallet_id"])
    assert (wallet["posted"], wallet["pending"], wallet["available"]) == ("55.00", "0.00", "55.00")
    # The same request again after the restart is a replay: nothing new is held or sent.
    puts = [r for r in pix.primary.requests() if r["method"] == "PUT" and r["path"] == f"/pagamentos/{payment_id}"]
    assert len(puts) <= 3  # the attempts before the kill; after it, the PSP was asked (GET), not sent to again


def test_kill_9_while_the_psp_fails_asks_before_sending_again(platform: PixPlatform) -> None:
    pix = platform
    party, ana = funded(pix, "40.00")
    # The primary answers 503 (which may mean it did the work): the outcome is unknown, the hold stays.
    pix.primary.configure(outage="503")
    created = withdraw(ana, "15.00")
    pix.wait_for("the attempt", lambda: any(r["path"] == f"/pagamentos/{created['payment_id']}"
                                            for r in pix.primary.requests()))
    time.sleep(0.5)
    assert pix.withdrawal(created["id"])["status"] == "PROCESSING"
    pix.kill_api()
    pix.primary.configure(outage="none")
    pix.restart_api()
    done = pix.settled_withdrawal(created["id"], timeout_s=45)
    assert done["status"] == "COMPLETED" and done["psp"] == "primary"
    payment_requests = [(r["method"], r["status"]) for r in pix.primary.requests()
                        if r["path"] == f"/pagamentos/{created['payment_id']}" and r["status"] != 503]
    assert payment_requests[:2] == [("GET", 404), ("PUT", 201)]  # asked first; sent only when not found
    assert created["payment_id"] not in payments(pix.secondary)
    wallet = pix.wallet(party["wallet_id"])
    assert (wallet["posted"], wallet["pending"]) == ("25.00", "0.00")
