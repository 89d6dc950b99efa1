"""Operations endpoints and the OpenAPI document."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import ApiServer, World

ROUTES = {
    ("post", "/v1/parties"), ("get", "/v1/parties/{party_id}"), ("post", "/v1/accounts"),
    ("get", "/v1/accounts/{account_id}"), ("get", "/v1/wallets/{account_id}"),
    ("post", "/v1/wallets/{account_id}/close"), ("post", "/v1/transfers"), ("post", "/v1/transfer-batches"),
    ("post", "/v1/bulk-transfers"),
    ("post", "/v1/holds"), ("post", "/v1/holds/{hold_id}/post"), ("post", "/v1/holds/{hold_id}/void"),
    ("get", "/healthz"), ("get", "/readyz"),
}


def test_health_and_readiness(api: ApiServer) -> None:
    health = httpx.get(f"{api.url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "service": "razao-command-api"}
    ready = httpx.get(f"{api.url}/readyz").json()
    assert ready["status"] == "ready" and ready["rate_limits"] == "redis" and ready["ledger_position"] >= 0


def test_openapi_document_is_complete(api: ApiServer) -> None:
    document = httpx.get(f"{api.url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    routes = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert routes == ROUTES
    for path, ops in document["paths"].items():
        for method, operation in ops.items():
            if path.startswith("/v1/"):
                assert operation["security"] == [{"HTTPBearer": []}], (method, path)
                for status in ("400", "401", "403", "404", "429", "503"):
                    assert "application/problem+json" in operation["responses"][status]["content"], (path, status)
            if method == "post" and path.startswith("/v1/") and not path.endswith("/close"):
                key = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
                assert key["required"] is True and key["schema"]["maxLength"] == 64
    schemas = document["components"]["schemas"]
    assert schemas["TransferIn"]["additionalProperties"] is False
    assert schemas["TransferIn"]["properties"]["valor"]["pattern"] == r"^\d{1,13}\.\d{2}$"
    assert httpx.get(f"{api.url}/docs").status_code == 200


def test_metrics_count_requests_and_expose_the_writer(world: World) -> None:
    world.onboard()
    text = httpx.get(f"{world.api.url}/metrics").text
    assert 'razao_api_requests_total{method="POST",route="/v1/parties",status="201"}' in text
    assert "razao_api_request_duration_seconds_bucket" in text
    assert "razao_ledger_writer_batches_total" in text and "razao_ledger_position" in text
    assert "razao_api_rate_limit_degraded 0.0" in text
