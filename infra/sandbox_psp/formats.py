"""The PIX formats the sandbox checks, anchored. ``infra`` may not import ``ledger.pix``, so this is a small copy of
what the sandbox needs; tests check that both agree."""

from __future__ import annotations

import random
import re
import string
from datetime import UTC, datetime
from typing import Final

VALOR_PATTERN: Final = re.compile(r"\A[0-9]{1,10}\.[0-9]{2}\Z")
TXID_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9]{26,35}\Z")
ID_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9]{1,35}\Z")  # devolução id, txid of a received Pix, idEnvio
E2E_PATTERN: Final = re.compile(r"\A[ED][0-9]{8}[0-9]{12}[a-zA-Z0-9]{11}\Z")
ISPB_PATTERN: Final = re.compile(r"\A[0-9]{8}\Z")
CPF_PATTERN: Final = re.compile(r"\A[0-9]{11}\Z")
CNPJ_PATTERN: Final = re.compile(r"\A[0-9]{14}\Z")
_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
#: DICT key formats (CPF, CNPJ, PHONE, EMAIL, EVP). Check digits are the domain's business, not the sandbox's.
KEY_PATTERNS: Final = (
    re.compile(r"\A[0-9]{11}\Z"),
    re.compile(r"\A[0-9]{14}\Z"),
    re.compile(r"\A\+[1-9][0-9][0-9]{1,14}\Z"),
    re.compile(r"\A[a-z0-9.!#$&'*+/=?^_`{|}~-]+@" + _LABEL + r"(?:\." + _LABEL + r")*\Z"),
    re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z"),
)
KEY_LENGTH_MAX: Final = 77
DATE_TIME_PATTERN: Final = re.compile(
    r"\A(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.(?P<fraction>[0-9]{1,9}))?"
    r"(?P<offset>[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])\Z"
)
VALOR_CENTAVOS_MAX: Final = 9_999_999_999_99
_ALNUM: Final = string.ascii_letters + string.digits


def valor_to_centavos(text: object) -> int | None:
    """``"110.00"`` to 11000, or None when ``text`` is not a spec ``valor`` string."""
    if not isinstance(text, str) or VALOR_PATTERN.fullmatch(text) is None:
        return None
    whole, cents = text.split(".")
    return int(whole) * 100 + int(cents)


def centavos_to_valor(amount_centavos: int) -> str:
    assert 0 <= amount_centavos <= VALOR_CENTAVOS_MAX, amount_centavos
    whole, cents = divmod(amount_centavos, 100)
    return f"{whole}.{cents:02d}"


def is_pix_key(text: object) -> bool:
    return isinstance(text, str) and len(text) <= KEY_LENGTH_MAX and any(p.fullmatch(text) for p in KEY_PATTERNS)


def parse_date_time(text: object) -> datetime | None:
    """RFC 3339 with an offset, to an aware UTC datetime (fractions beyond microseconds dropped)."""
    match = DATE_TIME_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    offset = match["offset"].upper().replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(f"{match['date']}T{match['time']}.{fraction}{offset}").astimezone(UTC)
    except ValueError:
        return None


def format_date_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_end_to_end_id(prefix: str, ispb: str, moment: datetime, rng: random.Random) -> str:
    """``E`` (a payment) or ``D`` (a devolução) + ISPB + yyyyMMddHHmm (UTC) + 11 letters or digits."""
    assert prefix in ("E", "D") and ISPB_PATTERN.fullmatch(ispb), (prefix, ispb)
    sequence = "".join(rng.choice(_ALNUM) for _ in range(11))
    return f"{prefix}{ispb}{moment.astimezone(UTC):%Y%m%d%H%M}{sequence}"


def new_alnum(length: int, rng: random.Random) -> str:
    return "".join(rng.choice(_ALNUM) for _ in range(length))
