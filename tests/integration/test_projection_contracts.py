"""The published contract (``ledger.contracts``) against the ledger's real domain events: no I/O.

They live beside the read-side tests because the read side owns the contract's consumers; they need no server.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime

import pytest

from ledger import contracts
from ledger.application import LedgerApplication, ledger_env
from ledger.chart import REQUIRED_FLAGS, AccountCode
from ledger.contracts import (
    IntegrationEvent,
    LogDecoder,
    MalformedEvent,
    UnknownEventType,
    UnsupportedEventVersion,
)
from ledger.events import EVENT_TYPES, PIX_EVENT_TYPES
from ledger.inmemory import InMemoryWriterLease, RecorderTransferLookup
from ledger.model import GENESIS_CHAIN_HASH, CloseAccount, CreateTransfer, OpenAccount
from ledger.parties import RegisterParty
from ledger.writer import LedgerWriter


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def history() -> tuple[LedgerApplication, list[IntegrationEvent]]:
    """Every event type, from a real writer: a party, accounts, single, pending, post, void, expiry, close."""
    app = LedgerApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo", **ledger_env()})
    clock = Clock()
    writer = LedgerWriter(app, InMemoryWriterLease(f"contracts-{uuid.uuid4()}"), RecorderTransferLookup(app.recorder),
                          clock=clock).start()
    try:
        settlement, spare = uuid.uuid4(), uuid.uuid4()
        writer.open_account(OpenAccount(settlement, AccountCode.PIX_SETTLEMENT,
                                        int(REQUIRED_FLAGS[AccountCode.PIX_SETTLEMENT])))
        writer.open_account(OpenAccount(spare, AccountCode.SUSPENSE, int(REQUIRED_FLAGS[AccountCode.SUSPENSE])))
        party = writer.register_party(RegisterParty("p1", "investor", "Ana Souza", "52998224725", "ana@example.com",
                                                    "+5511987654321"))
        wallet = party.wallet.id
        writer.transfer(CreateTransfer("t1", settlement, wallet, 10_000, reference="pix:e2e"))
        hold = writer.transfer(CreateTransfer("t2", wallet, settlement, 3_000, kind="pending", timeout_s=60))
        writer.transfer(CreateTransfer("t3", None, None, 1_000, kind="post_pending", pending_id=hold.id))
        voided = writer.transfer(CreateTransfer("t4", wallet, settlement, 500, kind="pending"))
        writer.transfer(CreateTransfer("t5", None, None, None, kind="void_pending", pending_id=voided.id))
        writer.transfer(CreateTransfer("t6", wallet, settlement, 700, kind="pending", timeout_s=1))
        clock.now = clock.now.replace(minute=5)
        writer.transfer(CreateTransfer("t7", settlement, wallet, 1))  # a batch after the timeout expires t6
        writer.close_account(CloseAccount(spare))
    finally:
        writer.stop()
    decoder = LogDecoder()
    return app, [decoder.decode(n) for n in app.recorder.select_notifications(1, 1000)]


@pytest.fixture(scope="module")
def events() -> list[IntegrationEvent]:
    return history()[1]


def test_every_domain_event_version_is_mapped_and_every_field_is_published_or_withheld() -> None:
    for name, cls in EVENT_TYPES.items():
        versions = range(1, getattr(cls, "class_version", 1) + 1)
        for version in versions:
            assert (name, version) in contracts.STORED_VERSIONS, f"{name} v{version} has no contract mapping"
        payload = contracts.EVENT_VERSIONS[(name, contracts.PUBLISHED_VERSION[name])]
        published = {f.name for f in dataclasses.fields(payload)}
        domain = {f.name for f in dataclasses.fields(cls)} - {"originator_id", "originator_version", "timestamp",
                                                             "chain_hash"}
        withheld = contracts.WITHHELD_FIELDS.get(name, frozenset())
        # Post-states travel as `balances`, ids of the aggregate as the payload's own id field.
        renamed = {"debit_after", "credit_after"}
        unaccounted = domain - published - withheld - renamed
        assert not unaccounted, f"{name}: fields {sorted(unaccounted)} are neither published nor withheld"
    assert contracts.GENESIS_CHAIN_HASH == GENESIS_CHAIN_HASH


def test_a_real_history_covers_every_core_type_links_and_round_trips(events: list[IntegrationEvent]) -> None:
    assert {e.type for e in events} == set(EVENT_TYPES) - set(PIX_EVENT_TYPES)
    previous = GENESIS_CHAIN_HASH
    for event in events:
        assert event.previous_chain_hash == previous
        previous = event.chain_hash
        assert IntegrationEvent.from_json(event.to_json()) == event
        doc = json.loads(event.to_json())
        assert doc["envelope"] == 1 and doc["event_id"] == event.event_id
        assert doc["event_id"] == str(uuid.uuid5(contracts.EVENT_ID_NAMESPACE,
                                                 f"{event.aggregate_id}:{event.aggregate_version}"))
    assert [e.position for e in events] == sorted({e.position for e in events})


def sample_value(annotation: str, name: str) -> object:
    if annotation.startswith("UUID"):
        return uuid.uuid4()
    if annotation.startswith("datetime"):
        return datetime(2026, 11, 29, 12, 30, tzinfo=UTC)
    if annotation.startswith(("Balances", "list")):
        return [1, 2, 3, 4]
    if annotation.startswith("int"):
        return 7
    return f"{name}-value"


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_published_field_carries_the_stored_domain_value(name: str) -> None:
    """Each domain event, stored by the application's own mapper and decoded by the contract, field by field."""
    cls = EVENT_TYPES[name]
    app = LedgerApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo", **ledger_env()})
    values = {f.name: sample_value(str(f.type), f.name) for f in dataclasses.fields(cls)
              if f.name not in ("originator_id", "originator_version")}
    domain = cls(originator_id=uuid.uuid4(), originator_version=1, **values)
    stored = app.mapper.to_stored_event(domain)
    record = type("Record", (), {"id": 9, "originator_id": stored.originator_id, "topic": stored.topic,
                                 "originator_version": stored.originator_version, "state": stored.state})
    event = LogDecoder().decode(record)  # type: ignore[arg-type]
    assert (event.type, event.position, event.aggregate_id) == (name, 9, str(domain.originator_id))
    assert event.recorded_at == values["timestamp"] and event.chain_hash == values["chain_hash"]
    payload = dataclasses.asdict(event.payload)
    for field, value in values.items():
        expected = value.isoformat() if isinstance(value, datetime) else str(value) if isinstance(value, uuid.UUID) \
            else value
        if field in ("debit_after", "credit_after"):
            side = payload["balances"][0 if field == "debit_after" else 1]
            assert [side[k] for k in ("debits_pending", "debits_posted", "credits_pending", "credits_posted")] == value
        elif field in payload:
            assert payload[field] == expected, field
    assert IntegrationEvent.from_json(event.to_json()) == event


def test_personal_data_never_leaves_the_event_store(events: list[IntegrationEvent]) -> None:
    registered = next(e for e in events if e.type == "PartyRegistered")
    text = registered.to_json().decode()
    for secret in ("Ana Souza", "52998224725", "ana@example.com", "+5511987654321"):
        assert secret not in text


def test_transfers_carry_post_states_and_are_keyed_by_their_debit_account(events: list[IntegrationEvent]) -> None:
    for event in events:
        payload = event.payload
        if isinstance(payload, contracts.TransferCommittedV1 | contracts.PendingTransferExpiredV1):
            assert [b.account_id for b in payload.balances] == [payload.debit_account_id, payload.credit_account_id]
            assert event.key == payload.debit_account_id
    expired = next(e for e in events if e.type == "PendingTransferExpired")
    assert isinstance(expired.payload, contracts.PendingTransferExpiredV1) and expired.payload.amount_centavos == 700


@pytest.mark.parametrize(("mutate", "error"), [
    (lambda d: d.update(type="LoanFunded"), UnknownEventType),
    (lambda d: d.update(version=2), UnsupportedEventVersion),
    (lambda d: d.update(envelope=2), UnsupportedEventVersion),
    (lambda d: d["payload"].pop("kind"), MalformedEvent),
    (lambda d: d["payload"].update(surprise=1), MalformedEvent),
    (lambda d: d["payload"].update(amount_centavos="100.00"), MalformedEvent),
    (lambda d: d.update(event_id=str(uuid.uuid4())), MalformedEvent),
    (lambda d: d.update(position="7"), MalformedEvent),
    (lambda d: d["payload"]["balances"][0].update(debits_posted=-1), MalformedEvent),
    (lambda d: d.update(recorded_at="2026-11-29T12:00:00"), MalformedEvent),
])
def test_messages_that_do_not_fit_the_contract_are_refused(events: list[IntegrationEvent], mutate, error) -> None:
    doc = json.loads(next(e for e in events if e.type == "TransferCommitted").to_json())
    mutate(doc)
    with pytest.raises(error):
        IntegrationEvent.from_json(json.dumps(doc).encode())
    with pytest.raises(MalformedEvent):
        IntegrationEvent.from_json(b"\xff not json")


def test_the_decoder_maps_old_stored_versions_and_refuses_unknown_ones() -> None:
    @dataclasses.dataclass
    class Record:
        id: int
        originator_id: uuid.UUID
        originator_version: int
        topic: str
        state: bytes

    account = uuid.uuid4()
    v1 = {"timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-01T00:00:00+00:00"}, "chain_hash": "ab" * 32,
          "ledger": 986, "code": 100, "flags": 5, "reference": ""}
    event = LogDecoder().decode(Record(1, account, 1, "ledger.events:AccountOpened", json.dumps(v1).encode()))
    assert isinstance(event.payload, contracts.AccountOpenedV1) and event.payload.owner_id is None
    future = {**v1, "owner_id": None, "class_version": 9}
    with pytest.raises(UnsupportedEventVersion):
        LogDecoder().decode(Record(1, account, 1, "ledger.events:AccountOpened", json.dumps(future).encode()))
    with pytest.raises(UnknownEventType):
        LogDecoder().decode(Record(1, account, 1, "ledger.events:LoanFunded", b"{}"))
    with pytest.raises(MalformedEvent):
        LogDecoder().decode(Record(1, account, 1, "ledger.events:AccountOpened", b"{"))
