"""Ports: what the ledger needs from infrastructure, as Protocols. Adapters live in ``infra/``."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Protocol
from uuid import UUID

from eventsourcing.persistence import StoredEvent

# Errors an adapter raises through a port; re-exported so adapters depend on ports only.
from ledger.errors import LedgerUnavailable, WriterBusy, WriterFenced

__all__ = ["LedgerUnavailable", "TransferLookup", "WriterBusy", "WriterFenced", "WriterLease"]


class WriterLease(Protocol):
    """Exclusive ownership of the ledger writer, so a second writer process can never corrupt it.

    ``acquire`` returns a fencing epoch that increases with every acquisition; every save carries it, and the
    store refuses a save whose epoch is no longer current (a writer that lost its lease cannot commit).
    """

    def acquire(self) -> int:
        """Takes the lease or raises ``WriterBusy``."""
        ...

    def release(self) -> None: ...


class TransferLookup(Protocol):
    """Finds committed transfer events by transfer id, when the in-memory index no longer has them."""

    def find(self, transfer_ids: Collection[UUID]) -> Sequence[tuple[int, StoredEvent]]:
        """Every stored event of those transfer aggregates, each with its notification id (log position)."""
        ...

    def originator_ids(self, topic: str, upto: int) -> Iterator[UUID]:
        """The originator id of every stored event of ``topic`` at or before log position ``upto``, streamed, in
        any order (the writer asks for every committed transfer's id)."""
        ...


# ----------------------------------------------------------------------------------------------------------------
# PIX: the PSP gateway port (ADR 0008). Adapters live in infra/pix_gateway.py. Appended after the ledger ports so
# that their lines stay untouched; hence these imports here.

from collections.abc import Mapping  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime  # noqa: E402
from enum import StrEnum  # noqa: E402
from typing import Any  # noqa: E402

from ledger.errors import LedgerError  # noqa: E402


class PixGatewayError(LedgerError):
    """Base of the errors a PIX gateway raises through the port."""

    code = "PIX_GATEWAY_ERROR"


class PspUnavailable(PixGatewayError):
    """No answer from the PSP (connection, timeout, 5xx, breaker open) within the call's deadline.

    Raised only where retrying later with the same identifiers is safe: reads, and idempotent writes (charges by
    txid, devoluções by id). ``send_payment`` never raises it: it returns an ``UNKNOWN`` outcome instead.
    """

    code = "PIX_PSP_UNAVAILABLE"


class PspNotFound(PixGatewayError):
    """The PSP has nothing under that identifier (404)."""

    code = "PIX_PSP_NOT_FOUND"


class PspRejected(PixGatewayError):
    """The PSP refused the request (4xx other than 404): it was not carried out. ``status`` and ``problem``
    (the spec's ``Problema``: type, title, detail, violacoes) are in the context."""

    code = "PIX_PSP_REJECTED"


class PaymentIdConflict(PixGatewayError):
    """A payment id was used before with a different key or amount: nothing was sent, and the original payment
    under that id stands (compare ``LEDGER_IDEMPOTENCY_CONFLICT``)."""

    code = "PIX_PAYMENT_ID_CONFLICT"


class PaymentStatus(StrEnum):
    """What a PSP says of a Pix we sent.

    ``CONFIRMED`` and ``FAILED`` are final (post or void the hold). ``PENDING``: the PSP has it and has not finished.
    ``UNKNOWN``: it may or may not have reached the PSP. For both, keep the hold and ask that same PSP again
    (``get_payment``), or send again with the same id, which the gateway routes to the same PSP.
    """

    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"
    PENDING = "PENDING"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """The result of sending (or looking up) a Pix. ``psp`` is where it went: reconcile with that PSP only.

    ``reason`` says why for ``FAILED`` (the PSP's ``motivo``, or ``PSP_UNAVAILABLE`` when no PSP could be reached
    and nothing was sent) and ``UNKNOWN`` (what went wrong on the wire).
    """

    payment_id: str
    psp: str
    status: PaymentStatus
    amount_centavos: int
    end_to_end_id: str | None = None
    reason: str | None = None

    @property
    def definite(self) -> bool:
        return self.status in (PaymentStatus.CONFIRMED, PaymentStatus.FAILED)


@dataclass(frozen=True, slots=True)
class ChargeCreated:
    """A charge (cob) at a PSP: show ``pix_copia_e_cola`` (BR Code) to the payer; its Pix arrive from ``psp``."""

    psp: str
    txid: str
    amount_centavos: int
    pix_copia_e_cola: str
    location: str
    created_at: datetime
    expires_in_s: int
    status: str


class RefundState(StrEnum):
    """``Devolucao.status`` as the PSP reports it (same values as ``ledger.pix.RefundStatus``)."""

    EM_PROCESSAMENTO = "EM_PROCESSAMENTO"
    DEVOLVIDO = "DEVOLVIDO"
    NAO_REALIZADO = "NAO_REALIZADO"


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """A devolução at the PSP that received the Pix. ``DEVOLVIDO`` and ``NAO_REALIZADO`` are final."""

    psp: str
    end_to_end_id: str
    refund_id: str
    return_id: str
    amount_centavos: int
    status: RefundState
    reason: str | None = None


class PaymentRoutes(Protocol):
    """Remembers which PSP a payment id went to, so a retry of that id never reaches another PSP.

    It must be durable (a process restart in the middle of a payment must not forget it): the gateway pins a
    payment before its first byte leaves, and moves it only while it provably never left.
    """

    def psp_for(self, payment_id: str) -> str | None:
        """The PSP this payment id is pinned to, if any."""
        ...

    def pin(self, payment_id: str, psp: str) -> str:
        """Pins the id to ``psp`` unless it is pinned already; returns the PSP it is pinned to now."""
        ...

    def move(self, payment_id: str, from_psp: str, to_psp: str) -> bool:
        """Re-pins the id from ``from_psp`` to ``to_psp`` if it is still pinned to ``from_psp``."""
        ...


class PixGateway(Protocol):
    """The platform's PSPs behind one port: charges, received Pix, sending, devoluções, webhook registration.

    Amounts are centavos here; the ``"110.00"`` strings of the spec exist only inside the adapter. Received Pix come
    back as the PSP's JSON objects: validate them with ``ledger.pix.validate_pix``, the same check as a webhook's.
    """

    def create_charge(
        self, txid: str, amount_centavos: int, *, expires_in_s: int, payer_request: str | None = None
    ) -> ChargeCreated:
        """Creates (idempotently, by txid) a charge at the first PSP whose breaker lets it through.

        Raises ``PspUnavailable``, ``PspRejected``."""
        ...

    def get_charge(self, psp: str, txid: str) -> Mapping[str, Any]:
        """The charge as the PSP holds it (``CobCompleta``). Raises ``PspNotFound``, ``PspUnavailable``."""
        ...

    def get_received_pix(self, psp: str, end_to_end_id: str) -> Mapping[str, Any]:
        """One received Pix (``Pix``). Raises ``PspNotFound``, ``PspUnavailable``."""
        ...

    def list_received_pix(self, psp: str, start: datetime, end: datetime) -> Iterator[Mapping[str, Any]]:
        """Every Pix the PSP received in [start, end], page by page. Raises ``PspUnavailable``, ``PspRejected``."""
        ...

    def send_payment(
        self, payment_id: str, key: str, amount_centavos: int, *, description: str | None = None
    ) -> PaymentOutcome:
        """Sends a Pix, idempotent by ``payment_id``. Never raises for the PSP's or the network's failures: see
        ``PaymentStatus``. Raises ``PaymentIdConflict`` for an id reused with another key or amount."""
        ...

    def get_payment(self, psp: str, payment_id: str) -> PaymentOutcome:
        """Asks ``psp`` about a payment. Raises ``PspNotFound`` (it never arrived there: sending again with the same
        id is safe), ``PspUnavailable``."""
        ...

    def request_refund(
        self, psp: str, end_to_end_id: str, refund_id: str, amount_centavos: int, *, description: str | None = None
    ) -> RefundOutcome:
        """Asks the PSP that received the Pix to return part or all of it, idempotent by ``refund_id``.

        Raises ``PspRejected`` (above the original, past 90 days), ``PspNotFound``, ``PspUnavailable`` (retry later
        with the same id)."""
        ...

    def get_refund(self, psp: str, end_to_end_id: str, refund_id: str) -> RefundOutcome:
        """A devolução's current state. Raises ``PspNotFound``, ``PspUnavailable``."""
        ...

    def register_webhook(self, url_template: str) -> dict[str, str]:
        """Registers the webhook URL at every PSP (``{psp}`` in the template is replaced by each PSP's name).
        Returns, per PSP, ``"ok"`` or why it failed."""
        ...

    def breaker_states(self) -> dict[str, str]:
        """Each PSP's circuit breaker state: ``closed``, ``open`` or ``half-open``."""
        ...


# ----------------------------------------------------------------------------------------------------------------
# PIX webhook inbox (ADR 0009): where received-Pix notifications are stored durably before anything is credited.
# The adapter lives in infra/pix_inbox.py (Postgres).

from collections.abc import Sequence as _Sequence  # noqa: E402


@dataclass(frozen=True, slots=True)
class NotifiedPix:
    """What a notification said of one Pix (validated): nothing is credited on it, it is compared with what the
    PSP confirms, and its ``processed_at`` (``horario``) tells where to look in the PSP's list."""

    end_to_end_id: str
    amount_centavos: int
    processed_at: datetime
    txid: str | None


@dataclass(frozen=True, slots=True)
class InboxDelivery:
    """One webhook POST as received: the PSP it came from, its delivery id header, the raw body (kept for audit),
    and each Pix it notified."""

    psp: str
    delivery_id: str | None
    body: bytes
    items: tuple[NotifiedPix, ...]


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A notified Pix waiting to be confirmed with its PSP and credited (``attempts`` so far)."""

    psp: str
    notified: NotifiedPix
    attempts: int

    @property
    def end_to_end_id(self) -> str:
        return self.notified.end_to_end_id


class PixInbox(Protocol):
    """Durable store of webhook deliveries and of the Pix they notify, one row per endToEndId (a duplicate
    notification adds nothing). Every method raises ``LedgerUnavailable`` when the store cannot be reached."""

    def ensure_schema(self) -> None: ...

    def append(self, deliveries: _Sequence[InboxDelivery]) -> set[str]:
        """Stores the deliveries and their Pix in one transaction; returns the endToEndIds that were new."""
        ...

    def due(self, limit: int) -> list[InboxEntry]:
        """Pix still to be processed whose next attempt is due, oldest first."""
        ...

    def finish(self, outcomes: _Sequence[tuple[str, str, str | None]]) -> None:
        """Marks Pix done: ``(endToEndId, status, note)``, status ``credited``, ``suspense``, ``rejected`` (the PSP
        does not know it), ``invalid`` (the PSP's own answer breaks the spec) or ``conflict``."""
        ...

    def retry(self, retries: _Sequence[tuple[str, str, float]]) -> None:
        """Schedules another attempt: ``(endToEndId, why the last one failed, delay in seconds)``."""
        ...

    def pending_count(self) -> int:
        """How many notified Pix are not processed yet."""
        ...
