"""PIX in the domain: identifiers, amounts, keys and the received-Pix documents, validated strictly. Pure: no I/O.

Every pattern here is anchored. The Banco Central "API Pix" (v2.9.0, `shared/pix/`) writes its patterns without
``^...$``, so applied literally they accept ``"-1.00"`` or ``"110.000"``; we anchor them. Where the spec's own
examples disagree with its schema (34-character endToEndIds, ``devolucoes`` as an object,
``prestadorDeServicoDeSaque`` for ``prestadorDoServicoDeSaque``), the schema wins.

What lives here and why:

- Identifiers: ``endToEndId`` (the idempotency key of a received Pix, structure from the Open Finance spec),
  ``txid`` (a charge), devolução ``id``, the PSP's ``rtrId``, and the platform's payment ids.
- ``valor``: the spec's ``\\d{1,10}\\.\\d{2}`` strings to integer centavos and back. Never a float.
- Pix keys (DICT formats): CPF and CNPJ with check digits, e-mail, phone, EVP. ``parse_pix_key``.
- ``validate_webhook_body`` and ``validate_pix``: a decoded JSON document checked against the ``WebhookPixBody``
  and ``Pix`` schemas, returning typed ``ReceivedPix`` or raising ``InvalidPixPayload`` that lists every
  violation with its path, for the API to return as a 400 problem.
- The devolução rule (never above the original, within 90 days) and the webhook signature the platform's sandbox
  PSPs put on each delivery.

``infra`` may not import this module (it sees only ``ledger.ports`` and ``ledger.contracts``): the PSP adapters keep
their own small copies of the formats they need, and tests check that both agree.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Literal
from uuid import UUID

from ledger.errors import InvalidRequest, LedgerError
from ledger.limits import AMOUNT_CENTAVOS_MAX
from ledger.parties import is_valid_cnpj, is_valid_cpf

# --------------------------------------------------------------------------------------------------------------
# Limits (TIGER_STYLE: a limit on everything, units last). They sit here rather than in ledger/limits.py because
# they belong to the PIX spec, not to the ledger; their relationships are asserted below.

#: The spec's ``valor`` is ``\d{1,10}\.\d{2}``: at most 9,999,999,999.99.
PIX_VALOR_CENTAVOS_MAX: Final = 9_999_999_999_99
#: A webhook body may batch Pix; the spec sets no bound, we take the spec's own page-size maximum
#: (``paginacao.itensPorPagina`` maximum 1000).
WEBHOOK_PIX_ITEMS_MAX: Final = 1_000
#: Devoluções listed on one Pix. Unbounded in the spec; each is at least 0.01, so this is generous.
PIX_REFUNDS_PER_PIX_MAX: Final = 1_000
#: Violations carried by one ``InvalidPixPayload`` (the total is still counted), so an error stays small.
PIX_VIOLATIONS_MAX: Final = 100
#: Devolução window: "90 dias desde a data de liquidação original do pix" (spec, ``PixDevolucaoInvalida``).
PIX_REFUND_WINDOW: Final = timedelta(days=90)
#: Field lengths from the spec: ``chave`` (and DICT keys), ``infoPagador``/``descricao``/``motivo``.
PIX_KEY_LENGTH_MAX: Final = 77
PIX_TEXT_LENGTH_MAX: Final = 140

assert PIX_VALOR_CENTAVOS_MAX <= AMOUNT_CENTAVOS_MAX, "every Pix amount must be a valid ledger amount"
assert PIX_VIOLATIONS_MAX >= 1
assert WEBHOOK_PIX_ITEMS_MAX <= 1_000, "no larger than the spec's own page size maximum"

# --------------------------------------------------------------------------------------------------------------
# Patterns, anchored (``\A...\Z`` with ``fullmatch``: ``$`` would accept a trailing newline).

#: endToEndId, Open Finance payments 4.0.0 ``EndToEndId``: ``E`` + ISPB (8 digits) + ``yyyyMMddHHmm`` (UTC) +
#: 11 alphanumerics, 32 characters, case sensitive. The BCB schema only says ``[a-zA-Z0-9]{32}``; this is stricter.
END_TO_END_ID_PATTERN: Final = re.compile(
    r"\AE(?P<ispb>[0-9]{8})(?P<year>[0-9]{4})(?P<month>0[1-9]|1[0-2])(?P<day>0[1-9]|[12][0-9]|3[01])"
    r"(?P<hour>2[0-3]|[01][0-9])(?P<minute>[0-5][0-9])(?P<sequence>[a-zA-Z0-9]{11})\Z"
)
#: txid of a charge (cob): ``TxId`` = ``[a-zA-Z0-9]{26,35}``.
TXID_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9]{26,35}\Z")
#: txid as it arrives on a received Pix: the ``Pix`` schema overrides ``TxId`` with ``[a-zA-Z0-9]{1,35}``.
RECEIVED_TXID_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9]{1,35}\Z")
#: Devolução id, chosen by us: ``DevolucaoId`` = ``[a-zA-Z0-9]{1,35}``.
REFUND_ID_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9]{1,35}\Z")
#: ``rtrId`` (pacs.004 ReturnIdentification) chosen by the PSP: ``[a-zA-Z0-9]{32}``.
RETURN_ID_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9]{32}\Z")
#: Id of a Pix we send (``idEnvio``). Not in the BCB spec; PSPs that offer idempotent sending use this shape.
PAYMENT_ID_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9]{1,35}\Z")
#: ``valor``: ``\d{1,10}\.\d{2}``.
VALOR_PATTERN: Final = re.compile(r"\A[0-9]{1,10}\.[0-9]{2}\Z")
#: ISPB of a withdrawal provider (``prestadorDoServicoDeSaque``), anchored in the spec already.
ISPB_ALNUM_PATTERN: Final = re.compile(r"\A[0-9A-Z]{8}\Z")
#: RFC 3339 ``date-time`` (the spec's ``format: date-time``): offset required, fraction optional.
DATE_TIME_PATTERN: Final = re.compile(
    r"\A(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.(?P<fraction>[0-9]{1,9}))?"
    r"(?P<offset>[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])\Z"
)

# DICT key formats (pix-dict-api 1.8.0, "Key" tag table), anchored.
CPF_KEY_PATTERN: Final = re.compile(r"\A[0-9]{11}\Z")
CNPJ_KEY_PATTERN: Final = re.compile(r"\A[0-9]{14}\Z")
#: DICT's phone pattern is E.164 in general, not only Brazilian numbers: ``^\+[1-9][0-9]\d{1,14}$``.
PHONE_KEY_PATTERN: Final = re.compile(r"\A\+[1-9][0-9][0-9]{1,14}\Z")
_EMAIL_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
#: DICT's e-mail pattern: lowercase only, at most 77 characters.
EMAIL_KEY_PATTERN: Final = re.compile(
    r"\A[a-z0-9.!#$&'*+/=?^_`{|}~-]+@" + _EMAIL_LABEL + r"(?:\." + _EMAIL_LABEL + r")*\Z"
)
#: DICT's EVP pattern: a lowercase UUID with dashes. DICT does not require version 4 (its own example is v1).
EVP_KEY_PATTERN: Final = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

# --------------------------------------------------------------------------------------------------------------
# Errors. Codes are public and stable, like ledger.errors; the API's error table maps them.


class InvalidPixKey(InvalidRequest):
    """A text is not a Pix key in any DICT format (or not in the one asked for)."""

    code = "PIX_INVALID_KEY"


@dataclass(frozen=True, slots=True)
class Violation:
    """One way a document breaks the schema: ``path`` like ``pix[0].devolucoes[1].valor``, ``message`` for humans."""

    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class InvalidPixPayload(InvalidRequest):
    """A PIX document (webhook body, a Pix from a PSP) breaks the spec's schema. ``violations`` lists each
    problem with its path (at most ``PIX_VIOLATIONS_MAX``; ``violations_total`` counts them all)."""

    code = "PIX_INVALID_PAYLOAD"

    def __init__(self, violations: Sequence[Violation]) -> None:
        assert violations, "an invalid payload has at least one violation"
        shown = tuple(violations[:PIX_VIOLATIONS_MAX])
        first = shown[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"{first.path or '(body)'}: {first.message}{more}", violations_total=len(violations))
        self.violations = shown

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "violations": [violation.to_dict() for violation in self.violations]}


class RefundExceedsOriginal(LedgerError):
    """The devolução, with the earlier ones not refused, would return more than the Pix brought in."""

    code = "PIX_REFUND_EXCEEDS_ORIGINAL"


class RefundWindowClosed(LedgerError):
    """More than 90 days passed since the Pix settled: a devolução can no longer be requested."""

    code = "PIX_REFUND_WINDOW_CLOSED"


#: Every PIX operating error, by code (the counterpart of ``ledger.errors.ALL_ERRORS``).
PIX_ERRORS: Final[dict[str, type[LedgerError]]] = {
    cls.code: cls for cls in (InvalidPixKey, InvalidPixPayload, RefundExceedsOriginal, RefundWindowClosed)
}

# --------------------------------------------------------------------------------------------------------------
# Identifiers


@dataclass(frozen=True, slots=True)
class EndToEndId:
    """A parsed endToEndId: who generated it (ISPB), when (UTC minute) and its sequence within that minute."""

    value: str
    ispb: str
    initiated_at: datetime
    sequence: str


def parse_end_to_end_id(text: object) -> EndToEndId:
    """Parses an endToEndId, checking the structure and that the date is a real one (no 31 February).

    Raises ``InvalidRequest`` (field ``endToEndId``) otherwise.
    """
    match = END_TO_END_ID_PATTERN.fullmatch(text) if isinstance(text, str) else None
    initiated_at = _e2e_datetime(match) if match else None
    if match is None or initiated_at is None:
        raise InvalidRequest(
            "endToEndId must be 'E', an 8-digit ISPB, a real yyyyMMddHHmm and 11 letters or digits (32 characters)",
            field="endToEndId",
        )
    return EndToEndId(match.group(0), match["ispb"], initiated_at, match["sequence"])


def is_valid_end_to_end_id(text: object) -> bool:
    """Whether ``text`` is a well-formed endToEndId (see ``parse_end_to_end_id``)."""
    match = END_TO_END_ID_PATTERN.fullmatch(text) if isinstance(text, str) else None
    return match is not None and _e2e_datetime(match) is not None


def _e2e_datetime(match: re.Match[str]) -> datetime | None:
    try:
        return datetime(
            int(match["year"]), int(match["month"]), int(match["day"]), int(match["hour"]), int(match["minute"]),
            tzinfo=UTC,
        )
    except ValueError:
        return None


def is_valid_txid(text: object) -> bool:
    """A txid we may give a charge (cob): 26 to 35 letters or digits."""
    return isinstance(text, str) and TXID_PATTERN.fullmatch(text) is not None


def is_valid_received_txid(text: object) -> bool:
    """A txid as a received Pix may carry it: 1 to 35 letters or digits (see ``validate_pix``)."""
    return isinstance(text, str) and RECEIVED_TXID_PATTERN.fullmatch(text) is not None


def is_valid_refund_id(text: object) -> bool:
    """A devolução id: 1 to 35 letters or digits."""
    return isinstance(text, str) and REFUND_ID_PATTERN.fullmatch(text) is not None


def is_valid_payment_id(text: object) -> bool:
    """An id for a Pix we send (the PSP's idempotency id): 1 to 35 letters or digits."""
    return isinstance(text, str) and PAYMENT_ID_PATTERN.fullmatch(text) is not None


def pix_id_for(value: UUID) -> str:
    """A PIX identifier derived from one of our UUIDs: 32 hex digits, valid as a txid, a devolução id and a
    payment id. Deriving it (instead of drawing a random one) makes a retried command reuse the same id."""
    return value.hex


# --------------------------------------------------------------------------------------------------------------
# valor and horario


def parse_valor(text: object, *, field: str = "valor") -> int:
    """``"110.00"`` to ``11000`` centavos (zero is a valid ``valor``; callers that need a positive one check it).

    Raises ``InvalidRequest`` naming ``field`` unless ``text`` is a string matching ``\\d{1,10}\\.\\d{2}``.
    """
    centavos = _valor_centavos(text)
    if centavos is None:
        raise InvalidRequest(f"{field} must be a string like '110.00' (1 to 10 digits, a dot, 2 digits)", field=field)
    return centavos


def format_valor(amount_centavos: int) -> str:
    """``11000`` centavos to ``"110.00"``; raises ``ValueError`` outside 0 .. ``PIX_VALOR_CENTAVOS_MAX``."""
    if type(amount_centavos) is not int or not 0 <= amount_centavos <= PIX_VALOR_CENTAVOS_MAX:
        raise ValueError(f"a Pix valor is 0 to {PIX_VALOR_CENTAVOS_MAX} centavos, got {amount_centavos!r}")
    whole, cents = divmod(amount_centavos, 100)
    return f"{whole}.{cents:02d}"


def _valor_centavos(text: object) -> int | None:
    if not isinstance(text, str) or VALOR_PATTERN.fullmatch(text) is None:
        return None
    whole, cents = text.split(".")
    return int(whole) * 100 + int(cents)


def parse_horario(text: object, *, field: str = "horario") -> datetime:
    """An RFC 3339 date-time (offset required) to an aware UTC datetime; fractions past microseconds are dropped.

    Raises ``InvalidRequest`` naming ``field`` otherwise.
    """
    parsed = _date_time(text)
    if parsed is None:
        raise InvalidRequest(f"{field} must be an RFC 3339 date-time such as '2020-09-09T20:15:00.358Z'", field=field)
    return parsed


def format_horario(moment: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC with milliseconds, the way the spec's examples write it."""
    if moment.tzinfo is None:
        raise ValueError("horario needs an aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _date_time(text: object) -> datetime | None:
    match = DATE_TIME_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    offset = match["offset"].upper().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(f"{match['date']}T{match['time']}.{fraction}{offset}")
    except ValueError:
        return None  # 30 February, hour 24, second 60: well-shaped but not a real moment
    return moment.astimezone(UTC)


# --------------------------------------------------------------------------------------------------------------
# Pix keys


class PixKeyType(StrEnum):
    """DICT key types (``KeyType``). DICT warns that new types may appear; we accept only these."""

    CPF = "CPF"
    CNPJ = "CNPJ"
    PHONE = "PHONE"
    EMAIL = "EMAIL"
    EVP = "EVP"


@dataclass(frozen=True, slots=True)
class PixKey:
    """A Pix key in DICT's canonical form: ``value`` is what goes to a PSP as ``chave``."""

    type: PixKeyType
    value: str


def parse_pix_key(text: object, key_type: PixKeyType | str | None = None) -> PixKey:
    """Parses a Pix key, detecting its type unless ``key_type`` is given.

    Formats are DICT's, anchored: CPF (11 digits, check digits verified), CNPJ (14 digits, check digits verified),
    PHONE (``+`` then 3 to 16 digits, E.164 as DICT writes it), EMAIL (DICT's character set, at most 77
    characters), EVP (a UUID with dashes). E-mail and EVP keys are case-insensitive in practice and DICT stores
    them in lowercase, so they are lowercased; nothing else is rewritten (no trimming, no punctuation removed).

    Raises ``InvalidPixKey``.
    """
    if not isinstance(text, str) or not text:
        raise InvalidPixKey("a Pix key must be a non-empty string", field="chave")
    if len(text) > PIX_KEY_LENGTH_MAX:
        raise InvalidPixKey(f"a Pix key has at most {PIX_KEY_LENGTH_MAX} characters", field="chave")
    try:
        wanted = PixKeyType(key_type) if key_type is not None else _detect_key_type(text)
    except ValueError:
        raise InvalidPixKey(f"unknown Pix key type {key_type!r}", field="tipo") from None
    if wanted is None:
        raise InvalidPixKey("not a Pix key: expected a CPF, CNPJ, +phone, e-mail or EVP", field="chave")
    value = text.lower() if wanted in (PixKeyType.EMAIL, PixKeyType.EVP) else text
    problem = _key_problem(wanted, value)
    if problem:
        raise InvalidPixKey(problem, field="chave", key_type=str(wanted))
    return PixKey(wanted, value)


def is_valid_pix_key(text: object, key_type: PixKeyType | str | None = None) -> bool:
    """Whether ``parse_pix_key`` would accept ``text`` unchanged (already canonical: lowercase e-mail and EVP)."""
    try:
        return parse_pix_key(text, key_type).value == text
    except InvalidPixKey:
        return False


def _detect_key_type(text: str) -> PixKeyType | None:
    if text.startswith("+"):
        return PixKeyType.PHONE
    if "@" in text:
        return PixKeyType.EMAIL
    if len(text) == 36 and text.count("-") == 4:
        return PixKeyType.EVP
    if text.isascii() and text.isdigit():
        return {11: PixKeyType.CPF, 14: PixKeyType.CNPJ}.get(len(text))
    return None


def _key_problem(key_type: PixKeyType, value: str) -> str | None:
    if key_type is PixKeyType.CPF:
        ok = CPF_KEY_PATTERN.fullmatch(value) is not None and is_valid_cpf(value)
        return None if ok else "a CPF key is 11 digits with valid check digits"
    if key_type is PixKeyType.CNPJ:
        ok = CNPJ_KEY_PATTERN.fullmatch(value) is not None and is_valid_cnpj(value)
        return None if ok else "a CNPJ key is 14 digits with valid check digits"
    if key_type is PixKeyType.PHONE:
        ok = PHONE_KEY_PATTERN.fullmatch(value) is not None
        return None if ok else "a phone key is E.164: '+', country code and number, like +5511987654321"
    if key_type is PixKeyType.EMAIL:
        ok = EMAIL_KEY_PATTERN.fullmatch(value) is not None
        return None if ok else "an e-mail key is a lowercase address of at most 77 characters"
    ok = EVP_KEY_PATTERN.fullmatch(value) is not None
    return None if ok else "an EVP key is a UUID with dashes, like 123e4567-e89b-12d3-a456-426655440000"


# --------------------------------------------------------------------------------------------------------------
# Received Pix: typed results of validation


class RefundStatus(StrEnum):
    """``Devolucao.status``: a devolução is requested (``EM_PROCESSAMENTO``), then done or refused."""

    EM_PROCESSAMENTO = "EM_PROCESSAMENTO"
    DEVOLVIDO = "DEVOLVIDO"
    NAO_REALIZADO = "NAO_REALIZADO"


class RefundNature(StrEnum):
    """``DevolucaoNatureza``; absent means ``ORIGINAL`` (spec)."""

    ORIGINAL = "ORIGINAL"
    RETIRADA = "RETIRADA"
    MED_OPERACIONAL = "MED_OPERACIONAL"
    MED_FRAUDE = "MED_FRAUDE"
    MED_PIX_AUTOMATICO = "MED_PIX_AUTOMATICO"


ComponentKind = Literal["original", "saque", "troco", "juros", "multa", "abatimento", "desconto"]
#: ``componentesValor`` parts and the sign with which each adds up to ``valor`` (spec, "Regras da estrutura").
COMPONENT_SIGNS: Final[Mapping[ComponentKind, int]] = {
    "original": 1, "saque": 1, "troco": 1, "juros": 1, "multa": 1, "abatimento": -1, "desconto": -1,
}
#: ``modalidadeAgente`` values allowed for a withdrawal (saque) and for change (troco).
AGENT_MODALITIES: Final[Mapping[str, frozenset[str]]] = {
    "saque": frozenset({"AGTEC", "AGTOT", "AGPSS"}),
    "troco": frozenset({"AGTEC", "AGTOT"}),
}


@dataclass(frozen=True, slots=True)
class ValueComponent:
    """One part of ``componentesValor``. ``agent_modality`` and ``provider_ispb`` only for saque and troco."""

    kind: ComponentKind
    amount_centavos: int
    agent_modality: str | None = None
    provider_ispb: str | None = None


@dataclass(frozen=True, slots=True)
class ReceivedRefund:
    """A devolução as a PSP reports it on a received Pix (``Devolucao``)."""

    id: str
    return_id: str
    amount_centavos: int
    status: RefundStatus
    nature: RefundNature
    requested_at: datetime | None
    settled_at: datetime | None
    description: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class ReceivedPix:
    """A received Pix (``Pix`` schema). ``end_to_end_id`` is its identity and the idempotency key of its credit.

    ``txid`` is None for a Pix paid to a key without a charge; ``key`` (``chave``) is kept as text because DICT may
    add key types. Fields the schema does not define are ignored (the spec lets PSPs add fields).
    """

    end_to_end_id: str
    amount_centavos: int
    processed_at: datetime
    txid: str | None
    key: str | None
    payer_info: str | None
    components: tuple[ValueComponent, ...]
    refunds: tuple[ReceivedRefund, ...]

    @property
    def refunds_committed_centavos(self) -> int:
        """What is returned or on its way back: every devolução not refused."""
        return sum(r.amount_centavos for r in self.refunds if r.status is not RefundStatus.NAO_REALIZADO)

    @property
    def refundable_centavos(self) -> int:
        """What a new devolução may still return (see ``check_refund`` for the time window)."""
        return self.amount_centavos - self.refunds_committed_centavos


# --------------------------------------------------------------------------------------------------------------
# Validation against WebhookPixBody / Pix


def validate_webhook_body(body: object) -> list[ReceivedPix]:
    """Validates a decoded webhook body ``{"pix": [Pix, ...]}`` and returns its Pix, in order.

    Strictly the spec's ``WebhookPixBody`` and ``Pix`` schemas, anchored, plus: ``pix`` is required (the schema
    leaves it optional, but a notification without it says nothing), at most ``WEBHOOK_PIX_ITEMS_MAX`` items, and
    the rules the spec states in prose (see ``validate_pix``). Unknown fields are ignored, as the schema allows and
    the spec asks of clients. The list may be empty.

    Raises ``InvalidPixPayload`` listing every violation (path and message).
    """
    checker = _Checker()
    received: list[ReceivedPix] = []
    if not isinstance(body, dict):
        checker.add("", "the body must be a JSON object with a 'pix' array")
    elif "pix" not in body:
        checker.add("pix", "is required")
    elif not isinstance(body["pix"], list):
        checker.add("pix", "must be an array")
    elif len(body["pix"]) > WEBHOOK_PIX_ITEMS_MAX:
        checker.add("pix", f"has {len(body['pix'])} items, more than {WEBHOOK_PIX_ITEMS_MAX}")
    else:
        for index, item in enumerate(body["pix"]):
            pix = checker.pix(item, f"pix[{index}]")
            if pix is not None:
                received.append(pix)
    checker.raise_if_any()
    return received


def validate_pix(obj: object, path: str = "pix") -> ReceivedPix:
    """Validates one ``Pix`` object (a webhook item, or ``GET /pix/{e2eid}`` from a PSP).

    Required: ``endToEndId`` (Open Finance structure, see ``parse_end_to_end_id``), ``valor`` (string
    ``\\d{1,10}\\.\\d{2}``, above zero: SPI settles no zero Pix), ``horario`` (RFC 3339). Optional and checked when
    present: ``txid`` (1 to 35 letters or digits: the ``Pix`` schema overrides ``TxId``'s 26..35 with 1..35, meant
    for Pix not tied to a cob, and we take that meaning over the literal ``allOf``), ``chave`` (string, at most 77),
    ``infoPagador`` (string, at most 140), ``componentesValor`` (each part's schema; no ``saque`` with ``troco``; the
    parts add up to ``valor``), ``devolucoes`` (array of ``Devolucao``; those not refused add up to at most ``valor``).

    Raises ``InvalidPixPayload``.
    """
    checker = _Checker()
    pix = checker.pix(obj, path)
    checker.raise_if_any()
    assert pix is not None
    return pix


class _Checker:
    """Collects violations while walking a document, so one pass reports all of them."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, path: str, message: str) -> None:
        self.violations.append(Violation(path, message))

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidPixPayload(self.violations)

    # Field helpers: each returns the parsed value, or None after recording why it is not valid.

    def obj(self, value: object, path: str) -> dict[str, object] | None:
        if not isinstance(value, dict):
            self.add(path, "must be an object")
            return None
        return value

    def required(self, obj: Mapping[str, object], name: str, path: str) -> bool:
        if name not in obj:
            self.add(_join(path, name), "is required")
            return False
        return True

    def text(self, value: object, path: str, length_max: int) -> str | None:
        if not isinstance(value, str):
            self.add(path, "must be a string")
            return None
        if len(value) > length_max:
            self.add(path, f"has {len(value)} characters, more than {length_max}")
            return None
        return value

    def pattern(self, value: object, path: str, pattern: re.Pattern[str], what: str) -> str | None:
        if not isinstance(value, str):
            self.add(path, "must be a string")
            return None
        if pattern.fullmatch(value) is None:
            self.add(path, f"must be {what}")
            return None
        return value

    def valor(self, value: object, path: str, *, positive: bool) -> int | None:
        if not isinstance(value, str):
            self.add(path, "must be a string like '110.00', not a number")
            return None
        centavos = _valor_centavos(value)
        if centavos is None:
            self.add(path, "must match \\d{1,10}\\.\\d{2}: 1 to 10 digits, a dot, exactly 2 decimals, no sign")
            return None
        if positive and centavos == 0:
            self.add(path, "must be greater than 0.00")
            return None
        return centavos

    def date_time(self, value: object, path: str) -> datetime | None:
        if not isinstance(value, str):
            self.add(path, "must be a string")
            return None
        moment = _date_time(value)
        if moment is None:
            self.add(path, "must be an RFC 3339 date-time with an offset, like 2020-09-09T20:15:00.358Z")
        return moment

    def enum(self, value: object, path: str, allowed: Sequence[str]) -> str | None:
        if not isinstance(value, str) or value not in allowed:
            self.add(path, f"must be one of {', '.join(allowed)}")
            return None
        return value

    # Schemas

    def pix(self, value: object, path: str) -> ReceivedPix | None:
        before = len(self.violations)
        obj = self.obj(value, path)
        if obj is None:
            return None
        e2e = amount = processed_at = None
        if self.required(obj, "endToEndId", path):
            e2e = self.end_to_end_id(obj["endToEndId"], _join(path, "endToEndId"))
        if self.required(obj, "valor", path):
            amount = self.valor(obj["valor"], _join(path, "valor"), positive=True)
        if self.required(obj, "horario", path):
            processed_at = self.date_time(obj["horario"], _join(path, "horario"))
        txid = key = payer_info = None
        if "txid" in obj:
            txid = self.pattern(obj["txid"], _join(path, "txid"), RECEIVED_TXID_PATTERN, "1 to 35 letters or digits")
        if "chave" in obj:
            key = self.text(obj["chave"], _join(path, "chave"), PIX_KEY_LENGTH_MAX)
        if "infoPagador" in obj:
            payer_info = self.text(obj["infoPagador"], _join(path, "infoPagador"), PIX_TEXT_LENGTH_MAX)
        components: tuple[ValueComponent, ...] = ()
        if "componentesValor" in obj:
            components = self.components(obj["componentesValor"], _join(path, "componentesValor"), amount)
        refunds: tuple[ReceivedRefund, ...] = ()
        if "devolucoes" in obj:
            refunds = self.refunds(obj["devolucoes"], _join(path, "devolucoes"), amount)
        if len(self.violations) > before or e2e is None or amount is None or processed_at is None:
            return None
        return ReceivedPix(e2e, amount, processed_at, txid, key, payer_info, components, refunds)

    def end_to_end_id(self, value: object, path: str) -> str | None:
        if not isinstance(value, str):
            self.add(path, "must be a string")
            return None
        if len(value) != 32:
            self.add(path, f"must have exactly 32 characters, has {len(value)}")
            return None
        if not is_valid_end_to_end_id(value):
            self.add(path, "must be 'E', an 8-digit ISPB, a real yyyyMMddHHmm (UTC) and 11 letters or digits")
            return None
        return value

    def components(self, value: object, path: str, amount: int | None) -> tuple[ValueComponent, ...]:
        obj = self.obj(value, path)
        if obj is None:
            return ()
        before = len(self.violations)
        parts: list[ValueComponent] = []
        for kind in COMPONENT_SIGNS:
            if kind in obj:
                part = self.component(kind, obj[kind], _join(path, kind))
                if part is not None:
                    parts.append(part)
        if "saque" in obj and "troco" in obj:
            self.add(path, "must not have both saque and troco")
        if len(self.violations) == before and amount is not None and parts:
            total = sum(COMPONENT_SIGNS[part.kind] * part.amount_centavos for part in parts)
            if total != amount:
                shown = format_valor(abs(total)) if total >= 0 else "-" + format_valor(-total)
                self.add(path, f"its parts add up to {shown}, not to valor {format_valor(amount)}")
        return tuple(parts)

    def component(self, kind: ComponentKind, value: object, path: str) -> ValueComponent | None:
        obj = self.obj(value, path)
        if obj is None:
            return None
        before = len(self.violations)
        amount = None
        if self.required(obj, "valor", path):
            amount = self.valor(obj["valor"], _join(path, "valor"), positive=False)
        modality = provider = None
        if kind in AGENT_MODALITIES:
            if self.required(obj, "modalidadeAgente", path):
                modality = self.enum(obj["modalidadeAgente"], _join(path, "modalidadeAgente"),
                                     sorted(AGENT_MODALITIES[kind]))
            if self.required(obj, "prestadorDoServicoDeSaque", path):
                provider = self.pattern(obj["prestadorDoServicoDeSaque"], _join(path, "prestadorDoServicoDeSaque"),
                                        ISPB_ALNUM_PATTERN, "8 digits or capital letters (an ISPB)")
        if len(self.violations) > before or amount is None:
            return None
        return ValueComponent(kind, amount, modality, provider)

    def refunds(self, value: object, path: str, amount: int | None) -> tuple[ReceivedRefund, ...]:
        if not isinstance(value, list):
            self.add(path, "must be an array")
            return ()
        if len(value) > PIX_REFUNDS_PER_PIX_MAX:
            self.add(path, f"has {len(value)} items, more than {PIX_REFUNDS_PER_PIX_MAX}")
            return ()
        before = len(self.violations)
        refunds = [self.refund(item, f"{path}[{index}]") for index, item in enumerate(value)]
        valid = tuple(refund for refund in refunds if refund is not None)
        if len(self.violations) == before and amount is not None:
            committed = sum(r.amount_centavos for r in valid if r.status is not RefundStatus.NAO_REALIZADO)
            if committed > amount:
                self.add(path, f"devoluções not refused add up to {format_valor(committed)}, "
                               f"more than the Pix's valor {format_valor(amount)}")
        return valid

    def refund(self, value: object, path: str) -> ReceivedRefund | None:
        obj = self.obj(value, path)
        if obj is None:
            return None
        before = len(self.violations)
        refund_id = return_id = amount = status = None
        requested_at = settled_at = None
        if self.required(obj, "id", path):
            refund_id = self.pattern(obj["id"], _join(path, "id"), REFUND_ID_PATTERN, "1 to 35 letters or digits")
        if self.required(obj, "rtrId", path):
            return_id = self.pattern(obj["rtrId"], _join(path, "rtrId"), RETURN_ID_PATTERN,
                                     "exactly 32 letters or digits")
        if self.required(obj, "valor", path):
            amount = self.valor(obj["valor"], _join(path, "valor"), positive=True)
        if self.required(obj, "horario", path):
            moments = self.obj(obj["horario"], _join(path, "horario"))
            if moments is not None:
                if "solicitacao" in moments:
                    requested_at = self.date_time(moments["solicitacao"], _join(path, "horario.solicitacao"))
                if "liquidacao" in moments:
                    settled_at = self.date_time(moments["liquidacao"], _join(path, "horario.liquidacao"))
        if self.required(obj, "status", path):
            status = self.enum(obj["status"], _join(path, "status"), [s.value for s in RefundStatus])
        nature = RefundNature.ORIGINAL.value
        if "natureza" in obj:
            nature = self.enum(obj["natureza"], _join(path, "natureza"), [n.value for n in RefundNature]) or nature
        description = reason = None
        if "descricao" in obj:
            description = self.text(obj["descricao"], _join(path, "descricao"), PIX_TEXT_LENGTH_MAX)
        if "motivo" in obj:
            reason = self.text(obj["motivo"], _join(path, "motivo"), PIX_TEXT_LENGTH_MAX)
        if len(self.violations) > before or refund_id is None or return_id is None or amount is None or (
            status is None
        ):
            return None
        return ReceivedRefund(refund_id, return_id, amount, RefundStatus(status), RefundNature(nature),
                              requested_at, settled_at, description, reason)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --------------------------------------------------------------------------------------------------------------
# Devolução rule


def refund_deadline(settled_at: datetime) -> datetime:
    """The last moment a devolução of a Pix settled at ``settled_at`` may be requested."""
    return settled_at + PIX_REFUND_WINDOW


def check_refund(pix: ReceivedPix, amount_centavos: int, now: datetime) -> None:
    """Refuses a devolução of ``amount_centavos`` of ``pix`` at ``now`` unless the spec allows it.

    Raises ``InvalidRequest`` for an amount that is not a positive integer, ``RefundExceedsOriginal`` when it would
    return more than the Pix brought in (devoluções already requested and not refused count),
    ``RefundWindowClosed`` after 90 days. The PSP applies the same rules; checking first keeps a doomed request
    from holding funds.
    """
    if type(amount_centavos) is not int or amount_centavos <= 0:
        raise InvalidRequest("a devolução amount must be a positive number of centavos", field="amount_centavos")
    if amount_centavos > pix.refundable_centavos:
        raise RefundExceedsOriginal(
            f"at most {format_valor(pix.refundable_centavos)} of this Pix may still be returned",
            end_to_end_id=pix.end_to_end_id, refundable_centavos=pix.refundable_centavos,
            amount_centavos=amount_centavos,
        )
    deadline = refund_deadline(pix.processed_at)
    if now > deadline:
        raise RefundWindowClosed(
            "a devolução must be requested within 90 days of the Pix",
            end_to_end_id=pix.end_to_end_id, deadline=format_horario(deadline),
        )


# --------------------------------------------------------------------------------------------------------------
# Webhook signature (our sandbox PSPs; the BCB model authenticates the PSP with mTLS instead)

#: Header carrying ``sha256=<hex HMAC-SHA256 of the raw body>`` with the PSP's webhook secret.
WEBHOOK_SIGNATURE_HEADER: Final = "X-Razao-Signature"
#: Header naming the PSP that delivered a webhook (``primary``, ``secondary``).
WEBHOOK_PSP_HEADER: Final = "X-Psp-Id"


def webhook_signature(secret: bytes, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=`` and the hex HMAC-SHA256 under ``secret``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_webhook_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of the raw ``body`` under ``secret`` (constant-time comparison).

    A valid signature says which PSP sent the notification, not that the money arrived: confirm a Pix with the PSP
    (``GET /pix/{e2eid}``) before crediting it, as the BCB recommends.
    """
    if not header or not secret:
        return False
    return hmac.compare_digest(webhook_signature(secret, body), header)
