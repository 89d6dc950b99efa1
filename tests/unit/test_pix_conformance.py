"""Conformance of ledger.pix.validate_webhook_body / validate_pix with the BCB "API Pix" v2.9.0 schema.

Everything here is read from the spec files in shared/pix/ (loaded with PyYAML), not copied: required fields,
patterns, lengths, enums. Valid documents are generated from those patterns (hypothesis) and must pass both our
validator and the schema as written (jsonschema-rs as an independent oracle); mutated ones must fail with a
violation naming the path. Where we are deliberately stricter than the literal schema (anchored patterns, the Open
Finance endToEndId structure, RFC 3339 horario, componentesValor parts), the tests say so.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import pix

SHARED_PIX = Path(__file__).resolve().parents[2].parent / "shared" / "pix"
BCB_SPEC = SHARED_PIX / "bcb-api-pix-2.9.0.openapi.yaml"
OPEN_FINANCE_SPEC = SHARED_PIX / "open-finance-payments-4.0.0.yml"


@cache
def bcb() -> dict[str, Any]:
    if not BCB_SPEC.exists():
        pytest.fail(f"the BCB spec is expected beside the repository at {BCB_SPEC}")
    return dict(yaml.safe_load(BCB_SPEC.read_text()))


@cache
def open_finance() -> dict[str, Any]:
    return dict(yaml.safe_load(OPEN_FINANCE_SPEC.read_text()))


def schema(name: str) -> dict[str, Any]:
    return dict(bcb()["components"]["schemas"][name])


def pattern_of(prop: dict[str, Any]) -> str:
    """A property's pattern; with ``allOf`` overrides, the last one (the Pix schema's txid widens TxId)."""
    if "pattern" in prop:
        return str(prop["pattern"])
    return [str(part["pattern"]) for part in prop["allOf"] if "pattern" in part][-1]


def ascii_fullmatch(spec_pattern: str) -> re.Pattern[str]:
    """The spec's unanchored pattern, anchored and with ``\\d`` meaning ASCII digits only."""
    return re.compile(r"\A(?:" + spec_pattern.removeprefix("^").removesuffix("$") + r")\Z", re.ASCII)


PIX = schema("Pix")
DEVOLUCAO = schema("Devolucao")
VALOR_PATTERN = pattern_of(PIX["properties"]["valor"])
TXID_PATTERN = pattern_of(PIX["properties"]["txid"])
RTR_PATTERN = pattern_of(DEVOLUCAO["properties"]["rtrId"])
REFUND_ID_PATTERN = pattern_of(schema("DevolucaoId"))
E2E_OF_PATTERN = str(open_finance()["components"]["schemas"]["EndToEndId"]["pattern"])
TEXT = st.characters(blacklist_categories=("Cs",))  # JSON strings cannot carry lone surrogates


@cache
def literal_validator() -> Any:
    """The Pix schema exactly as the spec writes it (unanchored patterns, formats not asserted)."""
    root = {"$ref": "#/components/schemas/Pix", "components": {"schemas": bcb()["components"]["schemas"]}}
    return jsonschema_rs.validator_for(root)


# ---- what we read from the spec matches what the validator enforces -------------------------------------------


def test_the_schema_facts_the_validator_relies_on() -> None:
    assert set(PIX["required"]) == {"endToEndId", "valor", "horario"}
    assert set(DEVOLUCAO["required"]) == {"id", "rtrId", "valor", "horario", "status"}
    e2e = schema("EndToEndId")
    assert (e2e["minLength"], e2e["maxLength"], e2e["pattern"]) == (32, 32, "[a-zA-Z0-9]{32}")
    assert VALOR_PATTERN == r"\d{1,10}\.\d{2}"
    assert schema("TxId")["pattern"] == "[a-zA-Z0-9]{26,35}" and TXID_PATTERN == "[a-zA-Z0-9]{1,35}"
    assert PIX["properties"]["chave"]["maxLength"] == pix.PIX_KEY_LENGTH_MAX
    assert PIX["properties"]["infoPagador"]["maxLength"] == pix.PIX_TEXT_LENGTH_MAX
    assert DEVOLUCAO["properties"]["descricao"]["maxLength"] == pix.PIX_TEXT_LENGTH_MAX
    assert DEVOLUCAO["properties"]["status"]["enum"] == [s.value for s in pix.RefundStatus]
    assert schema("DevolucaoNatureza")["enum"] == [n.value for n in pix.RefundNature]
    assert "additionalProperties" not in PIX and "additionalProperties" not in DEVOLUCAO  # unknown fields allowed
    body = bcb()["components"]["requestBodies"]["WebhookPixBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["pix"]["items"] == {"$ref": "#/components/schemas/Pix"}
    assert "required" not in body  # we require `pix` anyway: a notification without it says nothing
    page_max = bcb()["components"]["parameters"]["itensPorPagina"]["schema"]["maximum"]
    assert pix.WEBHOOK_PIX_ITEMS_MAX <= page_max


@pytest.mark.parametrize(
    ("spec_pattern", "ours"),
    [(VALOR_PATTERN, pix.VALOR_PATTERN), (TXID_PATTERN, pix.RECEIVED_TXID_PATTERN),
     (schema("TxId")["pattern"], pix.TXID_PATTERN), (RTR_PATTERN, pix.RETURN_ID_PATTERN),
     (REFUND_ID_PATTERN, pix.REFUND_ID_PATTERN)],
)
@given(data=st.data())
def test_our_patterns_are_the_spec_patterns_anchored(spec_pattern: str, ours: re.Pattern[str],
                                                     data: st.DataObject) -> None:
    anchored = ascii_fullmatch(spec_pattern)
    good = data.draw(st.from_regex(anchored, fullmatch=True))
    assert ours.fullmatch(good)
    # Near misses that the spec pattern, applied as written (a search), still accepts: a prefix, a suffix, a newline.
    for bad in ("-" + good, good + "0", good + "\n", "x" + good):
        assert re.search(spec_pattern, bad)
        if not anchored.fullmatch(bad):
            assert not ours.fullmatch(bad), bad


def test_unanchored_spec_patterns_accept_what_the_validator_refuses() -> None:
    # Why anchoring (and ASCII digits) matter: the spec's valor pattern, applied as written by Python's `re`, finds
    # a match in each of these: a sign, a third decimal, fullwidth and Arabic-Indic digits (\d is Unicode).
    for text in ("-1.00", "110.000", "\uff11\uff11\uff10.\uff10\uff10", "\u0661\u0661\u0660.\u0660\u0660"):
        assert re.search(VALOR_PATTERN, text)
        with pytest.raises(pix.InvalidPixPayload):
            pix.validate_pix(valid_pix_example(valor=text))


# ---- generated valid documents --------------------------------------------------------------------------------


def real_date(e2e: str) -> bool:
    try:
        datetime.strptime(e2e[9:21], "%Y%m%d%H%M")
    except ValueError:
        return False
    return True


E2E_IDS = st.from_regex(ascii_fullmatch(E2E_OF_PATTERN), fullmatch=True).filter(real_date)
VALORES = st.from_regex(ascii_fullmatch(VALOR_PATTERN), fullmatch=True).filter(lambda v: v.strip("0.") != "")
MOMENTS = st.datetimes(min_value=datetime(2020, 11, 16), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@st.composite
def devolucoes(draw: st.DrawFn, amount_centavos: int) -> list[dict[str, Any]]:
    items = []
    left = amount_centavos
    for _ in range(draw(st.integers(0, 3))):
        if left == 0:
            break
        amount = draw(st.integers(1, left))
        status = draw(st.sampled_from(DEVOLUCAO["properties"]["status"]["enum"]))
        if status != "NAO_REALIZADO":
            left -= amount
        item: dict[str, Any] = {
            "id": draw(st.from_regex(ascii_fullmatch(REFUND_ID_PATTERN), fullmatch=True)),
            "rtrId": draw(st.from_regex(ascii_fullmatch(RTR_PATTERN), fullmatch=True)),
            "valor": pix.format_valor(amount),
            "horario": {"solicitacao": pix.format_horario(draw(MOMENTS))},
            "status": status,
        }
        if draw(st.booleans()):
            item["natureza"] = draw(st.sampled_from(schema("DevolucaoNatureza")["enum"]))
        if draw(st.booleans()):
            item["descricao"] = draw(st.text(TEXT, max_size=DEVOLUCAO["properties"]["descricao"]["maxLength"]))
        if status == "NAO_REALIZADO" and draw(st.booleans()):
            item["motivo"] = draw(st.text(TEXT, max_size=DEVOLUCAO["properties"]["motivo"]["maxLength"]))
        items.append(item)
    return items


@st.composite
def valid_pix(draw: st.DrawFn) -> dict[str, Any]:
    valor = draw(VALORES)
    amount = pix.parse_valor(valor)
    generators: dict[str, Callable[[], Any]] = {
        "endToEndId": lambda: draw(E2E_IDS),
        "txid": lambda: draw(st.from_regex(ascii_fullmatch(TXID_PATTERN), fullmatch=True)),
        "valor": lambda: valor,
        "componentesValor": lambda: {"original": {"valor": valor}},
        "chave": lambda: draw(st.text(TEXT, max_size=PIX["properties"]["chave"]["maxLength"])),
        "horario": lambda: draw(st.sampled_from(["{}Z", "{}+00:00"])).format(
            draw(MOMENTS).isoformat(timespec="milliseconds").removesuffix("+00:00")),
        "infoPagador": lambda: draw(st.text(TEXT, max_size=PIX["properties"]["infoPagador"]["maxLength"])),
        "devolucoes": lambda: draw(devolucoes(amount)),
    }
    # Every property the spec defines has a generator: a new one in the spec makes this test say so.
    assert set(generators) == set(PIX["properties"])
    return {name: make() for name, make in generators.items() if name in PIX["required"] or draw(st.booleans())}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_pix(), min_size=0, max_size=4))
def test_generated_valid_documents_pass_ours_and_the_literal_schema(items: list[dict[str, Any]]) -> None:
    received = pix.validate_webhook_body({"pix": copy.deepcopy(items)})
    oracle = literal_validator()
    assert len(received) == len(items)
    for item, got in zip(items, received, strict=True):
        # The only disagreement allowed: a txid under 26 characters, which the literal `allOf` of TxId (26..35)
        # and the Pix override (1..35) refuses, and which we accept as the override means (see validate_pix).
        errors = [e for e in oracle.iter_errors(item)
                  if not (list(e.instance_path) == ["txid"] and len(item.get("txid", "")) < 26)]
        assert errors == []
        assert got.end_to_end_id == item["endToEndId"]
        assert got.amount_centavos == pix.parse_valor(item["valor"])
        assert got.txid == item.get("txid")
        assert got.processed_at == pix.parse_horario(item["horario"])
        assert len(got.refunds) == len(item.get("devolucoes", []))
        assert got.refundable_centavos >= 0


# ---- mutations ------------------------------------------------------------------------------------------------


def valid_pix_example(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "endToEndId": "E12345678202009091221abcdef12345", "txid": "cd1fe328c875481285a6f233ae41b662",
        "valor": "100.00", "horario": "2020-09-10T13:03:33.902Z", "infoPagador": "Reforma da casa",
        "devolucoes": [{"id": "000AAA111", "rtrId": "D12345678202009091000abcde123456", "valor": "11.00",
                        "horario": {"solicitacao": "2020-09-10T13:03:33.902Z"}, "status": "EM_PROCESSAMENTO"}],
    }
    item.update(overrides)
    return item


def violations_of(body: object) -> list[pix.Violation]:
    with pytest.raises(pix.InvalidPixPayload) as caught:
        pix.validate_webhook_body(body)
    return list(caught.value.violations)


def string_properties(obj_schema: dict[str, Any]) -> list[str]:
    names = []
    for name, prop in obj_schema["properties"].items():
        resolved = schema(prop["$ref"].rsplit("/", 1)[1]) if "$ref" in prop else prop
        if resolved.get("type") == "string" or any(part.get("$ref", "").endswith("/TxId")
                                                   for part in resolved.get("allOf", [])):
            names.append(name)
    return names


@pytest.mark.parametrize("name", PIX["required"])
def test_each_required_pix_field_missing_is_named(name: str) -> None:
    item = valid_pix_example()
    del item[name]
    assert pix.Violation(f"pix[0].{name}", "is required") in violations_of({"pix": [item]})


@pytest.mark.parametrize("name", DEVOLUCAO["required"])
def test_each_required_devolucao_field_missing_is_named(name: str) -> None:
    item = valid_pix_example()
    del item["devolucoes"][0][name]
    assert pix.Violation(f"pix[0].devolucoes[0].{name}", "is required") in violations_of({"pix": [item]})


@pytest.mark.parametrize("name", string_properties(PIX))
@pytest.mark.parametrize("wrong", [110, 1.5, True, None, ["x"], {"x": 1}])
def test_each_string_field_with_another_type_is_named(name: str, wrong: object) -> None:
    item = valid_pix_example(**{name: wrong})
    assert any(v.path == f"pix[0].{name}" for v in violations_of({"pix": [item]}))


@pytest.mark.parametrize("name", string_properties(DEVOLUCAO))
def test_each_devolucao_string_field_with_another_type_is_named(name: str) -> None:
    item = valid_pix_example()
    item["devolucoes"][0][name] = 7
    assert any(v.path == f"pix[0].devolucoes[0].{name}" for v in violations_of({"pix": [item]}))


def first_devolucao(item: dict[str, Any]) -> dict[str, Any]:
    """The item's first devolução, adding a valid one of 0.01 when it has none."""
    if not item.get("devolucoes"):
        item["devolucoes"] = [{**valid_pix_example()["devolucoes"][0], "valor": "0.01"}]
    first: dict[str, Any] = item["devolucoes"][0]
    return first


MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "e2e one short": (lambda p: p.update(endToEndId=p["endToEndId"][:-1]), "pix[0].endToEndId"),
    "e2e one long": (lambda p: p.update(endToEndId=p["endToEndId"] + "a"), "pix[0].endToEndId"),
    "e2e charset": (lambda p: p.update(endToEndId=p["endToEndId"][:-1] + "-"), "pix[0].endToEndId"),
    "e2e not E": (lambda p: p.update(endToEndId="D" + p["endToEndId"][1:]), "pix[0].endToEndId"),
    "valor 3 decimals": (lambda p: p.update(valor=p["valor"] + "0"), "pix[0].valor"),
    "valor negative": (lambda p: p.update(valor="-" + p["valor"]), "pix[0].valor"),
    "valor a number": (lambda p: p.update(valor=float(p["valor"])), "pix[0].valor"),
    "valor an integer": (lambda p: p.update(valor=int(float(p["valor"]))), "pix[0].valor"),
    "valor 1 decimal": (lambda p: p.update(valor=p["valor"][:-1]), "pix[0].valor"),
    "valor 11 digits": (lambda p: p.update(valor="1" * 11 + ".00"), "pix[0].valor"),
    "valor zero": (lambda p: p.update(valor="0.00"), "pix[0].valor"),
    "horario not rfc3339": (lambda p: p.update(horario="10/09/2020 13:03"), "pix[0].horario"),
    "horario without offset": (lambda p: p.update(horario=p["horario"].rstrip("Z").split("+")[0]), "pix[0].horario"),
    "txid 36": (lambda p: p.update(txid="a" * 36), "pix[0].txid"),
    "txid charset": (lambda p: p.update(txid="abc_def"), "pix[0].txid"),
    "chave too long": (lambda p: p.update(chave="x" * 78), "pix[0].chave"),
    "infoPagador too long": (lambda p: p.update(infoPagador="x" * 141), "pix[0].infoPagador"),
    "devolucoes an object": (lambda p: p.update(devolucoes={"id": "1"}), "pix[0].devolucoes"),
    "devolucao status": (lambda p: first_devolucao(p).update(status="FEITO"), "pix[0].devolucoes[0].status"),
    "devolucao rtrId 31": (lambda p: first_devolucao(p).update(rtrId="D" * 31), "pix[0].devolucoes[0].rtrId"),
    "devolucao horario": (lambda p: first_devolucao(p).update(horario="2020-09-10T13:03:33Z"),
                          "pix[0].devolucoes[0].horario"),
    "devolucoes above valor": (lambda p: p.update(devolucoes=[{
        **valid_pix_example()["devolucoes"][0], "valor": pix.format_valor(pix.parse_valor(p["valor"]) + 1)}]),
        "pix[0].devolucoes"),
    "componentes do not add up": (lambda p: p.update(componentesValor={"original": {"valor": "0.01"}, "juros": {
        "valor": p["valor"]}}), "pix[0].componentesValor"),
    "saque and troco": (lambda p: p.update(valor="3.00", componentesValor={
        "original": {"valor": "1.00"},
        "saque": {"valor": "1.00", "modalidadeAgente": "AGPSS", "prestadorDoServicoDeSaque": "12345678"},
        "troco": {"valor": "1.00", "modalidadeAgente": "AGTEC", "prestadorDoServicoDeSaque": "12345678"}}),
        "pix[0].componentesValor"),
    "saque without its provider": (lambda p: p.update(componentesValor={"saque": {
        "valor": p["valor"], "modalidadeAgente": "AGPSS"}}), "pix[0].componentesValor.saque.prestadorDoServicoDeSaque"),
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_pix(), st.sampled_from(sorted(MUTATIONS)), st.integers(0, 2))
def test_mutated_documents_fail_naming_the_path(item: dict[str, Any], mutation: str, position: int) -> None:
    mutate, path = MUTATIONS[mutation]
    mutated = copy.deepcopy(item)
    mutate(mutated)
    others = [valid_pix_example() for _ in range(2)]
    body = {"pix": [*others[:position], mutated, *others[position:]]}
    expected = path.replace("pix[0]", f"pix[{position}]", 1)
    found = violations_of(body)
    assert any(v.path == expected for v in found), (expected, found)
    assert all(v.path.startswith(f"pix[{position}]") for v in found)  # the valid neighbours are not blamed


def test_every_violation_of_a_batch_is_listed() -> None:
    first = valid_pix_example(valor="1.000")
    second = valid_pix_example(endToEndId="E1")
    del second["horario"]
    paths = [v.path for v in violations_of({"pix": [first, valid_pix_example(), second]})]
    assert paths == ["pix[0].valor", "pix[2].endToEndId", "pix[2].horario"]


def test_unknown_fields_are_ignored_as_the_schema_allows() -> None:
    item = valid_pix_example(campoNovo={"x": 1}, gnExtras=[1, 2])
    item["devolucoes"][0]["outro"] = True
    assert pix.validate_webhook_body({"pix": [item], "outro": 1})[0].end_to_end_id == item["endToEndId"]


# ---- the body -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ([], "", "the body must be a JSON object with a 'pix' array"),
        ("pix", "", "the body must be a JSON object with a 'pix' array"),
        ({}, "pix", "is required"),
        ({"pix": {"endToEndId": "x"}}, "pix", "must be an array"),
        ({"pix": ["x"]}, "pix[0]", "must be an object"),
    ],
)
def test_the_body_shape(body: object, path: str, message: str) -> None:
    assert violations_of(body) == [pix.Violation(path, message)]


def test_the_body_is_bounded() -> None:
    assert pix.validate_webhook_body({"pix": []}) == []
    too_many = {"pix": [valid_pix_example()] * (pix.WEBHOOK_PIX_ITEMS_MAX + 1)}
    assert [v.path for v in violations_of(too_many)] == ["pix"]
    assert len(pix.validate_webhook_body({"pix": [valid_pix_example()] * pix.WEBHOOK_PIX_ITEMS_MAX})) == (
        pix.WEBHOOK_PIX_ITEMS_MAX)


# ---- the spec's own examples ----------------------------------------------------------------------------------


def example(name: str) -> dict[str, Any]:
    return dict(bcb()["components"]["examples"][name]["value"])


@pytest.mark.parametrize("name", ["pixResponse1", "pixWebhook2"])
def test_the_spec_examples_that_follow_the_schema_pass(name: str) -> None:
    assert literal_validator().is_valid(example(name))
    assert pix.validate_pix(example(name)).end_to_end_id == example(name)["endToEndId"]


@pytest.mark.parametrize(
    ("name", "paths"),
    [
        ("pixResponse2", ["pix.endToEndId"]),  # 34 characters
        ("pixResponse3", ["pix.endToEndId", "pix.componentesValor.saque.prestadorDoServicoDeSaque"]),
        ("pixWebhook1", ["pix.devolucoes"]),  # an object, not an array
    ],
)
def test_the_spec_examples_that_break_the_schema_fail(name: str, paths: list[str]) -> None:
    # The literal schema rejects them too (pixResponse3 only for its length: its misspelt saque field slips
    # through the literal `anyOf`, while we check every part of componentesValor).
    assert not literal_validator().is_valid(example(name))
    with pytest.raises(pix.InvalidPixPayload) as caught:
        pix.validate_pix(example(name))
    assert [v.path for v in caught.value.violations] == paths
