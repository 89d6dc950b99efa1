"""Bad input never reaches a 500: malformed bodies, headers, paths; the error table; the catch-all."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import Any

import httpx
import pytest

from commands.api.errors import API_ERRORS, ERROR_TABLE, LEDGER_ERRORS
from commands.api.metrics import build_metrics
from commands.api.middleware import EdgeMiddleware
from ledger.errors import ALL_ERRORS
from tests.e2e.conftest import ApiServer, World, new_key

PROBLEM = "application/problem+json"


def test_error_table_covers_every_ledger_error() -> None:
    assert set(ALL_ERRORS) <= set(LEDGER_ERRORS)
    assert set(LEDGER_ERRORS) <= set(ALL_ERRORS), "a row for a code the ledger no longer has"
    for code, spec in ERROR_TABLE.items():
        assert 400 <= spec.status < 600 and spec.title, code
    assert {spec.status for spec in API_ERRORS.values()} >= {400, 401, 403, 404, 405, 413, 415, 429, 500, 503}
    assert ERROR_TABLE["LEDGER_INSUFFICIENT_FUNDS"].status == 422
    assert ERROR_TABLE["LEDGER_UNAVAILABLE"].status == 503


def _assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code", "instance"} <= set(body)
    assert body["status"] == status and body["type"] == f"urn:razao:problem:{body['code'].lower().replace('_', '-')}"
    if code:
        assert body["code"] == code
    return body


@pytest.mark.parametrize(("content", "content_type", "status", "code"), [
    (b'{"debit_account_id": ', "application/json", 400, "API_VALIDATION_FAILED"),
    (b"\xff\xfe\x00garbage", "application/json", 400, "API_VALIDATION_FAILED"),
    (b"[]", "application/json", 400, "API_VALIDATION_FAILED"),
    (b'"a string"', "application/json", 400, "API_VALIDATION_FAILED"),
    (b"null", "application/json", 400, "API_VALIDATION_FAILED"),
    (b'{"a": 1}', "text/plain", 415, "API_UNSUPPORTED_MEDIA_TYPE"),
    (b"a=1&b=2", "application/x-www-form-urlencoded", 415, "API_UNSUPPORTED_MEDIA_TYPE"),
    (b'{"a": 1}', "", 415, "API_UNSUPPORTED_MEDIA_TYPE"),
    (b'{"a": 1}', "application/problem+json", 400, "API_VALIDATION_FAILED"),
])
def test_malformed_bodies(world: World, content: bytes, content_type: str, status: int, code: str) -> None:
    headers = {"Idempotency-Key": new_key(), "Content-Type": content_type}
    _assert_problem(world.operator.post("/v1/transfers", content=content, headers=headers), status, code)


@pytest.mark.parametrize(("change", "field"), [
    ({"valor": 110.0}, "valor"), ({"valor": "110"}, "valor"), ({"valor": "110.5"}, "valor"),
    ({"valor": "0.00"}, "valor"), ({"valor": "-1.00"}, "valor"), ({"valor": "1e3"}, "valor"),
    ({"valor": "12345678901234.00"}, "valor"), ({"valor": "1.00\n"}, "valor"),
    ({"debit_account_id": "not-a-uuid"}, "debit_account_id"), ({"code": 999}, "code"),
    ({"reference": "x" * 201}, "reference"), ({"reference": "bad\x00ref"}, "reference"),
    ({"reference": "lone \ud800 surrogate"}, "reference"),  # valid JSON (an escape), not valid text
    ({"unknown": 1}, "unknown"), ({"valor": None}, "valor"),
])
def test_invalid_fields_name_the_violation(world: World, change: dict[str, Any], field: str) -> None:
    ana = world.onboard()
    body = {"debit_account_id": world.settlement, "credit_account_id": ana["wallet_id"], "valor": "1.00", **change}
    # json.dumps escapes a lone surrogate (httpx's ``json=`` cannot encode it), as a client library may send it.
    problem = _assert_problem(world.operator.post("/v1/transfers", content=json.dumps(body),
                                                  headers={"Idempotency-Key": new_key(),
                                                           "Content-Type": "application/json"}), 400)
    assert field in [v["field"] for v in problem["violations"]]
    assert world.balance(ana["wallet_id"])["posted"] == "0.00"


@pytest.mark.parametrize(("change", "field"), [
    ({"document": "52998224724"}, "document"), ({"document": "11111111111"}, "document"),
    ({"document": "529.982.247-25"}, "document"), ({"email": "ana"}, "email"), ({"phone": "11987654321"}, "phone"),
    ({"phone": "+1415555123"}, "phone"), ({"kind": "operator"}, "kind"), ({"name": "   "}, "name"),
    ({"name": "x" * 141}, "name"), ({"name": "Ana \udfff Silva"}, "name"),
])
def test_invalid_parties_name_the_violation(world: World, change: dict[str, Any], field: str) -> None:
    from tests.e2e.conftest import party_body

    problem = _assert_problem(world.operator.post("/v1/parties", content=json.dumps(party_body(**change)),
                                                  headers={"Idempotency-Key": new_key(),
                                                           "Content-Type": "application/json"}), 400)
    assert [v["field"] for v in problem["violations"]] == [field]


def test_body_size_is_limited_with_and_without_content_length(api: ApiServer, world: World) -> None:
    huge = b'{"reference": "' + b"x" * (600 * 1024) + b'"}'
    headers = {"Idempotency-Key": new_key(), "Content-Type": "application/json"}
    _assert_problem(world.operator.post("/v1/transfers", content=huge, headers=headers), 413, "API_BODY_TOO_LARGE")

    def chunks() -> Any:
        for _ in range(700):
            yield b"x" * 1024

    chunked = world.operator.post("/v1/transfers", content=chunks(), headers=headers)
    _assert_problem(chunked, 413, "API_BODY_TOO_LARGE")
    for declared in (b"abc", b"-1", b"99999999999999999999"):
        headers = {b"Content-Length": declared, b"Content-Type": b"application/json",
                   b"Authorization": world.operator.headers["Authorization"].encode()}
        status_line = _raw_post(api, b"/v1/transfers", headers)
        assert status_line.split()[1] in (b"400", b"413"), status_line


def _raw_post(api: ApiServer, path: bytes, headers: dict[bytes, bytes]) -> bytes:
    """Sends what no well-behaved client library would (a lying Content-Length); returns the status line."""
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        lines = [b"POST " + path + b" HTTP/1.1", b"Host: " + host.encode(), b"Connection: close"]
        lines += [k + b": " + v for k, v in headers.items()]
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n{}")
        return sock.recv(65536).split(b"\r\n", 1)[0]


@pytest.mark.parametrize("path", ["/v1/wallets/not-a-uuid", "/v1/parties/123", f"/v1/accounts/{uuid.uuid4()}x",
                                  "/v1/wallets/%00", "/v1/parties/%ff%fe"])
def test_bad_ids_in_paths(world: World, path: str) -> None:
    response = world.operator.get(path)
    assert response.status_code in (400, 404)
    _assert_problem(response, response.status_code)


def test_unknown_routes_and_methods(world: World) -> None:
    _assert_problem(world.operator.get("/v1/nothing-here"), 404, "RESOURCE_NOT_FOUND")
    _assert_problem(httpx.get(f"{world.api.url}/"), 404, "RESOURCE_NOT_FOUND")
    not_allowed = world.operator.delete("/v1/transfers")
    _assert_problem(not_allowed, 405, "API_METHOD_NOT_ALLOWED")
    assert "POST" in not_allowed.headers["Allow"]
    _assert_problem(world.operator.put(f"/v1/parties/{uuid.uuid4()}", json={}), 405)


def test_weird_headers_never_500(world: World) -> None:
    for headers in ({"Idempotency-Key": "k" * 10_000}, {"Authorization": "Bearer " + "é" * 10},
                    {"Content-Type": "application/json; charset=utf-16"}, {"Accept": "text/html"},
                    {"X-Forwarded-For": "1.2.3.4, <script>"}):
        encoded = {k: v.encode("utf-8") for k, v in headers.items()}
        response = httpx.post(f"{world.api.url}/v1/transfers", headers={**world.operator.headers, **encoded},
                              content=b"{}")
        assert 400 <= response.status_code < 500, (headers, response.text)
        assert response.headers["content-type"] == PROBLEM


def test_the_catch_all_answers_a_generic_500_that_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def broken_app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("secret database password in a stack trace")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    middleware = EdgeMiddleware(broken_app, build_metrics())
    scope = {"type": "http", "method": "GET", "path": "/v1/x", "headers": [], "query_string": b""}
    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 500
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["code"] == "API_INTERNAL_ERROR" and body["detail"] == "internal error"
    assert "secret" not in json.dumps(body)
    assert "secret database password" in caplog.text  # logged for operators, not shown to clients
