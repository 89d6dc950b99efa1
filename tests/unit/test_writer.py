"""The group-commit writer over the in-memory (POPO) event store: no I/O, real threads.

What is checked here is what a caller sees: each command's answer through its future, the events the store holds
afterwards, and the state a restart rebuilds from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent

import ledger.command_types
import ledger.model
import ledger.writer
from ledger import errors
from ledger.application import CHECKPOINT_ID, LedgerApplication, ledger_env
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.command_types import transfer_id_for_key
from ledger.events import LedgerEvent, PendingTransferExpired, PendingTransferResolved, TransferCommitted
from ledger.index import IdFilter
from ledger.inmemory import InMemoryWriterLease, RecorderTransferLookup
from ledger.limits import (
    AMOUNT_CENTAVOS_MAX,
    BALANCE_CENTAVOS_MAX,
    LINKED_TRANSFERS_MAX,
    TRANSFERS_PER_COMMAND_MAX,
)
from ledger.model import (
    AccountResult,
    CloseAccount,
    CreateLinkedTransfers,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    TransferResult,
    chain_hash_of,
)
from ledger.parties import RegisterParty, party_id_for_key, wallet_id_for_party
from ledger.reply import Reply
from ledger.writer import LedgerWriter, ReadAccounts

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WAIT_S = 10.0

WALLET = AccountCode.INVESTOR_WALLET
SETTLEMENT = AccountCode.PIX_SETTLEMENT


class Clock:
    """A settable clock. ``hold()`` makes the writer block in its next batch until ``release()``.

    Holding lets a test queue several commands while the writer is busy, so that they are all collected into
    the one next batch (group commit), deterministically.
    """

    def __init__(self, now: datetime = START) -> None:
        self.now = now
        self._open = threading.Event()
        self._open.set()
        self.blocked = threading.Event()

    def __call__(self) -> datetime:
        # Only block a batch being processed, not the idle expiry scan, so the held batch is a known one.
        if not self._open.is_set() and sys._getframe(1).f_code.co_name == "_decide_chunk":
            self.blocked.set()
            assert self._open.wait(WAIT_S), "the clock was held too long"
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def hold(self) -> None:
        self.blocked.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()


class Ledger:
    """A writer on an in-memory application, with helpers to open and fund accounts."""

    def __init__(self, app: LedgerApplication, clock: Clock, lease_name: str, **options: Any) -> None:
        self.app, self.clock, self.lease_name, self.options = app, clock, lease_name, options
        self.writer = self._writer().start()

    def _writer(self) -> LedgerWriter:
        return LedgerWriter(self.app, InMemoryWriterLease(self.lease_name), RecorderTransferLookup(self.app.recorder),
                            clock=self.clock, wait_ms=1.0, **self.options)

    def restart(self) -> None:
        self.writer.stop()
        self.writer = self._writer().start()

    def open(self, code: AccountCode = WALLET, ledger_id: int = 986) -> UUID:
        account_id = uuid.uuid4()
        self.writer.open_account(OpenAccount(account_id, code, REQUIRED_FLAGS[code], ledger_id))
        return account_id

    def event_count(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    def events(self) -> list[LedgerEvent]:
        return [event for _, event in self.app.iter_log()]

    def account(self, account_id: UUID) -> list[int]:
        return self.writer.accounts(account_id)[account_id].balances()

    def available(self, account_id: UUID) -> int:
        a = self.writer.accounts(account_id)[account_id]
        return a.credits_posted - a.debits_posted - a.debits_pending

    def refuse(self, command: Any, error: type[errors.LedgerError]) -> errors.LedgerError:
        """Asserts the command is refused with exactly ``error`` and that nothing was recorded."""
        before = self.event_count()
        with pytest.raises(error) as caught:
            self.writer.execute(command, timeout_s=WAIT_S)
        assert type(caught.value) is error, caught.value
        assert self.event_count() == before
        return caught.value


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app() -> LedgerApplication:
    return LedgerApplication(env=ledger_env())


@pytest.fixture
def book(app: LedgerApplication, clock: Clock) -> Iterator[Ledger]:
    # The in-memory lease is process wide: a unique name keeps tests independent.
    book = Ledger(app, clock, f"test-{uuid.uuid4()}")
    yield book
    clock.release()
    book.writer.stop()


@pytest.fixture
def funded(book: Ledger) -> tuple[Ledger, UUID, UUID, UUID]:
    """Settlement, a wallet with 100.00 and an empty wallet."""
    settlement, rich, poor = book.open(SETTLEMENT), book.open(WALLET), book.open(WALLET)
    book.writer.transfer(CreateTransfer("deposit", settlement, rich, 10_000))
    return book, settlement, rich, poor


def t(key: str, debit: UUID | None, credit: UUID | None, amount: int | None, **kw: Any) -> CreateTransfer:
    return CreateTransfer(key, debit, credit, amount, **kw)


def post(key: str, pending_key: str, amount: int | None = None) -> CreateTransfer:
    return CreateTransfer(key, None, None, amount, kind="post_pending", pending_id=transfer_id_for_key(pending_key))


def void(key: str, pending_key: str) -> CreateTransfer:
    return CreateTransfer(key, None, None, None, kind="void_pending", pending_id=transfer_id_for_key(pending_key))


def outcome(future: Future[Any]) -> Any:
    """The future's result, or its exception."""
    try:
        return future.result(timeout=WAIT_S)
    except errors.LedgerError as exc:
        return exc


# ---- acknowledged results -------------------------------------------------------------------------------------------


def test_results_carry_the_log_position_of_their_event(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    result = book.writer.transfer(t("pay", rich, poor, 1_000, reference="loan:1"))
    assert isinstance(result, TransferResult)
    assert (result.key, result.kind, result.amount_centavos, result.replayed) == ("pay", "single", 1_000, False)
    assert result.id == transfer_id_for_key("pay")
    assert result.timestamp == START
    assert result.position == book.event_count()
    [notification] = book.app.recorder.select_notifications(result.position, limit=1)
    assert notification.originator_id == result.id
    opened = book.writer.open_account(OpenAccount(uuid.uuid4(), WALLET, REQUIRED_FLAGS[WALLET]))
    assert isinstance(opened, AccountResult) and opened.position == book.event_count()
    assert book.account(rich) == [0, 1_000, 0, 10_000]
    assert book.account(poor) == [0, 0, 0, 1_000]
    assert book.account(settlement) == [0, 10_000, 0, 0]


def test_submit_after_stop_is_refused_as_unavailable(book: Ledger) -> None:
    book.writer.stop()
    with pytest.raises(errors.LedgerUnavailable):
        book.writer.submit(ReadAccounts(())).result(timeout=WAIT_S)


def test_a_second_writer_cannot_take_a_held_lease(book: Ledger) -> None:
    other = LedgerWriter(book.app, InMemoryWriterLease(book.lease_name), RecorderTransferLookup(book.app.recorder))
    with pytest.raises(errors.WriterBusy):
        other.start()
    book.writer.stop()
    other.start()  # released by stop()
    other.stop()


# ---- refusals --------------------------------------------------------------------------------------------------------

REFUSALS: list[tuple[str, type[errors.LedgerError]]] = [
    ("zero", errors.AmountMustBePositive),
    ("negative", errors.AmountMustBePositive),
    ("too-large", errors.AmountTooLarge),
    ("unknown-debit", errors.AccountNotFound),
    ("unknown-credit", errors.AccountNotFound),
    ("closed", errors.AccountClosed),
    ("same-account", errors.AccountsMustBeDifferent),
    ("ledger-mismatch", errors.LedgerMismatch),
    ("insufficient", errors.InsufficientFunds),
    ("post-more-than-pending", errors.ExceedsPendingAmount),
    ("post-voided", errors.PendingTransferAlreadyVoided),
    ("post-posted", errors.PendingTransferAlreadyPosted),
    ("void-posted", errors.PendingTransferAlreadyPosted),
    ("void-voided", errors.PendingTransferAlreadyVoided),
    ("post-unknown", errors.PendingTransferNotFound),
    ("post-single", errors.PendingTransferNotPending),
]


def refusal_command(name: str, settlement: UUID, rich: UUID, poor: UUID, closed: UUID, dollars: UUID) -> CreateTransfer:
    return {
        "zero": t("r", rich, poor, 0),
        "negative": t("r", rich, poor, -100),
        "too-large": t("r", settlement, poor, AMOUNT_CENTAVOS_MAX + 1),
        "unknown-debit": t("r", uuid.uuid4(), poor, 100),
        "unknown-credit": t("r", rich, uuid.uuid4(), 100),
        "closed": t("r", rich, closed, 100),
        "same-account": t("r", rich, rich, 100),
        "ledger-mismatch": t("r", rich, dollars, 100),
        "insufficient": t("r", rich, poor, 10_001 - 3_000),  # 30.00 of the 100.00 is on hold
        "post-more-than-pending": post("r", "hold", 3_001),
        "post-voided": post("r", "voided"),
        "post-posted": post("r", "posted"),
        "void-posted": void("r", "posted"),
        "void-voided": void("r", "voided"),
        "post-unknown": CreateTransfer("r", None, None, None, kind="post_pending", pending_id=uuid.uuid4()),
        "post-single": post("r", "deposit"),
    }[name]


@pytest.mark.parametrize(("name", "error"), REFUSALS, ids=[name for name, _ in REFUSALS])
def test_each_operating_error_is_typed_and_records_nothing(
    funded: tuple[Ledger, UUID, UUID, UUID], name: str, error: type[errors.LedgerError]
) -> None:
    book, settlement, rich, poor = funded
    closed = book.open(WALLET)
    book.writer.close_account(CloseAccount(closed))
    dollars = book.open(AccountCode.SUSPENSE, ledger_id=840)
    for key in ("hold", "voided", "posted"):
        book.writer.transfer(t(key, rich, poor, 1_000 if key != "hold" else 3_000, kind="pending"))
    book.writer.transfer(void("void-it", "voided"))
    book.writer.transfer(post("post-it", "posted"))
    # rich: 100.00 - 30.00 held - 10.00 posted = 60.00 available
    book.writer.transfer(t("spend-more", rich, poor, 1_000))
    before = book.writer.state.fingerprint()
    command = refusal_command(name, settlement, rich, poor, closed, dollars)
    err = book.refuse(command, error)
    assert err.code == error.code and err.to_dict()["code"] == error.code
    assert book.writer.state.fingerprint() == before
    # The refused key was not used up.
    assert book.writer.state.indexed(transfer_id_for_key("r")) is None


def test_a_refused_key_can_be_used_once_the_transfer_is_possible(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    command = t("pay-big", rich, poor, 15_000)
    book.refuse(command, errors.InsufficientFunds)
    book.writer.transfer(t("top-up", settlement, rich, 5_000))
    result = book.writer.transfer(command)
    assert result.replayed is False and result.position == book.event_count()
    assert book.available(rich) == 0


def test_overflow_is_refused_at_the_transfer_that_would_pass_the_balance_limit(book: Ledger) -> None:
    settlement, suspense = book.open(SETTLEMENT), book.open(AccountCode.SUSPENSE)
    first = CreateLinkedTransfers(tuple(t(f"a{i}", settlement, suspense, AMOUNT_CENTAVOS_MAX)
                                        for i in range(LINKED_TRANSFERS_MAX)))
    assert len(book.writer.linked(first)) == LINKED_TRANSFERS_MAX
    second = CreateLinkedTransfers(tuple(t(f"b{i}", settlement, suspense, AMOUNT_CENTAVOS_MAX)
                                         for i in range(LINKED_TRANSFERS_MAX)))
    err = book.refuse(second, errors.LinkedBatchFailed)
    fits = BALANCE_CENTAVOS_MAX // AMOUNT_CENTAVOS_MAX - LINKED_TRANSFERS_MAX
    [failure] = [r for r in err.context["results"] if r["code"] != errors.LinkedTransferFailed.code]
    assert failure["index"] == fits
    assert failure["code"] == errors.Overflow.code
    # The transfers before the failing one fit; one more does not.
    fitting = CreateLinkedTransfers(tuple(t(f"c{i}", settlement, suspense, AMOUNT_CENTAVOS_MAX) for i in range(fits)))
    assert len(book.writer.linked(fitting)) == fits
    err = book.refuse(t("one-more", settlement, suspense, AMOUNT_CENTAVOS_MAX), errors.Overflow)
    assert err.context["account_id"] in (str(settlement), str(suspense))
    book.writer.state.check_invariants()


# ---- idempotency -----------------------------------------------------------------------------------------------------


def test_same_key_same_payload_returns_the_original_result(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    command = t("all-in", rich, poor, 10_000, code=20, reference="loan:7")
    original = book.writer.transfer(command)
    count = book.event_count()
    clock_before = book.clock.now
    book.clock.advance(hours=1)
    # The wallet is now empty: deciding again would refuse; a replay must not decide again.
    replay = book.writer.transfer(dataclasses.replace(command))
    assert replay.replayed is True and original.replayed is False
    assert dataclasses.replace(replay, replayed=False) == original
    assert replay.position == original.position and replay.timestamp == clock_before
    assert book.event_count() == count
    assert book.available(rich) == 0


FIELD_CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("kind", {"kind": "pending"}),
    ("debit_account_id", {"debit_account_id": "settlement"}),
    ("credit_account_id", {"credit_account_id": "settlement"}),
    ("amount_centavos", {"amount_centavos": 101}),
    ("pending_id", {"pending_id": UUID(int=7)}),
    ("timeout_s", {"timeout_s": 30}),
    ("ledger", {"ledger": 840}),
    ("code", {"code": 22}),
    ("reference", {"reference": "another"}),
]


@pytest.mark.parametrize(("field", "change"), FIELD_CHANGES, ids=[f for f, _ in FIELD_CHANGES])
def test_same_key_other_payload_is_a_conflict_naming_the_field(
    funded: tuple[Ledger, UUID, UUID, UUID], field: str, change: dict[str, Any]
) -> None:
    book, settlement, rich, poor = funded
    original = t("pay", rich, poor, 100, reference="ref")
    book.writer.transfer(original)
    changed = dataclasses.replace(original, **{k: settlement if v == "settlement" else v for k, v in change.items()})
    err = book.refuse(changed, errors.IdempotencyConflict)
    assert err.context["field"] == field
    assert err.to_dict()["code"] == "LEDGER_IDEMPOTENCY_CONFLICT"


def test_settle_replays_and_conflicts(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.writer.transfer(t("hold", rich, poor, 5_000, kind="pending"))
    book.writer.transfer(t("hold-2", rich, poor, 1_000, kind="pending"))
    first = book.writer.transfer(post("post", "hold", 2_000))
    again = book.writer.transfer(post("post", "hold", 2_000))
    assert again.replayed and again.position == first.position and again.amount_centavos == 2_000
    assert book.refuse(post("post", "hold", 2_001), errors.IdempotencyConflict).context["field"] == "amount_centavos"
    assert book.refuse(post("post", "hold"), errors.IdempotencyConflict).context["field"] == "amount_centavos"
    assert book.refuse(post("post", "hold-2", 2_000), errors.IdempotencyConflict).context["field"] == "pending_id"
    assert book.refuse(void("post", "hold"), errors.IdempotencyConflict).context["field"] == "kind"


def test_the_same_key_twice_in_one_batch_commits_once(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    command = t("twice", rich, poor, 6_000)
    count = book.event_count()
    with held(book):
        futures = [book.writer.submit(command), book.writer.submit(command),
                   book.writer.submit(dataclasses.replace(command, amount_centavos=1))]
    first, second, conflict = (outcome(f) for f in futures)
    assert (first.replayed, second.replayed) == (False, True)
    assert first.position == second.position == count + 1
    assert isinstance(conflict, errors.IdempotencyConflict) and conflict.context["field"] == "amount_centavos"
    assert book.event_count() == count + 1
    assert book.available(rich) == 4_000


def test_account_open_is_idempotent_and_conflicts_on_other_fields(book: Ledger) -> None:
    account_id = uuid.uuid4()
    command = OpenAccount(account_id, WALLET, REQUIRED_FLAGS[WALLET], reference="investor:1")
    book.writer.open_account(command)
    count = book.event_count()
    again = book.writer.open_account(command)
    assert again.replayed and again.account.id == account_id
    err = book.refuse(dataclasses.replace(command, code=AccountCode.BORROWER_WALLET), errors.IdempotencyConflict)
    assert err.context["field"] == "code"
    assert book.event_count() == count


# ---- linked batches -------------------------------------------------------------------------------------------------


def test_linked_batch_commits_all_together_in_order(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    escrow = book.open(AccountCode.LOAN_ESCROW)
    count = book.event_count()
    # Each transfer sees the ones before it: poor is funded by the first and spends in the second.
    batch = CreateLinkedTransfers((
        t("l1", settlement, poor, 2_000), t("l2", poor, escrow, 2_000), t("l3", rich, escrow, 500),
    ))
    results = book.writer.linked(batch)
    assert [r.key for r in results] == ["l1", "l2", "l3"]
    assert [r.position for r in results] == [count + 1, count + 2, count + 3]
    assert all(not r.replayed for r in results)
    stored = book.events()[count:]
    assert {e.linked_batch_id for e in stored if isinstance(e, TransferCommitted)} == {
        uuid.uuid5(ledger.command_types.TRANSFER_ID_NAMESPACE, "linked:l1")
    }
    assert book.account(escrow) == [0, 0, 0, 2_500]
    # The replayed batch returns the originals.
    again = book.writer.linked(batch)
    assert [r.replayed for r in again] == [True, True, True]
    assert [dataclasses.replace(r, replayed=False) for r in again] == results
    assert book.event_count() == count + 3


def test_linked_batch_fails_as_a_whole_reporting_the_failing_index(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    before = book.writer.state.fingerprint()
    batch = CreateLinkedTransfers((
        t("l1", rich, poor, 6_000), t("l2", settlement, poor, 100), t("l3", rich, poor, 4_001), t("l4", poor, rich, 1),
    ))
    err = book.refuse(batch, errors.LinkedBatchFailed)
    assert err.code == "LEDGER_LINKED_BATCH_FAILED"
    results = err.context["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["code"] for r in results] == [
        "LEDGER_LINKED_TRANSFER_FAILED", "LEDGER_LINKED_TRANSFER_FAILED", "LEDGER_INSUFFICIENT_FUNDS",
        "LEDGER_LINKED_TRANSFER_FAILED",
    ]
    assert results[2]["account_id"] == str(rich)
    assert book.writer.state.fingerprint() == before
    # None of its keys were used up: each can now be committed on its own.
    for key in ("l1", "l2", "l3", "l4"):
        assert book.writer.state.indexed(transfer_id_for_key(key)) is None
    assert book.writer.transfer(t("l1", rich, poor, 6_000)).replayed is False


def test_linked_batch_with_a_pending_and_its_post(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    batch = CreateLinkedTransfers((t("h", rich, poor, 3_000, kind="pending"), post("p", "h", 1_000)))
    results = book.writer.linked(batch)
    assert [r.kind for r in results] == ["pending", "post_pending"]
    assert book.account(rich) == [0, 1_000, 0, 10_000]
    # A failing batch releases a hold it created and settled.
    err = book.refuse(
        CreateLinkedTransfers((t("h2", rich, poor, 3_000, kind="pending"), void("v2", "h2"), t("x", rich, rich, 1))),
        errors.LinkedBatchFailed,
    )
    assert err.context["results"][2]["code"] == errors.AccountsMustBeDifferent.code
    assert transfer_id_for_key("h2") not in book.writer.state.pending
    assert book.available(rich) == 9_000


def test_linked_batch_partly_committed_before_is_a_key_conflict(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.writer.transfer(t("l2", rich, poor, 100))
    err = book.refuse(CreateLinkedTransfers((t("l1", rich, poor, 100), t("l2", rich, poor, 100))),
                      errors.IdempotencyConflict)
    assert err.context["field"] == "key" and err.context["key"] == "l2"


def test_independent_transfers_each_get_their_own_answer(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    count = book.event_count()
    command = CreateTransfers((
        t("m1", settlement, poor, 2_000),   # funds poor ...
        t("m2", poor, rich, 1_500),         # ... so this one, after it, is affordable
        t("m3", poor, rich, 600),           # poor has 500 left: refused alone
        t("m4", rich, rich, 1),             # same accounts: refused alone
        t("m5", rich, poor, 100),
    ))
    outcomes = book.writer.execute(command, timeout_s=WAIT_S)
    assert [type(o) for o in outcomes] == [TransferResult, TransferResult, errors.InsufficientFunds,
                                           errors.AccountsMustBeDifferent, TransferResult]
    assert [o.position for o in outcomes if isinstance(o, TransferResult)] == [count + 1, count + 2, count + 3]
    assert book.event_count() == count + 3  # the refused ones recorded nothing
    assert book.available(poor) == 2_000 - 1_500 + 100
    assert book.available(rich) == 10_000 + 1_500 - 100
    # The same command again: the committed ones replay, the refused ones are decided afresh. m3 now commits
    # (m5 left poor with 600), m4 is refused again.
    again = book.writer.execute(command, timeout_s=WAIT_S)
    assert [type(o) for o in again] == [TransferResult, TransferResult, TransferResult,
                                        errors.AccountsMustBeDifferent, TransferResult]
    assert [o.replayed for o in again if isinstance(o, TransferResult)] == [True, True, False, True]
    assert [dataclasses.replace(o, replayed=False) for o in (again[0], again[1], again[4])] == [
        o for o in outcomes if isinstance(o, TransferResult)]
    assert again[2].position == count + 4
    assert book.event_count() == count + 4
    assert book.available(poor) == 0


def test_independent_transfers_with_one_key_twice(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    count = book.event_count()
    outcomes = book.writer.execute(CreateTransfers((
        t("d", rich, poor, 100), t("d", rich, poor, 100), t("d", rich, poor, 999),
    )), timeout_s=WAIT_S)
    first, second, third = outcomes
    assert isinstance(first, TransferResult) and not first.replayed
    assert isinstance(second, TransferResult) and second.replayed and second.position == first.position
    assert isinstance(third, errors.IdempotencyConflict) and third.context["field"] == "amount_centavos"
    assert book.event_count() == count + 1
    assert book.available(poor) == 100


@pytest.mark.parametrize(
    ("size", "error"), [(0, errors.InvalidRequest), (TRANSFERS_PER_COMMAND_MAX + 1, errors.BatchTooLarge)],
    ids=["empty", "too-large"],
)
def test_malformed_commands_of_transfers_are_refused(
    funded: tuple[Ledger, UUID, UUID, UUID], size: int, error: type[errors.LedgerError]
) -> None:
    book, _, rich, poor = funded
    book.refuse(CreateTransfers(tuple(t(f"s{i}", rich, poor, 1) for i in range(size))), error)
    assert book.available(poor) == 0


def test_independent_transfers_survive_a_restart(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.writer.execute(CreateTransfers(tuple(t(f"r{i}", rich, poor, 10 + i) for i in range(50))), timeout_s=WAIT_S)
    live = book.writer.state.fingerprint()
    book.restart()
    assert book.writer.state.fingerprint() == live
    replay = book.writer.execute(CreateTransfers((t("r7", rich, poor, 17),)), timeout_s=WAIT_S)
    assert replay[0].replayed


@pytest.mark.parametrize(
    ("transfers", "error"),
    [((), errors.InvalidRequest), (("a", "a"), errors.InvalidRequest),
     (tuple(f"k{i}" for i in range(LINKED_TRANSFERS_MAX + 1)), errors.BatchTooLarge)],
    ids=["empty", "duplicate-keys", "too-large"],
)
def test_malformed_linked_batches_are_refused(
    funded: tuple[Ledger, UUID, UUID, UUID], transfers: tuple[str, ...], error: type[errors.LedgerError]
) -> None:
    book, _, rich, poor = funded
    book.refuse(CreateLinkedTransfers(tuple(t(k, rich, poor, 1) for k in transfers)), error)


# ---- batches: a refusal never fails its batch-mates ------------------------------------------------------------------


class held:
    """Queues the commands submitted inside the block while the writer is busy, so they form one batch."""

    def __init__(self, book: Ledger, expect_batches: int | None = 2) -> None:
        self.book = book
        self.expect_batches = expect_batches

    def __enter__(self) -> None:
        self.book.clock.hold()
        self.blocker = self.book.writer.submit(ReadAccounts(()))
        assert self.book.clock.blocked.wait(WAIT_S), "the writer never started the blocking batch"
        self.batches = self.book.writer.stats().batches

    def __exit__(self, *exc: object) -> None:
        # The blocker's window passes first, so it is saved alone and the commands queued behind it form the next
        # batch (within its window, the writer would have added them to the blocker's).
        time.sleep(self.book.writer.wait_s)
        self.book.clock.release()
        self.blocker.result(timeout=WAIT_S)
        if exc[0] is None and self.expect_batches is not None:
            # Submitted while the writer was blocked, collected together: one more batch than the blocker's.
            expected = self.batches + self.expect_batches
            deadline = time.monotonic() + WAIT_S
            while self.book.writer.stats().batches < expected and time.monotonic() < deadline:
                time.sleep(0.001)
            assert self.book.writer.stats().batches == expected


def test_refused_commands_never_fail_their_batch_mates(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    closed = book.open(WALLET)
    book.writer.close_account(CloseAccount(closed))
    book.writer.transfer(t("existing", settlement, poor, 100))
    count = book.event_count()
    mix: list[tuple[Any, type[errors.LedgerError] | None]] = [
        (t("ok-1", rich, poor, 4_000), None),
        (t("too-much", rich, poor, 6_001), errors.InsufficientFunds),  # after ok-1 only 60.00 is left
        (t("ok-2", rich, poor, 6_000), None),
        (t("closed", rich, closed, 1), errors.AccountClosed),
        (t("ghost", rich, uuid.uuid4(), 1), errors.AccountNotFound),
        (t("existing", settlement, poor, 999), errors.IdempotencyConflict),
        (t("existing", settlement, poor, 100), None),  # a replay in the same batch
        (OpenAccount(uuid.uuid4(), 999, 0), errors.InvalidRequest),
        (t("hold", settlement, poor, 500, kind="pending"), None),
        (post("post-bad", "hold", 501), errors.ExceedsPendingAmount),
        (post("post-ok", "hold", 500), None),
        (CreateLinkedTransfers((t("lb1", settlement, poor, 1), t("lb2", rich, poor, 1))), errors.LinkedBatchFailed),
        (CreateLinkedTransfers((t("lg1", settlement, poor, 1), t("lg2", poor, rich, 1))), None),
        (t("zero", rich, poor, 0), errors.AmountMustBePositive),
        (ReadAccounts((rich,)), None),
    ]
    with held(book):
        futures = [book.writer.submit(command) for command, _ in mix]
    outcomes = [outcome(f) for f in futures]
    for (command, expected), got in zip(mix, outcomes, strict=True):
        if expected is None:
            assert not isinstance(got, errors.LedgerError), (command, got)
        else:
            assert type(got) is expected, (command, got)
    # Events: ok-1, ok-2, hold, post-ok (2), lg1, lg2.
    assert book.event_count() == count + 7
    assert book.available(rich) == 1
    positions = [o.position for o in outcomes if isinstance(o, TransferResult) and not o.replayed]
    assert positions == sorted(positions) and max(positions) <= book.event_count()
    replay = outcomes[6]
    assert replay.replayed and replay.position == count and replay.key == "existing"
    book.writer.state.check_invariants()


def test_commands_from_many_threads_each_get_their_own_answer(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    outcomes: dict[str, Any] = {}

    def worker(n: int) -> None:
        for i in range(20):
            key = f"w{n}-{i}"
            amount = 100 if i % 2 == 0 else 0  # every other one is refused
            outcomes[key] = outcome(book.writer.submit(t(key, rich, poor, amount)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = [k for k, o in outcomes.items() if isinstance(o, TransferResult)]
    bad = [k for k, o in outcomes.items() if isinstance(o, errors.AmountMustBePositive)]
    assert len(ok) == len(bad) == 80
    assert all(outcomes[k].key == k for k in ok)
    assert len({outcomes[k].position for k in ok}) == 80
    assert book.account(poor) == [0, 0, 0, 8_000]


def _windowed(book: Ledger, window_s: float) -> LedgerWriter:
    """The book's writer with a group-commit window long enough to time with a coarse clock."""
    book.writer.wait_s = window_s
    return book.writer


def test_a_command_that_waited_for_the_previous_batch_waits_no_longer(book: Ledger) -> None:
    # The window runs from the first command's arrival: one queued while the writer was busy committing (here,
    # a second ago) is saved at once, instead of opening a fresh window.
    writer = _windowed(book, window_s=0.5)
    late = ledger.writer._Submission(ReadAccounts(()), Reply(), time.monotonic() - 1.0)
    started = time.monotonic()
    writer._queue.put(late)
    late.future.result(timeout=WAIT_S)
    assert time.monotonic() - started < 0.25


def test_a_fresh_command_waits_its_window_for_batch_mates(book: Ledger) -> None:
    writer = _windowed(book, window_s=0.5)
    batches = writer.stats().batches
    started = time.monotonic()
    first = writer.submit(ReadAccounts(()))
    time.sleep(0.1)
    mate = writer.submit(ReadAccounts(()))
    first.result(timeout=WAIT_S), mate.result(timeout=WAIT_S)
    assert 0.1 <= time.monotonic() - started
    assert writer.stats().batches == batches + 1  # one batch: the mate joined the first command's


class _HeldAppend:
    """Makes the application's next save wait in the committer until ``release()``, then commit, or fail without
    reaching the store if ``fail`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, app: LedgerApplication, fail: bool = False) -> None:
        self.entered, self._release, self._real, self._fail = threading.Event(), threading.Event(), app.append, fail
        self._calls = 0
        monkeypatch.setattr(app, "append", self)

    def __call__(self, events: Any, **kwargs: Any) -> Any:
        self._calls += 1
        if self._calls == 1:
            self.entered.set()
            assert self._release.wait(WAIT_S), "the save was held too long"
            if self._fail:
                raise ConnectionError("the store went away")
        return self._real(events, **kwargs)

    def release(self) -> None:
        self._release.set()


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_commands_arriving_during_a_save_are_decided_meanwhile_and_saved_next(
    monkeypatch: pytest.MonkeyPatch, funded: tuple[Ledger, UUID, UUID, UUID]
) -> None:
    # Pipelining (ADR 0023): while one batch is being saved, the writer decides what arrives on top of it; those
    # commands are acknowledged only once their own batch committed, after the one before.
    book, _, rich, poor = funded
    held_save = _HeldAppend(monkeypatch, book.app)
    batches, count = book.writer.stats().batches, book.event_count()
    first = book.writer.submit(t("first", rich, poor, 6_000))
    assert held_save.entered.wait(WAIT_S)
    second = book.writer.submit(t("second", rich, poor, 3_000))
    overdraft = book.writer.submit(t("overdraft", rich, poor, 2_000))  # 100.00 - 60.00 - 30.00 cannot pay it
    _wait_until(overdraft.done)  # refused at once, on the state the save in flight will commit
    assert isinstance(overdraft.exception(), errors.InsufficientFunds)
    assert len(book.writer._open.done) == 1 and not first.done() and not second.done()
    assert book.event_count() == count
    held_save.release()
    results = [first.result(timeout=WAIT_S), second.result(timeout=WAIT_S)]
    assert [r.position for r in results] == [count + 1, count + 2]
    assert book.writer.stats().batches == batches + 2
    assert book.available(rich) == 1_000


def test_an_idle_committer_gets_the_first_command_of_a_chunk_while_the_rest_is_decided(
    monkeypatch: pytest.MonkeyPatch, funded: tuple[Ledger, UUID, UUID, UUID]
) -> None:
    # ADR 0024: commands that reach the writer together while nothing is being saved (the API's gateway sends a
    # pass of its loop as one) are not all decided before the first save starts: once the first one's window is
    # over it goes to the committer, and the others are decided while it saves, into the next batch.
    book, _, rich, poor = funded
    answering, go_on = threading.Event(), threading.Event()

    def hold_the_writer(_: Any) -> None:  # runs on the writer thread, while it answers a batch
        answering.set()
        assert go_on.wait(WAIT_S)

    blocker = book.writer.submit(ReadAccounts(()))
    blocker.add_done_callback(hold_the_writer)
    assert answering.wait(WAIT_S)
    held_save = _HeldAppend(monkeypatch, book.app)
    batches, count = book.writer.stats().batches, book.event_count()
    chunk = [book.writer.submit(CreateTransfers((t(f"c{i}-a", rich, poor, 100), t(f"c{i}-b", rich, poor, 100))))
             for i in range(3)]
    time.sleep(2 * book.writer.wait_s)  # the first command's window is over before the writer takes them
    go_on.set()
    assert held_save.entered.wait(WAIT_S)
    # The first command is being saved on its own; the other two were decided meanwhile, into the open batch.
    _wait_until(lambda: len(book.writer._open.done) == 2)
    assert not any(f.done() for f in chunk)
    held_save.release()
    results = [f.result(timeout=WAIT_S) for f in chunk]
    assert [r.position for outcomes in results for r in outcomes] == list(range(count + 1, count + 7))
    assert book.writer.stats().batches == batches + 2
    assert book.available(rich) == 10_000 - 600


def test_a_failed_save_also_refuses_what_was_decided_on_top_of_it(
    monkeypatch: pytest.MonkeyPatch, funded: tuple[Ledger, UUID, UUID, UUID]
) -> None:
    book, _, rich, poor = funded
    held_save = _HeldAppend(monkeypatch, book.app, fail=True)
    count = book.event_count()
    first = book.writer.submit(t("first", rich, poor, 6_000))
    assert held_save.entered.wait(WAIT_S)
    second = book.writer.submit(t("second", rich, poor, 3_000))
    _wait_until(lambda: len(book.writer._open.done) == 1)
    held_save.release()
    # The second transfer was decided on a state that included the first: with the first's outcome unknown, it is
    # refused as well, and the state is reloaded from the store.
    for future in (first, second):
        assert isinstance(future.exception(timeout=WAIT_S), errors.LedgerUnavailable)
    assert book.event_count() == count and book.available(rich) == 10_000
    retried = [book.writer.transfer(t(k, rich, poor, amount)) for k, amount in (("second", 3_000), ("first", 6_000))]
    assert [r.replayed for r in retried] == [False, False]
    assert book.event_count() == count + 2 and book.available(rich) == 1_000


def test_a_full_queue_refuses_with_overloaded(monkeypatch: pytest.MonkeyPatch, app: LedgerApplication) -> None:
    monkeypatch.setattr(ledger.writer, "WRITER_QUEUE_DEPTH_MAX", 4)
    clock = Clock()
    book = Ledger(app, clock, f"test-{uuid.uuid4()}")
    try:
        clock.hold()
        blocker = book.writer.submit(ReadAccounts(()))
        assert clock.blocked.wait(WAIT_S)
        futures = [book.writer.submit(ReadAccounts(())) for _ in range(6)]
        overloaded = [f for f in futures if f.done() and isinstance(f.exception(), errors.LedgerOverloaded)]
        assert len(overloaded) == 2
        clock.release()
        blocker.result(timeout=WAIT_S)
        assert [outcome(f) for f in futures[:4]] == [{}, {}, {}, {}]
    finally:
        clock.release()
        book.writer.stop()


# ---- two-phase transfers and time ------------------------------------------------------------------------------------


def test_pending_post_full_partial_and_void(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    holds = [book.writer.transfer(t(f"h{i}", rich, poor, 2_000, kind="pending")) for i in range(3)]
    assert all(h.kind == "pending" for h in holds)
    assert book.account(rich) == [6_000, 0, 0, 10_000] and book.account(poor) == [0, 0, 6_000, 0]
    full = book.writer.transfer(post("p0", "h0"))
    partial = book.writer.transfer(post("p1", "h1", 500))
    voided = book.writer.transfer(void("v2", "h2"))
    assert (full.amount_centavos, partial.amount_centavos, voided.amount_centavos) == (2_000, 500, 2_000)
    assert full.pending_id == transfer_id_for_key("h0")
    assert (full.debit_account_id, full.credit_account_id) == (rich, poor)
    assert book.account(rich) == [0, 2_500, 0, 10_000] and book.account(poor) == [0, 0, 0, 2_500]
    resolutions = [(e.originator_id, e.resolution) for e in book.events() if isinstance(e, PendingTransferResolved)]
    assert resolutions == [(transfer_id_for_key("h0"), "posted"), (transfer_id_for_key("h1"), "posted"),
                           (transfer_id_for_key("h2"), "voided")]
    book.writer.state.check_invariants()


def test_a_timed_out_hold_expires_when_the_next_batch_runs(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.writer.transfer(t("hold", rich, poor, 6_000, kind="pending", timeout_s=60))
    book.writer.transfer(t("hold-long", rich, poor, 1_000, kind="pending", timeout_s=3_600))
    book.clock.advance(seconds=59)
    assert book.writer.transfer(t("early", rich, poor, 100)).replayed is False
    assert not any(isinstance(e, PendingTransferExpired) for e in book.events())
    book.clock.advance(seconds=1)
    book.writer.accounts(rich)  # any batch expires what is due, before deciding its commands
    err = book.refuse(post("late-post", "hold"), errors.PendingTransferExpired)
    assert err.context["pending_id"] == str(transfer_id_for_key("hold"))
    [expired] = [e for e in book.events() if isinstance(e, PendingTransferExpired)]
    assert (expired.originator_id, expired.amount_centavos) == (transfer_id_for_key("hold"), 6_000)
    assert expired.timestamp == START + timedelta(seconds=60)
    assert book.account(rich) == [1_000, 100, 0, 10_000]
    assert book.account(poor) == [0, 0, 1_000, 100]
    book.refuse(void("late-void", "hold"), errors.PendingTransferExpired)
    # The other hold is still open and can be posted.
    assert book.writer.transfer(post("post-long", "hold-long")).amount_centavos == 1_000
    book.writer.state.check_invariants()


def test_a_timed_out_hold_expires_with_no_commands_coming(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.writer.transfer(t("hold", rich, poor, 6_000, kind="pending", timeout_s=5))
    count = book.event_count()
    book.clock.advance(seconds=5)
    deadline = time.monotonic() + WAIT_S
    while book.event_count() == count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert isinstance(book.events()[-1], PendingTransferExpired)
    assert book.available(rich) == 10_000


def test_account_closes_only_at_zero_balance(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, settlement, rich, _ = funded
    book.refuse(CloseAccount(rich), errors.AccountBalanceNotZero)
    book.writer.transfer(t("withdraw", rich, settlement, 9_000, kind="pending"))
    book.writer.transfer(t("withdraw-rest", rich, settlement, 1_000))
    book.refuse(CloseAccount(rich), errors.AccountBalanceNotZero)  # 90.00 still on hold
    book.writer.transfer(post("withdraw-post", "withdraw"))
    closed = book.writer.close_account(CloseAccount(rich))
    assert closed.account.closed and not closed.replayed
    assert book.writer.close_account(CloseAccount(rich)).replayed
    book.refuse(t("after-close", settlement, rich, 1), errors.AccountClosed)
    book.refuse(CloseAccount(uuid.uuid4()), errors.AccountNotFound)


# ---- the store: hash chain, restart, checkpoints, failures -----------------------------------------------------------


def tamper(app: LedgerApplication, position: int, **changes: Any) -> None:
    """Rewrites fields of the stored event at ``position`` in the in-memory store, as an attacker with DB access."""
    recorder: Any = app.recorder
    stored: StoredEvent = recorder._stored_events[position - 1]
    state = json.loads(stored.state)
    assert set(changes) <= set(state)
    state.update(changes)
    recorder._stored_events[position - 1] = dataclasses.replace(stored, state=json.dumps(state).encode())


def test_tampering_with_a_stored_amount_breaks_the_chain(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    result = book.writer.transfer(t("pay", rich, poor, 1_000))
    book.writer.stop()
    book.app.load_state()  # intact
    # Consistent tampering: amount and post-states agree, so only the chain hash can tell.
    tamper(book.app, result.position, amount_centavos=100_000, requested_amount_centavos=100_000,
           debit_after=[0, 100_000, 0, 10_000], credit_after=[0, 0, 0, 100_000])
    with pytest.raises(AssertionError, match="chain broken"):
        book.app.load_state()


def test_tampering_with_a_stored_reference_breaks_the_chain(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    result = book.writer.transfer(t("pay", rich, poor, 1_000, reference="invoice:1"))
    book.writer.transfer(t("after", rich, poor, 1))
    book.writer.stop()
    tamper(book.app, result.position, reference="invoice:2")
    with pytest.raises(AssertionError):
        book.app.load_state()
    with pytest.raises(AssertionError):
        book.app.load_state(use_checkpoint=False)


def test_the_stored_log_verifies_offline(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.writer.transfer(t("h", rich, poor, 100, kind="pending", timeout_s=1))
    book.writer.transfer(t("pay", rich, poor, 100))
    book.clock.advance(seconds=2)
    book.writer.transfer(t("pay-2", rich, poor, 100))
    previous = ledger.model.GENESIS_CHAIN_HASH
    events = book.events()
    assert any(isinstance(e, PendingTransferExpired) for e in events)
    for event in events:
        assert event.chain_hash == chain_hash_of(previous, event)
        previous = event.chain_hash
    assert book.writer.state.chain_hash == previous


def fail_first_append(monkeypatch: pytest.MonkeyPatch, app: LedgerApplication) -> None:
    """The application's next save fails before reaching the store (its outcome is unknown to the writer); the
    ones after it work."""
    real_append = app.append
    calls = {"n": 0}

    def flaky_append(events: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("the store went away")
        return real_append(events, **kwargs)

    monkeypatch.setattr(app, "append", flaky_append)


def activity(book: Ledger, settlement: UUID, rich: UUID, poor: UUID, prefix: str) -> None:
    w = book.writer
    w.transfer(t(f"{prefix}in", settlement, poor, 700))
    w.transfer(t(f"{prefix}h1", rich, poor, 300, kind="pending", timeout_s=120))
    w.transfer(t(f"{prefix}h2", rich, poor, 200, kind="pending"))
    w.transfer(t(f"{prefix}h3", poor, rich, 100, kind="pending", timeout_s=10))
    w.transfer(post(f"{prefix}p1", f"{prefix}h1", 250))
    w.linked(CreateLinkedTransfers((t(f"{prefix}l1", poor, rich, 50), t(f"{prefix}l2", rich, settlement, 25))))


def test_restart_rebuilds_the_same_state(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    activity(book, settlement, rich, poor, "a-")
    live = book.writer.state.fingerprint()
    book.restart()
    assert book.writer.state.fingerprint() == live
    assert book.app.latest_checkpoint() is None
    assert book.writer.state.index_complete is True
    replay = book.writer.transfer(t("a-in", settlement, poor, 700))
    assert replay.replayed


def test_restart_from_a_checkpoint_replays_old_keys_from_the_store(app: LedgerApplication, clock: Clock) -> None:
    book = Ledger(app, clock, f"test-{uuid.uuid4()}", checkpoint_interval=4)
    try:
        settlement, rich, poor = book.open(SETTLEMENT), book.open(WALLET), book.open(WALLET)
        first = book.writer.transfer(t("old", settlement, rich, 10_000))
        activity(book, settlement, rich, poor, "a-")
        live = book.writer.state.fingerprint()
        count = book.event_count()
        checkpoint = app.latest_checkpoint()
        assert checkpoint is not None and first.position is not None and checkpoint.position > first.position
        book.restart()
        assert book.writer.state.fingerprint() == live == app.load_state(use_checkpoint=False).fingerprint()
        assert book.writer.state.index_complete is False
        assert transfer_id_for_key("old") not in book.writer.state.transfers
        replay = book.writer.transfer(t("old", settlement, rich, 10_000))
        assert replay.replayed and replay.position == first.position and replay.timestamp == first.timestamp
        assert book.refuse(t("old", settlement, rich, 1), errors.IdempotencyConflict).context["field"] == (
            "amount_centavos"
        )
        # Pending transfers from before the checkpoint: settled ones stay settled, open ones can be settled.
        book.refuse(post("a-p1-again", "a-h1"), errors.PendingTransferAlreadyPosted)
        assert book.writer.transfer(post("a-p1", "a-h1", 250)).replayed
        assert book.writer.transfer(void("a-v2", "a-h2")).amount_centavos == 200
        clock.advance(seconds=10)
        book.writer.accounts(rich)
        book.refuse(post("a-p3", "a-h3"), errors.PendingTransferExpired)
        assert book.event_count() == count + 3  # the void (2 events) and the expiry
        live = book.writer.state.fingerprint()
        book.restart()
        assert book.writer.state.fingerprint() == live == app.load_state(use_checkpoint=False).fingerprint()
    finally:
        book.writer.stop()


def test_after_a_failed_save_an_old_key_from_before_the_checkpoint_still_replays(
        monkeypatch: pytest.MonkeyPatch, app: LedgerApplication, clock: Clock) -> None:
    # A failed save reloads the state from the latest checkpoint, whose state holds no transfers: the keys
    # committed before it must still be known, exactly as after a restart, or a client's retry commits twice.
    book = Ledger(app, clock, f"test-{uuid.uuid4()}", checkpoint_interval=4)
    try:
        settlement, rich, poor = book.open(SETTLEMENT), book.open(WALLET), book.open(WALLET)
        first = book.writer.transfer(t("old", settlement, rich, 10_000))
        activity(book, settlement, rich, poor, "a-")
        checkpoint = app.latest_checkpoint()
        assert checkpoint is not None and first.position is not None and checkpoint.position > first.position
        after_checkpoint = book.writer.transfer(t("recent", settlement, poor, 5))
        fail_first_append(monkeypatch, app)
        streamed = {"calls": 0}
        real_ids = book.writer.lookup.originator_ids

        def counted_ids(*args: Any, **kwargs: Any) -> Any:
            streamed["calls"] += 1
            return real_ids(*args, **kwargs)

        monkeypatch.setattr(book.writer.lookup, "originator_ids", counted_ids)
        with pytest.raises(errors.LedgerUnavailable):
            book.writer.transfer(t("lost", settlement, rich, 1))
        book.writer.accounts(rich)  # queued after the reload: the writer has reloaded by its answer
        state = book.writer.state
        assert state.index_complete is False and state.committed_ids_complete is True
        # The reload kept the filter of the state it replaced: no committed id was streamed from the store again.
        assert streamed["calls"] == 0
        count = book.event_count()
        replay = book.writer.transfer(t("old", settlement, rich, 10_000))
        assert replay.replayed and replay.position == first.position
        recent = book.writer.transfer(t("recent", settlement, poor, 5))
        assert recent.replayed and recent.position == after_checkpoint.position
        assert book.event_count() == count
        # The key whose save failed was never committed: it is decided as new, once.
        assert book.writer.transfer(t("lost", settlement, rich, 1)).replayed is False
        assert book.event_count() == count + 1
    finally:
        book.writer.stop()



def test_a_restarted_writer_counts_its_checkpoint_interval_from_the_checkpoint_it_loaded(
        app: LedgerApplication, clock: Clock) -> None:
    book = Ledger(app, clock, f"test-{uuid.uuid4()}", checkpoint_interval=5)
    try:
        settlement, rich = book.open(SETTLEMENT), book.open(WALLET)
        for n in range(5):
            book.writer.transfer(t(f"in-{n}", settlement, rich, 100))
        # The writer checkpoints after answering a batch: a read queued behind it is answered once that is done.
        book.writer.accounts(rich)
        checkpoint = app.latest_checkpoint()
        assert checkpoint is not None
        book.restart()
        assert book.writer.state.checkpoint_position == checkpoint.position
        # Fewer events than the interval since that checkpoint: none is written yet.
        events = book.event_count()
        while book.event_count() - checkpoint.position < 4:
            book.writer.transfer(t(f"more-{book.event_count()}", settlement, rich, 1))
        book.writer.accounts(rich)
        assert app.latest_checkpoint() == checkpoint
        book.writer.transfer(t("one-more", settlement, rich, 1))  # the fifth event since it
        book.writer.accounts(rich)
        latest = app.latest_checkpoint()
        assert latest is not None and latest.position == checkpoint.position + 5 > events
    finally:
        book.writer.stop()

def test_a_reload_takes_a_known_filter_only_if_it_covers_the_checkpoint(app: LedgerApplication,
                                                                        clock: Clock) -> None:
    book = Ledger(app, clock, f"test-{uuid.uuid4()}")
    try:
        settlement, rich, poor = book.open(SETTLEMENT), book.open(WALLET), book.open(WALLET)
        book.writer.transfer(t("before", settlement, rich, 10_000))
        activity(book, settlement, rich, poor, "a-")
        checkpoint = app.write_checkpoint(book.writer.state)  # the writer is idle: its state is whole
        later = book.writer.transfer(t("after", settlement, poor, 5))
        assert later.position is not None and later.position > checkpoint.position
    finally:
        book.writer.stop()
    # A filter known up to a position before the checkpoint misses the ids between the two: not taken.
    short = IdFilter()
    state = app.load_state(known_ids=(short, checkpoint.position - 1))
    assert state.committed_ids is not short and state.committed_ids_complete is False
    assert transfer_id_for_key("before").int not in state.committed_ids
    # Known up to the checkpoint or later: taken, and what the replay applies is added to it.
    known = IdFilter()
    known.add(transfer_id_for_key("before").int)
    state = app.load_state(known_ids=(known, checkpoint.position))
    assert state.committed_ids is known and state.committed_ids_complete is True
    assert transfer_id_for_key("after").int in known
    # Without a filter, a state from a checkpoint does not claim to know the ids committed before it.
    assert app.load_state().committed_ids_complete is False
    assert app.load_state(use_checkpoint=False).committed_ids_complete is True


def test_state_as_of_the_position_of_a_post_can_be_rebuilt(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    # DESIGN §4: state can be rebuilt "as of any past position"; a result's position is the one a client holds.
    book, _, rich, poor = funded
    book.writer.transfer(t("hold", rich, poor, 3_000, kind="pending"))
    posted = book.writer.transfer(post("post", "hold", 1_000))
    book.writer.transfer(t("later", rich, poor, 1))
    as_of = book.app.load_state(upto=posted.position)
    assert transfer_id_for_key("hold") not in as_of.pending
    assert as_of.accounts[rich].balances() == [0, 1_000, 0, 10_000]


def test_replay_after_index_eviction_looks_the_key_up(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    book.writer.state.index_bound = 3
    first = book.writer.transfer(t("first", rich, poor, 10_000))
    for i in range(4):
        book.writer.transfer(t(f"fill-{i}", settlement, poor, 1))
    assert transfer_id_for_key("first") not in book.writer.state.transfers
    assert book.writer.state.index_complete is False
    replay = book.writer.transfer(t("first", rich, poor, 10_000))
    assert replay.replayed and replay.position == first.position


def test_replay_of_a_key_evicted_earlier_in_the_same_batch_returns_the_original(
    funded: tuple[Ledger, UUID, UUID, UUID]
) -> None:
    book, settlement, rich, poor = funded
    book.writer.state.index_bound = 3
    spent = book.writer.transfer(t("spend-all", rich, poor, 10_000))  # rich is now empty
    book.writer.transfer(t("fill-1", settlement, poor, 1))
    assert book.writer.state.index_complete is True  # deposit, spend-all, fill-1: nothing forgotten yet
    count = book.event_count()
    with held(book):
        futures = [book.writer.submit(t("fill-2", settlement, poor, 1)),  # evicts "deposit"
                   book.writer.submit(t("fill-3", settlement, poor, 1)),  # evicts "spend-all"
                   book.writer.submit(t("spend-all", rich, poor, 10_000))]  # a client retry
    fill_2, fill_3, retry = (outcome(f) for f in futures)
    # The retry of a committed key must get the original result, not a fresh decision (insufficient funds).
    assert isinstance(retry, TransferResult), retry
    assert retry.replayed and retry.position == spent.position
    assert isinstance(fill_2, TransferResult) and isinstance(fill_3, TransferResult)
    assert book.event_count() == count + 2
    assert spent.id not in book.writer.state.transfers  # evicted again after the batch: the bound did apply


def test_a_failed_save_answers_unavailable_and_a_retry_commits_once(
    monkeypatch: pytest.MonkeyPatch, funded: tuple[Ledger, UUID, UUID, UUID]
) -> None:
    book, _, rich, poor = funded
    fail_first_append(monkeypatch, book.app)
    count = book.event_count()
    with pytest.raises(errors.LedgerUnavailable):
        book.writer.transfer(t("pay", rich, poor, 1_000))
    assert book.event_count() == count
    assert book.writer.fatal is None
    # The state was reloaded from the store: the lost transfer left no trace in memory either.
    assert book.available(rich) == 10_000
    result = book.writer.transfer(t("pay", rich, poor, 1_000))
    assert result.replayed is False and book.event_count() == count + 1


def test_a_save_that_committed_but_lost_its_answer_is_found_on_retry(
    monkeypatch: pytest.MonkeyPatch, funded: tuple[Ledger, UUID, UUID, UUID]
) -> None:
    book, _, rich, poor = funded
    real_append = book.app.append
    calls = {"n": 0}

    def commit_then_fail(events: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        recordings = real_append(events, **kwargs)
        if calls["n"] == 1:
            raise ConnectionError("connection lost after COMMIT, before its answer")
        return recordings

    monkeypatch.setattr(book.app, "append", commit_then_fail)
    count = book.event_count()
    with pytest.raises(errors.LedgerUnavailable):  # the outcome is unknown: never claim it failed
        book.writer.transfer(t("pay", rich, poor, 1_000))
    assert book.event_count() == count + 1
    retry = book.writer.transfer(t("pay", rich, poor, 1_000))
    assert retry.replayed is True and retry.position == count + 1
    assert book.available(rich) == 9_000
    assert book.event_count() == count + 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # it stops loudly
def test_a_fenced_writer_stops_for_good(monkeypatch: pytest.MonkeyPatch,
                                        funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded

    def fenced_append(events: Any, **kwargs: Any) -> Any:
        raise errors.WriterFenced("writer epoch 1 is stale (current 2)")

    monkeypatch.setattr(book.app, "append", fenced_append)
    count = book.event_count()
    with pytest.raises(errors.LedgerUnavailable):
        book.writer.transfer(t("pay", rich, poor, 1_000))
    deadline = time.monotonic() + WAIT_S
    while book.writer.fatal is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(book.writer.fatal, errors.WriterFenced)
    monkeypatch.undo()
    # Even with a working store again, a fenced writer refuses everything.
    with pytest.raises(errors.LedgerUnavailable):
        book.writer.transfer(t("pay-2", rich, poor, 1))
    with pytest.raises(errors.LedgerUnavailable):
        book.writer.accounts(rich)
    assert book.event_count() == count


# ---- parties ---------------------------------------------------------------------------------------------------------

CPF = "52998224725"  # a valid CPF (check digits right), widely used as an example


def register(key: str = "party-1", **changes: Any) -> RegisterParty:
    fields = {"key": key, "kind": "investor", "name": "Maria da Silva", "document": CPF,
              "email": "maria@example.com.br", "phone": "+5511987654321"}
    fields.update(changes)
    return RegisterParty(**fields)


def test_register_party_opens_its_wallet_and_is_idempotent(app: LedgerApplication, clock: Clock) -> None:
    book = Ledger(app, clock, f"test-{uuid.uuid4()}", checkpoint_interval=2)
    try:
        first = book.writer.register_party(register())
        assert first.replayed is False and first.party.id == party_id_for_key("party-1")
        assert first.wallet.id == wallet_id_for_party(first.party.id) == first.party.wallet_id
        assert first.wallet.owner_id == first.party.id
        assert (first.wallet.code, first.wallet.flags) == (WALLET, REQUIRED_FLAGS[WALLET])
        count = book.event_count()
        again = book.writer.register_party(register())
        assert again.replayed and again.party == first.party
        assert book.refuse(register(name="Outra Pessoa"), errors.IdempotencyConflict).context["field"] == "name"
        book.refuse(register("party-2"), errors.PartyAlreadyExists)  # same CPF, same kind, another key
        book.refuse(register("party-3", document="52998224724"), errors.InvalidRequest)  # wrong check digit
        borrower = book.writer.register_party(register("party-4", kind="borrower"))  # same CPF, other kind
        assert borrower.wallet.code == AccountCode.BORROWER_WALLET
        assert book.event_count() == count + 2
        book.refuse(OpenAccount(uuid.uuid4(), WALLET, REQUIRED_FLAGS[WALLET], owner_id=uuid.uuid4()),
                    errors.InvalidRequest)
        live = book.writer.state.fingerprint()
        assert app.latest_checkpoint() is not None
        book.restart()
        assert book.writer.state.fingerprint() == live == app.load_state(use_checkpoint=False).fingerprint()
        assert book.writer.register_party(register()).replayed
        book.refuse(register("party-5"), errors.PartyAlreadyExists)
    finally:
        book.writer.stop()


# ---- failures inside a batch -----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # it stops loudly
def test_a_broken_invariant_stops_the_writer_and_answers_its_whole_batch(
    monkeypatch: pytest.MonkeyPatch, funded: tuple[Ledger, UUID, UUID, UUID]
) -> None:
    book, _, rich, poor = funded
    real_transfer = ledger.model.Decider.transfer

    def broken(self: Any, cmd: CreateTransfer, *args: Any, **kwargs: Any) -> Any:
        if cmd.key == "boom":
            raise AssertionError("a broken invariant")
        return real_transfer(self, cmd, *args, **kwargs)

    monkeypatch.setattr(ledger.model.Decider, "transfer", broken)
    count = book.event_count()
    with held(book, expect_batches=None):
        futures = [book.writer.submit(t("before", rich, poor, 1)), book.writer.submit(t("boom", rich, poor, 1)),
                   book.writer.submit(t("after", rich, poor, 1))]
    # Stopping loudly is right; leaving callers of the dying batch without an answer is not: a caller using
    # submit() would wait forever, one using execute() for COMMAND_TIMEOUT_S_MAX.
    for future in futures:
        assert isinstance(future.exception(timeout=2.0), errors.LedgerUnavailable)
    assert isinstance(book.writer.fatal, AssertionError)
    assert book.event_count() == count


def test_a_failed_transfer_lookup_answers_unavailable_and_the_writer_goes_on(
    app: LedgerApplication, clock: Clock
) -> None:
    book = Ledger(app, clock, f"test-{uuid.uuid4()}", checkpoint_interval=2)
    try:
        settlement, rich = book.open(SETTLEMENT), book.open(WALLET)
        first = book.writer.transfer(t("old", settlement, rich, 100))
        book.writer.transfer(t("newer", settlement, rich, 100))
        book.restart()
        assert book.writer.state.index_complete is False  # from now on unknown keys are looked up in the store
        lookup: Any = book.writer.lookup
        real_find = lookup.find
        failures = {"left": 1}

        def flaky_find(ids: Any) -> Any:
            if failures["left"]:
                failures["left"] -= 1
                raise ConnectionError("the store went away for a moment")
            return real_find(ids)

        lookup.find = flaky_find
        future = book.writer.submit(t("old", settlement, rich, 100))
        # A transient store failure is an operating condition (retry with the same key), not a dead writer.
        assert isinstance(future.exception(timeout=2.0), errors.LedgerUnavailable)
        assert book.writer.fatal is None
        replay = book.writer.transfer(t("old", settlement, rich, 100))
        assert replay.replayed and replay.position == first.position
    finally:
        book.writer.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_registering_a_party_whose_wallet_id_is_taken_does_not_stop_the_writer(book: Ledger) -> None:
    # Account ids are chosen by the caller; a party's wallet id is derived from its key. When they meet, the
    # registration must be refused like any other command, not crash the writer ("account opened twice").
    taken = wallet_id_for_party(party_id_for_key("party-x"))
    book.writer.open_account(OpenAccount(taken, WALLET, REQUIRED_FLAGS[WALLET]))
    future = book.writer.submit(register("party-x"))
    outcome_ = future.exception(timeout=2.0)
    assert outcome_ is None or (isinstance(outcome_, errors.LedgerError)
                                and not isinstance(outcome_, errors.LedgerUnavailable)), outcome_
    assert book.writer.fatal is None
    settlement = book.open(SETTLEMENT)
    assert book.writer.transfer(t("still-alive", settlement, taken, 1)).replayed is False


def test_an_account_id_equal_to_a_transfer_id_does_not_fail_batch_mates(
    funded: tuple[Ledger, UUID, UUID, UUID],
) -> None:
    # Transfer ids are uuid5(key): anyone can compute the id of a key someone else will use later. An account
    # opened with that id must not make the later transfer fail its whole batch at the store's unique key.
    book, settlement, rich, poor = funded
    squatted = transfer_id_for_key("future-key")
    book.writer.open_account(OpenAccount(squatted, WALLET, REQUIRED_FLAGS[WALLET]))
    with held(book, expect_batches=None):
        innocent = book.writer.submit(t("innocent", rich, poor, 100))
        future = book.writer.submit(t("future-key", settlement, poor, 100))
    assert isinstance(outcome(innocent), TransferResult), outcome(innocent)
    got = outcome(future)
    assert not isinstance(got, errors.LedgerUnavailable), got


# ---- schema evolution: what earlier versions wrote must stay readable ----------------------------------------------


def first_release_chain(previous: str, event_type: str, originator_id: UUID, body: dict[str, Any]) -> str:
    """The chain hash exactly as the first release (commit e2f1894) computed it: every field, nulls included."""
    canonical = json.dumps([previous, event_type, str(originator_id), 1, body], sort_keys=True, default=str,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_a_log_written_by_the_first_release_still_loads(app: LedgerApplication, clock: Clock) -> None:
    # The first release stored AccountOpened without `owner_id`, and hashed every event over all its fields,
    # nulls included (a single transfer has pending_id = linked_batch_id = null). STYLE: a field change bumps
    # `class_version` and adds an upcaster, and an offline-verifiable chain must keep verifying what was written.
    settlement, wallet = uuid.uuid4(), uuid.uuid4()
    chain = ledger.model.GENESIS_CHAIN_HASH
    stored = []

    def write(event_type: str, originator_id: UUID, body: dict[str, Any]) -> None:
        nonlocal chain
        chain = first_release_chain(chain, event_type, originator_id, body)
        state = app.mapper.transcoder.encode({**body, "chain_hash": chain})
        stored.append(StoredEvent(originator_id, 1, f"ledger.events:{event_type}", state))

    for account_id, code in ((settlement, SETTLEMENT), (wallet, WALLET)):
        write("AccountOpened", account_id, {"timestamp": START, "ledger": 986, "code": int(code),
                                            "flags": int(REQUIRED_FLAGS[code]), "reference": ""})
    write("TransferCommitted", transfer_id_for_key("deposit"), {
        "timestamp": START, "key": "deposit", "payload_hash": t("deposit", settlement, wallet, 5_000).payload_hash(),
        "kind": "single", "ledger": 986, "code": 1, "debit_account_id": settlement, "credit_account_id": wallet,
        "amount_centavos": 5_000, "requested_amount_centavos": 5_000, "pending_id": None, "timeout_s": 0,
        "reference": "", "linked_batch_id": None, "debit_after": [0, 5_000, 0, 0], "credit_after": [0, 0, 0, 5_000],
    })
    app.recorder.insert_events(stored)

    loaded = app.load_state()
    assert loaded.chain_hash == chain
    assert loaded.accounts[wallet].owner_id is None
    assert loaded.accounts[wallet].credits_posted == 5_000
    book = Ledger(app, clock, f"test-{uuid.uuid4()}")
    try:
        assert book.writer.transfer(t("deposit", settlement, wallet, 5_000)).replayed is True
        assert book.writer.transfer(t("after-upgrade", settlement, wallet, 100)).replayed is False
        book.restart()
        assert book.writer.state.fingerprint() == app.load_state(use_checkpoint=False).fingerprint()
    finally:
        book.writer.stop()


def test_a_checkpoint_written_before_parties_existed_does_not_stop_a_restart(
    app: LedgerApplication, clock: Clock
) -> None:
    # Checkpoints are derived data: one in an older shape (account rows without an owner, no `parties`) must be
    # upcast or skipped in favour of a longer replay, never make the ledger unable to start.
    book = Ledger(app, clock, f"test-{uuid.uuid4()}")
    settlement, wallet = book.open(SETTLEMENT), book.open(WALLET)
    book.writer.transfer(t("deposit", settlement, wallet, 100))
    book.writer.stop()
    live = app.load_state()
    old_checkpoint = {
        "timestamp": START, "position": live.position, "chain_hash": live.chain_hash,
        "accounts": [a.row()[:10] for a in live.accounts.values()], "pending": [],
    }
    assert app.snapshots is not None
    app.snapshots.recorder.insert_events([StoredEvent(
        CHECKPOINT_ID, live.position, "ledger.events:LedgerCheckpoint", app.mapper.transcoder.encode(old_checkpoint)
    )])
    assert app.load_state().fingerprint() == live.fingerprint()


def test_a_cancelled_submission_is_skipped_and_the_writer_goes_on(funded: tuple[Ledger, UUID, UUID, UUID]) -> None:
    # An API request that times out cancels its future; the writer must neither commit it nor die on it.
    book, _, rich, poor = funded
    count = book.event_count()
    book.clock.hold()
    blocker = book.writer.submit(t("blocker", rich, poor, 100))
    assert book.clock.blocked.wait(WAIT_S)
    cancelled = book.writer.submit(t("cancelled", rich, poor, 100))
    assert cancelled.cancel()
    book.clock.release()
    assert outcome(blocker).replayed is False
    after = book.writer.transfer(t("after", rich, poor, 100))
    assert after.replayed is False and book.writer.fatal is None
    assert book.event_count() == count + 2
    assert book.available(rich) == 10_000 - 200


class CountingLookup(RecorderTransferLookup):
    """Records the ids each lookup asks for; the stream of committed ids waits for ``release`` (set at first)."""

    def __init__(self, app: LedgerApplication) -> None:
        super().__init__(app.recorder)
        self.asked: list[set[UUID]] = []
        self.streams = 0
        self.release = threading.Event()
        self.release.set()
        self.fail_next_stream = False

    def find(self, transfer_ids: Any) -> Any:
        self.asked.append(set(transfer_ids))
        return super().find(transfer_ids)

    def originator_ids(self, topic: str, upto: int) -> Iterator[UUID]:
        self.streams += 1
        assert self.release.wait(WAIT_S), "the stream was never released"
        if self.fail_next_stream:
            self.fail_next_stream = False
            raise ConnectionError("the store went away while streaming")
        yield from super().originator_ids(topic, upto)


def wait_for_committed_ids(writer: LedgerWriter) -> None:
    """Waits until the writer has every committed transfer id in its filter (streamed in the background)."""
    deadline = time.monotonic() + WAIT_S
    while not writer.state.committed_ids_complete:
        assert time.monotonic() < deadline, "the committed ids were never all loaded"
        time.sleep(0.005)


def stopped_after_old_keys(app: LedgerApplication, clock: Clock) -> tuple[Ledger, UUID, UUID, UUID, TransferResult]:
    """A ledger whose key "old" and whose ``activity`` lie before its latest checkpoint, its writer stopped: the
    next writer starts from that checkpoint, with no transfer in its index."""
    book = Ledger(app, clock, f"test-{uuid.uuid4()}", checkpoint_interval=4)
    settlement, rich, poor = book.open(SETTLEMENT), book.open(WALLET), book.open(WALLET)
    old = book.writer.transfer(t("old", settlement, rich, 10_000))
    activity(book, settlement, rich, poor, "a-")
    book.writer.stop()
    return book, settlement, rich, poor, old


def test_after_a_restart_only_keys_that_may_be_old_are_looked_up(app: LedgerApplication, clock: Clock) -> None:
    # Restarted from a checkpoint, the writer's index holds no transfer from before it. New keys must not cost a
    # trip to the store (that was every batch, about a fifth of the throughput); an old key still must.
    book, settlement, rich, poor, old = stopped_after_old_keys(app, clock)
    lookup = CountingLookup(app)
    writer = LedgerWriter(app, InMemoryWriterLease(book.lease_name), lookup, clock=clock, wait_ms=1.0).start()
    try:
        wait_for_committed_ids(writer)
        assert writer.state.index_complete is False
        old_id = transfer_id_for_key("old")
        assert old_id not in writer.state.transfers and old_id.int in writer.state.committed_ids
        for i in range(20):
            writer.transfer(t(f"new-{i}", rich, poor, 1))
        writer.submit(CreateTransfers(tuple(t(f"many-{i}", rich, poor, 1) for i in range(50)))).result(WAIT_S)
        assert lookup.asked == []
        replay = writer.transfer(t("old", settlement, rich, 10_000))
        assert replay.replayed and replay.position == old.position
        assert lookup.asked == [{transfer_id_for_key("old")}]
        # A post of a hold from before the checkpoint still finds how the hold ended.
        with pytest.raises(errors.PendingTransferAlreadyPosted):
            writer.execute(post("a-p1-again", "a-h1"), timeout_s=WAIT_S)
        assert lookup.asked[-1] >= {transfer_id_for_key("a-h1")}
    finally:
        writer.stop()


def test_a_restarted_writer_serves_while_it_streams_the_committed_ids(
        monkeypatch: pytest.MonkeyPatch, app: LedgerApplication, clock: Clock) -> None:
    # The ids committed before the checkpoint are read in the background: until they are all in the filter, every
    # key the index does not hold is looked up in the store, so old keys replay and new ones commit once.
    monkeypatch.setattr(ledger.writer, "COMMITTED_IDS_CHUNK", 3)  # the ids arrive in several chunks
    book, settlement, rich, poor, old = stopped_after_old_keys(app, clock)
    lookup = CountingLookup(app)
    lookup.release.clear()  # the stream is held back: the writer must serve without it
    writer = LedgerWriter(app, InMemoryWriterLease(book.lease_name), lookup, clock=clock, wait_ms=1.0).start()
    try:
        assert writer.state.committed_ids_complete is False
        replay = writer.transfer(t("old", settlement, rich, 10_000))
        assert replay.replayed and replay.position == old.position
        new = writer.transfer(t("new-1", rich, poor, 1))
        assert new.replayed is False
        assert {transfer_id_for_key("new-1")} in lookup.asked  # a new key is looked up while the filter is partial
        assert writer.state.committed_ids_complete is False
        # A stream that fails is started again; the writer keeps serving meanwhile.
        lookup.fail_next_stream = True
        lookup.release.set()
        wait_for_committed_ids(writer)
        assert lookup.streams == 2
        filter_ = writer.state.committed_ids
        assert all(transfer_id_for_key(k).int in filter_ for k in ("old", "a-in", "a-h1", "a-l2"))
        # Once every id is in, a new key is decided without asking the store; an old one is still found.
        lookup.asked.clear()
        writer.transfer(t("new-2", rich, poor, 1))
        assert lookup.asked == []
        assert writer.transfer(t("new-1", rich, poor, 1)).replayed  # still in the index
        assert writer.transfer(t("old", settlement, rich, 10_000)).position == old.position
        assert app.load_state(use_checkpoint=False).fingerprint() == writer.state.fingerprint()
    finally:
        writer.stop()


def test_a_failed_save_while_the_ids_stream_starts_the_stream_again(
        monkeypatch: pytest.MonkeyPatch, app: LedgerApplication, clock: Clock) -> None:
    book, settlement, rich, _, old = stopped_after_old_keys(app, clock)
    lookup = CountingLookup(app)
    lookup.release.clear()
    writer = LedgerWriter(app, InMemoryWriterLease(book.lease_name), lookup, clock=clock, wait_ms=1.0).start()
    fail_first_append(monkeypatch, app)
    try:
        with pytest.raises(errors.LedgerUnavailable):
            writer.transfer(t("lost", settlement, rich, 1))
        writer.accounts(rich)  # answered after the reload
        # The reloaded state had no whole filter to keep: it streams the ids again, on a new stream.
        assert writer.state.committed_ids_complete is False
        lookup.release.set()
        wait_for_committed_ids(writer)
        assert lookup.streams == 2
        assert writer.transfer(t("old", settlement, rich, 10_000)).position == old.position
        count = book.event_count()
        assert writer.transfer(t("lost", settlement, rich, 1)).replayed is False
        assert book.event_count() == count + 1
    finally:
        writer.stop()
