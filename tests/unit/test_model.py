"""The pure ledger state machine: ``Decider`` decides, ``LedgerState.apply`` evolves (no writer, no store).

Every decided event is applied with ``verify_chain=True``, so these tests also check that the decider stamps
exactly the chain hash a rebuild from the store will recompute.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import pickle
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import errors
from ledger.chart import REQUIRED_FLAGS, AccountCode, AccountFlags
from ledger.command_types import (
    TRANSFER_ID_NAMESPACE,
    TRANSFER_KINDS,
    CloseAccount,
    CreateLinkedTransfers,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
    transfer_id_for_key,
)
from ledger.events import (
    AccountClosed,
    AccountOpened,
    LedgerEvent,
    PendingTransferExpired,
    PendingTransferResolved,
    TransferCommitted,
)
from ledger.limits import (
    AMOUNT_CENTAVOS_MAX,
    BALANCE_CENTAVOS_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    LEDGER_BRL,
    LINKED_TRANSFERS_MAX,
    PENDING_TIMEOUT_S_MAX,
    REFERENCE_LENGTH_MAX,
)
from ledger.model import (
    GENESIS_CHAIN_HASH,
    AccountResult,
    Decider,
    LedgerState,
    chain_hash_of,
    check_linked,
    linked_batch_id_of,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

WALLET = AccountCode.INVESTOR_WALLET
SETTLEMENT = AccountCode.PIX_SETTLEMENT
BOTH_LIMITS = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS


class Book:
    """A ledger state with its decider, and the log of every event applied to it."""

    def __init__(self) -> None:
        self.state = LedgerState()
        self.decider = Decider(self.state)
        self.log: list[LedgerEvent] = []

    def apply(self, events: list[LedgerEvent]) -> list[LedgerEvent]:
        for event in events:
            self.state.apply(event, position=len(self.log) + 1, verify_chain=True)
            self.log.append(event)
            self.state.position = len(self.log)
        return events

    def open(self, code: AccountCode = WALLET, *, flags: int | None = None, ledger: int = LEDGER_BRL) -> UUID:
        account_id = uuid.uuid4()
        decided = self.decider.open_account(
            OpenAccount(account_id, code, REQUIRED_FLAGS[code] if flags is None else flags, ledger), NOW
        )
        assert isinstance(decided, AccountOpened)
        self.apply([decided])
        return account_id

    def transfer(self, cmd: CreateTransfer, now: datetime = NOW) -> list[LedgerEvent]:
        return self.apply(self.decider.transfer(cmd, now))

    def close(self, account_id: UUID) -> AccountClosed | AccountResult:
        decided = self.decider.close_account(CloseAccount(account_id), NOW)
        if isinstance(decided, AccountClosed):
            self.apply([decided])
        return decided

    def balances(self, account_id: UUID) -> list[int]:
        return self.state.accounts[account_id].balances()

    def available(self, account_id: UUID) -> int:
        a = self.state.accounts[account_id]
        return a.credits_posted - a.debits_posted - a.debits_pending


def single(key: str, debit: UUID | None, credit: UUID | None, amount: int | None, **kw: object) -> CreateTransfer:
    return CreateTransfer(key, debit, credit, amount, **kw)  # type: ignore[arg-type]


@pytest.fixture
def book() -> Book:
    return Book()


@pytest.fixture
def funded(book: Book) -> tuple[Book, UUID, UUID, UUID]:
    """A settlement account, a wallet holding 100.00 and an empty wallet."""
    settlement, rich, poor = book.open(SETTLEMENT), book.open(WALLET), book.open(WALLET)
    book.transfer(single("deposit", settlement, rich, 10_000))
    return book, settlement, rich, poor


def refused(
    book: Book, cmd: CreateTransfer, error: type[errors.LedgerError], now: datetime = NOW
) -> errors.LedgerError:
    """Asserts the decider refuses ``cmd`` with ``error`` and that the state did not change."""
    before = book.state.fingerprint()
    transfers = len(book.state.transfers)
    with pytest.raises(error) as caught:
        book.decider.transfer(cmd, now)
    assert type(caught.value) is error
    assert caught.value.code == error.code
    assert book.state.fingerprint() == before
    assert len(book.state.transfers) == transfers
    return caught.value


# ---- accounts --------------------------------------------------------------------------------------------------


def test_open_account_starts_at_zero_and_is_idempotent_by_id(book: Book) -> None:
    account_id = book.open(WALLET)
    account = book.state.accounts[account_id]
    assert account.balances() == [0, 0, 0, 0]
    assert (account.code, account.flags, account.ledger) == (WALLET, REQUIRED_FLAGS[WALLET], LEDGER_BRL)
    again = book.decider.open_account(OpenAccount(account_id, WALLET, REQUIRED_FLAGS[WALLET]), NOW)
    assert isinstance(again, AccountResult)
    assert again.replayed is True
    assert again.account.id == account_id


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"code": AccountCode.BORROWER_WALLET}, "code"),
        ({"flags": int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)}, "flags"),
        ({"ledger": 840}, "ledger"),
        ({"reference": "someone else"}, "reference"),
    ],
)
def test_open_account_again_with_other_fields_is_a_conflict_naming_the_field(
    book: Book, change: dict[str, object], field: str
) -> None:
    account_id = book.open(WALLET)
    fields: dict[str, object] = {"account_id": account_id, "code": WALLET, "flags": REQUIRED_FLAGS[WALLET]}
    fields.update(change)
    with pytest.raises(errors.IdempotencyConflict) as caught:
        book.decider.open_account(OpenAccount(**fields), NOW)  # type: ignore[arg-type]
    assert caught.value.context["field"] == field


@pytest.mark.parametrize(
    ("code", "flags", "ledger", "field"),
    [
        (999, 0, LEDGER_BRL, "code"),
        (WALLET, AccountFlags.CLOSED | REQUIRED_FLAGS[WALLET], LEDGER_BRL, "flags"),
        (WALLET, 1 << 7, LEDGER_BRL, "flags"),
        (AccountCode.SUSPENSE, BOTH_LIMITS, LEDGER_BRL, "flags"),
        (WALLET, REQUIRED_FLAGS[WALLET], 0, "ledger"),
    ],
)
def test_open_account_refuses_bad_fields(book: Book, code: int, flags: int, ledger: int, field: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        book.decider.open_account(OpenAccount(uuid.uuid4(), code, flags, ledger), NOW)
    assert caught.value.context["field"] == field
    assert book.state.accounts == {}


@pytest.mark.parametrize("code", sorted(REQUIRED_FLAGS))
def test_open_account_refuses_an_account_without_the_flags_its_kind_requires(book: Book, code: AccountCode) -> None:
    # DESIGN §2: `debits_must_not_exceed_credits` for every customer wallet; chart.REQUIRED_FLAGS says which
    # flags each kind "must carry". Without them an investor wallet opened with flags=0 can go negative.
    with pytest.raises(errors.InvalidRequest) as caught:
        book.decider.open_account(OpenAccount(uuid.uuid4(), code, int(AccountFlags.NONE)), NOW)
    assert caught.value.context["field"] == "flags"


def test_close_account_only_at_zero_balance_and_nothing_pending(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    with pytest.raises(errors.AccountBalanceNotZero):
        book.decider.close_account(CloseAccount(rich), NOW)
    # A pending debit leaves a posted balance of zero but something reserved: still not closable.
    book.transfer(single("hold", rich, poor, 10_000, kind="pending"))
    book.transfer(single("post", None, None, None, kind="post_pending", pending_id=transfer_id_for_key("hold")))
    book.transfer(single("back-pending", poor, settlement, 10_000, kind="pending"))
    with pytest.raises(errors.AccountBalanceNotZero):
        book.decider.close_account(CloseAccount(poor), NOW)
    book.transfer(single("back-post", None, None, None, kind="post_pending",
                         pending_id=transfer_id_for_key("back-pending")))
    # rich: 100.00 in, 100.00 out; poor: 100.00 in, 100.00 out. Both net to zero and may close.
    for account_id in (rich, poor):
        closed = book.close(account_id)
        assert isinstance(closed, AccountClosed)
        assert book.state.accounts[account_id].closed
        again = book.close(account_id)
        assert isinstance(again, AccountResult) and again.replayed
    book.state.check_invariants()


def test_close_account_refuses_an_unknown_account(book: Book) -> None:
    with pytest.raises(errors.AccountNotFound):
        book.decider.close_account(CloseAccount(uuid.uuid4()), NOW)


def test_a_closed_account_takes_no_transfer_either_way(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, settlement, rich, _ = funded
    empty = book.open(WALLET)
    book.close(empty)
    refused(book, single("to-closed", settlement, empty, 100), errors.AccountClosed)
    refused(book, single("from-closed", empty, rich, 100), errors.AccountClosed)
    refused(book, single("hold-closed", settlement, empty, 100, kind="pending"), errors.AccountClosed)


# ---- single transfers --------------------------------------------------------------------------------------------


def test_single_transfer_moves_posted_balances_and_carries_post_states(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    [event] = book.transfer(single("pay", rich, poor, 2_500, code=20, reference="loan:42"))
    assert isinstance(event, TransferCommitted)
    assert event.originator_id == transfer_id_for_key("pay")
    assert (event.kind, event.amount_centavos, event.code, event.reference) == ("single", 2_500, 20, "loan:42")
    assert event.debit_after == book.balances(rich) == [0, 2_500, 0, 10_000]
    assert event.credit_after == book.balances(poor) == [0, 0, 0, 2_500]
    assert book.balances(settlement) == [0, 10_000, 0, 0]
    book.state.check_invariants()


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        (0, errors.AmountMustBePositive),
        (-1, errors.AmountMustBePositive),
        (AMOUNT_CENTAVOS_MAX + 1, errors.AmountTooLarge),
        (None, errors.InvalidRequest),
    ],
)
def test_transfer_refuses_bad_amounts(
    funded: tuple[Book, UUID, UUID, UUID], amount: object, error: type[errors.LedgerError]
) -> None:
    book, _, rich, poor = funded
    refused(book, single("bad-amount", rich, poor, amount), error)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount_centavos": 1.5}, "amount_centavos"),
        ({"amount_centavos": True}, "amount_centavos"),
        ({"amount_centavos": "100"}, "amount_centavos"),
        ({"timeout_s": 1.5}, "timeout_s"),
        ({"timeout_s": False}, "timeout_s"),
        ({"key": 7}, "key"),
        ({"debit_account_id": str(uuid.UUID(int=1))}, "debit_account_id"),
        ({"credit_account_id": 1}, "credit_account_id"),
        ({"pending_id": "hold"}, "pending_id"),
        ({"kind": None}, "kind"),
        ({"ledger": True}, "ledger"),
        ({"code": "1"}, "code"),
        ({"reference": None}, "reference"),
    ],
)
def test_a_transfer_with_a_field_of_the_wrong_type_is_refused_when_built(
    change: dict[str, object], field: str
) -> None:
    # Refused before any decider reads it (ADR 0020): the decider may run compiled, which would convert the value.
    fields: dict[str, object] = {"key": "typed", "debit_account_id": uuid.uuid4(), "credit_account_id": uuid.uuid4(),
                                 "amount_centavos": 100}
    fields.update(change)
    with pytest.raises(errors.InvalidRequest) as caught:
        CreateTransfer(**fields)  # type: ignore[arg-type]
    assert caught.value.context["field"] == field


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (lambda: OpenAccount("not-a-uuid", WALLET, REQUIRED_FLAGS[WALLET]), "account_id"),  # type: ignore[arg-type]
        (lambda: OpenAccount(uuid.uuid4(), True, REQUIRED_FLAGS[WALLET]), "code"),
        (lambda: OpenAccount(uuid.uuid4(), WALLET, 1.0), "flags"),  # type: ignore[arg-type]
        (lambda: OpenAccount(uuid.uuid4(), WALLET, REQUIRED_FLAGS[WALLET], owner_id="x"), "owner_id"),  # type: ignore[arg-type]
        (lambda: CloseAccount(None), "account_id"),  # type: ignore[arg-type]
        (lambda: CreateLinkedTransfers([single("a", uuid.uuid4(), uuid.uuid4(), 1)]), "transfers"),  # type: ignore[arg-type]
        (lambda: CreateTransfers(("not a transfer",)), "transfers"),  # type: ignore[arg-type]
    ],
)
def test_other_commands_with_a_field_of_the_wrong_type_are_refused_when_built(
    command: Callable[[], object], field: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        command()
    assert caught.value.context["field"] == field


def test_transfer_refuses_unknown_accounts_naming_the_account(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, _ = funded
    ghost = uuid.uuid4()
    assert refused(book, single("to-ghost", rich, ghost, 1), errors.AccountNotFound).context["account_id"] == str(ghost)
    assert refused(book, single("from-ghost", ghost, rich, 1), errors.AccountNotFound).context["account_id"] == str(
        ghost
    )


def test_transfer_refuses_debit_equal_to_credit(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, _ = funded
    refused(book, single("self", rich, rich, 1), errors.AccountsMustBeDifferent)


def test_transfer_refuses_accounts_of_another_ledger(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, _ = funded
    dollars = book.open(AccountCode.SUSPENSE, ledger=840)
    refused(book, single("cross-ledger", rich, dollars, 1), errors.LedgerMismatch)
    refused(book, single("cross-ledger-2", dollars, rich, 1, ledger=840), errors.LedgerMismatch)
    # Both accounts on BRL, the transfer on another ledger.
    refused(book, single("wrong-ledger", rich, book.open(WALLET), 1, ledger=840), errors.LedgerMismatch)


def test_wallet_cannot_go_negative_by_a_single_centavo(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    err = refused(book, single("overdraw", rich, poor, 10_001), errors.InsufficientFunds)
    assert err.context["available_centavos"] == 10_000
    book.transfer(single("exact", rich, poor, 10_000))
    assert book.available(rich) == 0
    refused(book, single("one-more", rich, poor, 1), errors.InsufficientFunds)


def test_asset_accounts_cannot_be_credited_beyond_their_debits(book: Book) -> None:
    settlement, wallet = book.open(SETTLEMENT), book.open(WALLET)
    receivable = book.open(AccountCode.LOAN_RECEIVABLE)  # no debit limit: only the credit side is checked
    book.transfer(single("in", settlement, wallet, 500))
    # Settlement holds 5.00 (its debits); crediting it 5.01 would make the platform's PSP balance negative.
    err = refused(book, single("drain", receivable, settlement, 501), errors.ExceedsDebits)
    assert err.context["account_id"] == str(settlement)
    book.transfer(single("drain-exact", receivable, settlement, 500))
    assert book.balances(settlement) == [0, 500, 0, 500]
    fresh = book.open(AccountCode.LOAN_RECEIVABLE)
    err = refused(book, single("credit-fresh", wallet, fresh, 1), errors.ExceedsDebits)
    assert err.context["account_id"] == str(fresh)
    refused(book, single("hold-fresh", wallet, fresh, 1, kind="pending"), errors.ExceedsDebits)


def test_transfer_refuses_balance_overflow(book: Book) -> None:
    settlement, suspense = book.open(SETTLEMENT), book.open(AccountCode.SUSPENSE)
    # Reaching 2**63 by real transfers takes ~9,224 of the largest amount; set a consistent state directly.
    book.state.accounts[settlement].debits_posted = BALANCE_CENTAVOS_MAX - 10
    book.state.accounts[suspense].credits_posted = BALANCE_CENTAVOS_MAX - 10
    book.state.check_invariants()
    err = refused(book, single("overflow", settlement, suspense, 11), errors.Overflow)
    assert err.context["account_id"] in (str(settlement), str(suspense))
    refused(book, single("overflow-pending", settlement, suspense, 11, kind="pending"), errors.Overflow)
    book.transfer(single("to-the-brim", settlement, suspense, 10))
    assert book.balances(settlement)[1] == BALANCE_CENTAVOS_MAX
    book.state.check_invariants()


def test_overflow_counts_pending_and_posted_together(book: Book) -> None:
    settlement, suspense = book.open(SETTLEMENT), book.open(AccountCode.SUSPENSE)
    book.state.accounts[settlement].debits_posted = BALANCE_CENTAVOS_MAX - 10
    book.state.accounts[suspense].credits_posted = BALANCE_CENTAVOS_MAX - 10
    book.transfer(single("hold-5", settlement, suspense, 5, kind="pending"))
    # Neither field alone passes the maximum, but posted + pending would.
    refused(book, single("hold-6", settlement, suspense, 6, kind="pending"), errors.Overflow)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"key": ""}, "key"),
        ({"key": "k" * (IDEMPOTENCY_KEY_LENGTH_MAX + 1)}, "key"),
        ({"key": "line\nbreak"}, "key"),
        ({"key": "lone \ud800 surrogate"}, "key"),  # not UTF-8: refused, not a UnicodeEncodeError
        ({"reference": "r" * (REFERENCE_LENGTH_MAX + 1)}, "reference"),
        ({"reference": "tab\there"}, "reference"),
        ({"reference": "lone \udfff surrogate"}, "reference"),
        ({"kind": "refund"}, "kind"),
        ({"timeout_s": 60}, "timeout_s"),
        ({"pending_id": uuid.UUID(int=1)}, "pending_id"),
    ],
)
def test_transfer_refuses_malformed_requests_naming_the_field(
    funded: tuple[Book, UUID, UUID, UUID], change: dict[str, object], field: str
) -> None:
    book, _, rich, poor = funded
    fields: dict[str, object] = {"key": "malformed", "debit_account_id": rich, "credit_account_id": poor,
                                 "amount_centavos": 100}
    fields.update(change)
    err = refused(book, CreateTransfer(**fields), errors.InvalidRequest)  # type: ignore[arg-type]
    assert err.context["field"] == field


def test_key_of_the_maximum_length_is_accepted(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("k" * IDEMPOTENCY_KEY_LENGTH_MAX, rich, poor, 1, reference="r" * REFERENCE_LENGTH_MAX))


# ---- two-phase transfers -------------------------------------------------------------------------------------------


def test_pending_reserves_and_the_reservation_counts_against_funds(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    [event] = book.transfer(single("hold", rich, poor, 6_000, kind="pending", timeout_s=60))
    assert event.debit_after == book.balances(rich) == [6_000, 0, 0, 10_000]  # type: ignore[attr-defined]
    assert event.credit_after == book.balances(poor) == [0, 0, 6_000, 0]  # type: ignore[attr-defined]
    assert book.state.pending[event.originator_id].expires_at == NOW + timedelta(seconds=60)
    assert book.available(rich) == 4_000
    refused(book, single("too-much", rich, poor, 4_001), errors.InsufficientFunds)
    refused(book, single("too-much-hold", rich, poor, 4_001, kind="pending"), errors.InsufficientFunds)
    book.state.check_invariants()


def test_post_in_full_settles_the_reserved_amount(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending"))
    pending_id = transfer_id_for_key("hold")
    committed, resolved = book.transfer(single("post", None, None, None, kind="post_pending", pending_id=pending_id))
    assert isinstance(committed, TransferCommitted) and isinstance(resolved, PendingTransferResolved)
    assert (committed.debit_account_id, committed.credit_account_id) == (rich, poor)
    assert committed.amount_centavos == 6_000 and committed.requested_amount_centavos is None
    assert (resolved.originator_id, resolved.originator_version, resolved.resolution) == (pending_id, 2, "posted")
    assert resolved.by_transfer_id == transfer_id_for_key("post")
    assert book.balances(rich) == [0, 6_000, 0, 10_000]
    assert book.balances(poor) == [0, 0, 0, 6_000]
    assert pending_id not in book.state.pending
    book.state.check_invariants()


def test_partial_post_settles_part_and_releases_the_rest(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending"))
    pending_id = transfer_id_for_key("hold")
    committed, _ = book.transfer(single("post", None, None, 2_500, kind="post_pending", pending_id=pending_id))
    assert committed.amount_centavos == 2_500  # type: ignore[attr-defined]
    assert book.balances(rich) == [0, 2_500, 0, 10_000]
    assert book.balances(poor) == [0, 0, 0, 2_500]
    assert book.available(rich) == 7_500
    refused(book, single("post-rest", None, None, 1, kind="post_pending", pending_id=pending_id),
            errors.PendingTransferAlreadyPosted)
    book.state.check_invariants()


def test_void_releases_the_whole_reservation(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending"))
    pending_id = transfer_id_for_key("hold")
    committed, resolved = book.transfer(single("void", None, None, None, kind="void_pending", pending_id=pending_id))
    assert committed.amount_centavos == 6_000  # type: ignore[attr-defined]
    assert resolved.resolution == "voided"  # type: ignore[attr-defined]
    assert book.balances(rich) == [0, 0, 0, 10_000]
    assert book.balances(poor) == [0, 0, 0, 0]
    book.state.check_invariants()


def test_void_with_another_amount_is_refused(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending"))
    pending_id = transfer_id_for_key("hold")
    err = refused(book, single("void", None, None, 1_000, kind="void_pending", pending_id=pending_id),
                  errors.InvalidRequest)
    assert err.context["field"] == "amount_centavos"


def test_post_more_than_pending_is_refused(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending"))
    pending_id = transfer_id_for_key("hold")
    err = refused(book, single("post", None, None, 6_001, kind="post_pending", pending_id=pending_id),
                  errors.ExceedsPendingAmount)
    assert err.context["pending_amount_centavos"] == 6_000
    refused(book, single("post-0", None, None, 0, kind="post_pending", pending_id=pending_id),
            errors.AmountMustBePositive)


@pytest.mark.parametrize(
    ("first", "second", "error"),
    [
        ("post_pending", "post_pending", errors.PendingTransferAlreadyPosted),
        ("post_pending", "void_pending", errors.PendingTransferAlreadyPosted),
        ("void_pending", "void_pending", errors.PendingTransferAlreadyVoided),
        ("void_pending", "post_pending", errors.PendingTransferAlreadyVoided),
    ],
)
def test_a_pending_transfer_settles_once(
    funded: tuple[Book, UUID, UUID, UUID], first: str, second: str, error: type[errors.LedgerError]
) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending"))
    pending_id = transfer_id_for_key("hold")
    book.transfer(single("first", None, None, None, kind=first, pending_id=pending_id))
    refused(book, single("second", None, None, None, kind=second, pending_id=pending_id), error)


def test_settling_something_that_is_not_an_open_pending_transfer(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, _, _ = funded
    refused(book, single("post-ghost", None, None, None, kind="post_pending", pending_id=uuid.uuid4()),
            errors.PendingTransferNotFound)
    refused(book, single("post-single", None, None, None, kind="post_pending",
                         pending_id=transfer_id_for_key("deposit")), errors.PendingTransferNotPending)
    refused(book, single("no-id", None, None, None, kind="void_pending"), errors.InvalidRequest)


def test_settle_names_no_accounts_and_no_timeout(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending"))
    pending_id = transfer_id_for_key("hold")
    refused(book, single("post-accounts", rich, poor, None, kind="post_pending", pending_id=pending_id),
            errors.InvalidRequest)
    refused(book, single("post-timeout", None, None, None, kind="post_pending", pending_id=pending_id, timeout_s=5),
            errors.InvalidRequest)
    refused(book, single("post-other-ledger", None, None, None, kind="post_pending", pending_id=pending_id,
                         ledger=840), errors.LedgerMismatch)


def test_a_pending_transfer_cannot_be_settled_at_or_after_its_timeout(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending", timeout_s=60))
    pending_id = transfer_id_for_key("hold")
    deadline = NOW + timedelta(seconds=60)
    refused(book, single("post-late", None, None, None, kind="post_pending", pending_id=pending_id),
            errors.PendingTransferExpired, now=deadline)
    refused(book, single("void-late", None, None, None, kind="void_pending", pending_id=pending_id),
            errors.PendingTransferExpired, now=deadline + timedelta(days=1))
    book.transfer(single("post-in-time", None, None, None, kind="post_pending", pending_id=pending_id),
                  now=deadline - timedelta(microseconds=1))


def test_expiry_releases_the_reservation_and_ends_the_pending_transfer(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending", timeout_s=60))
    book.transfer(single("hold-forever", rich, poor, 1_000, kind="pending"))
    pending_id = transfer_id_for_key("hold")
    assert book.state.due_expiries(NOW + timedelta(seconds=59)) == []
    [due] = book.state.due_expiries(NOW + timedelta(seconds=60))
    assert due.id == pending_id
    expired = book.decider.expire(due, NOW + timedelta(seconds=60))
    assert isinstance(expired, PendingTransferExpired)
    assert (expired.originator_id, expired.originator_version, expired.amount_centavos) == (pending_id, 2, 6_000)
    book.apply([expired])
    assert book.balances(rich) == [1_000, 0, 0, 10_000]
    assert expired.debit_after == book.balances(rich) and expired.credit_after == book.balances(poor)
    assert book.state.transfers[pending_id].resolution == "expired"
    # A heap entry is due once only.
    assert book.state.due_expiries(NOW + timedelta(days=365)) == []
    refused(book, single("post-expired", None, None, None, kind="post_pending", pending_id=pending_id),
            errors.PendingTransferExpired)
    book.state.check_invariants()


@pytest.mark.parametrize("timeout_s", [-1, PENDING_TIMEOUT_S_MAX + 1])
def test_pending_timeout_must_be_within_bounds(funded: tuple[Book, UUID, UUID, UUID], timeout_s: object) -> None:
    book, _, rich, poor = funded
    err = refused(book, single("hold", rich, poor, 1, kind="pending", timeout_s=timeout_s), errors.InvalidRequest)
    assert err.context["field"] == "timeout_s"


# ---- idempotency (decider level) -----------------------------------------------------------------------------------


def test_replay_of_returns_the_original_even_when_the_transfer_could_no_longer_happen(
    funded: tuple[Book, UUID, UUID, UUID],
) -> None:
    book, _, rich, poor = funded
    cmd = single("all-in", rich, poor, 10_000)
    book.transfer(cmd)
    assert book.decider.replay_of(single("never-seen", rich, poor, 1)) is None
    replay = book.decider.replay_of(cmd)
    assert replay is not None and replay.replayed and replay.amount_centavos == 10_000
    assert replay.position == book.state.transfers[cmd.transfer_id].position


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "pending"}, "kind"),
        ({"debit_account_id": "other"}, "debit_account_id"),
        ({"credit_account_id": "other"}, "credit_account_id"),
        ({"amount_centavos": 101}, "amount_centavos"),
        ({"pending_id": uuid.UUID(int=7)}, "pending_id"),
        ({"timeout_s": 30}, "timeout_s"),
        ({"ledger": 840}, "ledger"),
        ({"code": 22}, "code"),
        ({"reference": "another"}, "reference"),
    ],
)
def test_same_key_other_payload_conflicts_naming_the_field(
    funded: tuple[Book, UUID, UUID, UUID], change: dict[str, object], field: str
) -> None:
    book, settlement, rich, poor = funded
    original = single("pay", rich, poor, 100, code=1, reference="ref")
    book.transfer(original)
    fields = {f.name: getattr(original, f.name) for f in dataclasses.fields(original) if f.init}
    fields.update({k: (settlement if v == "other" else v) for k, v in change.items()})
    with pytest.raises(errors.IdempotencyConflict) as caught:
        book.decider.replay_of(CreateTransfer(**fields))  # type: ignore[arg-type]
    assert caught.value.context["field"] == field
    assert caught.value.context["key"] == "pay"


def test_settle_replay_conflicts_name_the_field(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 6_000, kind="pending"))
    book.transfer(single("hold-2", rich, poor, 1_000, kind="pending"))
    pending_id = transfer_id_for_key("hold")
    post = single("post", None, None, None, kind="post_pending", pending_id=pending_id)
    book.transfer(post)
    assert book.decider.replay_of(post) is not None
    cases = {
        "amount_centavos": dataclasses.replace(post, amount_centavos=6_000),
        "pending_id": dataclasses.replace(post, pending_id=transfer_id_for_key("hold-2")),
        "kind": dataclasses.replace(post, kind="void_pending"),
        "reference": dataclasses.replace(post, reference="x"),
    }
    for field, cmd in cases.items():
        with pytest.raises(errors.IdempotencyConflict) as caught:
            book.decider.replay_of(cmd)
        assert caught.value.context["field"] == field


# ---- linked batches (pure checks) ----------------------------------------------------------------------------------


def test_check_linked_bounds_and_unique_keys(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    _, _, rich, poor = funded
    with pytest.raises(errors.InvalidRequest):
        check_linked(CreateLinkedTransfers(()))
    with pytest.raises(errors.InvalidRequest):
        check_linked(CreateLinkedTransfers((single("a", rich, poor, 1), single("a", rich, poor, 2))))
    too_many = tuple(single(f"t{i}", rich, poor, 1) for i in range(LINKED_TRANSFERS_MAX + 1))
    with pytest.raises(errors.BatchTooLarge):
        check_linked(CreateLinkedTransfers(too_many))
    check_linked(CreateLinkedTransfers(too_many[:LINKED_TRANSFERS_MAX]))
    batch = CreateLinkedTransfers((single("a", rich, poor, 1), single("b", rich, poor, 2)))
    assert linked_batch_id_of(batch) == linked_batch_id_of(dataclasses.replace(batch))


# ---- evolve: journal, chain, verification ------------------------------------------------------------------------


def test_rollback_undoes_everything_since_begin(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    book.transfer(single("old-hold", rich, poor, 1_000, kind="pending", timeout_s=10))
    before = book.state.fingerprint()
    transfers_before = dict(book.state.transfers)
    book.state.begin()
    book.transfer(single("a", rich, poor, 500))
    book.transfer(single("b", rich, poor, 500, kind="pending", timeout_s=5))
    book.transfer(single("c", None, None, None, kind="void_pending", pending_id=transfer_id_for_key("old-hold")))
    new_account = book.open(WALLET)
    book.close(new_account)
    assert book.state.fingerprint() != before
    book.state.rollback()
    assert book.state.fingerprint() == before
    assert dict(book.state.transfers) == transfers_before
    assert book.state.transfers[transfer_id_for_key("old-hold")].resolution is None
    assert transfer_id_for_key("old-hold") in book.state.pending
    # The rolled-back hold with its earlier timeout must not expire anything.
    assert book.state.due_expiries(NOW + timedelta(seconds=9)) == []
    book.state.check_invariants()
    del book.log[-6:]  # the rolled-back events were never committed
    replayed = LedgerState()
    for event in book.log:
        replayed.apply(event)
    assert replayed.fingerprint() == book.state.fingerprint()
    assert settlement in replayed.accounts


def test_rebuild_from_the_log_gives_the_same_state(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, settlement, rich, poor = funded
    book.transfer(single("hold", rich, poor, 3_000, kind="pending", timeout_s=60))
    book.transfer(single("hold-2", rich, poor, 1_000, kind="pending"))
    book.transfer(single("post", None, None, 1_000, kind="post_pending", pending_id=transfer_id_for_key("hold")))
    book.transfer(single("out", poor, settlement, 500))
    rebuilt = LedgerState()
    for event in book.log:
        rebuilt.apply(event)
    assert rebuilt.fingerprint() == book.state.fingerprint()
    assert rebuilt.chain_hash == book.log[-1].chain_hash != GENESIS_CHAIN_HASH


def test_chain_hash_links_every_event_to_the_one_before(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.transfer(single("hold", rich, poor, 3_000, kind="pending"))
    book.transfer(single("void", None, None, None, kind="void_pending", pending_id=transfer_id_for_key("hold")))
    previous = GENESIS_CHAIN_HASH
    hashes = set()
    for event in book.log:
        assert event.chain_hash == chain_hash_of(previous, event)
        previous = event.chain_hash
        hashes.add(previous)
    assert len(hashes) == len(book.log)


def test_apply_refuses_an_event_whose_chain_hash_does_not_match(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    [event] = book.decider.transfer(single("pay", rich, poor, 100), NOW)
    forged = dataclasses.replace(event, reference="changed after hashing")
    with pytest.raises(AssertionError, match="chain"):
        book.state.apply(forged)


def test_apply_refuses_an_event_whose_post_state_does_not_match(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    [event] = book.decider.transfer(single("pay", rich, poor, 100), NOW)
    assert isinstance(event, TransferCommitted)
    forged = dataclasses.replace(event, amount_centavos=1_000)  # the post-states still say 1.00
    with pytest.raises(AssertionError):
        book.state.apply(forged, verify_chain=False)
    forged = dataclasses.replace(event, credit_after=[0, 0, 0, 1_000])
    with pytest.raises(AssertionError):
        book.state.apply(forged, verify_chain=False)


def test_check_invariants_catches_unbalanced_and_negative_states(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    book, _, rich, poor = funded
    book.state.check_invariants()
    book.state.accounts[poor].credits_posted += 1  # money from nowhere
    with pytest.raises(AssertionError, match="posted"):
        book.state.check_invariants()
    book.state.accounts[poor].credits_posted -= 1
    book.state.accounts[rich].debits_posted += 20_000  # a wallet below zero
    book.state.accounts[poor].credits_posted += 20_000
    with pytest.raises(AssertionError, match="negative"):
        book.state.check_invariants()


def test_transfer_ids_are_derived_from_keys() -> None:
    assert transfer_id_for_key("k") == transfer_id_for_key("k")
    assert transfer_id_for_key("k") != transfer_id_for_key("K")
    assert transfer_id_for_key("k").version == 5


def test_payload_hash_covers_everything_but_the_key(funded: tuple[Book, UUID, UUID, UUID]) -> None:
    _, _, rich, poor = funded
    base = single("a", rich, poor, 100)
    # The rule the stored hashes were made with: computed once, when the command is built, and never changed.
    assert base.payload_hash() == hashlib.sha256(f"single|{rich}|{poor}|100|None|0|986|1|".encode()).hexdigest()
    assert base.payload_hash() == dataclasses.replace(base, key="b").payload_hash()
    for change in ({"amount_centavos": 101}, {"reference": "x"}, {"code": 2}, {"kind": "pending"},
                   {"timeout_s": 1}, {"ledger": 840}, {"debit_account_id": poor}):
        assert dataclasses.replace(base, **change).payload_hash() != base.payload_hash()  # type: ignore[arg-type]


@given(key=st.text(max_size=300))
def test_transfer_id_for_key_is_uuid5_of_the_key(key: str) -> None:
    # Built without ``UUID.__init__``: the same value, and the same object in every respect that anything reads.
    made, expected = transfer_id_for_key(key), uuid.uuid5(TRANSFER_ID_NAMESPACE, key)
    assert made == expected
    assert (hash(made), str(made), repr(made), made.bytes, made.version, made.is_safe) == (
        hash(expected), str(expected), repr(expected), expected.bytes, expected.version, expected.is_safe)
    assert pickle.loads(pickle.dumps(made)) == expected
    with pytest.raises(TypeError):
        made.int = 0  # type: ignore[misc]  # still immutable


class _TransferCode(enum.IntEnum):
    PIX = 10


class _AccountId(UUID):
    """A UUID of a subclass: accepted by the field-by-field checks, not by the fast one."""


@given(kind=st.sampled_from(TRANSFER_KINDS), amount=st.none() | st.integers(-10, 10**12),
       pending=st.none() | st.uuids(), timeout=st.integers(0, 100), code=st.sampled_from([1, _TransferCode.PIX]),
       reference=st.text(max_size=30), subclassed=st.booleans(), key=st.text(min_size=1, max_size=40))
def test_a_transfer_is_built_alike_on_the_fast_and_the_field_by_field_path(
    kind: str, amount: int | None, pending: UUID | None, timeout: int, code: int, reference: str, subclassed: bool,
    key: str,
) -> None:
    # The common shape (exact types, no pending id) skips the checks one field at a time; every other shape takes
    # them. Both must give the id of the key and the payload hash of the rule the stored hashes were made with.
    debit = uuid.uuid4()
    credit = _AccountId(int=uuid.uuid4().int) if subclassed else uuid.uuid4()
    built = CreateTransfer(key, debit, credit, amount, kind=kind, pending_id=pending, timeout_s=timeout,  # type: ignore[arg-type]
                           code=code, reference=reference)
    rule = "|".join(str(v) for v in (kind, debit, credit, amount, pending, timeout, LEDGER_BRL, code, reference))
    assert built.payload_hash() == hashlib.sha256(rule.encode("utf-8", "surrogatepass")).hexdigest()
    assert built.transfer_id == uuid.uuid5(TRANSFER_ID_NAMESPACE, key)


def test_trimming_the_index_never_forgets_the_transfers_not_committed_yet() -> None:
    # The pipelined writer trims between batches while the open batch's transfers are not in the store yet: a
    # forgotten key is looked up there, and would not be found (ADR 0023).
    state = LedgerState()
    state.index_bound = 2
    ids = [uuid.uuid4() for _ in range(5)]
    for n, transfer_id in enumerate(ids):
        state.transfers.add(transfer_id, f"entry {n}")  # type: ignore[arg-type]  # only the keys matter here
    state.trim_index(keep_newest=2)
    assert list(state.transfers) == ids[1:] and state.index_complete is False
    state.trim_index()
    assert list(state.transfers) == ids[3:]
