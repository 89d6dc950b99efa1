"""Withdrawals and devoluções end to end, against real sandbox PSPs: hold, send with an idempotency id, post on
confirmation, void on definite failure; devoluções never above the original and followed to their final status."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import new_key
from tests.e2e.pix_support import PixPlatform, pix

__all__ = ["pix"]

CPF_KEY = "52998224725"


def funded(pix: PixPlatform, valor: str) -> tuple[dict[str, Any], httpx.Client, str]:
    """An investor whose deposit of ``valor`` was paid and credited; returns the Pix's endToEndId too."""
    party, client = pix.investor()
    deposit = pix.deposit(client, valor)
    paid = pix.primary.pay(txid=deposit["txid"])
    pix.wait_for("the deposit", lambda: pix.wallet(party["wallet_id"])["posted"] == valor)
    return party, client, paid["endToEndId"]


def payments_at(sandbox: Any, payment_id: str) -> int:
    return sum(1 for p in sandbox.state()["payments"] if p == payment_id)


def test_a_withdrawal_is_held_sent_once_and_posted(pix: PixPlatform) -> None:
    party, ana, _ = funded(pix, "100.00")
    key = new_key()
    body = {"valor": "60.00", "pix_key": CPF_KEY}
    created = ana.post("/v1/withdrawals", json=body, headers={"Idempotency-Key": key})
    assert created.status_code == 202, created.text
    withdrawal = created.json()
    assert withdrawal["status"] == "PROCESSING" and withdrawal["pix_key_type"] == "CPF"
    assert withdrawal["wallet_id"] == party["wallet_id"] and len(withdrawal["payment_id"]) == 32
    replay = ana.post("/v1/withdrawals", json=body, headers={"Idempotency-Key": key})
    assert replay.status_code == 202 and replay.content == created.content
    assert replay.headers["Idempotent-Replayed"] == "true"
    done = pix.settled_withdrawal(withdrawal["id"])
    assert done["status"] == "COMPLETED" and done["psp"] == "primary" and done["end_to_end_id"]
    wallet = pix.wallet(party["wallet_id"])
    assert (wallet["posted"], wallet["pending"], wallet["available"]) == ("40.00", "0.00", "40.00")
    assert payments_at(pix.primary, withdrawal["payment_id"]) == 1
    assert payments_at(pix.secondary, withdrawal["payment_id"]) == 0
    assert ana.get(f"/v1/withdrawals/{withdrawal['id']}").json()["status"] == "COMPLETED"
    _, bruno = pix.investor()
    assert bruno.get(f"/v1/withdrawals/{withdrawal['id']}").status_code == 404


def test_a_payment_the_psp_refuses_releases_the_hold(pix: PixPlatform) -> None:
    party, ana, _ = funded(pix, "30.00")
    refused_key = "bruno.naoexiste@example.com"
    pix.primary.configure(payment_reject_keys=[refused_key])
    try:
        created = ana.post("/v1/withdrawals", json={"valor": "30.00", "pix_key": refused_key},
                           headers={"Idempotency-Key": new_key()})
        assert created.status_code == 202, created.text
        done = pix.settled_withdrawal(created.json()["id"])
    finally:
        pix.primary.configure(payment_reject_keys=[])
    assert done["status"] == "FAILED" and "DICT" in done["reason"]
    assert pix.wallet(party["wallet_id"])["available"] == "30.00"


def test_a_pending_payment_is_followed_until_it_settles(pix: PixPlatform) -> None:
    party, ana, _ = funded(pix, "12.00")
    pix.primary.configure(payment_settle_ms=800)
    try:
        created = ana.post("/v1/withdrawals", json={"valor": "12.00", "pix_key": "+5511987654321"},
                           headers={"Idempotency-Key": new_key()}).json()
        assert pix.withdrawal(created["id"])["status"] == "PROCESSING"
        assert pix.wallet(party["wallet_id"])["pending"] == "12.00"
        done = pix.settled_withdrawal(created["id"])
    finally:
        pix.primary.configure(payment_settle_ms=0)
    assert done["status"] == "COMPLETED"
    assert payments_at(pix.primary, created["payment_id"]) == 1
    gets = [r for r in pix.primary.requests() if r["method"] == "GET" and r["path"].endswith(created["payment_id"])]
    assert gets, "the pending payment was asked about, not sent again elsewhere"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"valor": "1.00", "pix_key": "52998224724"}, 400, "PIX_INVALID_KEY"),  # CPF check digits
    ({"valor": "1.00", "pix_key": "11222333000180"}, 400, "PIX_INVALID_KEY"),  # CNPJ check digits
    ({"valor": "1.00", "pix_key": "ana@@example.com"}, 400, "PIX_INVALID_KEY"),
    ({"valor": "1.00", "pix_key": "5511987654321"}, 400, "PIX_INVALID_KEY"),  # phone without +
    ({"valor": "1.00", "pix_key": "123e4567-e89b-12d3-a456-42665544000g"}, 400, "PIX_INVALID_KEY"),  # EVP
    ({"valor": "1.00", "pix_key": CPF_KEY, "pix_key_type": "EMAIL"}, 400, "PIX_INVALID_KEY"),
    ({"valor": "1.0", "pix_key": CPF_KEY}, 400, "API_VALIDATION_FAILED"),
    ({"valor": "-1.00", "pix_key": CPF_KEY}, 400, "API_VALIDATION_FAILED"),
    ({"valor": "0.00", "pix_key": CPF_KEY}, 400, "API_VALIDATION_FAILED"),
    ({"valor": 1.0, "pix_key": CPF_KEY}, 400, "API_VALIDATION_FAILED"),
    ({"valor": "99999999999.00", "pix_key": CPF_KEY}, 400, "API_VALIDATION_FAILED"),  # above a Pix valor
    ({"valor": "1.00"}, 400, "API_VALIDATION_FAILED"),
    ({"valor": "1.00", "pix_key": CPF_KEY, "extra": 1}, 400, "API_VALIDATION_FAILED"),
    ({"valor": "1000.00", "pix_key": CPF_KEY}, 422, "LEDGER_INSUFFICIENT_FUNDS"),
])
def test_malformed_withdrawals_are_typed_4xx(pix: PixPlatform, body: dict[str, Any], status: int,
                                             code: str) -> None:
    party, ana = pix.investor()
    response = ana.post("/v1/withdrawals", json=body, headers={"Idempotency-Key": new_key()})
    assert response.status_code == status, response.text
    assert response.json()["code"] == code and response.headers["content-type"] == "application/problem+json"
    assert pix.wallet(party["wallet_id"])["pending"] == "0.00"


def test_customers_withdraw_only_from_their_own_wallet(pix: PixPlatform) -> None:
    ana, _ = pix.investor()
    _, bruno = pix.investor()
    response = bruno.post("/v1/withdrawals", json={"valor": "1.00", "pix_key": CPF_KEY, "wallet_id": ana["wallet_id"]},
                          headers={"Idempotency-Key": new_key()})
    assert response.status_code == 404 and response.json()["code"] == "LEDGER_ACCOUNT_NOT_FOUND"
    staff = pix.operator.post("/v1/withdrawals", json={"valor": "1.00", "pix_key": CPF_KEY},
                              headers={"Idempotency-Key": new_key()})
    assert staff.status_code == 400 and staff.json()["violations"][0]["field"] == "wallet_id"
    auditor = pix.api.client("auditor").post("/v1/withdrawals", json={"valor": "1.00", "pix_key": CPF_KEY},
                                             headers={"Idempotency-Key": new_key()})
    assert auditor.status_code == 403


def test_devolucoes_are_followed_to_the_end_and_never_exceed_the_pix(pix: PixPlatform) -> None:
    party, _ana, e2eid = funded(pix, "80.00")
    key = new_key()
    first = pix.operator.post(f"/v1/pix/{e2eid}/refunds", json={"valor": "30.00", "descricao": "estorno parcial"},
                              headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    refund = first.json()
    assert refund["status"] == "EM_PROCESSAMENTO" and refund["source_account_id"] == party["wallet_id"]
    replay = pix.operator.post(f"/v1/pix/{e2eid}/refunds", json={"valor": "30.00", "descricao": "estorno parcial"},
                               headers={"Idempotency-Key": key})
    assert replay.content == first.content and replay.headers["Idempotent-Replayed"] == "true"
    too_much = pix.operator.post(f"/v1/pix/{e2eid}/refunds", json={"valor": "50.01"},
                                 headers={"Idempotency-Key": new_key()})
    assert too_much.status_code == 422 and too_much.json()["code"] == "PIX_REFUND_EXCEEDS_ORIGINAL"
    assert too_much.json()["refundable"] == "50.00"

    def returned() -> dict[str, Any] | None:
        received = pix.received(e2eid)
        assert received is not None
        done = [r for r in received["devolucoes"] if r["status"] != "EM_PROCESSAMENTO"]
        return received if done else None

    received = pix.wait_for("the devolução", returned)
    assert received["devolucoes"][0]["status"] == "DEVOLVIDO" and received["devolucoes"][0]["return_id"]
    assert received["refundable"] == "50.00"
    assert pix.wallet(party["wallet_id"])["posted"] == "50.00"
    # The PSP refuses the next one: its hold is released.
    pix.primary.configure(refund_reject_rate=1.0)
    try:
        second = pix.operator.post(f"/v1/pix/{e2eid}/refunds", json={"valor": "50.00"},
                                   headers={"Idempotency-Key": new_key()}).json()
        pix.wait_for("the refusal", lambda: any(r["id"] == second["id"] and r["status"] == "NAO_REALIZADO"
                                                for r in pix.received(e2eid)["devolucoes"]))  # type: ignore[index]
    finally:
        pix.primary.configure(refund_reject_rate=0.0)
    wallet = pix.wallet(party["wallet_id"])
    assert (wallet["posted"], wallet["pending"]) == ("50.00", "0.00")
    assert pix.received(e2eid)["refundable"] == "50.00"  # type: ignore[index]


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/v1/pix/E30000003202501011200abcdefghijk/refunds", {"valor": "1.00"}, 404, "PIX_RECEIVED_NOT_FOUND"),
    ("/v1/pix/E3000000320250101120/refunds", {"valor": "1.00"}, 400, "API_VALIDATION_FAILED"),  # short e2eid
    ("/v1/pix/E30000003202513011200abcdefghijk/refunds", {"valor": "1.00"}, 400, "API_VALIDATION_FAILED"),  # month 13
    ("/v1/pix/{e2eid}/refunds", {"valor": "1.001"}, 400, "API_VALIDATION_FAILED"),
    ("/v1/pix/{e2eid}/refunds", {"valor": "1.00", "descricao": "x" * 141}, 400, "API_VALIDATION_FAILED"),
    ("/v1/pix/{e2eid}/refunds", {}, 400, "API_VALIDATION_FAILED"),
])
def test_malformed_refund_requests_are_typed_4xx(pix: PixPlatform, path: str, body: dict[str, Any], status: int,
                                                 code: str) -> None:
    _, _, e2eid = funded(pix, "5.00")
    response = pix.operator.post(path.format(e2eid=e2eid), json=body, headers={"Idempotency-Key": new_key()})
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def test_only_staff_return_pix(pix: PixPlatform) -> None:
    _, ana, e2eid = funded(pix, "5.00")
    response = ana.post(f"/v1/pix/{e2eid}/refunds", json={"valor": "1.00"}, headers={"Idempotency-Key": new_key()})
    assert response.status_code == 403 and response.json()["code"] == "AUTH_FORBIDDEN"
    assert ana.get(f"/v1/pix/{e2eid}").status_code == 403
