"""Many concurrent debits of one wallet on Postgres: the wallet never goes negative and the store agrees.

200 threads each try to move 1.37 out of a wallet holding 100.00 at the same moment (released together by a
barrier). Exactly floor(10000 / 137) = 72 fit (72 x 1.37 = 98.64; a 73rd would need 100.01), every other one is
refused with LEDGER_INSUFFICIENT_FUNDS, and the ledger rebuilt from the store after a restart says the same.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest

from commands.bootstrap import LedgerRuntime, build_ledger
from ledger import errors
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.command_types import transfer_id_for_key
from ledger.model import CreateTransfer, OpenAccount, TransferResult
from ledger.money import parse_amount

pytestmark = pytest.mark.slow

WAIT_S = 30.0
THREADS = 200
BALANCE_CENTAVOS = parse_amount("100.00")
DEBIT_CENTAVOS = parse_amount("1.37")
FITS = BALANCE_CENTAVOS // DEBIT_CENTAVOS


@pytest.fixture
def runtimes(fresh_database: str) -> Iterator[list[LedgerRuntime]]:
    opened: list[LedgerRuntime] = []
    yield opened
    for runtime in opened:
        runtime.close()


def open_account(runtime: LedgerRuntime, code: AccountCode) -> UUID:
    account_id = uuid.uuid4()
    runtime.writer.open_account(OpenAccount(account_id, code, REQUIRED_FLAGS[code]))
    return account_id


def race(commands: list[Any], submit: Callable[[Any], Any]) -> list[Any]:
    """Runs every command on its own thread, all released at once; returns each outcome (result or error)."""
    barrier = threading.Barrier(len(commands))
    outcomes: list[Any] = [None] * len(commands)

    def run(i: int) -> None:
        barrier.wait(timeout=WAIT_S)
        try:
            outcomes[i] = submit(commands[i])
        except errors.LedgerError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(commands))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_concurrent_debits_never_overdraw_and_the_store_agrees(fresh_database: str,
                                                               runtimes: list[LedgerRuntime]) -> None:
    runtime = build_ledger(fresh_database, wait_ms=1.0)
    runtimes.append(runtime)
    settlement = open_account(runtime, AccountCode.PIX_SETTLEMENT)
    wallet = open_account(runtime, AccountCode.INVESTOR_WALLET)
    merchant = open_account(runtime, AccountCode.BORROWER_WALLET)
    runtime.writer.transfer(CreateTransfer("deposit", settlement, wallet, BALANCE_CENTAVOS))
    debits = [CreateTransfer(f"debit-{i}", wallet, merchant, DEBIT_CENTAVOS) for i in range(THREADS)]

    batches = runtime.writer.stats().batches
    outcomes = race(debits, lambda c: runtime.writer.execute(c, timeout_s=WAIT_S))
    # They did arrive together: group commit put many of them in each batch.
    assert runtime.writer.stats().batches - batches < THREADS // 2

    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"TransferResult": FITS, "InsufficientFunds": THREADS - FITS}
    assert FITS == 72
    succeeded = {o.key for o in outcomes if isinstance(o, TransferResult)}
    balances = runtime.writer.accounts(wallet, merchant)
    expected_left = BALANCE_CENTAVOS - FITS * DEBIT_CENTAVOS
    assert expected_left == 136
    assert balances[wallet].credits_posted - balances[wallet].debits_posted == expected_left
    assert balances[merchant].credits_posted == FITS * DEBIT_CENTAVOS
    # Each refusal reported what was left when it was decided: never less than zero, never a full 1.37.
    for o in outcomes:
        if isinstance(o, errors.InsufficientFunds):
            assert 0 <= o.context["available_centavos"] < DEBIT_CENTAVOS
    runtime.writer.state.check_invariants()
    live = runtime.writer.state.fingerprint()
    positions = {o.key: o.position for o in outcomes if isinstance(o, TransferResult)}

    # The store holds exactly the acknowledged debits.
    table = runtime.app.recorder.events_table_name  # type: ignore[attr-defined]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        stored = {row[0] for row in conn.execute(
            f'SELECT originator_id FROM "{table}" WHERE originator_id = ANY(%s)',  # type: ignore[arg-type]
            ([transfer_id_for_key(c.key) for c in debits],),
        )}
    assert stored == {transfer_id_for_key(k) for k in succeeded}

    runtime.close()
    runtimes.remove(runtime)
    restarted = build_ledger(fresh_database, wait_ms=1.0)
    runtimes.append(restarted)
    assert restarted.writer.state.fingerprint() == live
    after = restarted.writer.accounts(wallet)[wallet]
    assert after.credits_posted - after.debits_posted - after.debits_pending == expected_left

    # Every client retrying at once after the restart: the 72 get their original answers, the rest still
    # cannot be afforded (1.36 left), and nothing new is written.
    retried = race(debits, lambda c: restarted.writer.execute(c, timeout_s=WAIT_S))
    for command, outcome in zip(debits, retried, strict=True):
        if command.key in succeeded:
            assert isinstance(outcome, TransferResult) and outcome.replayed
            assert outcome.position == positions[command.key]
        else:
            assert isinstance(outcome, errors.InsufficientFunds)
    assert restarted.writer.state.fingerprint() == live


def test_concurrent_holds_then_concurrent_settles(fresh_database: str, runtimes: list[LedgerRuntime]) -> None:
    runtime = build_ledger(fresh_database, wait_ms=1.0)
    runtimes.append(runtime)
    settlement = open_account(runtime, AccountCode.PIX_SETTLEMENT)
    wallet = open_account(runtime, AccountCode.INVESTOR_WALLET)
    runtime.writer.transfer(CreateTransfer("deposit", settlement, wallet, BALANCE_CENTAVOS))
    holds = [CreateTransfer(f"hold-{i}", wallet, settlement, DEBIT_CENTAVOS, kind="pending") for i in range(THREADS)]
    held = [o for o in race(holds, runtime.writer.execute) if isinstance(o, TransferResult)]
    assert len(held) == FITS
    # Each open hold is posted by one thread and voided by another at the same time: exactly one wins.
    settles = [
        CreateTransfer(f"{kind}-{h.key}", None, None, None, kind=kind, pending_id=h.id)
        for h in held for kind in ("post_pending", "void_pending")
    ]
    outcomes = race(settles, runtime.writer.execute)
    wins = Counter(o.pending_id for o in outcomes if isinstance(o, TransferResult))
    assert set(wins.values()) == {1} and len(wins) == FITS
    losers = Counter(type(o).__name__ for o in outcomes if not isinstance(o, TransferResult))
    assert sum(losers.values()) == FITS
    assert set(losers) <= {"PendingTransferAlreadyPosted", "PendingTransferAlreadyVoided"}
    posted = sum(o.amount_centavos for o in outcomes if isinstance(o, TransferResult) and o.kind == "post_pending")
    account = runtime.writer.accounts(wallet)[wallet]
    assert account.balances() == [0, posted, 0, BALANCE_CENTAVOS]
    runtime.writer.state.check_invariants()
    live = runtime.writer.state.fingerprint()
    assert runtime.app.load_state(use_checkpoint=False).fingerprint() == live
