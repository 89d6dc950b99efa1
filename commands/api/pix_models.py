"""Request and response bodies of the PIX routes. Amounts are ``valor`` strings, as everywhere in the API; PIX
identifiers keep the spec's names and patterns (``txid``, ``endToEndId`` as ``end_to_end_id``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, Field, StrictInt, StringConstraints

from commands.api.models import Balance, RequestModel, ResponseModel, Valor
from ledger.pix import PIX_KEY_LENGTH_MAX, PIX_TEXT_LENGTH_MAX
from ledger.pix_flows import DEPOSIT_EXPIRY_S_MAX

#: The Open Finance endToEndId structure (``ledger.pix.END_TO_END_ID_PATTERN``), for documentation and paths.
END_TO_END_ID_PATTERN = (r"^E[0-9]{8}[0-9]{4}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])(2[0-3]|[01][0-9])[0-5][0-9]"
                         r"[a-zA-Z0-9]{11}$")
PIX_VALOR_PATTERN = r"^\d{1,10}\.\d{2}$"


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("must contain printable characters only")
    return text


PixValor = Annotated[Valor, StringConstraints(pattern=PIX_VALOR_PATTERN),
                     Field(description="Amount in BRL as a Pix valor: 1 to 10 digits, a dot, two decimals; positive.",
                           examples=["150.00"])]
Description = Annotated[str, StringConstraints(min_length=1, max_length=PIX_TEXT_LENGTH_MAX),
                        AfterValidator(_printable)]


class DepositIn(RequestModel):
    valor: PixValor
    wallet_id: UUID | None = Field(default=None, description="Staff only: the wallet to credit. Customers deposit "
                                                             "to their own wallet and omit it.")
    expires_in_s: StrictInt | None = Field(default=None, ge=60, le=DEPOSIT_EXPIRY_S_MAX,
                                           description="Lifetime of the charge in seconds (default from settings).")


class DepositCreated(ResponseModel):
    """A deposit intent: pay ``pix_copia_e_cola`` (the BR Code) for exactly ``valor``; the wallet is credited when
    the PSP notifies the Pix and confirms it."""

    id: UUID
    wallet_id: UUID
    valor: Balance
    txid: str
    psp: str
    pix_copia_e_cola: str
    location: str
    created_at: datetime
    expires_at: datetime
    position: int


class DepositOut(DepositCreated):
    status: Literal["ACTIVE", "PAID", "EXPIRED"]
    end_to_end_id: str | None = Field(description="The Pix that paid it.")


class WithdrawalIn(RequestModel):
    valor: PixValor
    pix_key: Annotated[str, StringConstraints(min_length=1, max_length=PIX_KEY_LENGTH_MAX),
                       Field(description="Where to send: a CPF or CNPJ (digits, valid check digits), an e-mail, a "
                                         "+55 phone, or an EVP (random key).", examples=["52998224725"])]
    pix_key_type: Literal["CPF", "CNPJ", "PHONE", "EMAIL", "EVP"] | None = Field(
        default=None, description="The key's type; detected when omitted.")
    wallet_id: UUID | None = Field(default=None, description="Staff only: the wallet to debit.")


class WithdrawalCreated(ResponseModel):
    """The amount is held on the wallet; the payment is sent and followed to its end (``GET`` for its status)."""

    id: UUID
    wallet_id: UUID
    valor: Balance
    pix_key_type: str
    pix_key: str
    payment_id: str = Field(description="The PSP's idempotency id (idEnvio) of this payment.")
    hold_id: UUID
    status: Literal["PROCESSING"]
    requested_at: datetime
    position: int


class WithdrawalOut(ResponseModel):
    id: UUID
    wallet_id: UUID
    valor: Balance
    pix_key_type: str
    pix_key: str
    payment_id: str
    hold_id: UUID
    status: Literal["PROCESSING", "COMPLETED", "FAILED"]
    psp: str | None
    end_to_end_id: str | None
    reason: str | None
    requested_at: datetime
    settled_at: datetime | None


class RefundIn(RequestModel):
    valor: PixValor
    descricao: Description | None = None


class RefundOut(ResponseModel):
    id: UUID
    refund_id: str = Field(description="The devolução id at the PSP.")
    end_to_end_id: str
    valor: Balance
    status: Literal["EM_PROCESSAMENTO", "DEVOLVIDO", "NAO_REALIZADO"]
    return_id: str | None = Field(description="The PSP's rtrId once known.")
    reason: str | None
    hold_id: UUID
    source_account_id: UUID
    descricao: str | None
    requested_by: str
    requested_at: datetime
    settled_at: datetime | None


class RefundCreated(ResponseModel):
    id: UUID
    refund_id: str
    end_to_end_id: str
    valor: Balance
    status: Literal["EM_PROCESSAMENTO"]
    hold_id: UUID
    source_account_id: UUID
    requested_at: datetime
    position: int


class ReceivedOut(ResponseModel):
    end_to_end_id: str
    psp: str
    txid: str | None
    valor: Balance
    horario: datetime = Field(description="When the PSP settled it.")
    credited_at: datetime
    source: Literal["webhook", "reconciliation"]
    credit_account_id: UUID = Field(description="Where its money is: the wallet, or suspense.")
    deposit_id: UUID | None
    suspense_reason: str | None
    reconciliation: Literal["open", "assigned", "refunded"] | None
    refundable: Balance
    devolucoes: list[RefundOut]


class AssignIn(RequestModel):
    wallet_id: UUID


class AssignOut(ResponseModel):
    end_to_end_id: str
    wallet_id: UUID
    valor: Balance
    reconciliation: Literal["assigned"]


class ReconciliationItemsOut(ResponseModel):
    items: list[ReceivedOut]


class ReconciliationRunIn(RequestModel):
    inicio: datetime = Field(description="Start of the window (RFC 3339, with offset).")
    fim: datetime = Field(description="End of the window (RFC 3339, with offset).")


class PspReportOut(ResponseModel):
    listed: int
    already_credited: int
    credited: int
    suspense: int
    invalid: int
    failed: int
    error: str | None


class ReconciliationRunOut(ResponseModel):
    inicio: datetime
    fim: datetime
    repaired: int
    psps: dict[str, PspReportOut]


class WebhookAccepted(ResponseModel):
    """The Pix are stored; each will be confirmed with the PSP before anything is credited."""

    accepted: int = Field(description="Pix in this notification.")
    new: int = Field(description="Of them, not seen before.")
