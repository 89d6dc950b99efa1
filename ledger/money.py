"""Money at the edge: PIX-style decimal strings to integer centavos and back. No floats, ever."""

from __future__ import annotations

import re
from typing import Final

from ledger.errors import AmountMustBePositive, AmountTooLarge, InvalidRequest
from ledger.limits import AMOUNT_CENTAVOS_MAX

#: The BCB spec's `valor` pattern, anchored (the spec's own patterns are not).
PIX_AMOUNT_PATTERN: Final = re.compile(r"\A[0-9]{1,13}\.[0-9]{2}\Z")


def parse_amount(text: str) -> int:
    """Converts ``"110.00"`` to ``11000`` centavos.

    Raises ``InvalidRequest`` when the text is not a 2-decimal PIX amount, ``AmountMustBePositive`` for zero.
    """
    if not isinstance(text, str) or not PIX_AMOUNT_PATTERN.match(text):
        raise InvalidRequest("amount must be a string like '110.00' (digits, a dot, two decimals)", field="valor")
    whole, cents = text.split(".")
    amount_centavos = int(whole) * 100 + int(cents)
    check_amount(amount_centavos)
    return amount_centavos


def format_amount(amount_centavos: int) -> str:
    """Converts ``11000`` centavos to ``"110.00"``; negative amounts keep their sign."""
    sign = "-" if amount_centavos < 0 else ""
    whole, cents = divmod(abs(amount_centavos), 100)
    return f"{sign}{whole}.{cents:02d}"


AMOUNT_TYPE_MESSAGE: Final = "amount must be an integer number of centavos"


def check_amount(amount_centavos: int) -> None:
    """Raises the typed error for an amount a transfer may not carry."""
    if type(amount_centavos) is not int:
        raise InvalidRequest(AMOUNT_TYPE_MESSAGE, field="amount_centavos")
    if amount_centavos <= 0:
        raise AmountMustBePositive("amount must be positive", amount_centavos=amount_centavos)
    if amount_centavos > AMOUNT_CENTAVOS_MAX:
        raise AmountTooLarge(
            f"amount exceeds the maximum of {format_amount(AMOUNT_CENTAVOS_MAX)}",
            amount_centavos=amount_centavos,
        )
