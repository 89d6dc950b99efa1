"""Route-level conformance of the webhook with the BCB "API Pix" v2.9.0 schema: the cases of the validator's
conformance tests (read from the spec file, tests/unit/test_pix_conformance.py), posted signed to the running API.

A document that breaks the schema is answered 400 problem+json listing each violation by its path, and nothing is
stored (a later valid delivery of the same Pix is still new); the spec's examples that follow the schema are
accepted — and then, being unknown to the PSP, rejected by the confirmation step, so nothing is credited.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from ledger import pix as pix_domain
from tests.e2e.pix_support import PixPlatform, pix
from tests.unit.test_pix_conformance import (
    DEVOLUCAO,
    PIX,
    example,
    string_properties,
    valid_pix_example,
)

__all__ = ["pix"]


def post(platform: PixPlatform, body: object) -> httpx.Response:
    return platform.post_webhook("primary", json.dumps(body).encode())


def problem_paths(response: httpx.Response) -> list[str]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["code"] == "PIX_INVALID_PAYLOAD" and problem["violations_total"] >= len(problem["violations"])
    return [v["field"] for v in problem["violations"]]


def fresh_item(n: int, **overrides: Any) -> dict[str, Any]:
    """A schema-valid Pix with its own endToEndId (so stores in one test never meet another test's)."""
    item = valid_pix_example(endToEndId=f"E12345678202009091221conf{n:07d}")
    item.update(overrides)
    return item


@pytest.mark.parametrize("name", PIX["required"])
def test_each_required_field_missing_is_a_400_naming_it(pix: PixPlatform, name: str) -> None:
    item = fresh_item(1)
    del item[name]
    assert f"pix[0].{name}" in problem_paths(post(pix, {"pix": [item]}))


@pytest.mark.parametrize("name", DEVOLUCAO["required"])
def test_each_required_devolucao_field_missing_is_a_400_naming_it(pix: PixPlatform, name: str) -> None:
    item = fresh_item(2)
    del item["devolucoes"][0][name]
    assert f"pix[0].devolucoes[0].{name}" in problem_paths(post(pix, {"pix": [item]}))


@pytest.mark.parametrize("name", string_properties(PIX))
@pytest.mark.parametrize("wrong", [110, 1.5, None, ["x"]])
def test_each_string_field_with_another_type_is_a_400(pix: PixPlatform, name: str, wrong: object) -> None:
    assert f"pix[0].{name}" in problem_paths(post(pix, {"pix": [fresh_item(3, **{name: wrong})]}))


@pytest.mark.parametrize(("field", "value"), [
    ("endToEndId", "E12345678202009091221abcdef1234"),  # 31 characters
    ("endToEndId", "E12345678202009091221abcdef123456"),  # 33
    ("endToEndId", "E12345678202009091221abcdef1234-"),  # charset
    ("endToEndId", "E12345678202002301221abcdef12345"),  # 30 February
    ("valor", "100.0"), ("valor", "100"), ("valor", "-1.00"), ("valor", "100.000"), ("valor", "0.00"),
    ("valor", "1,00"), ("valor", "\uff100.00"),  # a full-width digit one
    ("horario", "2020-09-10 13:03:33"), ("horario", "2020-09-10T13:03:33"),  # no offset
    ("txid", "tx-id"), ("txid", "a" * 36), ("infoPagador", "x" * 141),
])
def test_values_outside_the_anchored_patterns_are_a_400(pix: PixPlatform, field: str, value: str) -> None:
    assert problem_paths(post(pix, {"pix": [fresh_item(4, **{field: value})]})) == [f"pix[0].{field}"]


@pytest.mark.parametrize(("body", "path"), [
    ([], "body"), ("pix", "body"), ({}, "pix"), ({"pix": {"endToEndId": "x"}}, "pix"), ({"pix": ["x"]}, "pix[0]"),
])
def test_the_body_shape(pix: PixPlatform, body: object, path: str) -> None:
    assert problem_paths(post(pix, body)) == [path]


def test_every_violation_of_a_batch_is_listed_and_nothing_is_stored(pix: PixPlatform) -> None:
    good = fresh_item(5)
    bad = fresh_item(6, valor=1.0)
    del bad["horario"]
    paths = problem_paths(post(pix, {"pix": [good, bad, fresh_item(7, txid="?")]}))
    assert paths == ["pix[1].valor", "pix[1].horario", "pix[2].txid"]
    # The good Pix of the refused batch was not stored: delivered alone, it is new.
    accepted = post(pix, {"pix": [good]})
    assert accepted.status_code == 202 and accepted.json() == {"accepted": 1, "new": 1}


def test_the_body_is_bounded(pix: PixPlatform) -> None:
    too_many = {"pix": [fresh_item(8)] * (pix_domain.WEBHOOK_PIX_ITEMS_MAX + 1)}
    assert problem_paths(post(pix, too_many)) == ["pix"]
    assert post(pix, {"pix": []}).json() == {"accepted": 0, "new": 0}


def test_unknown_fields_are_ignored(pix: PixPlatform) -> None:
    item = fresh_item(9, campoNovo={"x": 1})
    assert post(pix, {"pix": [item], "outro": 1}).status_code == 202


@pytest.mark.parametrize("name", ["pixResponse1", "pixWebhook2"])
def test_the_spec_examples_that_follow_the_schema_are_accepted(pix: PixPlatform, name: str) -> None:
    document = copy.deepcopy(example(name))
    body = document if "pix" in document else {"pix": [document]}
    response = post(pix, body)
    assert response.status_code == 202 and response.json()["accepted"] == len(body["pix"])


@pytest.mark.parametrize(("name", "paths"), [
    ("pixResponse2", ["pix[0].endToEndId"]),
    ("pixWebhook1", ["pix[0].devolucoes"]),
])
def test_the_spec_examples_that_break_the_schema_are_refused(pix: PixPlatform, name: str, paths: list[str]) -> None:
    document = copy.deepcopy(example(name))
    body = document if "pix" in document else {"pix": [document]}
    assert problem_paths(post(pix, body)) == paths
