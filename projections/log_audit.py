"""An independent check of the ledger's raw log: ``razao audit verify-log``, for auditors.

It reads ``ledger_events`` with plain SQL and recomputes, from the stored bytes alone:

1. every event's hash-chain link, by the rule written in docs/events.md ("The hash chain, byte for byte");
2. every balance an event claims (``debit_after``, ``credit_after``), from the transfers before it, with the
   TigerBeetle rules of pending, posted and voided amounts, and each account's flag limits;
3. at the end, Σ debits = Σ credits, posted and pending, and the open pending transfers add up to what is pending.

It shares no code with the ledger that wrote the log: it imports the standard library and psycopg only, and an
import-linter contract keeps it so. ``razao ledger verify`` replays the log through the ledger's own code, so a
bug in that code (in its chain rule, or in how it moves balances) would be replayed faithfully and pass; a second,
separate implementation of the same rules agreeing with it is what makes the check worth an auditor's trust.
It only reads, in one read-only snapshot, so it runs on a hot standby.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

#: The chain's first "previous hash".
GENESIS = "0" * 64
#: The ledger's event table, as the event store names it.
EVENTS_TABLE = "ledger_events"
#: Fields added to an event type after events of it were written: left out of the chain text while null, so the
#: older events keep their hash (docs/events.md).
FIELDS_ADDED_LATER = {"AccountOpened": frozenset({"owner_id"})}
#: Event types that move no money: their chain link is checked, nothing else.
NO_MONEY = frozenset({
    "PartyRegistered", "DepositRequested", "PixReceived", "ReconciliationItemOpened", "ReconciliationItemResolved",
    "WithdrawalRequested", "WithdrawalCompleted", "WithdrawalFailed", "PixRefundRequested", "PixRefundConcluded",
})
MONEY = frozenset({"AccountOpened", "AccountClosed", "TransferCommitted", "PendingTransferResolved",
                   "PendingTransferExpired"})
#: Account flags (TigerBeetle's bits).
DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 0
CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 1
CLOSED = 1 << 3
#: Events read per round trip.
FETCH_ROWS = 2_000

# Balance fields, in the order of ``*_after``.
DP, DPOSTED, CP, CPOSTED = range(4)


class LogInvalid(Exception):
    """The log breaks a rule; ``position`` is the first event that does (None for a rule about the whole log)."""

    def __init__(self, position: int | None, message: str) -> None:
        super().__init__(message)
        self.position = position


#: Makes the error for the event being checked from what is wrong with it.
Fail = Callable[[str], "LogInvalid"]


@dataclass
class _Account:
    ledger: int
    flags: int
    balances: list[int] = field(default_factory=lambda: [0, 0, 0, 0])


@dataclass(frozen=True)
class _Pending:
    debit: str
    credit: str
    amount: int


@dataclass
class AuditResult:
    events: int = 0
    last_position: int = 0
    chain_head: str = GENESIS
    by_type: Counter[str] = field(default_factory=Counter)
    accounts: int = 0
    open_pending: int = 0
    totals: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # Σ of each balance field


def unwrap(value: Any) -> Any:
    """A stored value as the ledger's chain text sees it: the event store's wrapped UUIDs and datetimes become
    their ``str()`` (``xxxxxxxx-xxxx-…`` and ``YYYY-MM-DD HH:MM:SS[.ffffff]+00:00``); anything else is as stored."""
    if type(value) is dict and set(value) == {"_type_", "_data_"}:
        kind, data = value["_type_"], value["_data_"]
        if kind == "uuid_hex":
            return str(UUID(hex=data))
        if kind == "datetime_iso":
            return str(datetime.fromisoformat(data))
        raise ValueError(f"unknown wrapped type {kind!r}")
    if type(value) is list:
        return [unwrap(v) for v in value]
    return value


def chain_link(previous: str, event_type: str, originator_id: UUID, version: int, state: dict[str, Any]) -> str:
    """The hash an event must carry: SHA-256 of the ASCII JSON of ``[previous hash, event type, aggregate id,
    aggregate version, body]``, with sorted keys and no spaces; the body is every stored field but ``chain_hash``
    and ``class_version``, unwrapped, less a field added later while it is null."""
    added = FIELDS_ADDED_LATER.get(event_type, frozenset())
    body = {k: unwrap(v) for k, v in state.items()
            if k not in ("chain_hash", "class_version") and not (k in added and v is None)}
    text = json.dumps([previous, event_type, str(originator_id), version, body], sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class LogAuditor:
    """Checks events one at a time, in log order (``check``), then the whole (``finish``)."""

    def __init__(self) -> None:
        self.result = AuditResult()
        self._accounts: dict[str, _Account] = {}
        self._pending: dict[str, _Pending] = {}
        #: Pending transfers settled whose PendingTransferResolved is still to come: (resolution, by, amount).
        self._settled: dict[str, tuple[str, str, int]] = {}

    def check(self, position: int, originator_id: UUID, version: int, topic: str, stored: bytes) -> None:
        r = self.result
        if position <= r.last_position:
            raise LogInvalid(position, f"position {position} after {r.last_position}: the log is not in order")
        event_type = topic.rpartition(":")[2]
        if event_type not in MONEY and event_type not in NO_MONEY:
            raise LogInvalid(position, f"unknown event type {topic!r}: this verifier does not know its rules")
        try:
            state = json.loads(stored)
            if type(state) is not dict:
                raise TypeError("the stored state is not a JSON object")
            expected = chain_link(r.chain_head, event_type, originator_id, version, state)
        except (ValueError, TypeError) as exc:
            raise LogInvalid(position, f"unreadable {event_type}: {exc}") from None
        if state.get("chain_hash") != expected:
            raise LogInvalid(position, f"chain broken at {event_type} {originator_id}: it carries "
                                       f"{state.get('chain_hash')!r}, the rule gives {expected}")
        if event_type in MONEY:
            try:
                self._move(position, event_type, str(originator_id), version,
                           {k: unwrap(v) for k, v in state.items()})
            except (KeyError, TypeError) as exc:  # a field missing, or of the wrong type, in a chained event
                raise LogInvalid(position, f"{event_type} {originator_id}: malformed field {exc}") from None
        r.chain_head, r.last_position = expected, position
        r.events += 1
        r.by_type[event_type] += 1

    def _move(self, position: int, event_type: str, aggregate: str, version: int, e: dict[str, Any]) -> None:
        def fail(message: str) -> LogInvalid:
            return LogInvalid(position, f"{event_type} {aggregate}: {message}")

        if event_type == "AccountOpened":
            if version != 1 or aggregate in self._accounts:
                raise fail("opened twice")
            self._accounts[aggregate] = _Account(e["ledger"], e["flags"])
        elif event_type == "AccountClosed":
            account = self._account(e, aggregate, fail)
            if version != 2 or not e["flags"] & CLOSED:
                raise fail("a closing must be the account's second event and set CLOSED")
            account.flags = e["flags"]
        elif event_type == "TransferCommitted":
            self._transfer(aggregate, version, e, fail)
        elif event_type == "PendingTransferExpired":
            pending = self._pending.pop(aggregate, None)
            if pending is None or version != 2:
                raise fail("expires a transfer that is not pending")
            if (e["debit_account_id"], e["credit_account_id"], e["amount_centavos"]) != (
                    pending.debit, pending.credit, pending.amount):
                raise fail("accounts or amount differ from the pending transfer's")
            self._apply(pending.debit, pending.credit, (-pending.amount, 0, -pending.amount, 0), e, fail)
        else:  # PendingTransferResolved: right after the transfer that settled it, saying what that one did
            settled = self._settled.pop(aggregate, None)
            if settled is None or version != 2:
                raise fail("resolves a pending transfer that no transfer settled")
            if (e["resolution"], e["by_transfer_id"], e["amount_centavos"]) != settled:
                raise fail(f"says {e['resolution']} {e['amount_centavos']} by {e['by_transfer_id']}; the settling "
                           f"transfer did {settled}")

    def _account(self, e: dict[str, Any], account_id: str, fail: Fail) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            raise fail(f"account {account_id} was never opened")
        if e.get("ledger", account.ledger) != account.ledger:
            raise fail(f"account {account_id} is on ledger {account.ledger}")
        return account

    def _transfer(self, aggregate: str, version: int, e: dict[str, Any], fail: Fail) -> None:
        kind, amount = e["kind"], e["amount_centavos"]
        if version != 1 or type(amount) is not int or amount <= 0:
            raise fail("a transfer is its aggregate's first event and moves a positive whole number of centavos")
        if kind in ("single", "pending"):
            debit, credit = e["debit_account_id"], e["credit_account_id"]
            if debit == credit:
                raise fail("debit and credit are the same account")
            if kind == "pending":
                self._pending[aggregate] = _Pending(debit, credit, amount)
            deltas = (0, amount, 0, amount) if kind == "single" else (amount, 0, amount, 0)
        elif kind in ("post_pending", "void_pending"):
            pending = self._pending.pop(e["pending_id"] or "", None)
            if pending is None:
                raise fail(f"settles {e['pending_id']}, which is not pending")
            debit, credit = pending.debit, pending.credit
            if (e["debit_account_id"], e["credit_account_id"]) != (debit, credit):
                raise fail("its accounts are not the pending transfer's")
            if amount > pending.amount or (kind == "void_pending" and amount != pending.amount):
                raise fail(f"settles {amount} of a pending {pending.amount}")
            posted = amount if kind == "post_pending" else 0
            deltas = (-pending.amount, posted, -pending.amount, posted)
            self._settled[e["pending_id"]] = ("posted" if posted else "voided", aggregate, amount)
        else:
            raise fail(f"unknown kind {kind!r}")
        self._apply(debit, credit, deltas, e, fail)

    def _apply(self, debit_id: str, credit_id: str, deltas: tuple[int, int, int, int], e: dict[str, Any],
               fail: Fail) -> None:
        debit, credit = self._account(e, debit_id, fail), self._account(e, credit_id, fail)
        for account, account_id in ((debit, debit_id), (credit, credit_id)):
            if account.flags & CLOSED:
                raise fail(f"account {account_id} is closed")
        d_pending, d_posted, c_pending, c_posted = deltas
        debit_after = [debit.balances[DP] + d_pending, debit.balances[DPOSTED] + d_posted, debit.balances[CP],
                       debit.balances[CPOSTED]]
        credit_after = [credit.balances[DP], credit.balances[DPOSTED], credit.balances[CP] + c_pending,
                        credit.balances[CPOSTED] + c_posted]
        if debit_after != e["debit_after"] or credit_after != e["credit_after"]:
            raise fail(f"claims debit {e['debit_after']} and credit {e['credit_after']}; the transfers before it "
                       f"give {debit_after} and {credit_after}")
        for account, after, account_id in ((debit, debit_after, debit_id), (credit, credit_after, credit_id)):
            if min(after) < 0:
                raise fail(f"account {account_id} would have a negative balance field")
            if account.flags & DEBITS_MUST_NOT_EXCEED_CREDITS and after[DP] + after[DPOSTED] > after[CPOSTED]:
                raise fail(f"account {account_id} debits would exceed its credits")
            if account.flags & CREDITS_MUST_NOT_EXCEED_DEBITS and after[CP] + after[CPOSTED] > after[DPOSTED]:
                raise fail(f"account {account_id} credits would exceed its debits")
        debit.balances, credit.balances = debit_after, credit_after

    def finish(self, *, whole_log: bool = True) -> AuditResult:
        """The checks of the whole; a log cut at a position (``whole_log=False``) may end between a settling
        transfer and the PendingTransferResolved that follows it in the same commit."""
        r = self.result
        r.accounts, r.open_pending = len(self._accounts), len(self._pending)
        r.totals = [sum(a.balances[i] for a in self._accounts.values()) for i in range(4)]
        if r.totals[DPOSTED] != r.totals[CPOSTED] or r.totals[DP] != r.totals[CP]:
            raise LogInvalid(None, f"the books do not balance: debits {r.totals[DP]} pending / {r.totals[DPOSTED]} "
                                   f"posted, credits {r.totals[CP]} pending / {r.totals[CPOSTED]} posted")
        if sum(p.amount for p in self._pending.values()) != r.totals[DP]:
            raise LogInvalid(None, "the open pending transfers do not add up to the pending balances")
        if self._settled and whole_log:
            raise LogInvalid(None, f"settled pending transfers never resolved: {sorted(self._settled)}")
        return r


def audit_records(records: Iterable[tuple[int, UUID, int, str, bytes]], *, whole_log: bool = True) -> AuditResult:
    """Checks ``(position, originator_id, originator_version, topic, state)`` records in log order."""
    auditor = LogAuditor()
    for position, originator_id, version, topic, stored in records:
        auditor.check(position, originator_id, version, topic, bytes(stored))
    return auditor.finish(whole_log=whole_log)


def read_log(conn: psycopg.Connection[Any], upto: int | None = None) -> Iterator[tuple[int, UUID, int, str, bytes]]:
    """The log's records in position order, up to ``upto`` (inclusive), in one server-side cursor."""
    with conn.cursor(name="razao_log_audit") as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute(
            f"SELECT notification_id, originator_id, originator_version, topic, state FROM {EVENTS_TABLE} "  # noqa: S608 - a constant
            "WHERE notification_id <= %s ORDER BY notification_id", (upto if upto is not None else 2**63 - 1,))
        yield from cursor


def audit_database(dsn: str, upto: int | None = None) -> AuditResult:
    """Audits the ledger log at ``dsn`` in one read-only snapshot (so a writer committing meanwhile is not seen
    half-way)."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return audit_records(read_log(conn, upto), whole_log=upto is None)
