"""`razao demo`: a short scripted story against the ledger, printed as it happens.

It opens wallets, credits them from the PIX settlement account, moves money, commits a linked batch, posts one
hold partially and voids another, and shows an overdraft being refused — then prints every balance.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from commands.bootstrap import build_ledger
from ledger import errors
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.model import Account, CreateLinkedTransfers, CreateTransfer, OpenAccount
from ledger.money import format_amount, parse_amount
from ledger.writer import LedgerWriter


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run a short scripted scenario against the ledger")
    parser.add_argument("--dsn", help="Postgres DSN of the ledger (default: the configured one)")
    parser.set_defaults(func=run)


def say(text: str) -> None:
    print(f"  • {text}")


def run(args: argparse.Namespace) -> int:
    runtime = build_ledger(args.dsn)
    try:
        story(runtime.writer)
    finally:
        runtime.close()
    return 0


def story(writer: LedgerWriter) -> None:
    run_id = uuid.uuid4().hex[:8]
    key = iter(f"demo-{run_id}-{n}" for n in range(1_000)).__next__
    names: dict[uuid.UUID, str] = {}

    def open_account(name: str, code: AccountCode) -> uuid.UUID:
        account_id = uuid.uuid4()
        writer.open_account(OpenAccount(account_id, code, int(REQUIRED_FLAGS[code]), reference=f"demo:{name}"))
        names[account_id] = name
        return account_id

    def move(debit: uuid.UUID, credit: uuid.UUID, amount: str, **options: Any) -> Any:
        return writer.transfer(CreateTransfer(key(), debit, credit, parse_amount(amount), **options))

    print(f"\nRazão ledger demo (run {run_id})\n")
    settlement = open_account("PIX settlement", AccountCode.PIX_SETTLEMENT)
    fees = open_account("fee revenue", AccountCode.FEE_REVENUE)
    ana = open_account("Ana (investor)", AccountCode.INVESTOR_WALLET)
    bruno = open_account("Bruno (investor)", AccountCode.INVESTOR_WALLET)
    carla = open_account("Carla (borrower)", AccountCode.BORROWER_WALLET)
    say("opened wallets for Ana and Bruno (investors) and Carla (borrower)")

    deposit = move(settlement, ana, "1000.00", code=10, reference="pix:deposit")
    move(settlement, bruno, "250.00", code=10, reference="pix:deposit")
    say(f"PIX deposits credited: Ana R$ 1000.00, Bruno R$ 250.00 (Ana's at log position {deposit.position})")
    replay = writer.transfer(CreateTransfer(deposit.key, settlement, ana, parse_amount("1000.00"), code=10,
                                            reference="pix:deposit"))
    say(f"the same deposit delivered again with its key: replayed={replay.replayed}, nothing moved twice")

    move(ana, bruno, "120.50")
    say("Ana sent Bruno R$ 120.50")

    writer.linked(CreateLinkedTransfers((
        CreateTransfer(key(), bruno, carla, parse_amount("200.00"), code=20, reference="loan:demo"),
        CreateTransfer(key(), carla, fees, parse_amount("4.00"), code=30, reference="loan:demo fee"),
    )))
    say("linked batch: Bruno funded Carla R$ 200.00 and the R$ 4.00 fee was taken, both or neither")

    hold = move(ana, carla, "300.00", kind="pending", timeout_s=3600)
    writer.transfer(CreateTransfer(key(), None, None, parse_amount("180.00"), kind="post_pending",
                                   pending_id=hold.id))
    say("hold of R$ 300.00 on Ana's wallet, posted partially: R$ 180.00 moved, R$ 120.00 released")

    hold2 = move(bruno, carla, "50.00", kind="pending")
    writer.transfer(CreateTransfer(key(), None, None, None, kind="void_pending", pending_id=hold2.id))
    say("hold of R$ 50.00 on Bruno's wallet voided: nothing moved")

    try:
        move(carla, ana, "999.99")
    except errors.LedgerError as exc:
        say(f"Carla tried to send R$ 999.99: refused with {exc.code} ({exc.detail})")

    print()
    print_balances(writer.accounts(*names), names)
    state_ok = "balances" if sum(a.debits_posted for a in writer.accounts(*names).values()) == sum(
        a.credits_posted for a in writer.accounts(*names).values()) else "DOES NOT BALANCE"
    print(f"\nΣ debits = Σ credits over these accounts: the ledger {state_ok}.\n")


def print_balances(accounts: dict[uuid.UUID, Account], names: dict[uuid.UUID, str]) -> None:
    header = f"{'account':<20} {'debits posted':>14} {'credits posted':>15} {'pending':>10} {'balance':>12}"
    print(header)
    print("-" * len(header))
    for account_id, name in names.items():
        a = accounts[account_id]
        credit_normal = a.code != AccountCode.PIX_SETTLEMENT
        balance = a.credits_posted - a.debits_posted if credit_normal else a.debits_posted - a.credits_posted
        pending = a.debits_pending + a.credits_pending
        print(f"{name:<20} {format_amount(a.debits_posted):>14} {format_amount(a.credits_posted):>15} "
              f"{format_amount(pending):>10} {format_amount(balance):>12}")
