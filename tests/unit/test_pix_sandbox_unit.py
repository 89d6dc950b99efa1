"""The sandbox PSP without HTTP: BR Code, knobs, and the rules of its state (fake clock, timers and notifier)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

import pytest

from infra.sandbox_psp import brcode
from infra.sandbox_psp.config import Identity, KnobError, Knobs, knob_from_text, webhook_url_problem
from infra.sandbox_psp.server import configure
from infra.sandbox_psp.state import Problem, SandboxState
from ledger import pix

# ---- BR Code --------------------------------------------------------------------------------------------------

# The static example of the BCB's "Manual de Padrões para Iniciação do Pix", with its published CRC.
MANUAL_EXAMPLE = ("00020126580014br.gov.bcb.pix0136123e4567-e12b-12d1-a456-4266554400005204000053039865802BR5913"
                  "Fulano de Tal6008BRASILIA62070503***63041D3D")


def test_crc16_matches_the_manual_example() -> None:
    assert f"{brcode.crc16_ccitt(MANUAL_EXAMPLE[:-4].encode()):04X}" == "1D3D"
    assert brcode.parse_brcode(MANUAL_EXAMPLE)["59"] == "Fulano de Tal"


def test_dynamic_brcode_fields() -> None:
    code = brcode.dynamic_brcode("pix.example.com/qr/v2/9d36b84fc70b478fb95c12729b90ca25", "Razão Plataforma S.A.",
                                 "São Paulo", "37.00")
    fields = brcode.parse_brcode(code)
    assert fields["00"] == "01" and fields["01"] == "12"
    assert fields["26"] == "0014br.gov.bcb.pix2554pix.example.com/qr/v2/9d36b84fc70b478fb95c12729b90ca25"
    assert (fields["52"], fields["53"], fields["54"], fields["58"]) == ("0000", "986", "37.00", "BR")
    assert (fields["59"], fields["60"], fields["62"]) == ("RAZAO PLATAFORMA S.A.", "SAO PAULO", "0503***")
    assert len(code) <= brcode.BRCODE_LENGTH_MAX


def test_parse_brcode_detects_corruption() -> None:
    with pytest.raises(ValueError, match="CRC"):
        brcode.parse_brcode(MANUAL_EXAMPLE.replace("Fulano", "Ciclano"))
    with pytest.raises(ValueError, match="field 63"):
        brcode.parse_brcode(MANUAL_EXAMPLE[:-8])


# ---- knobs ----------------------------------------------------------------------------------------------------


def test_knobs_update_checks_names_types_and_bounds() -> None:
    knobs = Knobs().updated({"latency_ms": 20, "error_rate": 0.5, "fault_paths": ["/pagamentos"], "outage": "503"})
    assert (knobs.latency_ms, knobs.error_rate, knobs.fault_paths, knobs.outage) == (20, 0.5, ["/pagamentos"], "503")
    for bad in ({"nope": 1}, {"error_rate": 1.5}, {"latency_ms": -1}, {"latency_ms": True}, {"outage": "down"},
                {"hang_ms": 10**9}, {"webhook_batch_max": 0}, {"fault_paths": "/"}, {"webhook_enabled": 1}):
        with pytest.raises(KnobError):
            Knobs().updated(bad)


def test_knobs_from_flags_and_environment() -> None:
    assert knob_from_text("webhook_enabled", "false") is False
    assert knob_from_text("payment_reject_keys", "a@b.c,+5511987654321") == ["a@b.c", "+5511987654321"]
    identity, knobs = configure(["--psp-id", "secondary", "--port", "9001", "--latency-ms", "7"],
                                {"RAZAO_SANDBOX_PSP_LATENCY_MS": "99", "RAZAO_SANDBOX_PSP_ERROR_RATE": "0.25",
                                 "RAZAO_SANDBOX_PSP_ISPB": "20000002"})
    assert (identity.psp_id, identity.port, identity.ispb) == ("secondary", 9001, "20000002")
    assert (knobs.latency_ms, knobs.error_rate) == (7, 0.25)  # the flag wins over the environment


@pytest.mark.parametrize(
    ("url", "allow_remote", "ok"),
    [("http://127.0.0.1:8000/hooks", False, True), ("http://localhost/hooks", False, True),
     ("http://[::1]:8000/x", False, True), ("https://example.com/hooks", False, False),
     ("https://example.com/hooks", True, True), ("ftp://127.0.0.1/x", False, False), ("", False, False)],
)
def test_webhook_urls_are_loopback_only_by_default(url: str, allow_remote: bool, ok: bool) -> None:
    assert (webhook_url_problem(url, allow_remote) is None) is ok


# ---- state rules ----------------------------------------------------------------------------------------------


class Harness:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.notified: list[dict[str, Any]] = []
        self.state = SandboxState(Identity(), Knobs(), Random(1), schedule=lambda d, f: self.timers.append((d, f)),
                                  notify=self.notified.append, clock=lambda: self.now)

    def run_timers(self) -> None:
        timers, self.timers = self.timers, []
        for _, action in timers:
            action()

    def cob(self, txid: str = "t" * 26, valor: str = "100.00") -> dict[str, Any]:
        return self.state.put_cob(txid, {"calendario": {"expiracao": 3600}, "valor": {"original": valor},
                                         "chave": Identity().pix_key})


@pytest.fixture
def harness() -> Harness:
    return Harness()


def test_a_put_cob_again_is_idempotent_and_a_change_is_a_revision(harness: Harness) -> None:
    first = harness.cob()
    assert harness.cob() == first
    revised = harness.cob(valor="120.00")
    assert (revised["revisao"], revised["valor"]["original"]) == (1, "120.00")
    harness.state.pay({"txid": "t" * 26})
    with pytest.raises(Problem) as caught:
        harness.cob(valor="130.00")
    assert caught.value.status == 400


def test_paying_a_charge_validates_against_ledger_pix_and_notifies(harness: Harness) -> None:
    harness.cob()
    received = harness.state.pay({"txid": "t" * 26})
    assert pix.validate_pix(received).amount_centavos == 10_000
    assert harness.notified == [received]
    assert harness.state.get_cob("t" * 26)["status"] == "CONCLUIDA"
    with pytest.raises(Problem) as caught:  # a concluded charge takes no second payment...
        harness.state.pay({"txid": "t" * 26})
    assert caught.value.status == 409
    harness.state.pay({"txid": "t" * 26, "force": True})  # ...unless forced (a payer's PSP misbehaving)
    harness.state.pay({"valor": "5.00"})  # a Pix to our key without txid: recorded, never notified
    assert len(harness.notified) == 2 and len(harness.state.pix) == 3


def test_an_expired_charge_cannot_be_paid(harness: Harness) -> None:
    harness.cob()
    harness.now += timedelta(seconds=3601)
    with pytest.raises(Problem, match="expired"):
        harness.state.pay({"txid": "t" * 26})


def test_devolucao_rules(harness: Harness) -> None:
    harness.cob()
    e2eid = harness.state.pay({"txid": "t" * 26})["endToEndId"]
    first = harness.state.put_refund(e2eid, "r1", {"valor": "60.00"})
    assert first["status"] == "EM_PROCESSAMENTO" and first["rtrId"].startswith("D10000001")
    assert harness.state.put_refund(e2eid, "r1", {"valor": "60.00"}) == first  # the same request: idempotent
    with pytest.raises(Problem, match="id já utilizado"):
        harness.state.put_refund(e2eid, "r1", {"valor": "10.00"})
    with pytest.raises(Problem, match="excederia"):
        harness.state.put_refund(e2eid, "r2", {"valor": "40.01"})
    harness.state.put_refund(e2eid, "r2", {"valor": "40.00"})
    harness.run_timers()
    assert harness.state.get_refund(e2eid, "r2")["status"] == "DEVOLVIDO"
    final = harness.notified[-1]
    assert [d["status"] for d in final["devolucoes"]] == ["DEVOLVIDO", "DEVOLVIDO"]
    assert pix.validate_pix(final).refundable_centavos == 0


def test_devolucao_window_is_90_days(harness: Harness) -> None:
    harness.cob()
    e2eid = harness.state.pay({"txid": "t" * 26})["endToEndId"]
    harness.now += timedelta(days=90, seconds=1)
    with pytest.raises(Problem, match="90 dias"):
        harness.state.put_refund(e2eid, "late", {"valor": "1.00"})


def test_a_refused_devolucao_frees_its_amount(harness: Harness) -> None:
    harness.state.knobs = harness.state.knobs.updated({"refund_reject_rate": 1.0})
    harness.cob()
    e2eid = harness.state.pay({"txid": "t" * 26})["endToEndId"]
    harness.state.put_refund(e2eid, "r1", {"valor": "100.00"})
    harness.run_timers()
    assert harness.state.get_refund(e2eid, "r1")["status"] == "NAO_REALIZADO"
    harness.state.put_refund(e2eid, "r2", {"valor": "100.00"})


def test_payments_are_idempotent_by_id(harness: Harness) -> None:
    body = {"valor": "12.34", "favorecido": {"chave": "pix@bcb.gov.br"}}
    status, first = harness.state.put_payment("p1", body)
    assert (status, first["status"]) == (201, "REALIZADO")
    assert harness.state.put_payment("p1", body) == (200, first)
    with pytest.raises(Problem) as caught:
        harness.state.put_payment("p1", {**body, "valor": "12.35"})
    assert caught.value.status == 409
    harness.state.knobs = harness.state.knobs.updated({"payment_reject_keys": ["+5511987654321"],
                                                       "payment_settle_ms": 50})
    _, refused = harness.state.put_payment("p2", {"valor": "1.00", "favorecido": {"chave": "+5511987654321"}})
    assert refused["status"] == "EM_PROCESSAMENTO"
    harness.run_timers()
    assert harness.state.get_payment("p2")["status"] == "NAO_REALIZADO"
    assert "DICT" in harness.state.get_payment("p2")["motivo"]


def test_listing_pages_and_filters(harness: Harness) -> None:
    for index in range(5):
        harness.now += timedelta(minutes=1)
        harness.state.pay({"txid": f"{index}" * 26, "valor": "1.00", "force": True, "cpf": "52998224725"})
    harness.state.pay({"valor": "2.00"})
    query = {"inicio": "2026-03-01T00:00:00Z", "fim": "2026-03-02T00:00:00Z", "paginacao.itensPorPagina": "2"}
    pages = [harness.state.list_pix({**query, "paginacao.paginaAtual": str(n)}) for n in range(3)]
    assert [len(page["pix"]) for page in pages] == [2, 2, 2]
    assert pages[0]["parametros"]["paginacao"] == {"paginaAtual": 0, "itensPorPagina": 2, "quantidadeDePaginas": 3,
                                                   "quantidadeTotalDeItens": 6}
    assert len(harness.state.list_pix({**query, "txIdPresente": "false"})["pix"]) == 1
    assert len(harness.state.list_pix({**query, "cpf": "52998224725"})["pix"]) == 2  # one page of the five
    for bad in ({**query, "fim": "2026-02-01T00:00:00Z"}, {**query, "paginacao.itensPorPagina": "1001"},
                {**query, "cpf": "1", "cnpj": "2"}, {"fim": query["fim"]}):
        with pytest.raises(Problem) as caught:
            harness.state.list_pix(bad)
        assert caught.value.status == 400 and caught.value.kind == "PixConsultaInvalida"
