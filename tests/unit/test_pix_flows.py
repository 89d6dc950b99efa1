"""The PIX flows of the ledger (ledger.pix_flows) through the real group-commit writer on the in-memory store.

What is checked is what the flows promise: a received Pix is credited once per endToEndId, to the wallet of the
matching deposit or else to suspense with a reconciliation item; a withdrawal holds, then posts or voids exactly
once; a devolução never returns more than the Pix nor after 90 days; every PIX fact is an event that a rebuild
(with or without a checkpoint) turns back into the same state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from ledger import errors
from ledger.application import LedgerApplication, ledger_env
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.events import (
    DepositRequested,
    PixReceived,
    PixRefundConcluded,
    PixRefundRequested,
    ReconciliationItemOpened,
    ReconciliationItemResolved,
    TransferCommitted,
    WithdrawalCompleted,
    WithdrawalFailed,
    WithdrawalRequested,
)
from ledger.inmemory import InMemoryWriterLease, RecorderTransferLookup
from ledger.model import CloseAccount, CreateTransfer, OpenAccount, chain_hash_of
from ledger.pix import InvalidPixKey, RefundExceedsOriginal, RefundWindowClosed
from ledger.pix_flows import (
    AlreadySettled,
    AssignReceivedPix,
    CreditReceivedPix,
    DepositResult,
    NotInSuspense,
    ReadPix,
    ReceivedPixNotFound,
    ReceivedResult,
    RefundInProgress,
    RefundResult,
    RequestDeposit,
    RequestRefund,
    RequestWithdrawal,
    SettleRefund,
    SettleWithdrawal,
    WithdrawalResult,
    deposit_txid,
    payment_id_for,
)
from ledger.pix_state import SETTLEMENT_ACCOUNT_ID, SUSPENSE_ACCOUNT_ID
from ledger.writer import LedgerWriter

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CPF_KEY = "52998224725"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def e2eid(n: int) -> str:
    return f"E30000003202503011200{n:011d}"


class Book:
    def __init__(self, checkpoint_interval: int = 1_000_000, background: bool = False) -> None:
        self.app = LedgerApplication(env=ledger_env())
        self.clock = Clock()
        self.lease = f"pix-{uuid.uuid4()}"
        self.checkpoint_interval = checkpoint_interval
        self.background = background
        self.writer = self._writer().start()
        for account_id, code in ((SETTLEMENT_ACCOUNT_ID, AccountCode.PIX_SETTLEMENT),
                                 (SUSPENSE_ACCOUNT_ID, AccountCode.SUSPENSE)):
            self.writer.open_account(OpenAccount(account_id, code, REQUIRED_FLAGS[code]))

    def _writer(self) -> LedgerWriter:
        return LedgerWriter(self.app, InMemoryWriterLease(self.lease), RecorderTransferLookup(self.app.recorder),
                            clock=self.clock, wait_ms=0.5, checkpoint_interval=self.checkpoint_interval,
                            checkpoint_in_background=self.background)

    def restart(self) -> None:
        self.writer.stop()
        self.writer = self._writer().start()

    def run(self, command: Any) -> Any:
        return self.writer.execute(command, timeout_s=10)

    def wallet(self) -> UUID:
        wallet_id = uuid.uuid4()
        self.writer.open_account(OpenAccount(wallet_id, AccountCode.INVESTOR_WALLET,
                                             REQUIRED_FLAGS[AccountCode.INVESTOR_WALLET]))
        return wallet_id

    def deposit(self, wallet_id: UUID, amount: int, key: str | None = None, psp: str = "primary") -> DepositResult:
        key = key or f"ana:{uuid.uuid4().hex}"
        return self.run(RequestDeposit(key, wallet_id, amount, 3600, deposit_txid(key), psp, "000201...6304ABCD",
                                       "psp.example/qr/v2/abc", NOW))

    def credit(self, n: int, amount: int, txid: str | None, psp: str = "primary", **kw: Any) -> ReceivedResult:
        return self.run(CreditReceivedPix(e2eid(n), psp, amount, NOW, txid, **kw))

    def balance(self, account_id: UUID) -> list[int]:
        return self.writer.accounts(account_id)[account_id].balances()

    def available(self, account_id: UUID) -> int:
        a = self.writer.accounts(account_id)[account_id]
        return a.credits_posted - a.debits_posted - a.debits_pending

    def events(self) -> list[Any]:
        return [event for _, event in self.app.iter_log()]

    def count(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    def check_rebuild(self) -> None:
        """The live state equals a rebuild from the log alone, and one from the latest checkpoint."""
        live = self.writer.state.fingerprint()
        assert self.app.load_state(use_checkpoint=False).fingerprint() == live
        self.app.write_checkpoint(self.writer.state)
        assert self.app.load_state().fingerprint() == live
        self.writer.state.check_invariants()
        assert self.writer.state.customer_funds_segregated()


@pytest.fixture
def book() -> Iterator[Book]:
    book = Book()
    yield book
    book.writer.stop()


# ---- deposits and received Pix ---------------------------------------------------------------------------------


def test_a_matching_pix_credits_the_deposit_wallet_once(book: Book) -> None:
    wallet = book.wallet()
    deposit = book.deposit(wallet, 150_00, key="ana:dep-1")
    assert not deposit.replayed and deposit.deposit.txid == deposit_txid("ana:dep-1")
    assert deposit.deposit.position is not None
    first = book.credit(1, 150_00, deposit.deposit.txid)
    assert not first.replayed and first.received.credit_account_id == wallet
    assert first.received.suspense_reason is None and first.received.deposit_id == deposit.deposit.id
    events_after_first = book.count()
    for _ in range(4):
        again = book.credit(1, 150_00, deposit.deposit.txid, source="reconciliation")
        assert again.replayed and again.received == first.received
    assert book.count() == events_after_first
    assert book.available(wallet) == 150_00
    assert book.balance(SETTLEMENT_ACCOUNT_ID)[1] == 150_00
    types = [type(e).__name__ for e in book.events()[-3:]]
    assert types == ["DepositRequested", "TransferCommitted", "PixReceived"]
    snapshot = book.run(ReadPix(deposits=(deposit.deposit.id,), received=(e2eid(1),)))
    assert snapshot.deposits[deposit.deposit.id].paid_by == e2eid(1)
    book.check_rebuild()


def test_the_same_pix_in_one_batch_is_credited_once(book: Book) -> None:
    wallet = book.wallet()
    txid = book.deposit(wallet, 10_00).deposit.txid
    futures = [book.writer.submit(CreditReceivedPix(e2eid(7), "primary", 10_00, NOW, txid)) for _ in range(5)]
    results = [f.result(timeout=10) for f in futures]
    assert sum(not r.replayed for r in results) == 1
    assert book.available(wallet) == 10_00
    assert sum(isinstance(e, PixReceived) for e in book.events()) == 1


@pytest.mark.parametrize(("case", "reason"), [
    ("no_txid", "NO_TXID"), ("unknown", "UNKNOWN_TXID"), ("other_psp", "PSP_MISMATCH"),
    ("amount", "AMOUNT_MISMATCH"), ("paid_twice", "TXID_ALREADY_PAID"), ("closed", "WALLET_CLOSED"),
])
def test_a_pix_we_cannot_match_goes_to_suspense_with_an_item(book: Book, case: str, reason: str) -> None:
    wallet = book.wallet()
    txid: str | None = book.deposit(wallet, 50_00).deposit.txid
    amount, psp = 50_00, "primary"
    if case == "no_txid":
        txid = None
    elif case == "unknown":
        txid = "x" * 30
    elif case == "other_psp":
        psp = "secondary"
    elif case == "amount":
        amount = 49_99
    elif case == "paid_twice":
        book.credit(90, 50_00, txid)
    elif case == "closed":
        book.writer.close_account(CloseAccount(wallet))
    before = book.available(wallet)
    result = book.credit(1, amount, txid, psp=psp)
    assert result.received.credit_account_id == SUSPENSE_ACCOUNT_ID
    assert result.received.suspense_reason == reason and result.received.item == "open"
    assert book.available(wallet) == before
    assert book.balance(SUSPENSE_ACCOUNT_ID)[3] == amount
    opened = [e for e in book.events() if isinstance(e, ReconciliationItemOpened)]
    assert [(e.end_to_end_id, e.reason) for e in opened] == [(e2eid(1), reason)]
    assert e2eid(1) in book.run(ReadPix(open_items=True)).received
    book.check_rebuild()


def test_deposit_idempotency_and_validation(book: Book) -> None:
    wallet = book.wallet()
    first = book.deposit(wallet, 20_00, key="k:1")
    assert book.deposit(wallet, 20_00, key="k:1") == DepositResult(first.deposit, True)
    with pytest.raises(errors.IdempotencyConflict) as conflict:
        book.deposit(wallet, 21_00, key="k:1")
    assert conflict.value.context["field"] == "amount_centavos"
    with pytest.raises(errors.InvalidRequest):  # the txid is the key's
        book.run(RequestDeposit("k:2", wallet, 1_00, 60, deposit_txid("k:3"), "primary", "x", "y", NOW))
    with pytest.raises(errors.AccountNotFound):  # the settlement account is no customer wallet
        book.deposit(SETTLEMENT_ACCOUNT_ID, 1_00)
    with pytest.raises(errors.AmountMustBePositive):
        book.deposit(wallet, 0)


# ---- withdrawals -------------------------------------------------------------------------------------------------


def funded(book: Book, amount: int, n: int = 999) -> UUID:
    wallet = book.wallet()
    book.credit(n, amount, book.deposit(wallet, amount).deposit.txid)
    return wallet


def test_a_withdrawal_holds_then_posts_once(book: Book) -> None:
    wallet = funded(book, 100_00)
    requested = book.run(RequestWithdrawal("ana:w1", wallet, 60_00, CPF_KEY))
    withdrawal = requested.withdrawal
    assert withdrawal.status == "PROCESSING" and withdrawal.payment_id == payment_id_for(withdrawal.id)
    assert (withdrawal.pix_key_type, withdrawal.pix_key) == ("CPF", CPF_KEY)
    assert book.available(wallet) == 40_00 and book.balance(wallet)[0] == 60_00
    assert book.run(RequestWithdrawal("ana:w1", wallet, 60_00, CPF_KEY)).replayed
    with pytest.raises(errors.IdempotencyConflict):
        book.run(RequestWithdrawal("ana:w1", wallet, 60_00, "ana@example.com"))
    open_work = book.run(ReadPix(open_work=True))
    assert list(open_work.withdrawals) == [withdrawal.id]
    done = book.run(SettleWithdrawal(withdrawal.id, "CONFIRMED", "primary", e2eid(5)))
    assert done.withdrawal.status == "COMPLETED" and done.withdrawal.end_to_end_id == e2eid(5)
    assert book.balance(wallet) == [0, 60_00, 0, 100_00]
    assert book.run(SettleWithdrawal(withdrawal.id, "CONFIRMED", "primary", e2eid(5))).replayed
    with pytest.raises(AlreadySettled):
        book.run(SettleWithdrawal(withdrawal.id, "FAILED", "primary", reason="late"))
    assert book.run(ReadPix(open_work=True)).withdrawals == {}
    kinds = [type(e) for e in book.events() if isinstance(e, WithdrawalRequested | WithdrawalCompleted)]
    assert kinds == [WithdrawalRequested, WithdrawalCompleted]
    book.check_rebuild()


def test_a_failed_withdrawal_releases_the_hold(book: Book) -> None:
    wallet = funded(book, 30_00)
    withdrawal = book.run(RequestWithdrawal("ana:w2", wallet, 30_00, "+5511987654321")).withdrawal
    with pytest.raises(errors.InsufficientFunds):
        book.run(RequestWithdrawal("ana:w3", wallet, 1, CPF_KEY))
    failed = book.run(SettleWithdrawal(withdrawal.id, "FAILED", "secondary", reason="Chave não encontrada"))
    assert failed.withdrawal.status == "FAILED" and failed.withdrawal.reason == "Chave não encontrada"
    assert book.available(wallet) == 30_00
    assert any(isinstance(e, WithdrawalFailed) for e in book.events())
    book.check_rebuild()


def test_withdrawal_refusals_record_nothing(book: Book) -> None:
    wallet = funded(book, 10_00)
    before = book.count()
    with pytest.raises(InvalidPixKey):
        book.run(RequestWithdrawal("k:bad", wallet, 1_00, "12345678900"))  # wrong CPF check digits
    with pytest.raises(errors.InsufficientFunds):
        book.run(RequestWithdrawal("k:much", wallet, 10_01, CPF_KEY))
    with pytest.raises(errors.AccountNotFound):
        book.run(RequestWithdrawal("k:none", uuid.uuid4(), 1_00, CPF_KEY))
    assert book.count() == before
    assert book.writer.state.pix.withdrawals == {}


# ---- devoluções --------------------------------------------------------------------------------------------------


def test_devolucoes_never_above_the_original_and_followed_to_the_end(book: Book) -> None:
    wallet = funded(book, 100_00)
    first = book.run(RequestRefund("ops:r1", e2eid(999), 70_00, "estorno", "ops"))
    assert first.refund.status == "EM_PROCESSAMENTO" and first.refund.source_account_id == wallet
    assert book.available(wallet) == 30_00
    with pytest.raises(RefundExceedsOriginal):
        book.run(RequestRefund("ops:r2", e2eid(999), 30_01, None, "ops"))
    refused = book.run(SettleRefund(first.refund.id, "NAO_REALIZADO", reason="recusada"))
    assert refused.refund.status == "NAO_REALIZADO" and book.available(wallet) == 100_00
    second = book.run(RequestRefund("ops:r2", e2eid(999), 100_00, None, "ops"))
    returned = book.run(SettleRefund(second.refund.id, "DEVOLVIDO", return_id="D" + "1" * 31))
    assert returned.refund.status == "DEVOLVIDO" and book.available(wallet) == 0
    assert book.run(SettleRefund(second.refund.id, "DEVOLVIDO", return_id="D" + "1" * 31)).replayed
    with pytest.raises(AlreadySettled):
        book.run(SettleRefund(second.refund.id, "NAO_REALIZADO"))
    with pytest.raises(RefundExceedsOriginal):
        book.run(RequestRefund("ops:r3", e2eid(999), 1, None, "ops"))
    with pytest.raises(ReceivedPixNotFound):
        book.run(RequestRefund("ops:r4", e2eid(12345), 1, None, "ops"))
    snapshot = book.run(ReadPix(received=(e2eid(999),)))
    assert {r.status for r in snapshot.refunds.values()} == {"NAO_REALIZADO", "DEVOLVIDO"}
    kinds = [type(e).__name__ for e in book.events() if isinstance(e, PixRefundRequested | PixRefundConcluded)]
    assert kinds == ["PixRefundRequested", "PixRefundConcluded"] * 2
    book.check_rebuild()


def test_no_devolucao_after_90_days(book: Book) -> None:
    funded(book, 5_00)
    book.clock.now = NOW + timedelta(days=90, seconds=1)
    with pytest.raises(RefundWindowClosed):
        book.run(RequestRefund("ops:late", e2eid(999), 1_00, None, "ops"))
    book.clock.now = NOW + timedelta(days=90)
    assert isinstance(book.run(RequestRefund("ops:in-time", e2eid(999), 1_00, None, "ops")), RefundResult)


def test_suspense_items_are_resolved_by_refund_or_assignment(book: Book) -> None:
    book.credit(1, 40_00, None)
    refund = book.run(RequestRefund("ops:s1", e2eid(1), 40_00, None, "ops")).refund
    assert refund.source_account_id == SUSPENSE_ACCOUNT_ID
    with pytest.raises(RefundInProgress):
        book.run(AssignReceivedPix("ops:a0", e2eid(1), book.wallet()))
    book.run(SettleRefund(refund.id, "DEVOLVIDO"))
    assert book.run(ReadPix(received=(e2eid(1),))).received[e2eid(1)].item == "refunded"

    book.credit(2, 25_00, "unknowntxid")
    partial = book.run(RequestRefund("ops:s2", e2eid(2), 5_00, None, "ops")).refund
    book.run(SettleRefund(partial.id, "DEVOLVIDO"))
    wallet = book.wallet()
    assigned = book.run(AssignReceivedPix("ops:a1", e2eid(2), wallet))
    assert assigned.received.item == "assigned" and assigned.received.credit_account_id == wallet
    assert book.available(wallet) == 20_00 and book.balance(SUSPENSE_ACCOUNT_ID) == [0, 65_00, 0, 65_00]
    assert book.run(AssignReceivedPix("ops:a1", e2eid(2), wallet)).replayed
    with pytest.raises(NotInSuspense):
        book.run(AssignReceivedPix("ops:a2", e2eid(2), book.wallet()))
    later = book.run(RequestRefund("ops:s3", e2eid(2), 20_00, None, "ops")).refund
    assert later.source_account_id == wallet  # after assignment the money is the wallet's
    resolutions = [e.resolution for e in book.events() if isinstance(e, ReconciliationItemResolved)]
    assert resolutions == ["refunded", "assigned"]
    assert book.run(ReadPix(open_items=True)).received == {}
    book.check_rebuild()


# ---- the log ---------------------------------------------------------------------------------------------------


def test_pix_events_are_chained_and_survive_restarts_and_checkpoints() -> None:
    book = Book(checkpoint_interval=5)
    try:
        wallet = funded(book, 80_00)
        withdrawal = book.run(RequestWithdrawal("ana:w", wallet, 30_00, "ana@example.com")).withdrawal
        book.credit(3, 1_00, None)
        book.restart()  # from a checkpoint (every 5 events) plus the tail
        assert book.writer.state.pix.withdrawals[withdrawal.id].status == "PROCESSING"
        assert book.credit(3, 1_00, None).replayed
        book.run(SettleWithdrawal(withdrawal.id, "CONFIRMED", "primary"))
        previous = "0" * 64
        for event in book.events():
            assert event.chain_hash == chain_hash_of(previous, event)
            previous = event.chain_hash
        assert any(isinstance(e, DepositRequested) for e in book.events())
        assert book.app.latest_checkpoint() is not None
        book.check_rebuild()
    finally:
        book.writer.stop()


def test_a_refused_pix_command_does_not_fail_its_batch_mates(book: Book) -> None:
    wallet = funded(book, 10_00)
    futures = [
        book.writer.submit(RequestWithdrawal("k:ok", wallet, 4_00, CPF_KEY)),
        book.writer.submit(RequestWithdrawal("k:too-much", wallet, 7_00, CPF_KEY)),
        book.writer.submit(CreateTransfer("k:t", SETTLEMENT_ACCOUNT_ID, wallet, 1_00)),
    ]
    assert isinstance(futures[0].result(timeout=10), WithdrawalResult)
    with pytest.raises(errors.InsufficientFunds):
        futures[1].result(timeout=10)
    assert futures[2].result(timeout=10).amount_centavos == 1_00
    assert book.available(wallet) == 7_00
    assert sum(isinstance(e, TransferCommitted) and e.kind == "pending" for e in book.events()) == 1
    book.check_rebuild()


def test_checkpoint_rows_are_the_generic_encoding_of_every_record(book: Book) -> None:
    from ledger.pix_state import record_row

    wallet = funded(book, 50_00)
    book.run(RequestWithdrawal("k:w", wallet, 10_00, CPF_KEY))
    book.run(RequestRefund("k:r", e2eid(999), 5_00, "parcial", "ops"))
    book.credit(1, 1_00, None)
    pix = book.writer.state.pix
    fast = pix.rows()
    for kind, table in (("deposits", pix.deposits), ("received", pix.received), ("withdrawals", pix.withdrawals),
                        ("refunds", pix.refunds)):
        assert table and fast[kind] == [record_row(record) for record in table.values()], kind


def test_checkpoints_built_in_the_background_restore_the_same_state() -> None:
    book = Book(checkpoint_interval=4, background=True)
    try:
        wallets = [funded(book, 10_00 + n, n) for n in range(3)]
        for n, wallet in enumerate(wallets):
            book.run(RequestWithdrawal(f"k:w{n}", wallet, 5_00, CPF_KEY))
        live = book.writer.state.fingerprint()
        book.writer.stop()  # waits for a checkpoint being saved
        checkpoint = book.app.latest_checkpoint()
        assert checkpoint is not None and checkpoint.pix["withdrawals"]
        assert book.app.load_state().fingerprint() == live
        book.writer = book._writer().start()
    finally:
        book.writer.stop()
