"""Accounts and wallets: opening platform accounts, reading balances, closing wallets."""

from __future__ import annotations

import uuid
from uuid import UUID

from fastapi import APIRouter
from starlette.responses import Response

from commands.api.auth import Principal
from commands.api.deps import AccountOpener, AccountReader, IdempotencyKey, Ledger, OptionalIdempotencyKey, WalletCloser
from commands.api.gateway import LedgerGateway
from commands.api.models import ACCOUNT_CODE_NAMES, PLATFORM_CODES, AccountCreated, AccountIn, AccountOut, WalletClosed
from commands.api.routers.common import (
    READ_PROBLEMS,
    WALLET_CODES,
    WRITE_PROBLEMS,
    account_not_found,
    json_response,
    ledger_key,
)
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.model import Account, AccountResult, CloseAccount, OpenAccount
from ledger.money import format_amount
from ledger.parties import wallet_id_for_party

router = APIRouter(tags=["accounts and wallets"])

#: Account ids opened over HTTP are derived from the principal's Idempotency-Key, so a retry opens nothing new.
ACCOUNT_ID_NAMESPACE = UUID("5f0e8d3a-6c1b-5a27-9e44-0b7d2c9f1a86")
#: Accounts whose balance is on the debit side (assets of the platform).
DEBIT_NORMAL_CODES = frozenset({int(AccountCode.PIX_SETTLEMENT), int(AccountCode.LOAN_RECEIVABLE)})


def account_out(account: Account, position: int) -> AccountOut:
    if account.code in DEBIT_NORMAL_CODES:
        posted = account.debits_posted - account.credits_posted
        pending, incoming = account.credits_pending, account.debits_pending
    else:
        posted = account.credits_posted - account.debits_posted
        pending, incoming = account.debits_pending, account.credits_pending
    return AccountOut(
        id=account.id, code=ACCOUNT_CODE_NAMES.get(account.code, str(account.code)), owner_id=account.owner_id,
        closed=account.closed, posted=format_amount(posted), pending=format_amount(pending),
        incoming_pending=format_amount(incoming), available=format_amount(posted - pending),
        debits_posted=format_amount(account.debits_posted), credits_posted=format_amount(account.credits_posted),
        debits_pending=format_amount(account.debits_pending), credits_pending=format_amount(account.credits_pending),
        position=position,
    )


async def visible_account(ledger: LedgerGateway, principal: Principal, account_id: UUID, *,
                          wallets_only: bool) -> Account:
    """The account if this principal may see it; otherwise exactly the answer for a missing account."""
    if principal.is_customer and account_id != wallet_id_for_party(principal.party_id):
        raise account_not_found(account_id)
    account = (await ledger.accounts(account_id)).get(account_id)
    if account is None or (wallets_only and account.code not in WALLET_CODES):
        raise account_not_found(account_id)
    return account


@router.post("/v1/accounts", status_code=201, response_model=AccountCreated, responses=WRITE_PROBLEMS,
             summary="Open a platform account (PIX settlement, fees, escrow...)")
async def open_account(body: AccountIn, principal: AccountOpener, key: IdempotencyKey, ledger: Ledger) -> Response:
    """Opens an account of the chart with the flags its code requires. Wallets come with their party only."""
    code = PLATFORM_CODES[body.code]
    account_id = uuid.uuid5(ACCOUNT_ID_NAMESPACE, ledger_key(principal, key))
    command = OpenAccount(account_id, int(code), int(REQUIRED_FLAGS[code]), reference=body.reference)
    result: AccountResult = await ledger.execute(command)
    position = await ledger.position_of((account_id,), "AccountOpened")
    out = AccountCreated(id=account_id, code=body.code, reference=result.account.reference, position=position)
    return json_response(out, status=201, replayed=result.replayed, location=f"/v1/accounts/{account_id}")


@router.get("/v1/accounts/{account_id}", response_model=AccountOut, responses=READ_PROBLEMS,
            summary="Balances of any account (customers: their own wallet only)")
async def read_account(account_id: UUID, principal: AccountReader, ledger: Ledger) -> Response:
    account = await visible_account(ledger, principal, account_id, wallets_only=False)
    return json_response(account_out(account, ledger.position()), status=200)


@router.get("/v1/wallets/{account_id}", response_model=AccountOut, responses=READ_PROBLEMS,
            summary="Balances of a wallet (customers: their own only)")
async def read_wallet(account_id: UUID, principal: AccountReader, ledger: Ledger) -> Response:
    """Posted, pending and available balances from the writer's consistent state, with the log position."""
    account = await visible_account(ledger, principal, account_id, wallets_only=True)
    return json_response(account_out(account, ledger.position()), status=200)


@router.post("/v1/wallets/{account_id}/close", status_code=200, response_model=WalletClosed,
             responses=WRITE_PROBLEMS, summary="Close a wallet (only at zero balance, nothing held)")
async def close_wallet(account_id: UUID, principal: WalletCloser, _key: OptionalIdempotencyKey,
                       ledger: Ledger) -> Response:
    """Closing is idempotent by nature: closing a closed wallet answers as the first close did (with
    ``Idempotent-Replayed: true``), so the Idempotency-Key is accepted but not required."""
    if principal.is_customer:
        if account_id != wallet_id_for_party(principal.party_id):
            raise account_not_found(account_id)
    else:
        await visible_account(ledger, principal, account_id, wallets_only=True)
    result: AccountResult = await ledger.execute(CloseAccount(account_id))
    position = await ledger.position_of((account_id,), "AccountClosed")
    return json_response(WalletClosed(id=account_id, closed=True, position=position), status=200,
                         replayed=result.replayed)
