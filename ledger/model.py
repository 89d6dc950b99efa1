"""The ledger state machine: TigerBeetle semantics over integer centavos, pure and in memory.

``LedgerState`` is decided against (``decide_*`` return events or raise a typed ``LedgerError``) and evolved by
``apply`` — the one function that changes state, used both live and when rebuilding from the event store, so
the two can never disagree. ``apply`` re-checks every balance transition an event claims, so a corrupted or
forged event stops the rebuild with an ``AssertionError`` instead of silently changing balances.

Linked batches and per-command rollback inside a group commit use an undo journal (``begin``/``rollback``).
"""

from __future__ import annotations

import hashlib
import heapq
import uuid
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from ledger import errors
from ledger.canonical import chain_text
from ledger.chart import REQUIRED_FLAGS, AccountCode, AccountFlags
from ledger.command_types import (
    KEY_MESSAGE,
    REFERENCE_MESSAGE,
    TIMEOUT_MESSAGE,
    TRANSFER_ID_NAMESPACE,
    TRANSFER_KINDS,
    CloseAccount,
    Command,
    CreateLinkedTransfers,
    CreateTransfer,
    CreateTransfers,
    OpenAccount,
)
from ledger.events import (
    EVENT_TYPES,
    PIX_EVENT_TYPES,
    AccountClosed,
    AccountOpened,
    Balances,
    LedgerEvent,
    PartyRegistered,
    PendingTransferExpired,
    PendingTransferResolved,
    TransferCommitted,
)
from ledger.index import IdFilter, TransferIndex
from ledger.limits import (
    BALANCE_CENTAVOS_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    LEDGER_BRL,
    LINKED_TRANSFERS_MAX,
    PENDING_TIMEOUT_S_MAX,
    REFERENCE_LENGTH_MAX,
    TRANSFER_INDEX_RECENT_MAX,
    TRANSFERS_PER_COMMAND_MAX,
)
from ledger.money import check_amount
from ledger.parties import Party, RegisterParty, wallet_id_for_party
from ledger.pix_state import PixState

GENESIS_CHAIN_HASH = "0" * 64


# Plain ints: ``int & IntFlag`` goes through the enum machinery, which costs microseconds on the hot path.
_CLOSED = int(AccountFlags.CLOSED)
_DEBITS_MUST_NOT_EXCEED_CREDITS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CREDITS_MUST_NOT_EXCEED_DEBITS = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)



# --------------------------------------------------------------------------------------------------------------
# State


@dataclass(slots=True)
class Account:
    id: UUID
    ledger: int
    code: int
    flags: int
    reference: str
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    version: int = 1
    owner_id: UUID | None = None
    #: The state's ``capture_round`` in which this account was put in its ``changed_accounts`` (each account is
    #: listed once per round; a capture starts a new round, which unlists every account at once).
    listed_in_round: int = field(default=0, compare=False, repr=False)

    @property
    def closed(self) -> bool:
        return bool(self.flags & _CLOSED)

    def balances(self) -> Balances:
        return [self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted]

    def set_balances(self, after: Sequence[int]) -> None:
        self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted = after

    def row(self) -> list[object]:
        return Account.row_of(self.values())

    def values(self) -> tuple[Any, ...]:
        """Every field, as they are now (a cheap copy: a checkpoint takes one of every account in the writer)."""
        return (self.id, self.ledger, self.code, self.flags, self.reference, self.debits_pending, self.debits_posted,
                self.credits_pending, self.credits_posted, self.version, self.owner_id)

    @staticmethod
    def row_of(values: tuple[Any, ...]) -> list[object]:
        """The checkpoint row of ``values()`` (ids as text)."""
        owner = values[10]
        return [str(values[0]), *values[1:10], str(owner) if owner else None]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Account:
        owner = UUID(row[10]) if row[10] else None
        return cls(UUID(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], owner)


@dataclass(slots=True)
class PendingTransfer:
    """A pending transfer still open (its reservation is counted in its accounts' ``*_pending``)."""

    id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount_centavos: int
    expires_at: datetime | None
    version: int = 1

    def row(self) -> list[object]:
        expires = self.expires_at.isoformat() if self.expires_at else None
        return [str(self.id), str(self.debit_account_id), str(self.credit_account_id), self.amount_centavos, expires]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> PendingTransfer:
        expires = datetime.fromisoformat(row[4]) if row[4] else None
        return cls(UUID(row[0]), UUID(row[1]), UUID(row[2]), row[3], expires)


@dataclass(frozen=True, slots=True)
class TransferResult:
    """What a committed transfer returns. ``position`` is its place in the event log (read-your-writes)."""

    id: UUID
    key: str
    kind: str
    debit_account_id: UUID
    credit_account_id: UUID
    amount_centavos: int
    pending_id: UUID | None
    timestamp: datetime
    position: int | None = None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class AccountResult:
    account: Account
    position: int | None = None
    replayed: bool = False


@dataclass(slots=True)
class _IndexedTransfer:
    """A committed transfer as the idempotency index keeps it: what a replay answers, what a different payload
    under the same key is compared with, and how it ended if it was pending.

    Not the ``TransferCommitted`` event itself: the event also carries its chain hash, both post-states and an
    attribute dict, and the index holds up to a million transfers. A process that had decided 910,000 transfers
    peaked at 1,052 MB with the events kept and at 529 MB with these entries (``ru_maxrss``); ``tracemalloc``
    counts 888 against 367 bytes a transfer (tests/unit/test_index.py)."""

    id: UUID
    key: str
    payload_hash: str
    kind: str
    ledger: int
    code: int
    debit_account_id: UUID
    credit_account_id: UUID
    amount_centavos: int
    requested_amount_centavos: int | None
    pending_id: UUID | None
    timeout_s: int
    reference: str
    timestamp: datetime
    position: int | None
    resolution: str | None = None  # "posted", "voided" or "expired" once a pending transfer is settled

    @classmethod
    def of(cls, e: TransferCommitted, position: int | None, resolution: str | None = None) -> _IndexedTransfer:
        return cls(e.originator_id, e.key, e.payload_hash, e.kind, e.ledger, e.code, e.debit_account_id,
                   e.credit_account_id, e.amount_centavos, e.requested_amount_centavos, e.pending_id, e.timeout_s,
                   e.reference, e.timestamp, position, resolution)


def result_of(entry: _IndexedTransfer, replayed: bool, position: int | None = None) -> TransferResult:
    """The result of a committed transfer; ``position`` overrides the entry's when the batch just assigned it."""
    return TransferResult(
        id=entry.id,
        key=entry.key,
        kind=entry.kind,
        debit_account_id=entry.debit_account_id,
        credit_account_id=entry.credit_account_id,
        amount_centavos=entry.amount_centavos,
        pending_id=entry.pending_id,
        timestamp=entry.timestamp,
        position=entry.position if position is None else position,
        replayed=replayed,
    )


def chain_next(previous_hash: str, event_type: str, originator_id: UUID, version: int, body: dict[str, Any]) -> str:
    """The hash of an event in the chain: SHA-256 over the previous hash and the event's canonical JSON."""
    # A field added in a later class version is left out while None (the upcast of an older event), so events
    # written before it existed keep their hash. Every other field is always hashed.
    added = EVENT_TYPES[event_type].chain_fields_added
    present = {k: v for k, v in body.items() if v is not None or k not in added} if added else body
    return hashlib.sha256(chain_text(previous_hash, event_type, originator_id, version, present)).hexdigest()


def chain_hash_of(previous_hash: str, event: LedgerEvent) -> str:
    """Recomputes the chain hash an event must carry, given the hash of the event before it."""
    body = {k: v for k, v in vars(event).items() if k not in ("originator_id", "originator_version", "chain_hash")}
    return chain_next(previous_hash, type(event).__name__, event.originator_id, event.originator_version, body)


class LedgerState:
    """All accounts, open pending transfers and recent transfers, owned by the single writer.

    Not thread safe: only the writer thread touches it.
    """

    def __init__(self) -> None:
        self.accounts: dict[UUID, Account] = {}
        self.parties: dict[UUID, Party] = {}
        #: (kind, document) -> party id: a CPF or CNPJ registers once per kind.
        self.documents: dict[tuple[str, str], UUID] = {}
        self.pending: dict[UUID, PendingTransfer] = {}
        self._expiry_heap: list[tuple[datetime, UUID]] = []
        self.transfers: TransferIndex[_IndexedTransfer] = TransferIndex(TRANSFER_INDEX_RECENT_MAX)
        #: How many transfers the index keeps before it forgets the oldest generations (an attribute, so a test can
        #: lower it even when this module runs compiled and its constants are built in).
        self.index_bound = TRANSFER_INDEX_RECENT_MAX
        #: False once the idempotency index has forgotten anything (eviction, or a checkpoint was loaded):
        #: from then on unknown keys must be looked up in the store before deciding.
        self.index_complete = True
        #: Every transfer id committed: those this state applied, and those before its checkpoint once the writer
        #: has loaded them (``LedgerWriter._load_state``). Only an id it may hold is looked up in the store.
        self.committed_ids = IdFilter()
        #: Whether ``committed_ids`` holds every id committed up to ``position``: False from a checkpoint (it holds
        #: accounts, not transfers) until the writer streams the earlier ids in, or hands over a filter that has them.
        self.committed_ids_complete = True
        self.chain_hash = GENESIS_CHAIN_HASH
        self.position = 0
        #: The position of the checkpoint this state was restored from (0: replayed from the start).
        self.checkpoint_position = 0
        #: Deposits, received Pix, withdrawals and devoluções (ledger.pix_state), evolved by PIX events only.
        self.pix = PixState()
        #: Accounts opened or changed since the writer's last checkpoint capture, each once, in order;
        #: ``None`` (not kept) until a capture asks for it (``ledger.application.CheckpointTables``), which then
        #: starts a new list and a new ``capture_round``.
        self.changed_accounts: list[Account] | None = None
        self.capture_round = 1
        #: While a checkpoint captured by reference is being built on another thread: the fields an account had at
        #: the capture, saved (by ``id`` of the account) when it is first changed after it (copy-on-write).
        self.saved_for_build: dict[int, tuple[Any, ...]] | None = None
        self._journal: list[Callable[[], None]] | None = None

    # ---- undo journal -------------------------------------------------------------------------------------
    def begin(self) -> None:
        assert self._journal is None, "nested journal"
        self._journal = []

    def commit(self) -> None:
        assert self._journal is not None
        self._journal = None

    def rollback(self) -> None:
        assert self._journal is not None
        journal, self._journal = self._journal, None
        for undo in reversed(journal):
            undo()

    @staticmethod
    def _forget(table: MutableMapping[UUID, Any], key: UUID) -> None:
        table.pop(key, None)

    def _record_undo(self, undo: Callable[[], None]) -> None:
        if self._journal is not None:
            self._journal.append(undo)

    def _list_as_changed(self, account: Account) -> None:
        """Called before every change of an account: the first change since the last capture lists it, and keeps
        its fields as of that capture for the checkpoint being built meanwhile, if any."""
        if self.changed_accounts is not None and account.listed_in_round != self.capture_round:
            account.listed_in_round = self.capture_round
            self.changed_accounts.append(account)
            saved = self.saved_for_build
            if saved is not None:
                saved[id(account)] = account.values()

    def _forget_opened(self, account: Account) -> None:
        """Undoes an account's opening: out of the state, and out of the list of changes (a refused command that
        opened it had listed it), so a capture never sees it."""
        self._forget(self.accounts, account.id)
        changes = self.changed_accounts
        if changes is not None and account.listed_in_round == self.capture_round:
            for index in range(len(changes) - 1, -1, -1):  # listed by this command, so near the end
                if changes[index] is account:
                    del changes[index]
                    break
            account.listed_in_round = 0

    def _touch_account(self, account: Account) -> None:
        self._list_as_changed(account)
        if self._journal is not None:
            saved = (account.balances(), account.flags, account.version)

            def undo() -> None:
                account.set_balances(saved[0])
                account.flags, account.version = saved[1], saved[2]

            self._journal.append(undo)

    # ---- queries ------------------------------------------------------------------------------------------
    def account(self, account_id: UUID) -> Account:
        try:
            return self.accounts[account_id]
        except KeyError:
            raise errors.AccountNotFound(f"account {account_id} does not exist", account_id=str(account_id)) from None

    def indexed(self, transfer_id: UUID) -> _IndexedTransfer | None:
        return self.transfers.get(transfer_id)

    def push_expiry(self, pending: PendingTransfer) -> None:
        assert pending.expires_at is not None
        heapq.heappush(self._expiry_heap, (pending.expires_at, pending.id))

    def due_expiries(self, now: datetime) -> list[PendingTransfer]:
        """Open pending transfers whose timeout has passed, oldest first.

        The heap may hold stale entries (settled transfers, or a rolled-back pending whose key was reused):
        an entry counts only while it still matches an open pending transfer, and only once.
        """
        due: dict[UUID, PendingTransfer] = {}
        while self._expiry_heap and self._expiry_heap[0][0] <= now:
            expires_at, pending_id = heapq.heappop(self._expiry_heap)
            p = self.pending.get(pending_id)
            if p is not None and p.expires_at == expires_at:
                due[pending_id] = p
        return list(due.values())

    # ---- evolve ---------------------------------------------------------------------------------------------
    def apply(self, event: LedgerEvent, position: int | None = None, verify_chain: bool = True) -> None:
        """Applies one committed (or about to be committed) event. The only mutator of the state.

        ``verify_chain`` recomputes the event's chain hash; the live writer skips it for events its own
        decider has just stamped, every rebuild from the store does it.
        """
        if verify_chain:
            assert event.chain_hash == chain_hash_of(self.chain_hash, event), f"chain broken at {event.originator_id}"
        previous_chain = self.chain_hash
        self.chain_hash = event.chain_hash
        self._record_undo(lambda: setattr(self, "chain_hash", previous_chain))
        if isinstance(event, TransferCommitted):
            self._apply_transfer(event, position)
        elif isinstance(event, PendingTransferResolved | PendingTransferExpired):
            self._apply_pending_end(event)
        elif isinstance(event, AccountOpened):
            assert event.originator_id not in self.accounts, "account opened twice"
            opened = self.accounts[event.originator_id] = Account(
                event.originator_id, event.ledger, event.code, event.flags, event.reference, owner_id=event.owner_id
            )
            self._list_as_changed(opened)
            self._record_undo(lambda: self._forget_opened(opened))
        elif isinstance(event, PartyRegistered):
            self.add_party(Party(event.originator_id, event.kind, event.name, event.document, event.email,
                                 event.phone, event.wallet_id, event.payload_hash))
        elif isinstance(event, AccountClosed):
            account = self.accounts[event.originator_id]
            assert account.version + 1 == event.originator_version
            self._touch_account(account)
            account.flags, account.version = event.flags, event.originator_version
        elif type(event).__name__ in PIX_EVENT_TYPES:
            self.pix.apply(event, position, self._record_undo)
        else:  # pragma: no cover - a new event type must be handled here before it is ever written
            raise AssertionError(f"unknown ledger event {type(event).__name__}")

    def _apply_transfer(self, event: TransferCommitted, position: int | None) -> None:
        debit, credit = self.accounts[event.debit_account_id], self.accounts[event.credit_account_id]
        amount = event.amount_centavos
        if event.kind == "single":
            deltas = (0, amount, 0, amount)
        elif event.kind == "pending":
            deltas = (amount, 0, amount, 0)
        else:
            assert event.pending_id is not None
            pending = self.pending[event.pending_id]
            assert (pending.debit_account_id, pending.credit_account_id) == (debit.id, credit.id)
            posted = amount if event.kind == "post_pending" else 0
            deltas = (-pending.amount_centavos, posted, -pending.amount_centavos, posted)
        d_pending, d_posted, c_pending, c_posted = deltas
        debit_after = [debit.debits_pending + d_pending, debit.debits_posted + d_posted,
                       debit.credits_pending, debit.credits_posted]
        credit_after = [credit.debits_pending, credit.debits_posted,
                        credit.credits_pending + c_pending, credit.credits_posted + c_posted]
        assert debit_after == event.debit_after, f"debit post-state mismatch in {event.originator_id}"
        assert credit_after == event.credit_after, f"credit post-state mismatch in {event.originator_id}"
        self._touch_account(debit)
        self._touch_account(credit)
        debit.set_balances(debit_after)
        credit.set_balances(credit_after)
        if event.kind in ("post_pending", "void_pending"):
            # The settling transfer ends the reservation itself, so the state as of its log position is whole
            # even though the pending transfer's own PendingTransferResolved event comes one position later.
            assert event.pending_id is not None
            self._end_pending(event.pending_id, "posted" if event.kind == "post_pending" else "voided")
        if event.kind == "pending":
            expires_at = event.timestamp + timedelta(seconds=event.timeout_s) if event.timeout_s else None
            self.pending[event.originator_id] = PendingTransfer(
                event.originator_id, debit.id, credit.id, amount, expires_at
            )
            if expires_at is not None:
                self.push_expiry(self.pending[event.originator_id])
            self._record_undo(lambda: self._forget(self.pending, event.originator_id))
        self._index(event.originator_id, _IndexedTransfer.of(event, position))

    def _end_pending(self, pending_id: UUID, resolution: str) -> PendingTransfer:
        pending = self.pending.pop(pending_id)
        self._record_undo(lambda: self.pending.__setitem__(pending.id, pending))
        entry = self.transfers.get(pending_id)
        if entry is not None:
            previous = entry.resolution
            entry.resolution = resolution
            self._record_undo(lambda: setattr(entry, "resolution", previous))
        return pending

    def _apply_pending_end(self, event: PendingTransferResolved | PendingTransferExpired) -> None:
        assert event.originator_version == 2, "a pending transfer ends once"
        if isinstance(event, PendingTransferResolved):
            # The settling transfer (applied just before) already released the reservation.
            assert event.originator_id not in self.pending, "resolved without its settling transfer"
            return
        pending = self._end_pending(event.originator_id, "expired")
        debit, credit = self.accounts[pending.debit_account_id], self.accounts[pending.credit_account_id]
        amount = pending.amount_centavos
        debit_after = [debit.debits_pending - amount, *debit.balances()[1:]]
        credit_after = [*credit.balances()[:2], credit.credits_pending - amount, credit.credits_posted]
        assert debit_after == event.debit_after and credit_after == event.credit_after, "expiry mismatch"
        self._touch_account(debit)
        self._touch_account(credit)
        debit.set_balances(debit_after)
        credit.set_balances(credit_after)

    def add_party(self, party: Party) -> None:
        assert party.id not in self.parties, "party registered twice"
        self.parties[party.id] = party
        self.documents[(party.kind, party.document)] = party.id

        def undo() -> None:
            del self.parties[party.id]
            del self.documents[(party.kind, party.document)]

        self._record_undo(undo)

    def _index(self, transfer_id: UUID, entry: _IndexedTransfer) -> None:
        self.transfers.add(transfer_id, entry)  # a transfer id is committed once: it cannot be in the index
        # Not undone with the rest of a refused command: "may have been committed" stays true of the id, and
        # costs at most one lookup that finds nothing.
        self.committed_ids.add(transfer_id.int)
        self._record_undo(lambda: self._forget(self.transfers, transfer_id))

    def trim_index(self, keep_newest: int = 0) -> None:
        """Forgets the oldest transfers beyond the index's bound, and never the ``keep_newest`` newest (decided
        but not committed yet: a store lookup would not find them). Called between batches only: within a batch
        every decision must see every key the batch started with (the batch's unknown keys were recalled then).
        """
        if self.transfers.trim(self.index_bound + keep_newest):
            self.index_complete = False

    def needs_lookup(self, transfer_id: UUID) -> bool:
        """Whether a transfer id must be looked up in the store before deciding: the index does not hold it but
        it may have been committed (always False while the index is complete)."""
        return (not self.index_complete and transfer_id not in self.transfers
                and (not self.committed_ids_complete or transfer_id.int in self.committed_ids))

    def remember(self, event: TransferCommitted, position: int | None, resolution: str | None) -> None:
        """Puts a transfer loaded from the store back into the idempotency index (not a state change)."""
        self.transfers.add(event.originator_id, _IndexedTransfer.of(event, position, resolution))

    def set_position(self, transfer_id: UUID, position: int) -> None:
        entry = self.transfers.get(transfer_id)
        if entry is not None:
            entry.position = position
        else:
            self.pix.set_position(transfer_id, position)

    # ---- invariants ---------------------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Asserts what must always hold; a failure here is a bug, never an operating error."""
        totals = [0, 0, 0, 0]
        for a in self.accounts.values():
            for i, v in enumerate(a.balances()):
                assert 0 <= v <= BALANCE_CENTAVOS_MAX, f"balance field out of range on {a.id}"
                totals[i] += v
            # Plain ints, not the enum: its operators run in Python (0.8 s of a restart at 200,000 accounts).
            if a.flags & _DEBITS_MUST_NOT_EXCEED_CREDITS:
                assert a.debits_pending + a.debits_posted <= a.credits_posted, f"{a.id} is negative"
            if a.flags & _CREDITS_MUST_NOT_EXCEED_DEBITS:
                assert a.credits_pending + a.credits_posted <= a.debits_posted, f"{a.id} exceeds debits"
        assert totals[0] == totals[2], "pending debits != pending credits"
        assert totals[1] == totals[3], "posted debits != posted credits"
        pending_total = sum(p.amount_centavos for p in self.pending.values())
        assert pending_total == totals[0], "open pending transfers do not add up to the pending balances"
        self.pix.check_invariants(self.pending.keys())

    def customer_funds_segregated(self) -> bool:
        """Customer wallets plus escrow never exceed what the PIX settlement account holds (DESIGN §2)."""
        customer = sum(
            a.credits_posted - a.debits_posted - a.debits_pending
            for a in self.accounts.values()
            if a.code in (AccountCode.INVESTOR_WALLET, AccountCode.BORROWER_WALLET, AccountCode.LOAN_ESCROW)
        )
        settlement = sum(
            a.debits_posted - a.credits_posted for a in self.accounts.values() if a.code == AccountCode.PIX_SETTLEMENT
        )
        return customer <= settlement

    def fingerprint(self) -> tuple[object, ...]:
        """Everything that defines the ledger's state, to compare a rebuilt state with the live one."""
        return (
            sorted(repr(a.row()) for a in self.accounts.values()),
            sorted(repr(p.row()) for p in self.pending.values()),
            sorted(repr(p.row()) for p in self.parties.values()),
            self.chain_hash,
            self.pix.fingerprint(),
        )


# --------------------------------------------------------------------------------------------------------------
# Decide: validate a command against the state and produce its events (without applying them).


class Decider:
    """Turns commands into events, stamping each with its chain hash, or raises a typed ``LedgerError``."""

    def __init__(self, state: LedgerState) -> None:
        self.state = state

    def _check_id_free(self, aggregate_id: UUID) -> None:
        """Accounts, parties and transfers share one id space in the event store: a clash would fail a whole batch."""
        if aggregate_id in self.state.accounts or aggregate_id in self.state.parties or (
            aggregate_id in self.state.transfers
        ):
            raise errors.AccountAlreadyExists(f"id {aggregate_id} is already in use", id=str(aggregate_id))

    def _chain(self, event_type: str, originator_id: UUID, version: int, body: dict[str, Any]) -> str:
        return chain_next(self.state.chain_hash, event_type, originator_id, version, body)

    def open_account(self, cmd: OpenAccount, now: datetime) -> AccountOpened | AccountResult:
        existing = self.state.accounts.get(cmd.account_id)
        if existing is not None:
            # Idempotency first: an existing account answers a replay or names the differing field.
            for name, asked, have in (("ledger", cmd.ledger, existing.ledger), ("code", cmd.code, existing.code),
                                      ("flags", cmd.flags, existing.flags & ~AccountFlags.CLOSED),
                                      ("reference", cmd.reference, existing.reference),
                                      ("owner_id", cmd.owner_id, existing.owner_id)):
                if asked != have:
                    raise errors.IdempotencyConflict(
                        f"account {cmd.account_id} exists with a different {name}", field=name
                    )
            return AccountResult(existing, replayed=True)
        self._check_id_free(cmd.account_id)
        _check_reference(cmd.reference)
        if cmd.ledger <= 0:
            raise errors.InvalidRequest("ledger must be a positive currency code", field="ledger")
        try:
            code = AccountCode(cmd.code)
        except ValueError:
            raise errors.InvalidRequest(f"unknown account code {cmd.code}", field="code") from None
        if cmd.flags & ~int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
                            | AccountFlags.HISTORY):
            raise errors.InvalidRequest("unknown or reserved account flags", field="flags")
        both = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
        if cmd.flags & both == both:
            raise errors.InvalidRequest("an account cannot limit both debits and credits", field="flags")
        required = REQUIRED_FLAGS[code]
        if cmd.flags & required != required:
            raise errors.InvalidRequest(f"a {code.name.lower()} account must carry the flags {required!r}",
                                        field="flags")
        if cmd.owner_id is not None and cmd.owner_id not in self.state.parties:
            raise errors.InvalidRequest(f"owner {cmd.owner_id} is not a registered party", field="owner_id")
        body: dict[str, Any] = {"timestamp": now, "ledger": cmd.ledger, "code": int(code), "flags": int(cmd.flags),
                "reference": cmd.reference, "owner_id": cmd.owner_id}
        return AccountOpened(
            originator_id=cmd.account_id, originator_version=1,
            chain_hash=self._chain("AccountOpened", cmd.account_id, 1, body), **body,
        )

    def register_party(self, cmd: RegisterParty, now: datetime) -> list[LedgerEvent] | Party:
        """The party's registration and its wallet's opening; the existing party for an exact replay."""
        _check_key(cmd.key)
        existing = self.state.parties.get(cmd.party_id)
        if existing is not None:
            if existing.payload_hash != cmd.payload_hash():
                field_name = next((f for f in ("kind", "name", "document", "email", "phone")
                                   if getattr(existing, f) != getattr(cmd, f)), "payload")
                raise errors.IdempotencyConflict(f"key {cmd.key!r} was already used for another party",
                                                 field=field_name, key=cmd.key)
            return existing
        cmd.validate()
        if (cmd.kind, cmd.document) in self.state.documents:
            raise errors.PartyAlreadyExists(f"a {cmd.kind} with this document is already registered",
                                            party_id=str(self.state.documents[(cmd.kind, cmd.document)]))
        party_id = cmd.party_id
        wallet_id = wallet_id_for_party(party_id)
        self._check_id_free(party_id)
        self._check_id_free(wallet_id)
        body: dict[str, Any] = {"timestamp": now, "key": cmd.key, "payload_hash": cmd.payload_hash(), "kind": cmd.kind,
                "name": cmd.name, "document": cmd.document, "email": cmd.email, "phone": cmd.phone,
                "wallet_id": wallet_id}
        registered = PartyRegistered(originator_id=party_id, originator_version=1,
                                     chain_hash=self._chain("PartyRegistered", party_id, 1, body), **body)
        code = AccountCode.INVESTOR_WALLET if cmd.kind == "investor" else AccountCode.BORROWER_WALLET
        account_body: dict[str, Any] = {
            "timestamp": now, "ledger": LEDGER_BRL, "code": int(code), "flags": int(REQUIRED_FLAGS[code]),
            "reference": f"party:{party_id}", "owner_id": party_id,
        }
        opened = AccountOpened(
            originator_id=wallet_id, originator_version=1,
            chain_hash=chain_next(registered.chain_hash, "AccountOpened", wallet_id, 1, account_body), **account_body,
        )
        return [registered, opened]

    def close_account(self, cmd: CloseAccount, now: datetime) -> AccountClosed | AccountResult:
        account = self.state.account(cmd.account_id)
        if account.closed:
            return AccountResult(account, replayed=True)
        if any(account.balances()[i] for i in (0, 2)) or account.debits_posted != account.credits_posted:
            raise errors.AccountBalanceNotZero(
                f"account {account.id} must have a zero balance and nothing pending to be closed",
                account_id=str(account.id),
            )
        version = account.version + 1
        body: dict[str, Any] = {"timestamp": now, "flags": int(account.flags | AccountFlags.CLOSED)}
        return AccountClosed(
            originator_id=account.id, originator_version=version,
            chain_hash=self._chain("AccountClosed", account.id, version, body), **body,
        )

    def expire(self, pending: PendingTransfer, now: datetime) -> PendingTransferExpired:
        debit, credit = self.state.accounts[pending.debit_account_id], self.state.accounts[pending.credit_account_id]
        amount = pending.amount_centavos
        version = pending.version + 1
        body: dict[str, Any] = {
            "timestamp": now, "debit_account_id": debit.id, "credit_account_id": credit.id, "amount_centavos": amount,
            "debit_after": [debit.debits_pending - amount, *debit.balances()[1:]],
            "credit_after": [*credit.balances()[:2], credit.credits_pending - amount, credit.credits_posted],
        }
        return PendingTransferExpired(
            originator_id=pending.id, originator_version=version,
            chain_hash=self._chain("PendingTransferExpired", pending.id, version, body), **body,
        )

    def replay_of(self, cmd: CreateTransfer) -> TransferResult | None:
        """The original result when the key was already committed with the same payload; else ``None``.

        Raises ``IdempotencyConflict`` naming the first differing field when the payload differs.
        """
        entry = self.state.indexed(cmd.transfer_id)
        if entry is None:
            return None
        if entry.payload_hash != cmd.payload_hash():
            raise errors.IdempotencyConflict(
                f"key {cmd.key!r} was already used for a different transfer", field=_differing_field(cmd, entry),
                key=cmd.key,
            )
        return result_of(entry, True)

    def transfer(
        self, cmd: CreateTransfer, now: datetime, linked_batch_id: UUID | None = None
    ) -> list[LedgerEvent]:
        """Validates one new transfer and returns its events (one, or two for a post/void)."""
        _check_key(cmd.key)
        _check_reference(cmd.reference)
        if cmd.kind not in TRANSFER_KINDS:
            raise errors.InvalidRequest(f"unknown transfer kind {cmd.kind!r}", field="kind")
        if cmd.transfer_id in self.state.accounts or cmd.transfer_id in self.state.parties:
            raise errors.InvalidRequest("this key maps to an id already in use; choose another key", field="key")
        if cmd.kind in ("post_pending", "void_pending"):
            return self._settle(cmd, now, linked_batch_id)
        if cmd.pending_id is not None:
            raise errors.InvalidRequest("pending_id is only for posting or voiding", field="pending_id")
        if type(cmd.timeout_s) is not int or not 0 <= cmd.timeout_s <= PENDING_TIMEOUT_S_MAX:
            raise errors.InvalidRequest(TIMEOUT_MESSAGE, field="timeout_s")
        if cmd.kind == "single" and cmd.timeout_s:
            raise errors.InvalidRequest("only a pending transfer can time out", field="timeout_s")
        if cmd.amount_centavos is None:
            raise errors.InvalidRequest("amount is required", field="amount_centavos")
        check_amount(cmd.amount_centavos)
        if cmd.debit_account_id is None or cmd.credit_account_id is None:
            raise errors.InvalidRequest("both accounts are required", field="debit_account_id")
        if cmd.debit_account_id == cmd.credit_account_id:
            raise errors.AccountsMustBeDifferent("debit and credit accounts must be different")
        debit, credit = self.state.account(cmd.debit_account_id), self.state.account(cmd.credit_account_id)
        for account in (debit, credit):
            if account.closed:
                raise errors.AccountClosed(f"account {account.id} is closed", account_id=str(account.id))
            if account.ledger != cmd.ledger:
                raise errors.LedgerMismatch(
                    f"account {account.id} is on ledger {account.ledger}, the transfer on {cmd.ledger}",
                    account_id=str(account.id),
                )
        amount = cmd.amount_centavos
        if cmd.kind == "pending":
            debit_after = [debit.debits_pending + amount, *debit.balances()[1:]]
            credit_after = [*credit.balances()[:2], credit.credits_pending + amount, credit.credits_posted]
        else:
            debit_after = [debit.debits_pending, debit.debits_posted + amount, *debit.balances()[2:]]
            credit_after = [*credit.balances()[:3], credit.credits_posted + amount]
        _check_limits(debit, debit_after, credit, credit_after)
        return [self._committed(cmd, now, debit.id, credit.id, amount, debit_after, credit_after, linked_batch_id)]

    def _settle(self, cmd: CreateTransfer, now: datetime, linked_batch_id: UUID | None) -> list[LedgerEvent]:
        if cmd.pending_id is None:
            raise errors.InvalidRequest("pending_id is required to post or void", field="pending_id")
        if cmd.debit_account_id is not None or cmd.credit_account_id is not None:
            raise errors.InvalidRequest("a post or void takes its accounts from the pending transfer",
                                        field="debit_account_id")
        if cmd.timeout_s:
            raise errors.InvalidRequest("only a pending transfer can time out", field="timeout_s")
        pending = self.state.pending.get(cmd.pending_id)
        if pending is None:
            self._raise_not_open(cmd.pending_id)
        assert pending is not None
        if pending.expires_at is not None and pending.expires_at <= now:
            raise errors.PendingTransferExpired(f"pending transfer {pending.id} has timed out",
                                                pending_id=str(pending.id))
        debit, credit = self.state.accounts[pending.debit_account_id], self.state.accounts[pending.credit_account_id]
        original = self.state.transfers.get(pending.id)
        ledger = original.ledger if original else debit.ledger
        if cmd.ledger != ledger:
            raise errors.LedgerMismatch(f"pending transfer {pending.id} is on ledger {ledger}")
        reserved = pending.amount_centavos
        if cmd.kind == "void_pending":
            if cmd.amount_centavos is not None and cmd.amount_centavos != reserved:
                raise errors.InvalidRequest("a void releases the whole pending amount; omit the amount",
                                            field="amount_centavos")
            amount, posted = reserved, 0
        else:
            if cmd.amount_centavos is not None:
                check_amount(cmd.amount_centavos)
                if cmd.amount_centavos > reserved:
                    raise errors.ExceedsPendingAmount(
                        f"cannot post {cmd.amount_centavos} of a pending {reserved}", pending_amount_centavos=reserved
                    )
            amount = posted = reserved if cmd.amount_centavos is None else cmd.amount_centavos
        for account in (debit, credit):
            if account.closed:  # pragma: no cover - closing requires nothing pending
                raise errors.AccountClosed(f"account {account.id} is closed", account_id=str(account.id))
        debit_after = [debit.debits_pending - reserved, debit.debits_posted + posted, *debit.balances()[2:]]
        credit_after = [*credit.balances()[:2], credit.credits_pending - reserved, credit.credits_posted + posted]
        _check_limits(debit, debit_after, credit, credit_after)
        committed = self._committed(cmd, now, debit.id, credit.id, amount, debit_after, credit_after, linked_batch_id)
        version = pending.version + 1
        resolution = "posted" if cmd.kind == "post_pending" else "voided"
        body: dict[str, Any] = {"timestamp": now, "resolution": resolution, "by_transfer_id": cmd.transfer_id,
                "amount_centavos": amount}
        # Chained after the committed event, which is applied first.
        resolved_chain = chain_next(committed.chain_hash, "PendingTransferResolved", pending.id, version, body)
        resolved = PendingTransferResolved(
            originator_id=pending.id, originator_version=version, chain_hash=resolved_chain, **body
        )
        return [committed, resolved]

    def _raise_not_open(self, pending_id: UUID) -> None:
        entry = self.state.transfers.get(pending_id)
        if entry is None:
            raise errors.PendingTransferNotFound(f"pending transfer {pending_id} not found", pending_id=str(pending_id))
        if entry.kind != "pending":
            raise errors.PendingTransferNotPending(f"transfer {pending_id} is not pending", pending_id=str(pending_id))
        error = {
            "posted": errors.PendingTransferAlreadyPosted,
            "voided": errors.PendingTransferAlreadyVoided,
            "expired": errors.PendingTransferExpired,
        }.get(entry.resolution or "", errors.PendingTransferNotFound)
        raise error(f"pending transfer {pending_id} is already {entry.resolution}", pending_id=str(pending_id))

    def _committed(  # noqa: PLR0917 - every field of the event, named at the one call site
        self, cmd: CreateTransfer, now: datetime, debit_id: UUID, credit_id: UUID, amount: int,
        debit_after: Balances, credit_after: Balances, linked_batch_id: UUID | None,
    ) -> TransferCommitted:
        body: dict[str, Any] = {
            "timestamp": now, "key": cmd.key, "payload_hash": cmd.payload_hash(), "kind": cmd.kind,
            "ledger": cmd.ledger, "code": cmd.code, "debit_account_id": debit_id, "credit_account_id": credit_id,
            "amount_centavos": amount, "requested_amount_centavos": cmd.amount_centavos,
            "pending_id": cmd.pending_id, "timeout_s": cmd.timeout_s, "reference": cmd.reference,
            "linked_batch_id": linked_batch_id, "debit_after": debit_after, "credit_after": credit_after,
        }
        tid = cmd.transfer_id
        return TransferCommitted(
            originator_id=tid, originator_version=1, chain_hash=self._chain("TransferCommitted", tid, 1, body), **body
        )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= IDEMPOTENCY_KEY_LENGTH_MAX or not key.isprintable():
        raise errors.InvalidRequest(KEY_MESSAGE, field="key")


def _check_reference(reference: str) -> None:
    if not isinstance(reference, str) or len(reference) > REFERENCE_LENGTH_MAX or not reference.isprintable():
        raise errors.InvalidRequest(REFERENCE_MESSAGE, field="reference")


def _check_limits(debit: Account, debit_after: Balances, credit: Account, credit_after: Balances) -> None:
    for account, after in ((debit, debit_after), (credit, credit_after)):
        if max(after) > BALANCE_CENTAVOS_MAX or after[0] + after[1] > BALANCE_CENTAVOS_MAX or (
            after[2] + after[3] > BALANCE_CENTAVOS_MAX
        ):
            raise errors.Overflow(f"the transfer would overflow account {account.id}", account_id=str(account.id))
    if debit.flags & _DEBITS_MUST_NOT_EXCEED_CREDITS and debit_after[0] + debit_after[1] > debit_after[3]:
        raise errors.InsufficientFunds(
            f"account {debit.id} has insufficient funds",
            account_id=str(debit.id),
            available_centavos=debit.credits_posted - debit.debits_posted - debit.debits_pending,
        )
    credit_limited = credit.flags & _CREDITS_MUST_NOT_EXCEED_DEBITS
    if credit_limited and credit_after[2] + credit_after[3] > credit_after[1]:
        raise errors.ExceedsDebits(f"account {credit.id} cannot be credited beyond its debits",
                                   account_id=str(credit.id))


_FIELD_ORDER = (
    ("kind", "kind"),
    ("debit_account_id", "debit_account_id"),
    ("credit_account_id", "credit_account_id"),
    ("amount_centavos", "requested_amount_centavos"),
    ("pending_id", "pending_id"),
    ("timeout_s", "timeout_s"),
    ("ledger", "ledger"),
    ("code", "code"),
    ("reference", "reference"),
)


def _differing_field(cmd: CreateTransfer, committed: _IndexedTransfer) -> str:
    settles = cmd.kind in ("post_pending", "void_pending") and committed.kind == cmd.kind
    for request_field, stored_field in _FIELD_ORDER:
        if settles and request_field in ("debit_account_id", "credit_account_id"):
            continue  # a post or void names no accounts; the stored ones are the pending transfer's
        if getattr(cmd, request_field) != getattr(committed, stored_field):
            return request_field
    return "payload"


def check_linked(cmd: CreateLinkedTransfers) -> None:
    if not cmd.transfers:
        raise errors.InvalidRequest("a linked batch needs at least one transfer", field="transfers")
    if len(cmd.transfers) > LINKED_TRANSFERS_MAX:
        raise errors.BatchTooLarge(f"a linked batch holds at most {LINKED_TRANSFERS_MAX} transfers")
    keys = [t.key for t in cmd.transfers]
    if len(set(keys)) != len(keys):
        raise errors.InvalidRequest("keys in a linked batch must be unique", field="transfers")


def check_many(cmd: CreateTransfers) -> None:
    if not cmd.transfers:
        raise errors.InvalidRequest("a command of transfers needs at least one transfer", field="transfers")
    if len(cmd.transfers) > TRANSFERS_PER_COMMAND_MAX:
        raise errors.BatchTooLarge(f"a command holds at most {TRANSFERS_PER_COMMAND_MAX} transfers")


def linked_batch_id_of(cmd: CreateLinkedTransfers) -> UUID:
    """A linked batch's id is derived from its first key, so a replayed batch keeps its id."""
    return uuid.uuid5(TRANSFER_ID_NAMESPACE, "linked:" + cmd.transfers[0].key)


def flatten_ids(commands: Iterable[Command]) -> set[UUID]:
    """Transfer ids a batch refers to (its own keys and the pending transfers it settles)."""
    ids: set[UUID] = set()
    for c in commands:
        if isinstance(c, OpenAccount):
            ids.add(c.account_id)
        if isinstance(c, CreateLinkedTransfers | CreateTransfers):
            transfers: tuple[CreateTransfer, ...] = c.transfers
        else:
            transfers = (c,) if isinstance(c, CreateTransfer) else ()
        for t in transfers:
            if isinstance(t.key, str):
                ids.add(t.transfer_id)
            if t.pending_id is not None:
                ids.add(t.pending_id)
    return ids
