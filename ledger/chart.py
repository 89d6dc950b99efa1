"""The chart of accounts (DESIGN §2): account kinds ("codes") and flags, with TigerBeetle semantics."""

from __future__ import annotations

from enum import IntEnum, IntFlag


class AccountFlags(IntFlag):
    """Account flags, as in TigerBeetle. ``CLOSED`` is set only by closing the account."""

    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 0
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 1
    HISTORY = 1 << 2
    CLOSED = 1 << 3


class AccountCode(IntEnum):
    """What an account is for. Customer money sits in credit-normal (liability) accounts."""

    INVESTOR_WALLET = 100
    BORROWER_WALLET = 110
    LOAN_ESCROW = 200
    LOAN_RECEIVABLE = 210
    FEE_REVENUE = 300
    TAX_WITHHELD = 310
    PIX_SETTLEMENT = 400
    SUSPENSE = 410


#: Customer money the platform holds on behalf of others; segregated against the PIX settlement account.
CUSTOMER_FUNDS_CODES = frozenset({AccountCode.INVESTOR_WALLET, AccountCode.BORROWER_WALLET, AccountCode.LOAN_ESCROW})

#: Flags an account of each kind must carry. Every customer wallet can never go negative.
REQUIRED_FLAGS: dict[AccountCode, AccountFlags] = {
    AccountCode.INVESTOR_WALLET: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
    AccountCode.BORROWER_WALLET: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
    AccountCode.LOAN_ESCROW: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
    AccountCode.LOAN_RECEIVABLE: AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS | AccountFlags.HISTORY,
    AccountCode.FEE_REVENUE: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    AccountCode.TAX_WITHHELD: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    # The settlement account mirrors the platform's balance at its PSP: an asset, never below zero.
    AccountCode.PIX_SETTLEMENT: AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS | AccountFlags.HISTORY,
    AccountCode.SUSPENSE: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
}


class TransferCode(IntEnum):
    """Why money moved; recorded on each transfer for statements and audits."""

    INTERNAL = 1
    PIX_DEPOSIT = 10
    PIX_WITHDRAWAL = 11
    PIX_REFUND = 12
    LOAN_FUNDING = 20
    LOAN_DISBURSEMENT = 21
    LOAN_REPAYMENT = 22
    FEE = 30
    TAX = 31
    ADJUSTMENT = 90
