"""Money routes through a running server: transfers, linked batches, holds, balances, closing wallets."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.conftest import World, new_key, open_account

PROBLEM = "application/problem+json"


def test_onboarding_opens_a_wallet_with_zero_balances(world: World) -> None:
    investor = world.onboard("investor")
    borrower = world.onboard("borrower")
    assert investor["kind"] == "investor" and borrower["kind"] == "borrower"
    assert investor["position"] > 0 and borrower["position"] > investor["position"]
    wallet = world.operator.get(f"/v1/wallets/{investor['wallet_id']}").json()
    assert wallet == {**wallet, "code": "investor_wallet", "owner_id": investor["id"], "closed": False,
                      "posted": "0.00", "pending": "0.00", "available": "0.00"}
    assert world.operator.get(f"/v1/wallets/{borrower['wallet_id']}").json()["code"] == "borrower_wallet"
    party = world.operator.get(f"/v1/parties/{investor['id']}")
    assert party.status_code == 200
    assert party.json() == {k: v for k, v in investor.items() if k != "position"}


def test_cnpj_parties_are_accepted(world: World) -> None:
    from tests.e2e.conftest import party_body, random_cnpj

    response = world.operator.post("/v1/parties", json=party_body("borrower", document=random_cnpj(),
                                                                  name="Padaria Pão Quente Ltda"),
                                   headers={"Idempotency-Key": new_key()})
    assert response.status_code == 201, response.text


def test_transfer_moves_money_and_reports_its_position(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    deposit = world.deposit(ana["wallet_id"], "1000.00")
    assert deposit["kind"] == "transfer" and deposit["valor"] == "1000.00"
    response = world.operator.post(
        "/v1/transfers", headers={"Idempotency-Key": "ana-to-bruno"},
        json={"debit_account_id": ana["wallet_id"], "credit_account_id": bruno["wallet_id"], "valor": "120.50",
              "reference": "gift"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["idempotency_key"] == "ana-to-bruno" and body["valor"] == "120.50"
    assert body["position"] > deposit["position"]
    assert world.balance(ana["wallet_id"])["available"] == "879.50"
    assert world.balance(bruno["wallet_id"])["posted"] == "120.50"
    settlement = world.balance(world.settlement)
    assert settlement["code"] == "pix_settlement" and settlement["posted"] == "1000.00"


def test_insufficient_funds_is_a_422_that_records_nothing_and_may_be_retried(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    transfer = {"debit_account_id": ana["wallet_id"], "credit_account_id": bruno["wallet_id"], "valor": "50.00"}
    refused = world.operator.post("/v1/transfers", json=transfer, headers={"Idempotency-Key": "retry-me"})
    assert refused.status_code == 422 and refused.headers["content-type"] == PROBLEM
    problem = refused.json()
    assert problem["code"] == "LEDGER_INSUFFICIENT_FUNDS" and problem["available"] == "0.00"
    assert problem["type"] == "urn:razao:problem:ledger-insufficient-funds" and problem["instance"] == "/v1/transfers"
    world.deposit(ana["wallet_id"], "50.00")
    retried = world.operator.post("/v1/transfers", json=transfer, headers={"Idempotency-Key": "retry-me"})
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
    assert world.balance(bruno["wallet_id"])["posted"] == "50.00"


def test_unknown_accounts_and_same_accounts(world: World) -> None:
    ana = world.onboard()
    unknown = str(uuid.uuid4())
    response = world.operator.post("/v1/transfers", headers={"Idempotency-Key": new_key()},
                                   json={"debit_account_id": unknown, "credit_account_id": ana["wallet_id"],
                                         "valor": "1.00"})
    assert response.status_code == 404 and response.json()["code"] == "LEDGER_ACCOUNT_NOT_FOUND"
    same = world.operator.post("/v1/transfers", headers={"Idempotency-Key": new_key()},
                               json={"debit_account_id": ana["wallet_id"], "credit_account_id": ana["wallet_id"],
                                     "valor": "1.00"})
    assert same.status_code == 422 and same.json()["code"] == "LEDGER_ACCOUNTS_MUST_BE_DIFFERENT"


def test_linked_batch_commits_all_or_nothing(world: World) -> None:
    bruno, carla = world.onboard(), world.onboard("borrower")
    fees = open_account(world.operator, "fee_revenue")
    world.deposit(bruno["wallet_id"], "250.00")
    batch = {"transfers": [
        {"debit_account_id": bruno["wallet_id"], "credit_account_id": carla["wallet_id"], "valor": "200.00",
         "code": 20, "reference": "loan:1"},
        {"debit_account_id": carla["wallet_id"], "credit_account_id": fees, "valor": "4.00", "code": 30},
    ]}
    response = world.operator.post("/v1/transfer-batches", json=batch, headers={"Idempotency-Key": "batch-1"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert [t["idempotency_key"] for t in body["transfers"]] == ["batch-1:0", "batch-1:1"]
    assert body["position"] == max(t["position"] for t in body["transfers"])
    assert world.balance(carla["wallet_id"])["posted"] == "196.00"

    # The second leg would overdraw Carla: nothing of the batch happens.
    failing = {"transfers": [
        {"debit_account_id": bruno["wallet_id"], "credit_account_id": carla["wallet_id"], "valor": "50.00"},
        {"debit_account_id": carla["wallet_id"], "credit_account_id": fees, "valor": "999.00"},
    ]}
    refused = world.operator.post("/v1/transfer-batches", json=failing, headers={"Idempotency-Key": "batch-2"})
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["code"] == "LEDGER_LINKED_BATCH_FAILED"
    assert [r["code"] for r in problem["results"]] == ["LEDGER_LINKED_TRANSFER_FAILED", "LEDGER_INSUFFICIENT_FUNDS"]
    assert world.balance(bruno["wallet_id"])["posted"] == "50.00"
    assert world.balance(carla["wallet_id"])["posted"] == "196.00"


@pytest.mark.parametrize("route", ["/v1/transfer-batches", "/v1/bulk-transfers"])
def test_batch_size_is_bounded(world: World, route: str) -> None:
    ana, bruno = world.onboard(), world.onboard()
    leg = {"debit_account_id": ana["wallet_id"], "credit_account_id": bruno["wallet_id"], "valor": "0.01"}
    too_many = world.operator.post(route, json={"transfers": [leg] * 1001}, headers={"Idempotency-Key": new_key()})
    assert too_many.status_code == 400 and too_many.json()["violations"][0]["field"] == "transfers"
    empty = world.operator.post(route, json={"transfers": []}, headers={"Idempotency-Key": new_key()})
    assert empty.status_code == 400 and empty.json()["code"] == "API_VALIDATION_FAILED"


def test_bulk_transfers_are_answered_one_by_one(world: World) -> None:
    ana, bruno, carla = world.onboard(), world.onboard(), world.onboard("borrower")
    world.deposit(ana["wallet_id"], "100.00")
    bulk = {"transfers": [
        {"debit_account_id": ana["wallet_id"], "credit_account_id": carla["wallet_id"], "valor": "60.00",
         "code": 20, "reference": "loan:7"},
        {"debit_account_id": ana["wallet_id"], "credit_account_id": bruno["wallet_id"], "valor": "50.00"},
        {"debit_account_id": ana["wallet_id"], "credit_account_id": ana["wallet_id"], "valor": "1.00"},
        {"debit_account_id": ana["wallet_id"], "credit_account_id": bruno["wallet_id"], "valor": "40.00"},
    ]}
    response = world.operator.post("/v1/bulk-transfers", json=bulk, headers={"Idempotency-Key": "bulk-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["status"] for r in body["results"]] == [201, 422, 422, 201]
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3]
    assert (body["committed"], body["refused"]) == (2, 2)
    first, overdraft, same, last = body["results"]
    assert first["transfer"]["idempotency_key"] == "bulk-1:0" and first["transfer"]["valor"] == "60.00"
    assert overdraft["transfer"] is None
    assert overdraft["problem"]["code"] == "LEDGER_INSUFFICIENT_FUNDS" and overdraft["problem"]["status"] == 422
    assert overdraft["problem"]["type"] == "urn:razao:problem:ledger-insufficient-funds"
    assert same["problem"]["code"] == "LEDGER_ACCOUNTS_MUST_BE_DIFFERENT"
    assert body["position"] == last["transfer"]["position"] > first["transfer"]["position"]
    assert world.balance(ana["wallet_id"])["posted"] == "0.00"
    assert world.balance(bruno["wallet_id"])["posted"] == "40.00"

    # The same request again: committed members replay, refused ones are decided afresh (still refused).
    again = world.operator.post("/v1/bulk-transfers", json=bulk, headers={"Idempotency-Key": "bulk-1"})
    assert again.status_code == 200
    replayed = again.json()["results"]
    assert [r["replayed"] for r in replayed] == [True, False, False, True]
    assert [r["transfer"] for r in replayed] == [r["transfer"] for r in body["results"]]
    assert world.balance(bruno["wallet_id"])["posted"] == "40.00"

    # A member sent again with another amount under the same key: a conflict for that member only.
    changed = {"transfers": [dict(bulk["transfers"][0], valor="61.00")]}
    conflict = world.operator.post("/v1/bulk-transfers", json=changed, headers={"Idempotency-Key": "bulk-1"})
    assert conflict.status_code == 200
    problem = conflict.json()["results"][0]["problem"]
    assert problem["code"] == "LEDGER_IDEMPOTENCY_CONFLICT" and problem["field"] == "transfers[0].valor"
    assert conflict.json()["position"] is None


def test_bulk_transfers_need_a_key_and_are_for_operators_and_services(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    leg = {"debit_account_id": ana["wallet_id"], "credit_account_id": bruno["wallet_id"], "valor": "0.01"}
    no_key = world.operator.post("/v1/bulk-transfers", json={"transfers": [leg]})
    assert no_key.status_code == 400 and no_key.json()["code"] == "IDEMPOTENCY_KEY_REQUIRED"
    customer = world.customer(ana).post("/v1/bulk-transfers", json={"transfers": [leg]},
                                         headers={"Idempotency-Key": new_key()})
    assert customer.status_code == 403 and customer.json()["code"] == "AUTH_FORBIDDEN"


def test_hold_posted_partially_then_settled_holds_refuse_more(world: World) -> None:
    ana, carla = world.onboard(), world.onboard("borrower")
    world.deposit(ana["wallet_id"], "1000.00")
    hold = world.operator.post("/v1/holds", headers={"Idempotency-Key": new_key()},
                               json={"debit_account_id": ana["wallet_id"], "credit_account_id": carla["wallet_id"],
                                     "valor": "300.00", "timeout_s": 3600})
    assert hold.status_code == 201 and hold.json()["kind"] == "hold"
    hold_id = hold.json()["id"]
    held = world.balance(ana["wallet_id"])
    assert (held["posted"], held["pending"], held["available"]) == ("1000.00", "300.00", "700.00")
    assert world.balance(carla["wallet_id"])["incoming_pending"] == "300.00"

    too_much = world.operator.post(f"/v1/holds/{hold_id}/post", json={"valor": "300.01"},
                                   headers={"Idempotency-Key": new_key()})
    assert too_much.status_code == 422 and too_much.json()["code"] == "LEDGER_EXCEEDS_PENDING_AMOUNT"
    assert too_much.json()["pending_amount"] == "300.00"

    posted = world.operator.post(f"/v1/holds/{hold_id}/post", json={"valor": "180.00"},
                                 headers={"Idempotency-Key": new_key()})
    assert posted.status_code == 201, posted.text
    assert posted.json()["kind"] == "hold_post" and posted.json()["hold_id"] == hold_id
    after = world.balance(ana["wallet_id"])
    assert (after["posted"], after["pending"], after["available"]) == ("820.00", "0.00", "820.00")
    assert world.balance(carla["wallet_id"])["posted"] == "180.00"

    again = world.operator.post(f"/v1/holds/{hold_id}/void", headers={"Idempotency-Key": new_key()})
    assert again.status_code == 409 and again.json()["code"] == "LEDGER_PENDING_TRANSFER_ALREADY_POSTED"
    assert again.json()["hold_id"] == hold_id


def test_hold_posted_in_full_without_a_body_and_hold_voided(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    legs = {"debit_account_id": ana["wallet_id"], "credit_account_id": bruno["wallet_id"]}
    first = world.operator.post("/v1/holds", json={**legs, "valor": "60.00"}, headers={"Idempotency-Key": new_key()})
    full = world.operator.post(f"/v1/holds/{first.json()['id']}/post", headers={"Idempotency-Key": new_key()})
    assert full.status_code == 201 and full.json()["valor"] == "60.00"
    second = world.operator.post("/v1/holds", json={**legs, "valor": "40.00"}, headers={"Idempotency-Key": new_key()})
    voided = world.operator.post(f"/v1/holds/{second.json()['id']}/void", json={"reference": "cancelled"},
                                 headers={"Idempotency-Key": new_key()})
    assert voided.status_code == 201 and voided.json()["kind"] == "hold_void"
    assert world.balance(ana["wallet_id"])["available"] == "40.00"
    assert world.balance(bruno["wallet_id"])["posted"] == "60.00"
    overdraw = world.operator.post("/v1/holds", json={**legs, "valor": "40.01"}, headers={"Idempotency-Key": new_key()})
    assert overdraw.status_code == 422 and overdraw.json()["code"] == "LEDGER_INSUFFICIENT_FUNDS"


def test_unknown_hold_and_plain_transfer_as_hold(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    missing = world.operator.post(f"/v1/holds/{uuid.uuid4()}/post", headers={"Idempotency-Key": new_key()})
    assert missing.status_code == 404 and missing.json()["code"] == "LEDGER_PENDING_TRANSFER_NOT_FOUND"
    plain = world.deposit(ana["wallet_id"], "5.00")
    not_hold = world.operator.post(f"/v1/holds/{plain['id']}/void", headers={"Idempotency-Key": new_key()})
    assert not_hold.status_code == 409 and not_hold.json()["code"] == "LEDGER_PENDING_TRANSFER_NOT_PENDING"
    assert bruno  # keeps the world realistic: two parties


def test_close_wallet_only_at_zero_balance(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "10.00")
    refused = world.operator.post(f"/v1/wallets/{ana['wallet_id']}/close")
    assert refused.status_code == 422 and refused.json()["code"] == "LEDGER_ACCOUNT_BALANCE_NOT_ZERO"
    move = world.operator.post("/v1/transfers", headers={"Idempotency-Key": new_key()},
                               json={"debit_account_id": ana["wallet_id"], "credit_account_id": bruno["wallet_id"],
                                     "valor": "10.00"})
    assert move.status_code == 201
    closed = world.operator.post(f"/v1/wallets/{ana['wallet_id']}/close", headers={"Idempotency-Key": new_key()})
    assert closed.status_code == 200, closed.text
    assert closed.json()["closed"] is True and "Idempotent-Replayed" not in closed.headers
    again = world.operator.post(f"/v1/wallets/{ana['wallet_id']}/close")
    assert again.status_code == 200 and again.json() == closed.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert world.balance(ana["wallet_id"])["closed"] is True
    into_closed = world.operator.post("/v1/transfers", headers={"Idempotency-Key": new_key()},
                                      json={"debit_account_id": bruno["wallet_id"],
                                            "credit_account_id": ana["wallet_id"], "valor": "1.00"})
    assert into_closed.status_code == 422 and into_closed.json()["code"] == "LEDGER_ACCOUNT_CLOSED"


def test_platform_accounts_cannot_be_closed_as_wallets(world: World) -> None:
    response = world.operator.post(f"/v1/wallets/{world.settlement}/close")
    assert response.status_code == 404 and response.json()["code"] == "LEDGER_ACCOUNT_NOT_FOUND"


def test_customer_pays_another_customer_from_their_own_wallet(world: World) -> None:
    ana, carla = world.onboard(), world.onboard("borrower")
    world.deposit(ana["wallet_id"], "100.00")
    response = world.customer(ana).post(
        "/v1/transfers", headers={"Idempotency-Key": new_key()},
        json={"debit_account_id": ana["wallet_id"], "credit_account_id": carla["wallet_id"], "valor": "30.00"},
    )
    assert response.status_code == 201, response.text
    own = world.customer(ana).get(f"/v1/wallets/{ana['wallet_id']}")
    assert own.status_code == 200 and own.json()["available"] == "70.00"
    assert world.customer(carla).get(f"/v1/wallets/{carla['wallet_id']}").json()["posted"] == "30.00"
    coded = world.customer(ana).post(
        "/v1/transfers", headers={"Idempotency-Key": new_key()},
        json={"debit_account_id": ana["wallet_id"], "credit_account_id": carla["wallet_id"], "valor": "1.00",
              "code": 10},
    )
    assert coded.status_code == 403 and coded.json()["code"] == "AUTH_FORBIDDEN"


def test_open_account_replays_and_refuses_wallet_codes(world: World) -> None:
    key = new_key()
    first = world.operator.post("/v1/accounts", json={"code": "suspense"}, headers={"Idempotency-Key": key})
    again = world.operator.post("/v1/accounts", json={"code": "suspense"}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert first.content == again.content and again.headers["Idempotent-Replayed"] == "true"
    conflict = world.operator.post("/v1/accounts", json={"code": "fee_revenue"}, headers={"Idempotency-Key": key})
    assert conflict.status_code == 409 and conflict.json()["field"] == "code"
    wallet = world.operator.post("/v1/accounts", json={"code": "investor_wallet"},
                                 headers={"Idempotency-Key": new_key()})
    assert wallet.status_code == 400 and wallet.json()["violations"][0]["field"] == "code"
