"""Fuzzing with schemathesis against the served OpenAPI document: no 5xx, every response matches its schema.

Each operation is fuzzed with data that fits the schema (positive) and data that does not (negative), as an
operator (the broadest role), with a fresh Idempotency-Key unless schemathesis generated one. Examples are
limited so the whole run stays within about two minutes. (Schemathesis's own pytest plugin does not work with
pytest 9 yet, so its Hypothesis strategies are driven directly.)
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import ApiServer
from tests.e2e.test_api_ops import ROUTES

EXAMPLES_MAX = {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 60}
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def api_schema(api: ApiServer) -> Any:
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json")


# Operations outside /v1 take no input, so only positive data exists for them.
CASES = [
    (method, path, mode)
    for method, path in sorted(ROUTES)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or path.startswith("/v1/")
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=str)
def test_api_conforms_to_its_schema_and_never_fails(api_schema: Any, api: ApiServer, method: str, path: str,
                                                    mode: GenerationMode) -> None:
    operation = api_schema[path][method.upper()]
    token = api.token("operator", "fuzzer")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_MAX[mode], deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)
    def fuzz(case: Any) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if path.startswith("/v1/") and method == "post" and "Idempotency-Key" not in (case.headers or {}):
            headers["Idempotency-Key"] = uuid.uuid4().hex
        case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS)

    fuzz()
