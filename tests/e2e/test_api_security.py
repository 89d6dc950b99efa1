"""Security through a running server: every JWT attack, the role matrix, and BOLA on every route."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from commands.api.auth import AUDIENCE, ISSUER, ensure_dev_keys
from tests.e2e.conftest import ApiServer, World, new_key, party_body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "ops-attacker", "role": "operator", "aud": AUDIENCE, "iss": ISSUER, "iat": now,
              "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(api: ApiServer, **overrides: Any) -> str:
    return jwt.encode(_claims(**overrides), ensure_dev_keys(api.state_dir / "jwt"), algorithm="EdDSA")


def _unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def _hs256_with_public_key(api: ApiServer) -> str:
    """Algorithm confusion: an HS256 token whose HMAC key is the server's public key."""
    public_pem = ensure_dev_keys(api.state_dir / "jwt").public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(_claims()).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _tampered(api: ApiServer) -> str:
    header, _, signature = _signed(api, role="auditor").split(".")
    return f"{header}.{_b64(json.dumps(_claims(role='operator')).encode())}.{signature}"


ATTACKS: dict[str, Any] = {
    "alg none": lambda api: _unsigned(_claims(), {"alg": "none", "typ": "JWT"}),
    "alg None capitalised": lambda api: _unsigned(_claims(), {"alg": "None"}),
    "HS256 keyed with the public key": _hs256_with_public_key,
    "HS256 with a guessed secret": lambda api: jwt.encode(_claims(), "a-guessed-secret-long-enough-for-hmac-256",
                                                          algorithm="HS256"),
    "signed by another key": lambda api: jwt.encode(_claims(), Ed25519PrivateKey.generate(), algorithm="EdDSA"),
    "payload tampered after signing": _tampered,
    "expired": lambda api: _signed(api, iat=int(time.time()) - 600, exp=int(time.time()) - 60),
    "not valid before the future": lambda api: _signed(api, nbf=int(time.time()) + 3600),
    "issued in the future": lambda api: _signed(api, iat=int(time.time()) + 3600, exp=int(time.time()) + 7200),
    "wrong audience": lambda api: _signed(api, aud="another-api"),
    "wrong issuer": lambda api: _signed(api, iss="evil-auth"),
    "no sub": lambda api: _signed(api, sub=None),
    "no role": lambda api: _signed(api, role=None),
    "no aud": lambda api: _signed(api, aud=None),
    "no iss": lambda api: _signed(api, iss=None),
    "no exp": lambda api: _signed(api, exp=None),
    "no iat": lambda api: _signed(api, iat=None),
    "unknown role": lambda api: _signed(api, role="admin"),
    "role as a list": lambda api: _signed(api, role=["operator"]),
    "customer sub not a party id": lambda api: _signed(api, role="investor", sub="not-a-uuid"),
    "customer sub in upper case": lambda api: _signed(api, role="investor", sub=str(uuid.uuid4()).upper()),
    "sub with the key separator": lambda api: _signed(api, sub="ops:evil"),
    "garbage": lambda api: "not.a.token",
    "oversized": lambda api: "a" * 5000,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_jwt_attacks_are_401_problems(api: ApiServer, world: World, attack: str) -> None:
    token = ATTACKS[attack](api)
    ana = world.onboard()
    response = httpx.post(f"{api.url}/v1/transfers", headers={"Authorization": f"Bearer {token}",
                                                              "Idempotency-Key": new_key()},
                          json={"debit_account_id": world.settlement, "credit_account_id": ana["wallet_id"],
                                "valor": "1000.00"})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["code"] == "AUTH_TOKEN_INVALID"
    assert world.balance(ana["wallet_id"])["posted"] == "0.00"


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer  x y", "Basic b3BzOnB3", "Token abc"])
def test_missing_or_malformed_authorization(api: ApiServer, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.get(f"{api.url}/v1/parties/{uuid.uuid4()}", headers=headers)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["code"] in ("AUTH_TOKEN_MISSING", "AUTH_TOKEN_INVALID")


def test_a_valid_token_is_accepted_and_cached(api: ApiServer) -> None:
    client = api.client("auditor")
    for _ in range(3):
        assert client.get(f"/v1/parties/{uuid.uuid4()}").status_code == 404
    metrics = httpx.get(f"{api.url}/metrics").text
    hits = next(line for line in metrics.splitlines() if line.startswith("razao_api_token_cache_hits_total"))
    assert float(hits.split()[-1]) >= 2


# ---- roles ----------------------------------------------------------------------------------------------------

ANY_ID = "00000000-0000-4000-8000-000000000001"
COMMAND_ROUTES = [
    ("POST", "/v1/parties"), ("POST", "/v1/accounts"), ("POST", f"/v1/wallets/{ANY_ID}/close"),
    ("POST", "/v1/transfers"), ("POST", "/v1/transfer-batches"), ("POST", "/v1/holds"),
    ("POST", f"/v1/holds/{ANY_ID}/post"), ("POST", f"/v1/holds/{ANY_ID}/void"),
]
READ_ROUTES = [("GET", f"/v1/parties/{ANY_ID}"), ("GET", f"/v1/wallets/{ANY_ID}"), ("GET", f"/v1/accounts/{ANY_ID}")]


@pytest.mark.parametrize(("method", "path"), COMMAND_ROUTES)
def test_auditors_may_not_command(api: ApiServer, method: str, path: str) -> None:
    response = api.client("auditor").request(method, path, json={}, headers={"Idempotency-Key": new_key()})
    assert response.status_code == 403 and response.json()["code"] == "AUTH_FORBIDDEN"


@pytest.mark.parametrize(("method", "path"), COMMAND_ROUTES + READ_ROUTES)
def test_psps_only_call_webhooks(api: ApiServer, method: str, path: str) -> None:
    response = api.client("psp").request(method, path, json={} if method == "POST" else None,
                                         headers={"Idempotency-Key": new_key()})
    assert response.status_code == 403 and response.json()["code"] == "AUTH_FORBIDDEN"


@pytest.mark.parametrize(("method", "path"), [r for r in COMMAND_ROUTES
                                              if "close" not in r[1] and r[1] != "/v1/transfers"])
@pytest.mark.parametrize("role", ["investor", "borrower"])
def test_customers_may_not_use_staff_routes(api: ApiServer, method: str, path: str, role: str) -> None:
    response = api.client(role).request(method, path, json={}, headers={"Idempotency-Key": new_key()})
    assert response.status_code == 403 and response.json()["code"] == "AUTH_FORBIDDEN"


def test_service_role_moves_money_and_auditor_reads(world: World) -> None:
    ana = world.onboard()
    service = world.api.client("service", "lending")
    response = service.post("/v1/transfers", headers={"Idempotency-Key": new_key()},
                            json={"debit_account_id": world.settlement, "credit_account_id": ana["wallet_id"],
                                  "valor": "5.00"})
    assert response.status_code == 201
    assert world.api.client("auditor").get(f"/v1/wallets/{ana['wallet_id']}").json()["posted"] == "5.00"


# ---- BOLA: another party's objects answer exactly like missing ones ------------------------------------------------


def _same_as_missing(other: httpx.Response, missing: httpx.Response, other_id: str, missing_id: str) -> None:
    assert other.status_code == missing.status_code == 404
    assert other.text.replace(other_id, "<id>") == missing.text.replace(missing_id, "<id>")
    assert other.headers["content-type"] == missing.headers["content-type"]


@pytest.fixture
def parties(world: World) -> dict[str, Any]:
    ana, bruno = world.onboard(), world.onboard()
    world.deposit(ana["wallet_id"], "100.00")
    world.deposit(bruno["wallet_id"], "100.00")
    return {"ana": ana, "bruno": bruno, "ana_client": world.customer(ana)}


def test_bola_read_party(world: World, parties: dict[str, Any]) -> None:
    ana, bruno, client = parties["ana"], parties["bruno"], parties["ana_client"]
    assert client.get(f"/v1/parties/{ana['id']}").status_code == 200
    missing = str(uuid.uuid4())
    _same_as_missing(client.get(f"/v1/parties/{bruno['id']}"), client.get(f"/v1/parties/{missing}"),
                     bruno["id"], missing)
    staff_missing = world.operator.get(f"/v1/parties/{missing}")
    assert staff_missing.status_code == 404 and staff_missing.json()["code"] == "RESOURCE_NOT_FOUND"


@pytest.mark.parametrize("route", ["wallets", "accounts"])
def test_bola_read_balances(world: World, parties: dict[str, Any], route: str) -> None:
    bruno, client = parties["bruno"], parties["ana_client"]
    missing = str(uuid.uuid4())
    _same_as_missing(client.get(f"/v1/{route}/{bruno['wallet_id']}"), client.get(f"/v1/{route}/{missing}"),
                     bruno["wallet_id"], missing)
    _same_as_missing(client.get(f"/v1/{route}/{world.settlement}"), client.get(f"/v1/{route}/{missing}"),
                     world.settlement, missing)
    # And what the operator gets for a missing account is the same answer too.
    _same_as_missing(client.get(f"/v1/{route}/{bruno['wallet_id']}"), world.operator.get(f"/v1/{route}/{missing}"),
                     bruno["wallet_id"], missing)


def test_bola_close_wallet(world: World, parties: dict[str, Any]) -> None:
    bruno, client = parties["bruno"], parties["ana_client"]
    world.operator.post("/v1/transfers", headers={"Idempotency-Key": new_key()},
                        json={"debit_account_id": bruno["wallet_id"], "credit_account_id": world.settlement,
                              "valor": "100.00", "code": 11})  # Bruno withdrew everything: closable
    missing = str(uuid.uuid4())
    _same_as_missing(client.post(f"/v1/wallets/{bruno['wallet_id']}/close"),
                     client.post(f"/v1/wallets/{missing}/close"), bruno["wallet_id"], missing)
    assert world.balance(bruno["wallet_id"])["closed"] is False


def test_bola_transfer_from_another_wallet(world: World, parties: dict[str, Any]) -> None:
    ana, bruno, client = parties["ana"], parties["bruno"], parties["ana_client"]
    missing = str(uuid.uuid4())

    def steal(debit: str) -> httpx.Response:
        return client.post("/v1/transfers", headers={"Idempotency-Key": new_key()},
                           json={"debit_account_id": debit, "credit_account_id": ana["wallet_id"], "valor": "50.00"})

    _same_as_missing(steal(bruno["wallet_id"]), steal(missing), bruno["wallet_id"], missing)
    _same_as_missing(steal(world.settlement), steal(missing), world.settlement, missing)
    assert world.balance(bruno["wallet_id"])["posted"] == "100.00"
    assert world.balance(ana["wallet_id"])["posted"] == "100.00"


def test_bola_transfer_to_a_platform_account(world: World, parties: dict[str, Any]) -> None:
    ana, client = parties["ana"], parties["ana_client"]
    missing = str(uuid.uuid4())

    def pay(credit: str) -> httpx.Response:
        return client.post("/v1/transfers", headers={"Idempotency-Key": new_key()},
                           json={"debit_account_id": ana["wallet_id"], "credit_account_id": credit, "valor": "1.00"})

    _same_as_missing(pay(world.settlement), pay(missing), world.settlement, missing)
    assert world.balance(ana["wallet_id"])["posted"] == "100.00"


@pytest.mark.parametrize("path", ["/v1/holds", "/v1/transfer-batches", "/v1/parties", "/v1/accounts"])
def test_bola_staff_routes_refuse_customers_before_looking(world: World, parties: dict[str, Any], path: str) -> None:
    bruno, client = parties["bruno"], parties["ana_client"]
    leg = {"debit_account_id": bruno["wallet_id"], "credit_account_id": parties["ana"]["wallet_id"], "valor": "1.00"}
    body = {"/v1/holds": leg, "/v1/transfer-batches": {"transfers": [leg]}, "/v1/parties": party_body(),
            "/v1/accounts": {"code": "suspense"}}[path]
    response = client.post(path, json=body, headers={"Idempotency-Key": new_key()})
    assert response.status_code == 403
    assert world.balance(bruno["wallet_id"])["pending"] == "0.00"


def test_bola_hold_routes_refuse_customers(world: World, parties: dict[str, Any]) -> None:
    bruno = parties["bruno"]
    hold = world.operator.post("/v1/holds", headers={"Idempotency-Key": new_key()},
                               json={"debit_account_id": bruno["wallet_id"], "credit_account_id": world.settlement,
                                     "valor": "10.00", "code": 11}).json()
    for action in ("post", "void"):
        response = parties["ana_client"].post(f"/v1/holds/{hold['id']}/{action}",
                                              headers={"Idempotency-Key": new_key()})
        assert response.status_code == 403
    assert world.balance(bruno["wallet_id"])["pending"] == "10.00"
