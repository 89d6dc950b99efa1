"""Deposits end to end: a charge at the sandbox PSP, the payer pays it, the PSP's signed webhook arrives, the Pix is
confirmed with the PSP and credited once; unmatched Pix go to suspense; lost webhooks are repaired by reconciliation.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from tests.e2e.conftest import new_key
from tests.e2e.pix_support import PixPlatform, pix, pix_item

__all__ = ["pix"]


def test_a_deposit_paid_through_the_sandbox_is_credited(pix: PixPlatform) -> None:
    party, ana = pix.investor()
    key = new_key()
    created = ana.post("/v1/deposits", json={"valor": "150.00"}, headers={"Idempotency-Key": key})
    assert created.status_code == 201, created.text
    deposit = created.json()
    assert deposit["wallet_id"] == party["wallet_id"] and deposit["valor"] == "150.00"
    assert deposit["psp"] == "primary" and deposit["pix_copia_e_cola"].startswith("000201")
    assert len(deposit["txid"]) == 32 and created.headers["location"] == f"/v1/deposits/{deposit['id']}"
    again = ana.post("/v1/deposits", json={"valor": "150.00"}, headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.content == created.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len([r for r in pix.primary.requests() if r["method"] == "PUT" and r["path"].startswith("/cob/")]) >= 1
    conflict = ana.post("/v1/deposits", json={"valor": "151.00"}, headers={"Idempotency-Key": key})
    assert conflict.status_code == 409 and conflict.json()["field"] == "valor"

    paid = pix.primary.pay(txid=deposit["txid"])
    e2eid = paid["endToEndId"]
    wallet = pix.wait_for("the credit", lambda: (w := pix.wallet(party["wallet_id"]))["posted"] == "150.00" and w)
    assert wallet["available"] == "150.00"
    status = ana.get(f"/v1/deposits/{deposit['id']}").json()
    assert status["status"] == "PAID" and status["end_to_end_id"] == e2eid
    received = pix.received(e2eid)
    assert received is not None
    assert received["credit_account_id"] == party["wallet_id"] and received["deposit_id"] == deposit["id"]
    assert received["source"] == "webhook" and received["suspense_reason"] is None
    # Confirmed with the PSP before the credit: GET /pix/{e2eid} reached the sandbox.
    assert any(r["method"] == "GET" and r["path"] == f"/pix/{e2eid}" for r in pix.primary.requests())
    # Someone else's deposit is invisible to Ana.
    _, bruno = pix.investor()
    assert bruno.get(f"/v1/deposits/{deposit['id']}").status_code == 404


def test_the_same_pix_delivered_five_times_concurrently_is_credited_once(pix: PixPlatform) -> None:
    party, ana = pix.investor()
    deposit = pix.deposit(ana, "42.00")
    pix.primary.configure(webhook_enabled=False)
    try:
        paid = pix.primary.pay(txid=deposit["txid"])
    finally:
        pix.primary.configure(webhook_enabled=True)
    body = pix_item(paid)
    answers: list[httpx.Response] = []
    start = threading.Barrier(5)

    def deliver() -> None:
        start.wait()
        answers.append(pix.post_webhook("primary", body))

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202] * 5, [a.text for a in answers]
    assert sum(a.json()["new"] for a in answers) == 1 and all(a.json()["accepted"] == 1 for a in answers)
    pix.wait_for("the credit", lambda: pix.wallet(party["wallet_id"])["posted"] == "42.00")
    for _ in range(5):  # and again, one after the other, after it was credited
        assert pix.post_webhook("primary", body).json() == {"accepted": 1, "new": 0}
    assert pix.wallet(party["wallet_id"])["posted"] == "42.00"
    settlement_events = pix.received(paid["endToEndId"])
    assert settlement_events is not None and settlement_events["valor"] == "42.00"


def test_a_pix_delivered_again_after_its_inbox_row_was_pruned_is_credited_once(pix: PixPlatform, razao: Any) -> None:
    party, ana = pix.investor()
    deposit = pix.deposit(ana, "13.00")
    paid = pix.primary.pay(txid=deposit["txid"])
    e2eid = paid["endToEndId"]
    pix.wait_for("the credit", lambda: pix.wallet(party["wallet_id"])["posted"] == "13.00")
    inbox = "SELECT status FROM pix_inbox WHERE end_to_end_id = %s"
    with psycopg.connect(pix.api.dsn, autocommit=True) as conn:
        pix.wait_for("the row done", lambda: conn.execute(inbox, (e2eid,)).fetchone() == ("credited",))
        conn.execute("UPDATE pix_inbox SET done_at = now() - interval '2 days' WHERE end_to_end_id = %s", (e2eid,))
        env = {**pix.env, "RAZAO_PG_DSN": pix.api.dsn, "PATH": "/usr/bin:/bin"}
        refused = razao("pix", "prune-inbox", "--older-than-days", "0", env=env, check=False)
        assert refused.returncode == 2 and "days must be 1 to" in refused.stderr
        pruned = razao("pix", "prune-inbox", "--older-than-days", "1", env=env).stdout
        assert "deleted 1 finished inbox rows" in pruned
        assert conn.execute(inbox, (e2eid,)).fetchone() is None
        again = pix.post_webhook("primary", pix_item(paid))
        assert again.status_code == 202 and again.json() == {"accepted": 1, "new": 1}  # stored anew ...
        pix.wait_for("the row done again", lambda: conn.execute(inbox, (e2eid,)).fetchone() == ("credited",))
    assert pix.wallet(party["wallet_id"])["posted"] == "13.00"  # ... and credited once all the same


def test_unmatched_pix_go_to_suspense_with_a_reconciliation_item(pix: PixPlatform) -> None:
    party, ana = pix.investor()
    deposit = pix.deposit(ana, "10.00")
    wrong_amount = pix.primary.pay(txid=deposit["txid"], valor="9.99")  # paid, but not what was asked
    unknown = pix.primary.pay(txid="semcobrancacorrespondente0001", valor="5.00", force=True)
    for paid, reason in ((wrong_amount, "AMOUNT_MISMATCH"), (unknown, "UNKNOWN_TXID")):
        received = pix.wait_for("the suspense credit", lambda paid=paid: pix.received(paid["endToEndId"]))
        assert received["suspense_reason"] == reason and received["reconciliation"] == "open"
        assert received["credit_account_id"] != party["wallet_id"]
    assert pix.wallet(party["wallet_id"])["posted"] == "0.00"
    items = pix.operator.get("/v1/reconciliation/items").json()["items"]
    assert {wrong_amount["endToEndId"], unknown["endToEndId"]} <= {i["end_to_end_id"] for i in items}
    # An operator moves one to the wallet; the item is closed, the money is Ana's.
    assigned = pix.operator.post(f"/v1/pix/{wrong_amount['endToEndId']}/assign",
                                 json={"wallet_id": party["wallet_id"]}, headers={"Idempotency-Key": new_key()})
    assert assigned.status_code == 201 and assigned.json()["valor"] == "9.99", assigned.text
    assert pix.wallet(party["wallet_id"])["posted"] == "9.99"
    again = pix.operator.post(f"/v1/pix/{wrong_amount['endToEndId']}/assign",
                              json={"wallet_id": party["wallet_id"]}, headers={"Idempotency-Key": new_key()})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert ana.post(f"/v1/pix/{unknown['endToEndId']}/assign", json={"wallet_id": party["wallet_id"]},
                    headers={"Idempotency-Key": new_key()}).status_code == 403


def test_reconciliation_repairs_lost_webhooks_idempotently(pix: PixPlatform, razao: Any) -> None:
    party, ana = pix.investor()
    deposit = pix.deposit(ana, "77.70")
    pix.primary.configure(webhook_enabled=False)
    try:
        paid = pix.primary.pay(txid=deposit["txid"])
        keyless = pix.primary.pay(valor="3.00")  # a Pix to our key without a charge: never notified, by the spec
    finally:
        pix.primary.configure(webhook_enabled=True)
    assert pix.received(paid["endToEndId"]) is None
    now = datetime.now(UTC)
    window = {"inicio": (now - timedelta(minutes=5)).isoformat(), "fim": (now + timedelta(minutes=1)).isoformat()}
    first = pix.operator.post("/v1/reconciliation/runs", json=window)
    assert first.status_code == 200, first.text
    report = first.json()
    assert report["repaired"] >= 2 and report["psps"]["primary"]["credited"] >= 1
    assert pix.wallet(party["wallet_id"])["posted"] == "77.70"
    received = pix.received(paid["endToEndId"])
    assert received is not None and received["source"] == "reconciliation"
    assert pix.received(keyless["endToEndId"])["suspense_reason"] == "NO_TXID"  # type: ignore[index]
    second = pix.operator.post("/v1/reconciliation/runs", json=window).json()
    assert second["repaired"] == 0 and second["psps"]["primary"]["already_credited"] >= 2
    # The CLI asks the running API to do the same.
    env = {"RAZAO_STATE_DIR": str(pix.api.state_dir), "RAZAO_ENV": "development", "PATH": "/usr/bin:/bin"}
    output = razao("pix", "reconcile", "--from", window["inicio"], "--to", window["fim"], "--url", pix.api.url,
                   env=env).stdout
    assert "repaired 0" in output and "primary" in output
    assert pix.wallet(party["wallet_id"])["posted"] == "77.70"


def test_bad_webhooks_are_refused_and_credit_nothing(pix: PixPlatform) -> None:
    party, ana = pix.investor()
    deposit = pix.deposit(ana, "20.00")
    pix.primary.configure(webhook_enabled=False)
    try:
        paid = pix.primary.pay(txid=deposit["txid"])
    finally:
        pix.primary.configure(webhook_enabled=True)
    body = pix_item(paid)
    wrong_secret = pix.post_webhook("primary", body, secret="not-the-secret")
    assert wrong_secret.status_code == 401 and wrong_secret.json()["code"] == "PIX_WEBHOOK_SIGNATURE_INVALID"
    other_identity = pix.post_webhook("primary", body, psp_header="secondary")
    assert other_identity.status_code == 403 and other_identity.json()["code"] == "PIX_WEBHOOK_PSP_MISMATCH"
    # The secondary's valid signature does not open the primary's door.
    crossed = pix.post_webhook("primary", body, secret=pix.secondary.webhook_secret, psp_header="primary")
    assert crossed.status_code == 401
    unknown_psp = httpx.post(f"{pix.api.url}/v1/webhooks/psp/tertiary/pix", content=body,
                             headers={"Content-Type": "application/json"})
    assert unknown_psp.status_code == 404
    bad = json.loads(body)
    bad["pix"][0]["valor"] = 20.0
    bad["pix"][0]["endToEndId"] = bad["pix"][0]["endToEndId"][:-1]
    invalid = pix.post_webhook("primary", json.dumps(bad).encode())
    assert invalid.status_code == 400 and invalid.headers["content-type"] == "application/problem+json"
    problem = invalid.json()
    assert problem["code"] == "PIX_INVALID_PAYLOAD" and problem["violations_total"] == 2
    assert {v["field"] for v in problem["violations"]} == {"pix[0].valor", "pix[0].endToEndId"}
    not_json = pix.post_webhook("primary", b"{not json")
    assert not_json.status_code == 400 and not_json.json()["violations"][0]["field"] == "body"
    assert pix.received(paid["endToEndId"]) is None
    assert pix.wallet(party["wallet_id"])["posted"] == "0.00"


def test_a_webhook_for_a_pix_the_psp_does_not_know_credits_nothing(pix: PixPlatform) -> None:
    forged: dict[str, Any] = {"endToEndId": "E30000003202501011200Forged00001", "valor": "999.00",
                              "horario": "2025-01-01T12:00:00.000Z", "txid": "forgedtxid0000000000000000001"}
    answer = pix.post_webhook("primary", pix_item(forged))
    assert answer.status_code == 202  # well-formed and signed: stored, then checked with the PSP
    metrics_line = 'razao_pix_inbox_processed_total{result="rejected"}'
    pix.wait_for("the rejection", lambda: metrics_line in pix.metrics(), timeout_s=30)
    assert pix.received(forged["endToEndId"]) is None
