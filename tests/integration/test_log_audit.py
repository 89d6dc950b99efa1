"""`razao audit verify-log`: the auditor's independent check of the raw log (projections.log_audit).

The ledger writes a history with every event type into a real Postgres; the independent verifier, which shares no
code with the ledger, must agree with it on every chain link, every balance and the chain head. Then forged logs,
each with its hash chain recomputed the way a forger who knows the rule would, must each be refused at the forged
event: the chain alone cannot tell a consistent forgery, the balances can.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from commands.bootstrap import build_ledger
from infra.settings import Settings, drop_database, ensure_database, with_database
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.events import AccountOpened
from ledger.model import GENESIS_CHAIN_HASH, chain_next
from projections.log_audit import LogInvalid, audit_records, chain_link, read_log
from tests.readside_support import SteppingClock, append_record, write_every_kind

Record = tuple[int, uuid.UUID, int, str, bytes]


@dataclass
class AuditedLedger:
    dsn: str
    head: str
    debits_posted: int
    debits_pending: int
    head_at: dict[int, str]  # the ledger's own chain head after some positions
    records: list[Record]


@pytest.fixture(scope="module")
def audited(settings: Settings) -> Iterator[AuditedLedger]:
    dsn = with_database(settings.pg_dsn, f"razao_test_audit_{uuid.uuid4().hex[:8]}")
    ensure_database(dsn)
    clock = SteppingClock()
    runtime = build_ledger(dsn, clock=clock)
    try:
        write_every_kind(runtime.writer, clock)
        state = runtime.writer.state
        head, last = state.chain_hash, state.position
        debits_posted = sum(a.debits_posted for a in state.accounts.values())
        debits_pending = sum(a.debits_pending for a in state.accounts.values())
        head_at = {p: runtime.app.load_state(use_checkpoint=False, upto=p).chain_hash for p in (1, last // 2, last)}
    finally:
        runtime.close()
    # An account opened before accounts had owners: stored at class version 1, with no `owner_id` at all, and
    # chained by the ledger's own rule (which leaves the field out while it is None).
    clock.tick()
    v1 = uuid.uuid4()
    body = {"timestamp": clock.now, "ledger": 986, "code": int(AccountCode.FEE_REVENUE),
            "flags": int(REQUIRED_FLAGS[AccountCode.FEE_REVENUE]), "reference": "opened at v1"}
    v1_hash = chain_next(head, "AccountOpened", v1, 1, {**body, "owner_id": None})
    stored = {"timestamp": {"_type_": "datetime_iso", "_data_": clock.now.isoformat()}, "chain_hash": v1_hash,
              **{k: v for k, v in body.items() if k != "timestamp"}}
    append_record(dsn, "ledger.events:AccountOpened", json.dumps(stored, separators=(",", ":")).encode(), v1)
    with psycopg.connect(dsn) as conn:
        records = [(p, i, v, t, bytes(s)) for p, i, v, t, s in read_log(conn)]
    try:
        yield AuditedLedger(dsn, v1_hash, debits_posted, debits_pending, head_at, records)
    finally:
        drop_database(dsn)


def test_the_independent_verifier_agrees_with_the_ledger_on_every_event_type(razao: Any,
                                                                            audited: AuditedLedger) -> None:
    independent = razao("audit", "verify-log", "--dsn", audited.dsn)
    assert f"chain head: {audited.head}" in independent.stdout
    assert f"Σ debits posted = {audited.debits_posted}, Σ credits posted = {audited.debits_posted}" in (
        independent.stdout)
    assert f"Σ debits pending = {audited.debits_pending}, Σ credits pending = {audited.debits_pending}" in (
        independent.stdout)
    own = razao("ledger", "verify", "--dsn", audited.dsn)
    assert f"chain head: {audited.head}" in own.stdout
    by_type = {topic.rpartition(":")[2] for _, _, _, topic, _ in audited.records}
    assert {"PartyRegistered", "AccountClosed", "PendingTransferExpired", "PendingTransferResolved",
            "PixRefundConcluded", "WithdrawalFailed"} <= by_type
    for name in by_type:
        count = sum(1 for *_, topic, _ in audited.records if topic.endswith(f":{name}"))
        assert f"{name} {count}" in independent.stdout
    assert audited.debits_posted > 0 and audited.debits_pending > 0  # a hold is left open


def test_a_head_published_earlier_is_checked_against_the_log_up_to_its_position(razao: Any,
                                                                               audited: AuditedLedger) -> None:
    for position, head in audited.head_at.items():
        checked = razao("audit", "verify-log", "--dsn", audited.dsn, "--upto", str(position), "--expect-head", head)
        assert f"chain head: {head}" in checked.stdout and f"up to position {position}" in checked.stdout
    position, head = max(audited.head_at.items())
    wrong = razao("audit", "verify-log", "--dsn", audited.dsn, "--upto", str(position - 1), "--expect-head", head,
                  check=False)
    assert wrong.returncode == 1 and "the chain head is not the expected" in wrong.stdout


def test_bad_arguments_and_a_database_without_a_ledger_are_refused_without_a_traceback(
        razao: Any, fresh_database: str) -> None:
    for argv, message in ((["--upto", "-1"], "--upto"), (["--expect-head", "XYZ"], "--expect-head"),
                          ([], "holds no ledger")):
        refused = razao("audit", "verify-log", "--dsn", fresh_database, *argv, check=False)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr


# ---- forged logs -----------------------------------------------------------------------------------------------


def rechained(records: list[Record], edits: dict[int, dict[str, Any]], *, drop: frozenset[int] = frozenset(),
              topics: dict[int, str] | None = None) -> list[Record]:
    """The log with ``edits`` applied to the stored states at those positions, ``drop`` removed, and every chain
    hash recomputed by the published rule: what a forger with write access and the documentation would produce."""
    head, forged = GENESIS_CHAIN_HASH, []
    for position, originator_id, version, stored_topic, stored in records:
        if position in drop:
            continue
        topic = (topics or {}).get(position, stored_topic)
        state = {**json.loads(stored), **edits.get(position, {})}
        state["chain_hash"] = head = chain_link(head, topic.rpartition(":")[2], originator_id, version, state)
        forged.append((position, originator_id, version, topic, json.dumps(state).encode()))
    return forged


def first(records: list[Record], event_type: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    for position, _, _, topic, stored in records:
        state = json.loads(stored)
        if topic.endswith(f":{event_type}") and all(state.get(k) == v for k, v in fields.items()):
            return position, state
    raise AssertionError(f"no {event_type} with {fields}")


def first_out_of_a_wallet(records: list[Record]) -> tuple[int, dict[str, Any]]:
    wallets = set()
    for position, originator_id, _, topic, stored in records:
        state = json.loads(stored)
        if topic.endswith(":AccountOpened") and state["code"] == AccountCode.INVESTOR_WALLET:
            wallets.add(originator_id.hex)
        if (topic.endswith(":TransferCommitted") and state["kind"] == "single"
                and state["debit_account_id"]["_data_"] in wallets):
            return position, state
    raise AssertionError("no transfer out of an investor wallet")


def refused_at(records: list[Record]) -> LogInvalid:
    with pytest.raises(LogInvalid) as refused:
        audit_records(records)
    return refused.value


def test_the_unforged_log_passes_and_a_rechained_copy_is_the_same_log(audited: AuditedLedger) -> None:
    assert audit_records(audited.records).chain_head == audited.head
    assert rechained(audited.records, {})[-1][4] == json.dumps(json.loads(audited.records[-1][4])).encode()


def test_a_changed_byte_breaks_the_chain_at_that_event(audited: AuditedLedger) -> None:
    position, state = first(audited.records, "TransferCommitted", kind="single")
    edited = [(p, i, v, t, json.dumps({**json.loads(s), "amount_centavos": state["amount_centavos"] + 1}).encode()
               if p == position else s) for p, i, v, t, s in audited.records]
    refusal = refused_at(edited)
    assert refusal.position == position and "chain broken" in str(refusal)


def test_a_rechained_amount_is_refused_by_the_balances_it_claims(audited: AuditedLedger) -> None:
    position, state = first(audited.records, "TransferCommitted", kind="single")
    refusal = refused_at(rechained(audited.records, {position: {"amount_centavos": state["amount_centavos"] + 1}}))
    assert refusal.position == position and "the transfers before it give" in str(refusal)


def test_a_rechained_overdraft_with_consistent_claims_is_refused_by_the_account_flags(
        audited: AuditedLedger) -> None:
    # The first single transfer out of a wallet, made a billion centavos larger than its funds, with balances
    # that add up: only the wallet's DEBITS_MUST_NOT_EXCEED_CREDITS flag can refuse it.
    position, state = first_out_of_a_wallet(audited.records)
    extra = 1_000_000_000
    debit_after, credit_after = list(state["debit_after"]), list(state["credit_after"])
    debit_after[1] += extra
    credit_after[3] += extra
    refusal = refused_at(rechained(audited.records, {position: {
        "amount_centavos": state["amount_centavos"] + extra, "debit_after": debit_after,
        "credit_after": credit_after}}))
    assert refusal.position == position and "debits would exceed its credits" in str(refusal)


def test_a_removed_settlement_leaves_its_resolution_refused(audited: AuditedLedger) -> None:
    settle, _ = first(audited.records, "TransferCommitted", kind="void_pending")
    resolved, _ = first(audited.records, "PendingTransferResolved", resolution="voided")
    refusal = refused_at(rechained(audited.records, {}, drop=frozenset({settle})))
    assert refusal.position == resolved and "no transfer settled" in str(refusal)


def test_a_post_beyond_the_pending_amount_is_refused(audited: AuditedLedger) -> None:
    position, state = first(audited.records, "TransferCommitted", kind="post_pending")
    bigger = state["amount_centavos"] * 10
    debit_after, credit_after = list(state["debit_after"]), list(state["credit_after"])
    debit_after[1] += bigger - state["amount_centavos"]
    credit_after[3] += bigger - state["amount_centavos"]
    refusal = refused_at(rechained(audited.records, {position: {
        "amount_centavos": bigger, "debit_after": debit_after, "credit_after": credit_after}}))
    assert refusal.position == position and "of a pending" in str(refusal)


def test_malformed_records_are_refused_at_their_position_not_with_a_traceback(audited: AuditedLedger) -> None:
    position, state = first(audited.records, "TransferCommitted", kind="single")
    missing = {k: v for k, v in state.items() if k != "debit_after"}
    forged = [(p, i, v, t, json.dumps(missing).encode() if p == position else s) for p, i, v, t, s in audited.records]
    refusal = refused_at(rechained(forged, {}))  # chained again, so only the missing field is wrong
    assert refusal.position == position and "malformed field 'debit_after'" in str(refusal)
    not_an_object = [(p, i, v, t, b"[1, 2]" if p == position else s) for p, i, v, t, s in audited.records]
    refusal = refused_at(not_an_object)
    assert refusal.position == position and "not a JSON object" in str(refusal)


def test_an_event_type_the_verifier_does_not_know_stops_it(audited: AuditedLedger) -> None:
    position, _ = first(audited.records, "PartyRegistered")
    refusal = refused_at(rechained(audited.records, {}, topics={position: "ledger.events:PartyMerged"}))
    assert refusal.position == position and "unknown event type" in str(refusal)


def test_the_chain_rule_leaves_out_a_later_field_only_while_it_is_null() -> None:
    opened = uuid.uuid4()
    owner = uuid.uuid4()
    event = AccountOpened(originator_id=opened, originator_version=1, timestamp=SteppingClock().now,
                          chain_hash="", ledger=986, code=40, flags=1, reference="", owner_id=owner)
    body = {k: v for k, v in vars(event).items() if k not in ("originator_id", "originator_version", "chain_hash")}
    stored = {"timestamp": {"_type_": "datetime_iso", "_data_": event.timestamp.isoformat()}, "ledger": 986,
              "code": 40, "flags": 1, "reference": "", "class_version": 2}
    with_owner = {**stored, "owner_id": {"_type_": "uuid_hex", "_data_": owner.hex}}
    assert chain_link(GENESIS_CHAIN_HASH, "AccountOpened", opened, 1, with_owner) == chain_next(
        GENESIS_CHAIN_HASH, "AccountOpened", opened, 1, body)
    without = chain_next(GENESIS_CHAIN_HASH, "AccountOpened", opened, 1, {**body, "owner_id": None})
    assert chain_link(GENESIS_CHAIN_HASH, "AccountOpened", opened, 1, {**stored, "owner_id": None}) == without
    assert chain_link(GENESIS_CHAIN_HASH, "AccountOpened", opened, 1, stored) == without
