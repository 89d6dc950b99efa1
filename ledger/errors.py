"""Operating errors of the ledger: typed, each with a stable code.

An operating error is an expected refusal (insufficient funds, closed account, a key reused with another
payload). It changes nothing and is reported to the caller. A broken invariant is not an operating error:
it is an ``AssertionError`` that stops the writer (TIGER_STYLE: the two are never mixed).

Codes are part of the public contract: the API maps them to HTTP statuses and clients switch on them.
Never rename a code; add a new one.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LedgerError(Exception):
    """Base class of every operating error. ``code`` is stable; ``detail`` is for humans."""

    code: ClassVar[str] = "LEDGER_ERROR"

    def __init__(self, detail: str, **context: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.context = context

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.detail, **self.context}


class InvalidRequest(LedgerError):
    """A field of the request is malformed (key, reference, timeout...)."""

    code = "LEDGER_INVALID_REQUEST"


class AmountMustBePositive(LedgerError):
    code = "LEDGER_AMOUNT_MUST_BE_POSITIVE"


class AmountTooLarge(LedgerError):
    code = "LEDGER_AMOUNT_TOO_LARGE"


class AccountNotFound(LedgerError):
    code = "LEDGER_ACCOUNT_NOT_FOUND"


class AccountAlreadyExists(LedgerError):
    code = "LEDGER_ACCOUNT_EXISTS"


class PartyAlreadyExists(LedgerError):
    """A party of this kind with this CPF or CNPJ is already registered."""

    code = "LEDGER_PARTY_EXISTS"


class AccountClosed(LedgerError):
    code = "LEDGER_ACCOUNT_CLOSED"


class AccountBalanceNotZero(LedgerError):
    """An account can be closed only with nothing posted nor pending on it."""

    code = "LEDGER_ACCOUNT_BALANCE_NOT_ZERO"


class AccountsMustBeDifferent(LedgerError):
    code = "LEDGER_ACCOUNTS_MUST_BE_DIFFERENT"


class LedgerMismatch(LedgerError):
    """The two accounts, or the transfer and its accounts, are on different currency ledgers."""

    code = "LEDGER_LEDGER_MISMATCH"


class InsufficientFunds(LedgerError):
    """The debit would make debits exceed credits on an account flagged ``debits_must_not_exceed_credits``."""

    code = "LEDGER_INSUFFICIENT_FUNDS"


class ExceedsDebits(LedgerError):
    """The credit would make credits exceed debits on an account flagged ``credits_must_not_exceed_debits``."""

    code = "LEDGER_EXCEEDS_DEBITS"


class Overflow(LedgerError):
    code = "LEDGER_OVERFLOW"


class PendingTransferNotFound(LedgerError):
    code = "LEDGER_PENDING_TRANSFER_NOT_FOUND"


class PendingTransferNotPending(LedgerError):
    """The referenced transfer exists but was not created as pending."""

    code = "LEDGER_PENDING_TRANSFER_NOT_PENDING"


class PendingTransferAlreadyPosted(LedgerError):
    code = "LEDGER_PENDING_TRANSFER_ALREADY_POSTED"


class PendingTransferAlreadyVoided(LedgerError):
    code = "LEDGER_PENDING_TRANSFER_ALREADY_VOIDED"


class PendingTransferExpired(LedgerError):
    code = "LEDGER_PENDING_TRANSFER_EXPIRED"


class ExceedsPendingAmount(LedgerError):
    code = "LEDGER_EXCEEDS_PENDING_AMOUNT"


class IdempotencyConflict(LedgerError):
    """The key was used before with a different payload; ``field`` names the first differing field."""

    code = "LEDGER_IDEMPOTENCY_CONFLICT"


class LinkedTransferFailed(LedgerError):
    """This transfer was valid on its own but another transfer of its linked batch failed."""

    code = "LEDGER_LINKED_TRANSFER_FAILED"


class LinkedBatchFailed(LedgerError):
    """A linked batch was refused as a whole; ``errors`` lists the result of each of its transfers."""

    code = "LEDGER_LINKED_BATCH_FAILED"


class BatchTooLarge(LedgerError):
    code = "LEDGER_BATCH_TOO_LARGE"


class LedgerUnavailable(LedgerError):
    """The store could not be reached or the outcome is unknown; retrying with the same key is safe."""

    code = "LEDGER_UNAVAILABLE"


class LedgerOverloaded(LedgerError):
    """The writer's queue is full; retry later with the same key."""

    code = "LEDGER_OVERLOADED"


class WriterBusy(LedgerError):
    """Another process owns the ledger writer (single-writer lease held)."""

    code = "LEDGER_WRITER_BUSY"


class WriterFenced(LedgerError):
    """This writer's lease epoch is no longer current: another writer took over, so this one must stop."""

    code = "LEDGER_WRITER_FENCED"


#: Every operating error class, by code. The API's error table must cover each of them.
ALL_ERRORS: dict[str, type[LedgerError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        AmountMustBePositive,
        AmountTooLarge,
        AccountNotFound,
        AccountAlreadyExists,
        PartyAlreadyExists,
        AccountClosed,
        AccountBalanceNotZero,
        AccountsMustBeDifferent,
        LedgerMismatch,
        InsufficientFunds,
        ExceedsDebits,
        Overflow,
        PendingTransferNotFound,
        PendingTransferNotPending,
        PendingTransferAlreadyPosted,
        PendingTransferAlreadyVoided,
        PendingTransferExpired,
        ExceedsPendingAmount,
        IdempotencyConflict,
        LinkedTransferFailed,
        LinkedBatchFailed,
        BatchTooLarge,
        LedgerUnavailable,
        LedgerOverloaded,
        WriterBusy,
        WriterFenced,
    )
}
