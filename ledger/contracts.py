"""The published contract of the ledger: integration events, as they travel on Kafka and feed every read model.

Domain events (``ledger.events``) are the ledger's private storage schema; this module is the stable, versioned,
JSON contract that other processes depend on (documented in ``docs/events.md``). Projections import this module
and nothing else of the ledger, so it imports no other ledger module that holds state or behaviour (only the
chart's codes and flags, which are part of the contract).

One integration event is derived from each record of the ledger's notification log by ``LogDecoder``, which reads
the stored record (topic and JSON state) directly. The relay and the rebuild both use it, so Kafka and a replay
from the event store can never disagree about what an event says. Personal data of ``PartyRegistered`` (name,
document, email, phone) is withheld: it stays in the event store, where an erasure can reach it (ADR 0003).

Envelope v1 (``IntegrationEvent.to_json``)::

    {"envelope": 1, "event_id": "<uuid5(aggregate_id:aggregate_version)>", "type": "TransferCommitted",
     "version": 1, "aggregate_id": "<uuid>", "aggregate_version": 1, "position": 42,
     "recorded_at": "2026-11-29T12:00:00.123456+00:00", "chain_hash": "<hex>", "previous_chain_hash": "<hex>",
     "payload": {..., "balances": [{"account_id": "<uuid>", "debits_pending": 0, "debits_posted": 0,
                                    "credits_pending": 0, "credits_posted": 0}]}}

Errors: ``UnknownEventType`` and ``UnsupportedEventVersion`` for a type or version this contract does not define
(a consumer must stop, never skip), ``MalformedEvent`` for anything else that does not match the contract.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final, Protocol

from ledger.chart import AccountCode, AccountFlags

__all__ = [
    "ENVELOPE_VERSION",
    "EVENT_VERSIONS",
    "GENESIS_CHAIN_HASH",
    "LEDGER_TOPIC",
    "AccountClosedV1",
    "AccountCode",
    "AccountFlags",
    "AccountOpenedV1",
    "Balance",
    "ContractError",
    "DepositRequestedV1",
    "IntegrationEvent",
    "LogDecoder",
    "MalformedEvent",
    "PartyRegisteredV1",
    "Payload",
    "PendingTransferExpiredV1",
    "PendingTransferResolvedV1",
    "PixReceivedV1",
    "PixRefundConcludedV1",
    "PixRefundRequestedV1",
    "ReconciliationItemOpenedV1",
    "ReconciliationItemResolvedV1",
    "StoredRecord",
    "TransferCommittedV1",
    "UnknownEventType",
    "UnsupportedEventVersion",
    "WithdrawalCompletedV1",
    "WithdrawalFailedV1",
    "WithdrawalRequestedV1",
    "event_id_for",
    "is_debit_normal",
]

#: The version of the envelope (the fields around ``payload``). A consumer refuses any other.
ENVELOPE_VERSION: Final = 1
#: The Kafka topic of the ledger's integration events: a single partition, so Kafka order is log order.
LEDGER_TOPIC: Final = "razao.ledger.v1"
#: The ``previous_chain_hash`` of the first event of the log (the ledger's genesis hash).
GENESIS_CHAIN_HASH: Final = "0" * 64
#: Event ids are UUIDv5 of ``"<aggregate_id>:<aggregate_version>"`` in this namespace: a redelivered or re-published
#: event keeps its id, so duplicates are recognisable by anyone.
EVENT_ID_NAMESPACE: Final = uuid.UUID("5d0f3f9e-8b51-5c0e-a3c9-0e6b7f1d2a44")
#: Where the ledger's domain events live (the ``topic`` of a stored record is ``<module>:<class name>``).
DOMAIN_MODULE: Final = "ledger.events"

#: Accounts whose balance is debits minus credits (assets); every other account is credits minus debits.
_DEBIT_NORMAL_CODES: Final = frozenset({AccountCode.PIX_SETTLEMENT, AccountCode.LOAN_RECEIVABLE})


class ContractError(ValueError):
    """A record or message does not match this contract. Consumers must stop on it, never skip it."""


class UnknownEventType(ContractError):
    """An event type this contract does not define (a new domain event needs a contract entry first)."""


class UnsupportedEventVersion(ContractError):
    """A known event type at a version this contract does not define."""


class MalformedEvent(ContractError):
    """A record that claims a known type and version but whose fields do not match."""


def is_debit_normal(code: int) -> bool:
    """Whether an account's balance reads as debits minus credits (assets: PIX settlement, loan receivable)."""
    return code in _DEBIT_NORMAL_CODES


def event_id_for(aggregate_id: str, aggregate_version: int) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{aggregate_id}:{aggregate_version}"))


# ----------------------------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class Balance:
    """The post-state of one account after an event, in centavos."""

    account_id: str
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


@dataclass(frozen=True, slots=True)
class PartyRegisteredV1:
    """An investor or borrower was registered; their wallet is opened by the next event. No personal data."""

    party_id: str
    kind: str
    wallet_id: str
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class AccountOpenedV1:
    account_id: str
    ledger: int
    code: int
    flags: int
    reference: str
    owner_id: str | None
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class AccountClosedV1:
    """An account was closed at a zero balance; its balances did not change (``balances`` is empty)."""

    account_id: str
    flags: int
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class TransferCommittedV1:
    """A transfer; for ``post_pending``/``void_pending`` the accounts are the pending transfer's and
    ``amount_centavos`` is what moved (a void moves nothing and reports the released amount)."""

    transfer_id: str
    key: str
    kind: str
    ledger: int
    code: int
    debit_account_id: str
    credit_account_id: str
    amount_centavos: int
    requested_amount_centavos: int | None
    pending_id: str | None
    timeout_s: int
    reference: str
    linked_batch_id: str | None
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingTransferResolvedV1:
    """A pending transfer was posted or voided by ``by_transfer_id`` (whose event carries the balances)."""

    pending_id: str
    resolution: str
    by_transfer_id: str
    amount_centavos: int
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingTransferExpiredV1:
    pending_id: str
    debit_account_id: str
    credit_account_id: str
    amount_centavos: int
    balances: tuple[Balance, ...] = ()


# PIX facts around the money (ADR 0009). The money itself moves by the TransferCommitted events committed with them,
# which carry the balances; so these carry none. Times the PSP reported are ISO 8601 strings.


@dataclass(frozen=True, slots=True)
class DepositRequestedV1:
    """A charge (cob) for a deposit into ``wallet_id`` was created at ``psp``. The BR Code is withheld."""

    deposit_id: str
    wallet_id: str
    amount_centavos: int
    expires_in_s: int
    txid: str
    psp: str
    charge_created_at: str
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class PixReceivedV1:
    """A received Pix was credited (by ``transfer_id``) to a wallet, or to suspense with ``suspense_reason``."""

    pix_id: str
    end_to_end_id: str
    psp: str
    txid: str | None
    amount_centavos: int
    processed_at: str
    source: str
    transfer_id: str
    credit_account_id: str
    deposit_id: str | None
    suspense_reason: str | None
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class ReconciliationItemOpenedV1:
    item_id: str
    end_to_end_id: str
    reason: str
    amount_centavos: int
    account_id: str
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class ReconciliationItemResolvedV1:
    item_id: str
    resolution: str
    wallet_id: str | None
    amount_centavos: int
    transfer_id: str | None
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class WithdrawalRequestedV1:
    """A withdrawal held by ``hold_id``; the destination Pix key is personal data and is withheld."""

    withdrawal_id: str
    wallet_id: str
    amount_centavos: int
    pix_key_type: str
    payment_id: str
    hold_id: str
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class WithdrawalCompletedV1:
    withdrawal_id: str
    psp: str
    end_to_end_id: str | None
    transfer_id: str
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class WithdrawalFailedV1:
    withdrawal_id: str
    psp: str
    reason: str
    transfer_id: str
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class PixRefundRequestedV1:
    """A devolução held on ``source_account_id`` by ``hold_id``; its free-text description is withheld."""

    refund_request_id: str
    end_to_end_id: str
    psp: str
    refund_id: str
    amount_centavos: int
    hold_id: str
    source_account_id: str
    requested_by: str
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class PixRefundConcludedV1:
    refund_request_id: str
    status: str
    return_id: str | None
    reason: str | None
    transfer_id: str
    balances: tuple[Balance, ...] = ()


Payload = (
    PartyRegisteredV1
    | AccountOpenedV1
    | AccountClosedV1
    | TransferCommittedV1
    | PendingTransferResolvedV1
    | PendingTransferExpiredV1
    | DepositRequestedV1
    | PixReceivedV1
    | ReconciliationItemOpenedV1
    | ReconciliationItemResolvedV1
    | WithdrawalRequestedV1
    | WithdrawalCompletedV1
    | WithdrawalFailedV1
    | PixRefundRequestedV1
    | PixRefundConcludedV1
)

#: The account a PIX event is about, for its Kafka key (the first of these fields it has).
_KEY_FIELDS: Final = ("wallet_id", "account_id", "credit_account_id", "source_account_id")

#: Every (type, version) this contract defines, with its payload class.
EVENT_VERSIONS: Final[Mapping[tuple[str, int], type[Payload]]] = {
    ("PartyRegistered", 1): PartyRegisteredV1,
    ("AccountOpened", 1): AccountOpenedV1,
    ("AccountClosed", 1): AccountClosedV1,
    ("TransferCommitted", 1): TransferCommittedV1,
    ("PendingTransferResolved", 1): PendingTransferResolvedV1,
    ("PendingTransferExpired", 1): PendingTransferExpiredV1,
    ("DepositRequested", 1): DepositRequestedV1,
    ("PixReceived", 1): PixReceivedV1,
    ("ReconciliationItemOpened", 1): ReconciliationItemOpenedV1,
    ("ReconciliationItemResolved", 1): ReconciliationItemResolvedV1,
    ("WithdrawalRequested", 1): WithdrawalRequestedV1,
    ("WithdrawalCompleted", 1): WithdrawalCompletedV1,
    ("WithdrawalFailed", 1): WithdrawalFailedV1,
    ("PixRefundRequested", 1): PixRefundRequestedV1,
    ("PixRefundConcluded", 1): PixRefundConcludedV1,
}
_TYPES: Final = frozenset(name for name, _ in EVENT_VERSIONS)


# ----------------------------------------------------------------------------------------------- envelope


@dataclass(frozen=True, slots=True)
class IntegrationEvent:
    """One ledger event as published: the envelope and a typed payload. ``event_id`` is derived (a property)."""

    type: str
    version: int
    aggregate_id: str
    aggregate_version: int
    #: The event's notification id in the ledger log: strictly increasing, with gaps.
    position: int
    recorded_at: datetime
    chain_hash: str
    #: The chain hash of the event before this one in the log: a consumer that applied an event with this hash
    #: last can apply this one; any other hash means it missed an event.
    previous_chain_hash: str
    payload: Payload

    @property
    def event_id(self) -> str:
        return event_id_for(self.aggregate_id, self.aggregate_version)

    @property
    def key(self) -> str:
        """The Kafka key: the first account whose balances the event changed, else the account or wallet it is
        about, else the aggregate (a resolution carries no balances; its transfer event does)."""
        p = self.payload
        if p.balances:
            return p.balances[0].account_id
        if isinstance(p, PartyRegisteredV1):
            return p.wallet_id
        if isinstance(p, AccountOpenedV1 | AccountClosedV1):
            return p.account_id
        for name in _KEY_FIELDS:
            account = getattr(p, name, None)
            if account is not None:
                return str(account)
        return self.aggregate_id

    def to_dict(self) -> dict[str, Any]:
        payload = {f.name: getattr(self.payload, f.name) for f in fields(self.payload) if f.name != "balances"}
        payload["balances"] = [
            {"account_id": b.account_id, "debits_pending": b.debits_pending, "debits_posted": b.debits_posted,
             "credits_pending": b.credits_pending, "credits_posted": b.credits_posted}
            for b in self.payload.balances
        ]
        return {
            "envelope": ENVELOPE_VERSION,
            "event_id": self.event_id,
            "type": self.type,
            "version": self.version,
            "aggregate_id": self.aggregate_id,
            "aggregate_version": self.aggregate_version,
            "position": self.position,
            "recorded_at": self.recorded_at.isoformat(),
            "chain_hash": self.chain_hash,
            "previous_chain_hash": self.previous_chain_hash,
            "payload": payload,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> IntegrationEvent:
        """Parses and validates a message. Raises a ``ContractError`` (never anything else) when it does not fit."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedEvent(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise MalformedEvent("an integration event is a JSON object")
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> IntegrationEvent:
        if doc.get("envelope") != ENVELOPE_VERSION:
            raise UnsupportedEventVersion(f"envelope version {doc.get('envelope')!r} is not {ENVELOPE_VERSION}")
        type_name, version = doc.get("type"), doc.get("version")
        payload_class = _payload_class(type_name, version)
        try:
            raw = dict(doc["payload"])
            balances = tuple(_balance(b) for b in raw.pop("balances"))
            payload = _build(payload_class, raw, balances)
            event_id = _str(doc["event_id"])
            event = cls(
                type=_str(type_name),
                version=_int(version),
                aggregate_id=_str(doc["aggregate_id"]),
                aggregate_version=_int(doc["aggregate_version"]),
                position=_int(doc["position"]),
                recorded_at=datetime.fromisoformat(_str(doc["recorded_at"])),
                chain_hash=_str(doc["chain_hash"]),
                previous_chain_hash=_str(doc["previous_chain_hash"]),
                payload=payload,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedEvent(f"{type_name} v{version}: {exc!r}") from None
        if event_id != event.event_id:
            raise MalformedEvent(f"event id {event_id} does not match its aggregate and version")
        if event.recorded_at.tzinfo is None:
            raise MalformedEvent("recorded_at must carry a UTC offset")
        return event


def _payload_class(type_name: object, version: object) -> type[Payload]:
    if type_name not in _TYPES:
        raise UnknownEventType(f"unknown event type {type_name!r}")
    payload_class = EVENT_VERSIONS.get((str(type_name), version)) if isinstance(version, int) else None
    if payload_class is None:
        raise UnsupportedEventVersion(f"{type_name} version {version!r} is not defined by this contract")
    return payload_class


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _balance(raw: Mapping[str, Any]) -> Balance:
    values = [_int(raw[name]) for name in ("debits_pending", "debits_posted", "credits_pending", "credits_posted")]
    if min(values) < 0:
        raise ValueError("a balance field is negative")
    if set(raw) != _BALANCE_FIELDS:
        raise ValueError(f"balance fields {sorted(raw)}")
    return Balance(_str(raw["account_id"]), *values)


_BALANCE_FIELDS: Final = frozenset({"account_id", "debits_pending", "debits_posted", "credits_pending",
                                    "credits_posted"})


def _build(payload_class: type[Payload], raw: Mapping[str, Any], balances: tuple[Balance, ...]) -> Payload:
    names = [f.name for f in fields(payload_class) if f.name != "balances"]
    if set(raw) != set(names):
        raise ValueError(f"{payload_class.__name__} fields {sorted(raw)} != {sorted(names)}")
    for f in fields(payload_class):
        if f.name != "balances":
            _check_type(f.name, str(f.type), raw[f.name])
    return payload_class(**raw, balances=balances)


def _check_type(name: str, annotation: str, value: object) -> None:
    optional = annotation.endswith("| None")
    if value is None:
        if not optional:
            raise TypeError(f"{name} must not be null")
        return
    if annotation.startswith("int"):
        _int(value)
    elif annotation.startswith("str"):
        _str(value)


# ------------------------------------------------------------------------------------ from the event store


class StoredRecord(Protocol):
    """A record of the ledger's notification log (``eventsourcing.persistence.Notification`` fits)."""

    @property
    def id(self) -> int: ...
    @property
    def originator_id(self) -> Any: ...
    @property
    def originator_version(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def state(self) -> bytes: ...


def _uuid(value: Any) -> str:
    # The event store's JSON wraps a UUID as {"_type_": "uuid_hex", "_data_": "<32 hex>"} (eventsourcing's
    # JSONTranscoder); the contract speaks canonical UUID strings.
    if value.get("_type_") != "uuid_hex":
        raise MalformedEvent(f"expected a stored UUID, got {value!r}")
    h = value["_data_"]
    if len(h) != 32:
        raise MalformedEvent(f"expected 32 hex digits, got {h!r}")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _opt_uuid(value: Any) -> str | None:
    return None if value is None else _uuid(value)


def _time(value: Any) -> datetime:
    if value.get("_type_") != "datetime_iso":
        raise MalformedEvent(f"expected a stored datetime, got {value!r}")
    return datetime.fromisoformat(value["_data_"])


_decode_state = json.JSONDecoder().decode


def stored_chain_hash(stored_state: bytes) -> str | None:
    """The chain hash a log record's stored state carries (None if it carries none): what the relay and the
    projector compare to tell one ledger from another (ADR 0021)."""
    chain_hash = _decode_state(stored_state.decode()).get("chain_hash")
    return chain_hash if isinstance(chain_hash, str) else None


def _party(aid: str, s: dict[str, Any]) -> PartyRegisteredV1:
    return PartyRegisteredV1(aid, s["kind"], _uuid(s["wallet_id"]))


def _opened(aid: str, s: dict[str, Any]) -> AccountOpenedV1:
    return AccountOpenedV1(aid, s["ledger"], s["code"], s["flags"], s["reference"], _opt_uuid(s["owner_id"]))


def _closed(aid: str, s: dict[str, Any]) -> AccountClosedV1:
    return AccountClosedV1(aid, s["flags"])


def _transfer(aid: str, s: dict[str, Any]) -> TransferCommittedV1:
    debit, credit = _uuid(s["debit_account_id"]), _uuid(s["credit_account_id"])
    return TransferCommittedV1(
        aid, s["key"], s["kind"], s["ledger"], s["code"], debit, credit, s["amount_centavos"],
        s["requested_amount_centavos"], _opt_uuid(s["pending_id"]), s["timeout_s"], s["reference"],
        _opt_uuid(s["linked_batch_id"]), (Balance(debit, *s["debit_after"]), Balance(credit, *s["credit_after"])),
    )


def _resolved(aid: str, s: dict[str, Any]) -> PendingTransferResolvedV1:
    return PendingTransferResolvedV1(aid, s["resolution"], _uuid(s["by_transfer_id"]), s["amount_centavos"])


def _expired(aid: str, s: dict[str, Any]) -> PendingTransferExpiredV1:
    debit, credit = _uuid(s["debit_account_id"]), _uuid(s["credit_account_id"])
    return PendingTransferExpiredV1(
        aid, debit, credit, s["amount_centavos"],
        (Balance(debit, *s["debit_after"]), Balance(credit, *s["credit_after"])),
    )


def _iso(value: Any) -> str:
    return _time(value).isoformat()


def _deposit(aid: str, s: dict[str, Any]) -> DepositRequestedV1:
    return DepositRequestedV1(aid, _uuid(s["wallet_id"]), s["amount_centavos"], s["expires_in_s"], s["txid"], s["psp"],
                              _iso(s["charge_created_at"]))


def _pix_received(aid: str, s: dict[str, Any]) -> PixReceivedV1:
    return PixReceivedV1(aid, s["end_to_end_id"], s["psp"], s["txid"], s["amount_centavos"], _iso(s["processed_at"]),
                         s["source"], _uuid(s["transfer_id"]), _uuid(s["credit_account_id"]),
                         _opt_uuid(s["deposit_id"]), s["suspense_reason"])


def _item_opened(aid: str, s: dict[str, Any]) -> ReconciliationItemOpenedV1:
    return ReconciliationItemOpenedV1(aid, s["end_to_end_id"], s["reason"], s["amount_centavos"],
                                      _uuid(s["account_id"]))


def _item_resolved(aid: str, s: dict[str, Any]) -> ReconciliationItemResolvedV1:
    return ReconciliationItemResolvedV1(aid, s["resolution"], _opt_uuid(s["wallet_id"]), s["amount_centavos"],
                                        _opt_uuid(s["transfer_id"]))


def _withdrawal(aid: str, s: dict[str, Any]) -> WithdrawalRequestedV1:
    return WithdrawalRequestedV1(aid, _uuid(s["wallet_id"]), s["amount_centavos"], s["pix_key_type"], s["payment_id"],
                                 _uuid(s["hold_id"]))


def _withdrawal_completed(aid: str, s: dict[str, Any]) -> WithdrawalCompletedV1:
    return WithdrawalCompletedV1(aid, s["psp"], s["end_to_end_id"], _uuid(s["transfer_id"]))


def _withdrawal_failed(aid: str, s: dict[str, Any]) -> WithdrawalFailedV1:
    return WithdrawalFailedV1(aid, s["psp"], s["reason"], _uuid(s["transfer_id"]))


def _refund_requested(aid: str, s: dict[str, Any]) -> PixRefundRequestedV1:
    return PixRefundRequestedV1(aid, s["end_to_end_id"], s["psp"], s["refund_id"], s["amount_centavos"],
                                _uuid(s["hold_id"]), _uuid(s["source_account_id"]), s["requested_by"])


def _refund_concluded(aid: str, s: dict[str, Any]) -> PixRefundConcludedV1:
    return PixRefundConcludedV1(aid, s["status"], s["return_id"], s["reason"], _uuid(s["transfer_id"]))


def _opened_v1(aid: str, s: dict[str, Any]) -> AccountOpenedV1:
    # Stored v1 predates owners (the domain's upcaster sets None, and so does the contract).
    return AccountOpenedV1(aid, s["ledger"], s["code"], s["flags"], s["reference"], None)


#: (domain event class, stored class version) -> payload builder. Every stored version the event store may hold
#: maps to the current integration version of that type: storage evolves (upcasters), the contract stays put. Fields
#: of the stored state that a builder does not read are withheld on purpose (``WITHHELD_FIELDS``); a test checks
#: that every domain field is published or withheld, and that every domain class version is listed here.
STORED_VERSIONS: Final[Mapping[tuple[str, int], Callable[[str, dict[str, Any]], Payload]]] = {
    ("PartyRegistered", 1): _party,
    ("AccountOpened", 1): _opened_v1,
    ("AccountOpened", 2): _opened,
    ("AccountClosed", 1): _closed,
    ("TransferCommitted", 1): _transfer,
    ("PendingTransferResolved", 1): _resolved,
    ("PendingTransferExpired", 1): _expired,
    ("DepositRequested", 1): _deposit,
    ("PixReceived", 1): _pix_received,
    ("ReconciliationItemOpened", 1): _item_opened,
    ("ReconciliationItemResolved", 1): _item_resolved,
    ("WithdrawalRequested", 1): _withdrawal,
    ("WithdrawalCompleted", 1): _withdrawal_completed,
    ("WithdrawalFailed", 1): _withdrawal_failed,
    ("PixRefundRequested", 1): _refund_requested,
    ("PixRefundConcluded", 1): _refund_concluded,
}
#: The integration version each type is published at.
PUBLISHED_VERSION: Final[Mapping[str, int]] = {name: version for name, version in EVENT_VERSIONS}

#: Domain fields deliberately not published: personal data (ADR 0003) and idempotency internals.
WITHHELD_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "PartyRegistered": frozenset({"key", "payload_hash", "name", "document", "email", "phone"}),
    "TransferCommitted": frozenset({"payload_hash"}),
    "DepositRequested": frozenset({"key", "payload_hash", "pix_copia_e_cola", "location"}),
    "WithdrawalRequested": frozenset({"key", "payload_hash", "pix_key"}),
    "PixRefundRequested": frozenset({"key", "payload_hash", "description"}),
}


class LogDecoder:
    """Turns notification-log records into integration events, in log order, linking each to the one before.

    ``previous_chain_hash`` is the chain hash of the record just before the first one decoded (the genesis hash
    when starting from the beginning). Raises ``UnknownEventType``/``UnsupportedEventVersion``/``MalformedEvent``.
    """

    def __init__(self, previous_chain_hash: str = GENESIS_CHAIN_HASH) -> None:
        self.chain_hash = previous_chain_hash

    def decode(self, record: StoredRecord) -> IntegrationEvent:
        return self.decode_row(record.id, record.originator_id, record.originator_version, record.topic,
                               record.state)

    def decode_row(self, position: int, originator_id: Any, originator_version: int, topic: str,
                   stored_state: bytes) -> IntegrationEvent:
        """``decode`` for a record given as its fields (what a bulk reader of the log has)."""
        module, _, type_name = topic.partition(":")
        if module != DOMAIN_MODULE or type_name not in PUBLISHED_VERSION:
            raise UnknownEventType(f"log record {position} has topic {topic!r}, unknown to the contract")
        try:
            state = _decode_state(stored_state.decode())
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise MalformedEvent(f"log record {position} is not the ledger's JSON: {exc}") from None
        if not isinstance(state, dict):
            raise MalformedEvent(f"log record {position} is JSON but not an object: {type(state).__name__}")
        stored_version = state.get("class_version", 1)
        build = STORED_VERSIONS.get((type_name, stored_version))
        if build is None:
            raise UnsupportedEventVersion(
                f"log record {position}: {type_name} stored at class version {stored_version}, which the contract "
                "does not map yet"
            )
        aggregate_id = str(originator_id)
        try:
            payload = build(aggregate_id, state)
            event = IntegrationEvent(
                type=type_name,
                version=PUBLISHED_VERSION[type_name],
                aggregate_id=aggregate_id,
                aggregate_version=originator_version,
                position=position,
                recorded_at=_time(state["timestamp"]),
                chain_hash=state["chain_hash"],
                previous_chain_hash=self.chain_hash,
                payload=payload,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedEvent(f"log record {position} ({type_name}): {exc!r}") from None
        self.chain_hash = event.chain_hash
        return event
