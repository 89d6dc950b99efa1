"""ledger.pix: identifiers, valor, horario, Pix keys, the devolução rule and the webhook signature (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra import pix_gateway
from infra.sandbox_psp import formats as sandbox_formats
from ledger import pix
from ledger.errors import InvalidRequest

E2E = "E12345678202009091221abcdef12345"


# ---- endToEndId ---------------------------------------------------------------------------------------------


def test_end_to_end_id_is_parsed_into_its_parts() -> None:
    parsed = pix.parse_end_to_end_id(E2E)
    assert parsed.ispb == "12345678"
    assert parsed.initiated_at == datetime(2020, 9, 9, 12, 21, tzinfo=UTC)
    assert parsed.sequence == "abcdef12345"
    assert parsed.value == E2E


@pytest.mark.parametrize(
    "text",
    [
        E2E[:-1],  # 31 characters
        E2E + "x",  # 33
        "D" + E2E[1:],  # a devolução's rtrId, not an endToEndId
        "e" + E2E[1:],  # case sensitive
        E2E[:-1] + "-",  # not alphanumeric
        E2E[:-1] + "é",
        "E1234567A202009091221abcdef12345",  # ISPB must be digits
        "E12345678202013091221abcdef12345",  # month 13
        "E12345678202002301221abcdef12345",  # 30 February
        "E12345678202009092421abcdef12345",  # hour 24
        "E12345678202009091260abcdef12345",  # minute 60
        E2E + "\n",  # anchored with \Z, not $
        "E12345678202009091221ghijk78901234",  # the spec's own 34-character example
        "",
    ],
)
def test_malformed_end_to_end_ids_are_refused(text: str) -> None:
    assert not pix.is_valid_end_to_end_id(text)
    with pytest.raises(InvalidRequest) as caught:
        pix.parse_end_to_end_id(text)
    assert caught.value.context["field"] == "endToEndId"


@pytest.mark.parametrize("value", [None, 12345, b"E12345678202009091221abcdef12345"])
def test_end_to_end_id_must_be_a_string(value: object) -> None:
    assert not pix.is_valid_end_to_end_id(value)


def test_the_open_finance_example_is_valid() -> None:
    assert pix.is_valid_end_to_end_id("E9040088820210128000800123873170")


# ---- txid, devolução id, payment id ---------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "cob", "received"), [(0, False, False), (1, False, True), (25, False, True),
                                                         (26, True, True), (35, True, True), (36, False, False)])
def test_txid_lengths(length: int, cob: bool, received: bool) -> None:
    text = "a1" * 18
    assert pix.is_valid_txid(text[:length]) is cob
    assert pix.is_valid_received_txid(text[:length]) is received


@pytest.mark.parametrize("text", ["abc-def", "abc def", "ãbc", "x" * 36, "", "abc\n"])
def test_refund_and_payment_ids_are_1_to_35_alphanumerics(text: str) -> None:
    assert not pix.is_valid_refund_id(text)
    assert not pix.is_valid_payment_id(text)


def test_pix_id_for_a_uuid_is_valid_everywhere() -> None:
    value = pix.pix_id_for(UUID("3c9a1e42-7b5d-5f60-8e21-94d0c7a6b1f3"))
    assert value == "3c9a1e427b5d5f608e2194d0c7a6b1f3"
    assert pix.is_valid_txid(value) and pix.is_valid_refund_id(value) and pix.is_valid_payment_id(value)


# ---- valor ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "centavos"), [("110.00", 11_000), ("0.01", 1), ("0.00", 0),
                                                 ("9999999999.99", pix.PIX_VALOR_CENTAVOS_MAX), ("0110.00", 11_000)])
def test_parse_valor(text: str, centavos: int) -> None:
    assert pix.parse_valor(text) == centavos


@pytest.mark.parametrize("value", ["110.000", "-1.00", "+1.00", "1.0", "1", "1,00", " 1.00", "1.00\n",
                                   "10000000000.00", "", 110.0, 110, None, True])
def test_parse_valor_refuses_anything_but_the_anchored_spec_pattern(value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        pix.parse_valor(value)
    assert caught.value.context["field"] == "valor"


@given(st.integers(min_value=0, max_value=pix.PIX_VALOR_CENTAVOS_MAX))
def test_format_and_parse_valor_round_trip_with_every_layer(centavos: int) -> None:
    text = pix.format_valor(centavos)
    assert pix.parse_valor(text) == centavos
    assert sandbox_formats.centavos_to_valor(centavos) == text
    assert sandbox_formats.valor_to_centavos(text) == centavos
    if centavos > 0:
        assert pix_gateway.format_valor(centavos) == text
        assert pix_gateway.parse_valor(text) == centavos


@pytest.mark.parametrize("centavos", [-1, pix.PIX_VALOR_CENTAVOS_MAX + 1])
def test_format_valor_refuses_amounts_outside_the_spec(centavos: int) -> None:
    with pytest.raises(ValueError, match="centavos"):
        pix.format_valor(centavos)


# ---- horario --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-09-09T20:15:00.358Z", datetime(2020, 9, 9, 20, 15, 0, 358_000, tzinfo=UTC)),
        ("2020-09-09T17:15:00-03:00", datetime(2020, 9, 9, 20, 15, tzinfo=UTC)),
        ("2020-09-09t20:15:00z", datetime(2020, 9, 9, 20, 15, tzinfo=UTC)),
        ("2020-09-09T20:15:00.123456789Z", datetime(2020, 9, 9, 20, 15, 0, 123_456, tzinfo=UTC)),
    ],
)
def test_parse_horario_reads_rfc3339(text: str, expected: datetime) -> None:
    assert pix.parse_horario(text) == expected


@pytest.mark.parametrize("text", ["2020-09-09T20:15:00", "2020-09-09 20:15:00Z", "2020-02-30T20:15:00Z",
                                  "2020-09-09T24:00:00Z", "2020-09-09T20:15:00+24:00", "x", "", 1599682500])
def test_parse_horario_refuses_what_is_not_rfc3339(text: object) -> None:
    with pytest.raises(InvalidRequest):
        pix.parse_horario(text)


def test_format_horario_is_utc_with_milliseconds() -> None:
    moment = datetime(2020, 9, 9, 17, 15, 0, 358_999, tzinfo=UTC) + timedelta(hours=3)
    assert pix.format_horario(moment) == "2020-09-09T20:15:00.358Z"
    with pytest.raises(ValueError, match="aware"):
        pix.format_horario(datetime(2020, 1, 1))


# ---- Pix keys -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key_type", "value"),
    [
        ("52998224725", pix.PixKeyType.CPF, "52998224725"),
        ("11222333000181", pix.PixKeyType.CNPJ, "11222333000181"),
        ("+5511987654321", pix.PixKeyType.PHONE, "+5511987654321"),
        ("+5510998765432", pix.PixKeyType.PHONE, "+5510998765432"),  # DICT's own example
        ("+12125550100", pix.PixKeyType.PHONE, "+12125550100"),  # DICT allows any E.164 number
        ("pix@bcb.gov.br", pix.PixKeyType.EMAIL, "pix@bcb.gov.br"),
        ("Fulano.Tal@Example.COM", pix.PixKeyType.EMAIL, "fulano.tal@example.com"),
        ("123e4567-e89b-12d3-a456-426655440000", pix.PixKeyType.EVP, "123e4567-e89b-12d3-a456-426655440000"),
        ("7D9F0335-8DCC-4054-9BF9-0DBD61D36906", pix.PixKeyType.EVP, "7d9f0335-8dcc-4054-9bf9-0dbd61d36906"),
    ],
)
def test_parse_pix_key_detects_the_dict_type(text: str, key_type: pix.PixKeyType, value: str) -> None:
    assert pix.parse_pix_key(text) == pix.PixKey(key_type, value)
    assert pix.parse_pix_key(text, key_type) == pix.PixKey(key_type, value)
    assert pix.parse_pix_key(text, str(key_type)) == pix.PixKey(key_type, value)


@pytest.mark.parametrize(
    "text",
    [
        "52998224724",  # CPF with a wrong check digit
        "11111111111",  # all equal
        "11222333000180",  # CNPJ with a wrong check digit
        "529.982.247-25",  # punctuation is not DICT's format
        "5511987654321",  # a phone without +
        "+0511987654321",
        "+5",
        "+55119876543210000",  # more than 15 digits after the country's first
        "fulano@",
        "fulano%tal@example.com",  # % is not in DICT's set
        "fulano@-example.com",
        "a" * 66 + "@example.com",  # 78 characters
        "123e4567-e89b-12d3-a456-42665544000g",
        "123e4567e89b12d3a456426655440000",
        "",
        " 52998224725",
    ],
)
def test_parse_pix_key_refuses_malformed_keys(text: str) -> None:
    with pytest.raises(pix.InvalidPixKey) as caught:
        pix.parse_pix_key(text)
    assert caught.value.code == "PIX_INVALID_KEY"
    assert not pix.is_valid_pix_key(text)


def test_an_email_of_exactly_77_characters_is_a_key() -> None:
    email = "a" * 65 + "@example.com"
    assert len(email) == pix.PIX_KEY_LENGTH_MAX
    assert pix.parse_pix_key(email).type is pix.PixKeyType.EMAIL


def test_parse_pix_key_with_an_explicit_type_checks_that_format() -> None:
    with pytest.raises(pix.InvalidPixKey):
        pix.parse_pix_key("52998224725", pix.PixKeyType.PHONE)
    with pytest.raises(pix.InvalidPixKey, match="unknown Pix key type"):
        pix.parse_pix_key("52998224725", "RANDOM")


def test_is_valid_pix_key_wants_the_canonical_form() -> None:
    assert pix.is_valid_pix_key("pix@bcb.gov.br")
    assert not pix.is_valid_pix_key("PIX@bcb.gov.br")  # valid input, but not as DICT stores it


@pytest.mark.parametrize("text", ["52998224725", "11222333000181", "+5511987654321", "pix@bcb.gov.br",
                                  "123e4567-e89b-12d3-a456-426655440000", "5511987654321", "fulano@", "x" * 78])
def test_the_sandbox_accepts_exactly_the_key_formats_of_the_domain(text: str) -> None:
    # The sandbox checks formats only (no check digits), so compare on keys whose digits are right.
    assert sandbox_formats.is_pix_key(text) == pix.is_valid_pix_key(text)


# ---- devolução rule -------------------------------------------------------------------------------------------


def _received(amount_centavos: int, refunds: tuple[pix.ReceivedRefund, ...] = (),
              at: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> pix.ReceivedPix:
    return pix.ReceivedPix(E2E, amount_centavos, at, "t" * 26, None, None, (), refunds)


def _refund(amount_centavos: int, status: pix.RefundStatus) -> pix.ReceivedRefund:
    return pix.ReceivedRefund("r1", "D" + E2E[1:], amount_centavos, status, pix.RefundNature.ORIGINAL, None, None,
                              None, None)


def test_check_refund_allows_up_to_what_is_left() -> None:
    received = _received(10_000, (_refund(3_000, pix.RefundStatus.DEVOLVIDO),
                                  _refund(2_000, pix.RefundStatus.EM_PROCESSAMENTO),
                                  _refund(9_000, pix.RefundStatus.NAO_REALIZADO)))
    assert received.refundable_centavos == 5_000
    pix.check_refund(received, 5_000, received.processed_at)
    with pytest.raises(pix.RefundExceedsOriginal) as caught:
        pix.check_refund(received, 5_001, received.processed_at)
    assert caught.value.context["refundable_centavos"] == 5_000


def test_check_refund_allows_90_days_and_not_a_second_more() -> None:
    received = _received(10_000)
    pix.check_refund(received, 1, received.processed_at + timedelta(days=90))
    with pytest.raises(pix.RefundWindowClosed):
        pix.check_refund(received, 1, received.processed_at + timedelta(days=90, seconds=1))


@pytest.mark.parametrize("amount", [0, -1, 1.5])
def test_check_refund_wants_a_positive_integer(amount: object) -> None:
    with pytest.raises(InvalidRequest):
        pix.check_refund(_received(10_000), amount, datetime(2026, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]


# ---- errors and signature -------------------------------------------------------------------------------------


def test_invalid_payload_lists_violations_and_bounds_them() -> None:
    violations = [pix.Violation(f"pix[{i}].valor", "is required") for i in range(pix.PIX_VIOLATIONS_MAX + 5)]
    error = pix.InvalidPixPayload(violations)
    body = error.to_dict()
    assert body["code"] == "PIX_INVALID_PAYLOAD"
    assert body["violations_total"] == pix.PIX_VIOLATIONS_MAX + 5
    assert len(body["violations"]) == pix.PIX_VIOLATIONS_MAX
    assert body["violations"][0] == {"path": "pix[0].valor", "message": "is required"}
    assert isinstance(error, InvalidRequest)  # an API without a PIX row still answers 400
    assert set(pix.PIX_ERRORS) == {"PIX_INVALID_KEY", "PIX_INVALID_PAYLOAD", "PIX_REFUND_EXCEEDS_ORIGINAL",
                                   "PIX_REFUND_WINDOW_CLOSED"}


def test_webhook_signature_round_trip() -> None:
    body = b'{"pix":[]}'
    header = pix.webhook_signature(b"secret", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert pix.verify_webhook_signature(b"secret", body, header)
    assert not pix.verify_webhook_signature(b"secret", body + b" ", header)
    assert not pix.verify_webhook_signature(b"other", body, header)
    assert not pix.verify_webhook_signature(b"secret", body, None)
    assert not pix.verify_webhook_signature(b"", body, header)
