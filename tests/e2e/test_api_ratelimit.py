"""Rate limits: 429 after the limit (per principal, per address) on Redis, and the same with Redis down."""

from __future__ import annotations

import uuid

import httpx

from tests.e2e.conftest import ApiServer, new_key

# TINY_LIMITS in conftest: customers may make 3 money requests a minute; an address 20.


def _pay(client: httpx.Client, debit: str) -> httpx.Response:
    return client.post("/v1/transfers", headers={"Idempotency-Key": new_key()},
                       json={"debit_account_id": debit, "credit_account_id": str(uuid.uuid4()), "valor": "1.00"})


def _customer(api: ApiServer) -> tuple[httpx.Client, str]:
    from ledger.parties import wallet_id_for_party

    party_id = uuid.uuid4()
    return api.client("investor", str(party_id)), str(wallet_id_for_party(party_id))


def _assert_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "API_RATE_LIMITED"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Limit"] in ("3", "20") and response.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(response.headers["RateLimit-Reset"]) <= 60


def test_principal_limit_gives_429_with_retry_after(limited_api: ApiServer) -> None:
    client, wallet = _customer(limited_api)
    statuses = [_pay(client, wallet).status_code for _ in range(3)]
    assert 429 not in statuses  # refused by the ledger (404: no such wallet) but counted
    limited = _pay(client, wallet)
    _assert_429(limited)
    assert "principal" in limited.json()["detail"]
    # Another customer still gets through; reads are limited separately.
    other, other_wallet = _customer(limited_api)
    assert _pay(other, other_wallet).status_code != 429
    assert client.get(f"/v1/wallets/{wallet}").status_code != 429


def test_address_limit_counts_requests_without_a_valid_token(limited_api: ApiServer) -> None:
    responses = [httpx.post(f"{limited_api.url}/v1/transfers", json={},
                            headers={"Authorization": "Bearer forged", "Idempotency-Key": new_key()})
                 for _ in range(21)]
    assert {r.status_code for r in responses[:20]} == {401}
    _assert_429(responses[20])
    assert "address" in responses[20].json()["detail"]


def _bulk(client: httpx.Client, count: int, path: str = "/v1/bulk-transfers") -> httpx.Response:
    leg = {"debit_account_id": str(uuid.uuid4()), "credit_account_id": str(uuid.uuid4()), "valor": "1.00"}
    return client.post(path, headers={"Idempotency-Key": new_key()}, json={"transfers": [leg] * count})


def test_requests_of_many_transfers_count_each_transfer_against_the_principal(limited_api: ApiServer) -> None:
    # TINY_LIMITS: operators (internal tier) may move money 30 times a minute; an address may send 20 requests.
    operator = limited_api.client("operator", f"ops-{uuid.uuid4().hex[:8]}")
    first = _bulk(operator, 25)
    assert first.status_code == 200, first.text  # 25 of 30: each transfer refused by the ledger, but counted
    assert first.json()["refused"] == 25
    over = _bulk(operator, 10)  # 25 + 10 > 30: refused whole, before the ledger
    assert over.status_code == 429 and over.json()["code"] == "API_RATE_LIMITED"
    assert "10 transfers" in over.json()["detail"] and over.headers["RateLimit-Limit"] == "30"
    assert over.headers["RateLimit-Remaining"] == "4"  # 26 counted: room for 4 more, not for 9
    assert int(over.headers["Retry-After"]) >= 1
    # A refused request counted only its first transfer (26 now): a linked batch of 4 still fits, one of 5 not.
    assert _bulk(operator, 4, "/v1/transfer-batches").status_code == 422  # unknown accounts: the ledger said so
    assert _bulk(operator, 5, "/v1/transfer-batches").status_code == 429
    # Another operator has a counter of its own.
    other = limited_api.client("operator", f"ops-{uuid.uuid4().hex[:8]}")
    assert _bulk(other, 30).status_code == 200


def test_redis_down_falls_back_to_in_process_limits(redisless_api: ApiServer) -> None:
    ready = httpx.get(f"{redisless_api.url}/readyz")
    assert ready.status_code == 200 and ready.json()["rate_limits"] == "memory-fallback"
    operator = redisless_api.client("operator")
    opened = operator.post("/v1/accounts", json={"code": "pix_settlement"}, headers={"Idempotency-Key": new_key()})
    assert opened.status_code == 201, opened.text  # the API stays up
    client, wallet = _customer(redisless_api)
    assert [_pay(client, wallet).status_code for _ in range(3)].count(429) == 0
    _assert_429(_pay(client, wallet))  # and still protected
    # Requests of many transfers are weighed in process too (operators: 30 money movements a minute).
    assert _bulk(operator, 30).status_code == 200
    assert _bulk(operator, 2).status_code == 429
    metrics = httpx.get(f"{redisless_api.url}/metrics").text
    assert "razao_api_rate_limit_degraded 1.0" in metrics
    assert "razao_api_rate_limit_fallbacks_total 1.0" in metrics
    assert "rate limits fall back to in-process counting" in redisless_api.log()
