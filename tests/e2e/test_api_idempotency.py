"""HTTP idempotency (ADR 0006): replay, conflict naming the field, concurrency, scoping by principal."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.e2e.conftest import ApiServer, World, new_key, party_body


def _transfer(world: World, debit: str, credit: str, valor: str, **extra: object) -> dict[str, object]:
    return {"debit_account_id": debit, "credit_account_id": credit, "valor": valor, **extra}


@pytest.mark.parametrize("path", ["/v1/transfers", "/v1/transfer-batches", "/v1/holds", "/v1/parties",
                                  "/v1/accounts", f"/v1/holds/{uuid.UUID(int=1)}/post",
                                  f"/v1/holds/{uuid.UUID(int=1)}/void"])
def test_money_and_creation_routes_require_a_key(world: World, path: str) -> None:
    response = world.operator.post(path, json={})
    assert response.status_code == 400
    assert response.json()["code"] == "IDEMPOTENCY_KEY_REQUIRED"


@pytest.mark.parametrize("key", ["", "a" * 65, "has space", "tab\tkey", "é-accent"])
def test_malformed_keys_are_refused(world: World, key: str) -> None:
    response = world.operator.post("/v1/transfers", json={}, headers={"Idempotency-Key": key.encode()})
    assert response.status_code == 400
    assert response.json()["code"] in ("IDEMPOTENCY_KEY_INVALID", "IDEMPOTENCY_KEY_REQUIRED")


def test_replay_returns_the_original_status_and_body(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    body = _transfer(world, ana["wallet_id"], bruno["wallet_id"], "10.00", reference="r1")
    first = world.operator.post("/v1/transfers", json=body, headers={"Idempotency-Key": "k-replay"})
    second = world.operator.post("/v1/transfers", json=body, headers={"Idempotency-Key": "k-replay"})
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert world.balance(bruno["wallet_id"])["posted"] == "10.00"
    metrics = httpx.get(f"{world.api.url}/metrics").text
    assert 'razao_api_idempotent_replays_total{route="/v1/transfers"}' in metrics


def test_party_replay_is_byte_identical(world: World) -> None:
    body = party_body("borrower")
    first = world.operator.post("/v1/parties", json=body, headers={"Idempotency-Key": "p-replay"})
    second = world.operator.post("/v1/parties", json=body, headers={"Idempotency-Key": "p-replay"})
    assert first.status_code == second.status_code == 201
    assert first.content == second.content and second.headers["Idempotent-Replayed"] == "true"
    conflict = world.operator.post("/v1/parties", json={**body, "email": "other@example.com"},
                                   headers={"Idempotency-Key": "p-replay"})
    assert conflict.status_code == 409 and conflict.json()["field"] == "email"
    duplicate = world.operator.post("/v1/parties", json=body, headers={"Idempotency-Key": new_key()})
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "LEDGER_PARTY_EXISTS"


@pytest.mark.parametrize(("change", "field"), [
    ({"valor": "11.00"}, "valor"),
    ("credit", "credit_account_id"),
    ({"reference": "other"}, "reference"),
    ({"code": 20}, "code"),
])
def test_same_key_different_body_is_a_409_naming_the_field(world: World, change: object, field: str) -> None:
    ana, bruno, carla = world.onboard(), world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    body = _transfer(world, ana["wallet_id"], bruno["wallet_id"], "10.00")
    key = new_key()
    assert world.operator.post("/v1/transfers", json=body, headers={"Idempotency-Key": key}).status_code == 201
    changed = {**body, "credit_account_id": carla["wallet_id"]} if change == "credit" else {**body, **change}
    conflict = world.operator.post("/v1/transfers", json=changed, headers={"Idempotency-Key": key})
    assert conflict.status_code == 409
    problem = conflict.json()
    assert problem["code"] == "LEDGER_IDEMPOTENCY_CONFLICT" and problem["field"] == field
    assert field in problem["detail"] and key in problem["detail"]
    assert world.balance(ana["wallet_id"])["available"] == "90.00"


def test_key_reused_on_another_money_route_conflicts(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    body = _transfer(world, ana["wallet_id"], bruno["wallet_id"], "10.00")
    assert world.operator.post("/v1/transfers", json=body, headers={"Idempotency-Key": "k-route"}).status_code == 201
    as_hold = world.operator.post("/v1/holds", json=body, headers={"Idempotency-Key": "k-route"})
    assert as_hold.status_code == 409 and as_hold.json()["field"] == "kind"


def test_hold_post_conflict_names_valor_and_batch_conflict_names_the_member(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    hold = world.operator.post("/v1/holds", json=_transfer(world, ana["wallet_id"], bruno["wallet_id"], "50.00"),
                               headers={"Idempotency-Key": new_key()}).json()
    key = new_key()
    assert world.operator.post(f"/v1/holds/{hold['id']}/post", json={"valor": "20.00"},
                               headers={"Idempotency-Key": key}).status_code == 201
    conflict = world.operator.post(f"/v1/holds/{hold['id']}/post", json={"valor": "30.00"},
                                   headers={"Idempotency-Key": key})
    assert conflict.status_code == 409 and conflict.json()["field"] == "valor"

    legs = [_transfer(world, ana["wallet_id"], bruno["wallet_id"], "1.00"),
            _transfer(world, ana["wallet_id"], bruno["wallet_id"], "2.00")]
    batch_key = new_key()
    first = world.operator.post("/v1/transfer-batches", json={"transfers": legs},
                                headers={"Idempotency-Key": batch_key})
    replay = world.operator.post("/v1/transfer-batches", json={"transfers": legs},
                                 headers={"Idempotency-Key": batch_key})
    assert first.status_code == replay.status_code == 201 and first.content == replay.content
    assert replay.headers["Idempotent-Replayed"] == "true"
    changed = [legs[0], {**legs[1], "valor": "3.00"}]
    conflict = world.operator.post("/v1/transfer-batches", json={"transfers": changed},
                                   headers={"Idempotency-Key": batch_key})
    assert conflict.status_code == 409 and conflict.json()["field"] == "transfers[1].valor"
    longer = world.operator.post("/v1/transfer-batches", json={"transfers": [*legs, legs[0]]},
                                 headers={"Idempotency-Key": batch_key})
    assert longer.status_code == 409 and longer.json()["field"] == "transfers"


def test_keys_are_scoped_by_principal(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    other_operator = world.api.client("operator")
    body = _transfer(world, ana["wallet_id"], bruno["wallet_id"], "5.00")
    a = world.operator.post("/v1/transfers", json=body, headers={"Idempotency-Key": "shared"})
    b = other_operator.post("/v1/transfers", json=body, headers={"Idempotency-Key": "shared"})
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]
    assert world.balance(bruno["wallet_id"])["posted"] == "10.00"


def test_concurrent_requests_with_one_key_execute_once(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    body = _transfer(world, ana["wallet_id"], bruno["wallet_id"], "7.00")
    headers = {**world.operator.headers, "Idempotency-Key": "race-key"}

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=world.api.url, timeout=30.0,
                                     limits=httpx.Limits(max_connections=50)) as client:
            return await asyncio.gather(*(client.post("/v1/transfers", json=body, headers=headers)
                                          for _ in range(40)))

    responses = asyncio.run(race())
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    assert world.balance(ana["wallet_id"])["available"] == "93.00"


def test_concurrent_conflicting_bodies_commit_one(world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    headers = {**world.operator.headers, "Idempotency-Key": "race-conflict"}

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=world.api.url, timeout=30.0) as client:
            return await asyncio.gather(*(
                client.post("/v1/transfers", headers=headers,
                            json=_transfer(world, ana["wallet_id"], bruno["wallet_id"], f"{n}.00"))
                for n in range(1, 11)))

    responses = asyncio.run(race())
    winners = [r for r in responses if r.status_code == 201]
    assert len(winners) == 1 and all(r.status_code == 409 for r in responses if r not in winners)
    assert world.balance(bruno["wallet_id"])["posted"] == winners[0].json()["valor"]


def test_customer_keys_do_not_collide_with_staff_keys(api: ApiServer, world: World) -> None:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    body = _transfer(world, ana["wallet_id"], bruno["wallet_id"], "1.00")
    staff = world.operator.post("/v1/transfers", json=body, headers={"Idempotency-Key": "same"})
    own = world.customer(ana).post("/v1/transfers", json=body, headers={"Idempotency-Key": "same"})
    assert staff.status_code == own.status_code == 201 and staff.json()["id"] != own.json()["id"]
    assert api.url
