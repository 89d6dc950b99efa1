"""BR Code (EMV® QRCPS-MPM as the BCB profiles it, "Manual de Padrões para Iniciação do Pix"): the text behind a Pix
QR code and its "Pix Copia e Cola".

A payload is a list of TLV fields: a 2-digit id, a 2-digit length, the value. It ends with field 63, a CRC16-CCITT
(polynomial 0x1021, initial value 0xFFFF) over everything before it, ``6304`` included, in 4 uppercase hex digits.
"""

from __future__ import annotations

import unicodedata
from typing import Final

GUI: Final = "br.gov.bcb.pix"
#: ``pixCopiaECola`` has at most 512 characters (``CobBaseCopiaCola``).
BRCODE_LENGTH_MAX: Final = 512
MERCHANT_NAME_LENGTH_MAX: Final = 25
MERCHANT_CITY_LENGTH_MAX: Final = 15


def crc16_ccitt(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def field(tag: str, value: str) -> str:
    assert len(tag) == 2 and tag.isdigit() and len(value) <= 99, (tag, value)
    return f"{tag}{len(value):02d}{value}"


def with_crc(payload_without_crc: str) -> str:
    head = payload_without_crc + "6304"
    return f"{head}{crc16_ccitt(head.encode()):04X}"


def _plain(text: str, length_max: int) -> str:
    # The BR Code character set is ASCII: drop accents ("São Paulo" -> "SAO PAULO").
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return ascii_text.upper()[:length_max]


def dynamic_brcode(location: str, merchant_name: str, merchant_city: str, amount_valor: str | None = None) -> str:
    """A dynamic, single-use BR Code for a charge whose payload is served at ``location`` (no scheme)."""
    account = field("00", GUI) + field("25", location)
    parts = [
        field("00", "01"),  # payload format indicator
        field("01", "12"),  # point of initiation: 12 = may be paid once (dynamic)
        field("26", account),
        field("52", "0000"),  # merchant category code: not informed
        field("53", "986"),  # BRL
    ]
    if amount_valor is not None:
        parts.append(field("54", amount_valor))
    parts += [
        field("58", "BR"),
        field("59", _plain(merchant_name, MERCHANT_NAME_LENGTH_MAX)),
        field("60", _plain(merchant_city, MERCHANT_CITY_LENGTH_MAX)),
        field("62", field("05", "***")),  # a dynamic code's txid travels in the payload, not here
    ]
    code = with_crc("".join(parts))
    assert len(code) <= BRCODE_LENGTH_MAX
    return code


def parse_brcode(code: str) -> dict[str, str]:
    """Top-level fields of a BR Code, after checking its structure and CRC; raises ``ValueError``."""
    if len(code) < 8 or code[-8:-4] != "6304":
        raise ValueError("a BR Code ends with field 63 (CRC) of length 04")
    if f"{crc16_ccitt(code[:-4].encode()):04X}" != code[-4:]:
        raise ValueError("BR Code CRC mismatch")
    fields: dict[str, str] = {}
    position = 0
    while position < len(code):
        tag, length_text = code[position:position + 2], code[position + 2:position + 4]
        if not (tag.isdigit() and length_text.isdigit()):
            raise ValueError(f"malformed field at {position}")
        length = int(length_text)
        value = code[position + 4:position + 4 + length]
        if len(value) != length:
            raise ValueError(f"field {tag} is truncated")
        fields[tag] = value
        position += 4 + length
    return fields
