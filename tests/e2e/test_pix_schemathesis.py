"""Fuzzing the PIX routes with schemathesis, against an API with PIX on and two real sandbox PSPs behind it.

The same checks as ``test_api_schemathesis`` (no 5xx, every response matches the served schema), for every
operation the PIX adapters add: deposits, withdrawals, received Pix, devoluções, assignments, reconciliation and
the PSP webhook. Data that fits the schema and data that does not, with a fresh Idempotency-Key unless
schemathesis generated one: as an investor where a customer asks (deposits and withdrawals, from the investor's own
wallet, so charges really reach the sandbox PSP), as an operator elsewhere. A webhook body is signed with a
configured PSP's secret, or sent to that PSP unsigned, or sent as generated, so that the path, the signature check
and what lies behind it are all fuzzed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.e2e.pix_support import PixPlatform, pix, sign  # noqa: F401 - `pix` is the platform fixture
from tests.e2e.test_api_ops import ROUTES as LEDGER_ROUTES
from tests.e2e.test_api_schemathesis import CHECKS

EXAMPLES_MAX = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40}
WEBHOOK = "/v1/webhooks/psp/{psp}/pix"
WEBHOOK_SENDS = ("signed", "unsigned", "as generated")
#: What a customer asks for from their own wallet.
CUSTOMER_ROUTES = {("post", "/v1/deposits"), ("post", "/v1/withdrawals")}


@pytest.fixture(scope="module")
def pix_schema(pix: PixPlatform) -> Any:  # noqa: F811 - the fixture of the same name
    return schemathesis.openapi.from_url(f"{pix.api.url}/openapi.json")


def pix_routes(schema: Any) -> list[tuple[str, str]]:
    served = {(method, path) for path, methods in schema.raw_schema["paths"].items() for method in methods}
    return sorted(served - LEDGER_ROUTES)


# The PIX routes as the API serves them; a test below holds this list to the served document.
ROUTES = [
    ("get", "/v1/deposits/{deposit_id}"), ("get", "/v1/pix/{end_to_end_id}"), ("get", "/v1/reconciliation/items"),
    ("get", "/v1/withdrawals/{withdrawal_id}"), ("post", "/v1/deposits"), ("post", "/v1/pix/{end_to_end_id}/assign"),
    ("post", "/v1/pix/{end_to_end_id}/refunds"), ("post", "/v1/reconciliation/runs"), ("post", "/v1/withdrawals"),
    ("post", WEBHOOK),
]


def test_every_pix_route_is_fuzzed_and_the_webhook_is_documented(pix_schema: Any) -> None:
    assert pix_routes(pix_schema) == sorted(ROUTES)
    webhook = pix_schema.raw_schema["paths"][WEBHOOK]["post"]  # what a PSP integrating with us reads
    body = webhook["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["pix"] and body["properties"]["pix"]["items"]["required"] == [
        "endToEndId", "valor", "horario"]
    assert {p["name"] for p in webhook["parameters"]} == {"psp", "X-Razao-Signature", "X-Psp-Id", "X-Razao-Delivery"}


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"),
                         [(m, p, mode) for m, p in ROUTES for mode in GenerationMode], ids=str)
def test_pix_routes_conform_to_their_schema_and_never_fail(pix_schema: Any, pix: PixPlatform,  # noqa: F811
                                                           method: str, path: str, mode: GenerationMode) -> None:
    operation = pix_schema[path][method.upper()]
    if (method, path) in CUSTOMER_ROUTES:
        investor, _ = pix.investor()
        token = pix.api.token("investor", investor["id"])
    else:
        token = pix.api.token("operator", "pix-fuzzer")

    @given(case=operation.as_strategy(generation_mode=mode), sent=st.sampled_from(WEBHOOK_SENDS))
    @settings(max_examples=EXAMPLES_MAX[mode], deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)
    def fuzz(case: Any, sent: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if path == WEBHOOK:
            headers = webhook_headers(pix, case, sent)
        elif method == "post" and "Idempotency-Key" not in (case.headers or {}):
            headers["Idempotency-Key"] = uuid.uuid4().hex
        case.call_and_validate(base_url=pix.api.url, headers=headers, checks=CHECKS)

    fuzz()


def webhook_headers(pix: PixPlatform, case: Any, sent: str) -> dict[str, str]:  # noqa: F811
    """The PSP's headers. ``signed``: the body (as the HTTP client serialises it) signed with a configured PSP's
    secret, the path naming that PSP; ``unsigned``: the same PSP with the generated signature; ``as generated``:
    the generated path and headers."""
    if sent == "as generated" or not isinstance(case.body, dict | list):
        return {}
    psp = "primary"
    case.path_parameters = {**(case.path_parameters or {}), "psp": psp}
    if sent == "unsigned":
        return {"X-Psp-Id": psp}
    # requests serialises `json=` with json.dumps(..., allow_nan=False) and its default separators.
    body = json.dumps(case.body, allow_nan=False).encode()
    return {"X-Psp-Id": psp, "X-Razao-Signature": sign(pix.sandbox(psp).webhook_secret, body)}
