"""The commands the ledger takes, checked for type when they are built (ADR 0020).

They stay interpreted while the decider may run compiled (``ledger.native``): a compiled module converts what it
reads to the declared types, so ``True`` would become an amount of 1 and ``1.5`` a ``TypeError``. A command whose
fields do not have their types is refused here, with the typed ``InvalidRequest`` naming the field, before any
other code reads it; the decider then checks the values (ranges, accounts, balances).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal
from uuid import UUID, SafeUUID

from ledger import errors
from ledger.limits import IDEMPOTENCY_KEY_LENGTH_MAX, LEDGER_BRL, PENDING_TIMEOUT_S_MAX, REFERENCE_LENGTH_MAX
from ledger.money import AMOUNT_TYPE_MESSAGE
from ledger.parties import RegisterParty

KEY_MESSAGE = f"idempotency key must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} printable characters"
REFERENCE_MESSAGE = f"reference must be at most {REFERENCE_LENGTH_MAX} printable characters"
TIMEOUT_MESSAGE = f"timeout_s must be between 0 and {PENDING_TIMEOUT_S_MAX}"


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise errors.InvalidRequest(message, field=field_name)


def _require_uuid(value: object, field_name: str, *, optional: bool = False) -> None:
    if not (isinstance(value, UUID) or (optional and value is None)):
        raise errors.InvalidRequest(f"{field_name} must be a UUID" + (" or absent" if optional else ""),
                                    field=field_name)


def _require_int(value: object, field_name: str) -> None:
    # Enum members (account codes, flags) are ints; booleans are not numbers here.
    if not isinstance(value, int) or isinstance(value, bool):
        raise errors.InvalidRequest(f"{field_name} must be an integer", field=field_name)


def _require_transfers(transfers: object) -> None:
    if not isinstance(transfers, tuple) or not all(isinstance(t, CreateTransfer) for t in transfers):
        raise errors.InvalidRequest("transfers must be a tuple of CreateTransfer", field="transfers")


#: Transfer ids are derived from idempotency keys, so the store's unique key enforces "one key, one transfer".
TRANSFER_ID_NAMESPACE = UUID("7d1b6c2e-3f0a-5b8e-9c4d-2a6f1e0b9d73")

TransferKind = Literal["single", "pending", "post_pending", "void_pending"]
TRANSFER_KINDS: tuple[str, ...] = ("single", "pending", "post_pending", "void_pending")

_NAMESPACE_BYTES = TRANSFER_ID_NAMESPACE.bytes
_V5_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))  # the variant and version bits
_V5_SET = (0x8000 << 48) | (5 << 76)  # RFC 4122 variant, version 5
_new_object = object.__new__
_set_slot = object.__setattr__  # a frozen dataclass's and a UUID's own __setattr__ refuse


def transfer_id_for_key(key: str) -> UUID:
    """The transfer id a key maps to: ``uuid.uuid5(TRANSFER_ID_NAMESPACE, key)``, stable across processes and
    restarts. Built from the integer, which skips a third of ``uuid5``'s work (every command pays it)."""
    # ``surrogatepass``: a key with a lone surrogate still gets an id here; the decider refuses it (not printable).
    digest = hashlib.sha1(_NAMESPACE_BYTES + key.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()
    return _uuid_of_int((int.from_bytes(digest[:16]) & _V5_CLEAR) | _V5_SET)


def _uuid_of_int(value: int) -> UUID:
    """``UUID(int=value)`` for a value known to fit in 128 bits, without the constructor's argument checks (a
    third of its cost). The same slots ``UUID.__init__`` sets; a test compares the result with ``uuid.uuid5``'s in
    value, hash, text, bytes, ``is_safe``, pickling and immutability."""
    made = _new_object(UUID)
    _set_slot(made, "int", value)
    _set_slot(made, "is_safe", SafeUUID.unknown)
    return made


# --------------------------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True, slots=True)
class OpenAccount:
    """Open an account. Idempotent by ``account_id``: the same fields again return the account as it is."""

    account_id: UUID
    code: int
    flags: int
    ledger: int = LEDGER_BRL
    reference: str = ""
    owner_id: UUID | None = None

    def __post_init__(self) -> None:
        _require_uuid(self.account_id, "account_id")
        _require_int(self.code, "code")
        _require_int(self.flags, "flags")
        _require_int(self.ledger, "ledger")
        _require(isinstance(self.reference, str), "reference", REFERENCE_MESSAGE)
        _require_uuid(self.owner_id, "owner_id", optional=True)


@dataclass(frozen=True, slots=True)
class CloseAccount:
    """Close an account whose balance is zero and which has nothing pending. Closing twice is a no-op."""

    account_id: UUID

    def __post_init__(self) -> None:
        _require_uuid(self.account_id, "account_id")


@dataclass(frozen=True, slots=True)
class CreateTransfer:
    """Move ``amount_centavos`` from the debit to the credit account.

    ``kind="pending"`` reserves the amount (optionally timing out after ``timeout_s``); ``post_pending`` settles
    the pending transfer ``pending_id`` in full (``amount_centavos=None``) or in part; ``void_pending`` releases
    it. Posts and voids name only the pending transfer: their accounts are the pending transfer's.
    """

    key: str
    debit_account_id: UUID | None
    credit_account_id: UUID | None
    amount_centavos: int | None
    kind: TransferKind = "single"
    pending_id: UUID | None = None
    timeout_s: int = 0
    ledger: int = LEDGER_BRL
    code: int = 1
    reference: str = ""
    # Computed once, when the command is built: a UUIDv5 and a SHA-256 cost microseconds, and building happens on the
    # caller's thread, not on the writer's (whose time is the ledger's throughput). Not arguments, not compared, not
    # shown; ``replace()`` computes them again.
    _transfer_id: UUID = field(init=False, repr=False, compare=False)
    _payload_hash: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every transfer the API takes is built here, on the event loop that every request shares. The shape
        # almost all of them have (exact types, no pending id) is recognised in one expression; anything else
        # goes through the checks one field at a time, which accept the same values and name the field refused.
        if not (type(self.key) is str and type(self.debit_account_id) is UUID
                and type(self.credit_account_id) is UUID and type(self.amount_centavos) is int
                and type(self.kind) is str and self.pending_id is None and type(self.timeout_s) is int
                and type(self.ledger) is int and type(self.code) is int and type(self.reference) is str):
            self._check_types()
        _set_slot(self, "_transfer_id", transfer_id_for_key(self.key))
        # ``surrogatepass`` as above: a reference with a lone surrogate is refused by the decider, not here.
        canonical = self.canonical().encode("utf-8", "surrogatepass")
        _set_slot(self, "_payload_hash", hashlib.sha256(canonical).hexdigest())

    def _check_types(self) -> None:
        _require(isinstance(self.key, str), "key", KEY_MESSAGE)
        _require_uuid(self.debit_account_id, "debit_account_id", optional=True)
        _require_uuid(self.credit_account_id, "credit_account_id", optional=True)
        _require(self.amount_centavos is None or type(self.amount_centavos) is int, "amount_centavos",
                 AMOUNT_TYPE_MESSAGE)
        _require(isinstance(self.kind, str), "kind", f"kind must be one of {', '.join(TRANSFER_KINDS)}")
        _require_uuid(self.pending_id, "pending_id", optional=True)
        _require(type(self.timeout_s) is int, "timeout_s", TIMEOUT_MESSAGE)
        _require_int(self.ledger, "ledger")
        _require_int(self.code, "code")
        _require(isinstance(self.reference, str), "reference", REFERENCE_MESSAGE)

    @property
    def transfer_id(self) -> UUID:
        return self._transfer_id

    def canonical(self) -> str:
        """The canonical text of the request: what the idempotency hash covers (everything but the key)."""
        # Each field's ``str()`` (``!s``, not ``format()``, which an enum may define otherwise), joined by "|".
        return (f"{self.kind!s}|{self.debit_account_id!s}|{self.credit_account_id!s}|{self.amount_centavos!s}|"
                f"{self.pending_id!s}|{self.timeout_s!s}|{self.ledger!s}|{self.code!s}|{self.reference!s}")

    def payload_hash(self) -> str:
        return self._payload_hash


@dataclass(frozen=True, slots=True)
class CreateLinkedTransfers:
    """Transfers that are committed all together or not at all, in order (each sees the ones before it)."""

    transfers: tuple[CreateTransfer, ...]

    def __post_init__(self) -> None:
        _require_transfers(self.transfers)


@dataclass(frozen=True, slots=True)
class CreateTransfers:
    """Independent transfers sent as one command (TigerBeetle's ``create_transfers`` without the linked flag).

    Each is decided on its own, in order (each sees the ones before it), and answered with its own result or its
    own refusal; a refusal never affects the others. One command instead of many spares the caller a reply, a
    queue slot and a thread wake-up per transfer, which is where most of a small transfer's cost is.
    """

    transfers: tuple[CreateTransfer, ...]

    def __post_init__(self) -> None:
        _require_transfers(self.transfers)


Command = OpenAccount | CloseAccount | CreateTransfer | CreateLinkedTransfers | CreateTransfers | RegisterParty
