"""The decisions of the PIX processors, without I/O: when a payout is asked about, sent, or left alone; how a burst of
notifications is grouped for the PSP's list; the inbox writer's group commit. Fakes stand in for our own ports only
(``PixGateway``, ``PaymentRoutes``, ``PixInbox``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from commands.pix_inbox import BULK_CONFIRM_MIN, InboxWriter, _clusters, retry_delay_s
from commands.pix_metrics import BreakerCollector, build_pix_metrics
from commands.pix_payouts import PayoutProcessor, follow_delay_s
from ledger.pix_state import Refund, Withdrawal
from ledger.ports import (
    InboxDelivery,
    NotifiedPix,
    PaymentOutcome,
    PaymentStatus,
    PspNotFound,
    PspRejected,
    PspUnavailable,
    RefundOutcome,
    RefundState,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class FakeRoutes:
    def __init__(self, pins: dict[str, str] | None = None) -> None:
        self.pins = dict(pins or {})

    def psp_for(self, payment_id: str) -> str | None:
        return self.pins.get(payment_id)

    def pin(self, payment_id: str, psp: str) -> str:
        return self.pins.setdefault(payment_id, psp)

    def move(self, payment_id: str, from_psp: str, to_psp: str) -> bool:
        raise AssertionError("not used here")


class FakeGateway:
    """Records calls; answers from scripted outcomes."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def _answer(self, name: str) -> Any:
        answer = self.answers[name]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get_payment(self, psp: str, payment_id: str) -> PaymentOutcome:
        self.calls.append(("get_payment", psp, payment_id))
        return self._answer("get_payment")  # type: ignore[no-any-return]

    def send_payment(self, payment_id: str, key: str, amount_centavos: int, *,
                     description: str | None = None) -> PaymentOutcome:
        self.calls.append(("send_payment", payment_id, key))
        return self._answer("send_payment")  # type: ignore[no-any-return]

    def get_refund(self, psp: str, end_to_end_id: str, refund_id: str) -> RefundOutcome:
        self.calls.append(("get_refund", psp, refund_id))
        return self._answer("get_refund")  # type: ignore[no-any-return]

    def request_refund(self, psp: str, end_to_end_id: str, refund_id: str, amount_centavos: int, *,
                       description: str | None = None) -> RefundOutcome:
        self.calls.append(("request_refund", psp, refund_id))
        return self._answer("request_refund")  # type: ignore[no-any-return]


def withdrawal(amount: int = 10_00) -> Withdrawal:
    wid = uuid.uuid4()
    return Withdrawal(wid, "k", "h", uuid.uuid4(), amount, "CPF", "52998224725", wid.hex, uuid.uuid4(), NOW)


def processor(gateway: FakeGateway, routes: FakeRoutes) -> PayoutProcessor:
    return PayoutProcessor(None, gateway, routes, build_pix_metrics(CollectorRegistry()))  # type: ignore[arg-type]


def outcome(w: Withdrawal, status: PaymentStatus, psp: str = "primary", amount: int | None = None) -> PaymentOutcome:
    return PaymentOutcome(w.payment_id, psp, status, w.amount_centavos if amount is None else amount)


def test_a_new_withdrawal_is_sent() -> None:
    w = withdrawal()
    gateway = FakeGateway(send_payment=outcome(w, PaymentStatus.CONFIRMED))
    assert processor(gateway, FakeRoutes()).pay(w).status is PaymentStatus.CONFIRMED
    assert [c[0] for c in gateway.calls] == ["send_payment"]


def test_a_pinned_payment_is_asked_about_before_anything_else() -> None:
    w = withdrawal()
    gateway = FakeGateway(get_payment=outcome(w, PaymentStatus.PENDING, "secondary"))
    result = processor(gateway, FakeRoutes({w.payment_id: "secondary"})).pay(w)
    assert result.status is PaymentStatus.PENDING
    assert gateway.calls == [("get_payment", "secondary", w.payment_id)]  # never sent again while it exists


def test_a_pinned_payment_the_psp_does_not_have_is_sent_again_with_the_same_id() -> None:
    w = withdrawal()
    gateway = FakeGateway(get_payment=PspNotFound("no"), send_payment=outcome(w, PaymentStatus.CONFIRMED))
    assert processor(gateway, FakeRoutes({w.payment_id: "primary"})).pay(w).status is PaymentStatus.CONFIRMED
    assert [c[:2] for c in gateway.calls] == [("get_payment", "primary"), ("send_payment", w.payment_id)]


@pytest.mark.parametrize("failure", [PspUnavailable("down"), PspRejected("401", status=401)])
def test_a_pinned_payment_whose_psp_does_not_answer_stays_unknown(failure: Exception) -> None:
    w = withdrawal()
    gateway = FakeGateway(get_payment=failure)
    result = processor(gateway, FakeRoutes({w.payment_id: "primary"})).pay(w)
    assert result.status is PaymentStatus.UNKNOWN and not result.definite
    assert [c[0] for c in gateway.calls] == ["get_payment"]


def test_a_payment_of_another_amount_at_the_psp_is_never_settled() -> None:
    w = withdrawal(10_00)
    gateway = FakeGateway(get_payment=outcome(w, PaymentStatus.CONFIRMED, amount=99_00))
    assert processor(gateway, FakeRoutes({w.payment_id: "primary"})).pay(w).status is PaymentStatus.UNKNOWN


def refund() -> Refund:
    return Refund(uuid.uuid4(), "k", "h", "E30000003202503011200abcdefghijk", "primary", "r" * 32, 5_00,
                  uuid.uuid4(), uuid.uuid4(), None, "ops", NOW)


def refund_outcome(r: Refund, state: RefundState) -> RefundOutcome:
    return RefundOutcome("primary", r.end_to_end_id, r.refund_id, "D" * 32, r.amount_centavos, state, "motivo")


def test_a_devolucao_is_asked_for_only_when_the_psp_does_not_have_it() -> None:
    r = refund()
    asked = FakeGateway(get_refund=PspNotFound("no"), request_refund=refund_outcome(r, RefundState.EM_PROCESSAMENTO))
    assert processor(asked, FakeRoutes()).refund_status(r) is None
    assert [c[0] for c in asked.calls] == ["get_refund", "request_refund"]
    done = FakeGateway(get_refund=refund_outcome(r, RefundState.DEVOLVIDO))
    assert processor(done, FakeRoutes()).refund_status(r) == ("DEVOLVIDO", "D" * 32, "motivo")
    assert [c[0] for c in done.calls] == ["get_refund"]


@pytest.mark.parametrize(("failure", "expected"), [
    (PspUnavailable("down"), None),
    (PspRejected("credentials", status=401), None),
    (PspRejected("above the original", status=400), ("NAO_REALIZADO", None, "above the original")),
    (PspNotFound("no Pix"), ("NAO_REALIZADO", None, "the PSP does not know this Pix")),
])
def test_devolucao_failures_are_definite_only_when_the_psp_refused(failure: Exception, expected: Any) -> None:
    r = refund()
    gateway = FakeGateway(get_refund=PspNotFound("no"), request_refund=failure)
    assert processor(gateway, FakeRoutes()).refund_status(r) == expected


def test_backoffs_are_bounded() -> None:
    assert follow_delay_s(0) == 0.2 and follow_delay_s(50) == 30.0 and follow_delay_s(50, 1.0) == 1.0
    delays = [retry_delay_s(n) for n in range(20)]
    assert all(0.25 <= d <= 60.0 for d in delays) and max(delays) > 20


def test_bursts_are_grouped_for_the_psp_list() -> None:
    moments = [NOW + timedelta(milliseconds=10 * n) for n in range(BULK_CONFIRM_MIN)]
    later = [NOW + timedelta(minutes=10, milliseconds=n) for n in range(BULK_CONFIRM_MIN - 1)]
    windows = _clusters([*moments, *later])
    assert windows == [(moments[0], moments[-1] + timedelta(milliseconds=1))]  # too few later: one by one
    long_run = [NOW + timedelta(seconds=20 * n) for n in range(40)]  # 20 s apart, 13 minutes in all
    spans = _clusters(long_run)
    assert len(spans) == 3 and all(end - start <= timedelta(minutes=5, milliseconds=1) for start, end in spans)


class FakeInbox:
    def __init__(self) -> None:
        self.stored: set[str] = set()
        self.batches: list[int] = []

    def append(self, deliveries: Sequence[InboxDelivery]) -> set[str]:
        self.batches.append(len(deliveries))
        new = {p.end_to_end_id for d in deliveries for p in d.items} - self.stored
        self.stored |= new
        return new


def test_the_inbox_writer_wakes_every_waiter_and_reports_new_pix_once() -> None:
    inbox = FakeInbox()
    writer = InboxWriter(inbox)  # type: ignore[arg-type]
    writer.start()

    def delivery(*numbers: int) -> InboxDelivery:
        return InboxDelivery("primary", None, b"{}", tuple(
            NotifiedPix(f"E30000003202503011200{n:011d}", 100, NOW, None) for n in numbers))

    async def post_all() -> list[set[str]]:
        return list(await asyncio.gather(*(writer.append(delivery(n % 10, 99)) for n in range(50))))

    try:
        answers = asyncio.run(post_all())
    finally:
        writer.stop()
    reported = [e for answer in answers for e in answer]
    assert len(reported) == len(set(reported)) == 11
    assert sum(inbox.batches) == 50


def test_breaker_metrics_read_the_gateway_at_scrape_time() -> None:
    states = {"primary": "open", "secondary": "closed"}
    collector = BreakerCollector(lambda: states, lambda: 7)
    families = {f.name: f for f in collector.collect()}
    levels = {s.labels["psp"]: s.value for s in families["razao_pix_breaker_open"].samples}
    assert levels == {"primary": 2.0, "secondary": 0.0}
    current = {(s.labels["psp"], s.labels["state"]) for s in families["razao_pix_breaker_state"].samples
               if s.value == 1.0}
    assert current == {("primary", "open"), ("secondary", "closed")}
    assert families["razao_pix_inbox_pending"].samples[0].value == 7
