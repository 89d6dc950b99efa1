"""Money at the edge: PIX ``valor`` strings to integer centavos and back (DESIGN §2)."""

from __future__ import annotations

import pytest

from ledger import errors
from ledger.limits import AMOUNT_CENTAVOS_MAX
from ledger.money import check_amount, format_amount, parse_amount


@pytest.mark.parametrize(
    ("text", "centavos"),
    [
        ("110.00", 11_000),
        ("0.01", 1),
        ("0.99", 99),
        ("1.37", 137),
        ("100.00", 10_000),
        ("0110.00", 11_000),  # the spec's pattern allows leading zeros
        ("9999999999999.99", AMOUNT_CENTAVOS_MAX),  # 13 integer digits, the largest PIX amount
    ],
)
def test_parse_amount_reads_pix_strings_as_integer_centavos(text: str, centavos: int) -> None:
    parsed = parse_amount(text)
    assert parsed == centavos
    assert type(parsed) is int


@pytest.mark.parametrize(
    "text",
    [
        "-1.00",  # a sign is not part of the pattern
        "+1.00",
        "110.000",  # three decimals
        "110.0",  # one decimal
        "110",  # no decimals
        "110.",
        ".50",
        "1e3",
        "1E3",
        "1e3.00",
        "10000000000000.00",  # 14 integer digits
        "99999999999999.99",
        "",
        " 110.00",
        "110.00 ",
        "110.00\n",  # `$` would accept a trailing newline; the pattern is anchored with \Z
        "110,00",  # Brazilian decimal comma is not the PIX format
        "1_000.00",  # int() accepts underscores; the pattern must not
        "NaN",
        "inf",
        "0x10.00",
    ],
)
def test_parse_amount_refuses_anything_but_the_pix_pattern(text: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        parse_amount(text)
    assert caught.value.code == "LEDGER_INVALID_REQUEST"
    assert caught.value.context["field"] == "valor"


@pytest.mark.parametrize("text", [
        "\u0661\u0661\u0660.\u0660\u0660",  # Arabic-Indic
        "\uff11\uff11\uff10.\uff10\uff10",  # full-width
        "\u0967\u0967\u0966.\u0966\u0966",  # Devanagari
    ])
def test_parse_amount_refuses_non_ascii_digits(text: str) -> None:
    # The BCB pattern's \d means ASCII 0-9 (JSON Schema / ECMA regex); Python's str \d also matches any
    # Unicode decimal digit (Arabic-Indic, full-width, Devanagari...), which int() then happily converts.
    with pytest.raises(errors.InvalidRequest):
        parse_amount(text)


@pytest.mark.parametrize("value", [110, 110.0, None, b"110.00", ["110.00"], 1.37])
def test_parse_amount_refuses_non_strings(value: object) -> None:
    with pytest.raises(errors.InvalidRequest):
        parse_amount(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0.00", "00.00", "0000000000000.00"])
def test_parse_amount_refuses_zero_as_not_positive(text: str) -> None:
    with pytest.raises(errors.AmountMustBePositive) as caught:
        parse_amount(text)
    assert caught.value.code == "LEDGER_AMOUNT_MUST_BE_POSITIVE"


@pytest.mark.parametrize(
    ("centavos", "text"),
    [
        (11_000, "110.00"),
        (0, "0.00"),
        (1, "0.01"),
        (99, "0.99"),
        (100, "1.00"),
        (-1, "-0.01"),
        (-100, "-1.00"),
        (-13_701, "-137.01"),
        (AMOUNT_CENTAVOS_MAX, "9999999999999.99"),
        (2**63 - 1, "92233720368547758.07"),  # the largest balance formats exactly, no float rounding
    ],
)
def test_format_amount_writes_two_decimals_and_keeps_the_sign(centavos: int, text: str) -> None:
    assert format_amount(centavos) == text


@pytest.mark.parametrize("centavos", [1, 99, 100, 137, 11_000, 123_456_789, AMOUNT_CENTAVOS_MAX])
def test_parse_and_format_round_trip(centavos: int) -> None:
    assert parse_amount(format_amount(centavos)) == centavos


@pytest.mark.parametrize("centavos", [0, -1, -(10**15)])
def test_check_amount_refuses_non_positive(centavos: int) -> None:
    with pytest.raises(errors.AmountMustBePositive):
        check_amount(centavos)


@pytest.mark.parametrize("centavos", [AMOUNT_CENTAVOS_MAX + 1, 2**63, 10**30])
def test_check_amount_refuses_more_than_the_largest_pix_amount(centavos: int) -> None:
    with pytest.raises(errors.AmountTooLarge) as caught:
        check_amount(centavos)
    assert caught.value.code == "LEDGER_AMOUNT_TOO_LARGE"


@pytest.mark.parametrize("value", [1.0, 100.5, True, "100", None])
def test_check_amount_refuses_non_integers_including_bool_and_float(value: object) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        check_amount(value)  # type: ignore[arg-type]
    assert caught.value.context["field"] == "amount_centavos"


def test_check_amount_accepts_the_bounds() -> None:
    check_amount(1)
    check_amount(AMOUNT_CENTAVOS_MAX)
