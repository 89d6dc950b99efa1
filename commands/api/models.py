"""Request and response bodies. Requests reject unknown fields and are strict; amounts are PIX ``valor``
strings (``"110.00"``), converted to centavos once, here at the edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from commands.api.limits import BATCH_TRANSFERS_MAX
from ledger import errors as ledger_errors
from ledger.chart import AccountCode, TransferCode
from ledger.limits import PENDING_TIMEOUT_S_MAX, REFERENCE_LENGTH_MAX
from ledger.money import parse_amount
from ledger.parties import EMAIL_LENGTH_MAX, EMAIL_PATTERN, NAME_LENGTH_MAX, PHONE_PATTERN, document_type

VALOR_PATTERN = r"^\d{1,13}\.\d{2}$"
BALANCE_PATTERN = r"^-?\d{1,19}\.\d{2}$"


def _positive_valor(text: str) -> str:
    try:
        parse_amount(text)
    except ledger_errors.LedgerError as exc:
        raise ValueError(exc.detail) from None
    return text


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("must contain printable characters only")
    return text


def _valid_document(text: str) -> str:
    try:
        document_type(text)
    except ledger_errors.LedgerError as exc:
        raise ValueError(exc.detail) from None
    return text


def _valid_email(text: str) -> str:
    if not EMAIL_PATTERN.match(text):
        raise ValueError("not a valid email address")
    return text


def _valid_name(text: str) -> str:
    if not text.strip() or not text.isprintable():
        raise ValueError("must be printable and not blank")
    return text


Valor = Annotated[
    str, StringConstraints(pattern=VALOR_PATTERN), AfterValidator(_positive_valor),
    Field(description="Amount in BRL as in PIX: digits, a dot, two decimals; positive.", examples=["110.00"]),
]
Reference = Annotated[
    str, StringConstraints(max_length=REFERENCE_LENGTH_MAX), AfterValidator(_printable),
    Field(description="Free text kept with the transfer (an order id, a PIX endToEndId).", examples=["loan:42"]),
]
Balance = Annotated[str, Field(pattern=BALANCE_PATTERN, examples=["1000.00"])]

#: Platform accounts an operator may open; customer wallets are opened with their party only.
PlatformAccountCode = Literal["loan_escrow", "loan_receivable", "fee_revenue", "tax_withheld", "pix_settlement",
                              "suspense"]
PLATFORM_CODES: dict[str, AccountCode] = {code.name.lower(): code for code in AccountCode
                                          if code not in (AccountCode.INVESTOR_WALLET, AccountCode.BORROWER_WALLET)}
assert set(PLATFORM_CODES) == set(PlatformAccountCode.__args__)  # type: ignore[attr-defined]
ACCOUNT_CODE_NAMES: dict[int, str] = {int(code): code.name.lower() for code in AccountCode}
TRANSFER_KIND_NAMES: dict[str, str] = {"single": "transfer", "pending": "hold", "post_pending": "hold_post",
                                       "void_pending": "hold_void"}


class RequestModel(BaseModel):
    """Unknown fields are refused. Not ``strict`` as a whole: FastAPI validates decoded JSON in Python mode, where
    strict would refuse a UUID given as a string; numbers that must be integers are ``StrictInt`` instead, and
    strings are never coerced from numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PartyIn(RequestModel):
    kind: Literal["investor", "borrower"]
    name: Annotated[str, StringConstraints(min_length=1, max_length=NAME_LENGTH_MAX), AfterValidator(_valid_name)]
    document: Annotated[
        str, StringConstraints(pattern=r"^(\d{11}|\d{14})$"), AfterValidator(_valid_document),
        Field(description="CPF (11 digits) or CNPJ (14 digits), digits only, with valid check digits.",
              examples=["52998224725"]),
    ]
    email: Annotated[str, StringConstraints(min_length=3, max_length=EMAIL_LENGTH_MAX), AfterValidator(_valid_email),
                     Field(examples=["ana@example.com.br"])]
    phone: Annotated[str, StringConstraints(pattern=PHONE_PATTERN.pattern.replace(r"\A", "^").replace(r"\Z", "$")),
                     Field(description="Brazilian number in E.164.", examples=["+5511987654321"])]


class AccountIn(RequestModel):
    code: PlatformAccountCode
    reference: Reference = ""


class TransferIn(RequestModel):
    debit_account_id: UUID
    credit_account_id: UUID
    valor: Valor
    code: TransferCode = Field(default=TransferCode.INTERNAL, description="Why the money moves (chart of codes).")
    reference: Reference = ""


class HoldIn(TransferIn):
    timeout_s: StrictInt = Field(default=0, ge=0, le=PENDING_TIMEOUT_S_MAX,
                           description="Seconds until the hold is released by itself; 0 keeps it until posted or "
                                       "voided.")


class HoldPostIn(RequestModel):
    valor: Valor | None = Field(default=None, description="Amount to settle; omit to settle the whole hold.")
    reference: Reference = ""


class HoldVoidIn(RequestModel):
    reference: Reference = ""


class BatchIn(RequestModel):
    transfers: list[TransferIn] = Field(min_length=1, max_length=BATCH_TRANSFERS_MAX,
                                        description="Committed all together, in order, or not at all.")


class BulkIn(RequestModel):
    transfers: list[TransferIn] = Field(min_length=1, max_length=BATCH_TRANSFERS_MAX,
                                        description="Each committed or refused on its own, in order.")


# ---- responses ---------------------------------------------------------------------------------------------


class ResponseModel(BaseModel):
    model_config = ConfigDict(frozen=True)


class PartyOut(ResponseModel):
    id: UUID
    kind: Literal["investor", "borrower"]
    name: str
    document: str
    email: str
    phone: str
    wallet_id: UUID


class PartyCreated(PartyOut):
    position: int = Field(description="Event-log position of the registration (for read-your-writes).")


class AccountCreated(ResponseModel):
    id: UUID
    code: str
    reference: str
    position: int


class AccountOut(ResponseModel):
    """Balances from the writer's consistent state. ``posted`` and ``available`` are on the account's normal
    side (credits for wallets and revenue, debits for the PIX settlement and receivables)."""

    id: UUID
    code: str
    owner_id: UUID | None
    closed: bool
    posted: Balance
    pending: Balance = Field(description="Reserved by holds on the account's outgoing side.")
    incoming_pending: Balance = Field(description="Held for this account by holds not yet posted.")
    available: Balance
    debits_posted: Balance
    credits_posted: Balance
    debits_pending: Balance
    credits_pending: Balance
    position: int = Field(description="The ledger's log position when the balances were read (or later).")


class WalletClosed(ResponseModel):
    id: UUID
    closed: Literal[True]
    position: int


class TransferOut(ResponseModel):
    id: UUID
    idempotency_key: str
    kind: Literal["transfer", "hold", "hold_post", "hold_void"]
    debit_account_id: UUID
    credit_account_id: UUID
    valor: Balance = Field(description="Amount moved (or held, or released by a void).")
    hold_id: UUID | None = None
    timestamp: datetime
    position: int


class BatchOut(ResponseModel):
    transfers: list[TransferOut]
    position: int


class BulkItemOut(ResponseModel):
    index: int = Field(description="The transfer's place in the request.")
    status: int = Field(description="201 when committed (or replayed), else the status its problem would have alone.")
    replayed: bool = Field(default=False, description="Committed by an earlier request with the same key.")
    transfer: TransferOut | None = None
    problem: dict[str, Any] | None = Field(default=None, description="RFC 9457 problem details of a refusal.")


class BulkOut(ResponseModel):
    results: list[BulkItemOut]
    committed: int
    refused: int
    position: int | None = Field(description="Highest log position among the committed transfers (for "
                                             "read-your-writes); null when none was committed.")


class Violation(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details; ``code`` is stable and meant for programs."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:razao:problem:ledger-insufficient-funds"])
    title: str
    status: int
    detail: str
    code: str = Field(examples=["LEDGER_INSUFFICIENT_FUNDS"])
    instance: str
    violations: list[Violation] | None = None


class Health(BaseModel):
    status: str
    service: str


class Readiness(BaseModel):
    status: str
    ledger_position: int
    rate_limits: str
