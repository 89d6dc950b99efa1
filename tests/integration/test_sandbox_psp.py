"""The sandbox PSP as a process: every endpoint and every knob, over HTTP, with a real webhook receiver.

One sandbox serves the module (reset before each test); the webhook receiver is a small threaded HTTP server.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.processes import free_port
from infra.sandbox_psp import brcode
from infra.sandbox_psp import services as sandbox_services
from infra.sandbox_psp.launcher import RunningSandbox, start_sandbox
from infra.settings import Settings
from ledger import pix

TXID = "abcdefghijklmnopqrstuvwxyz0123"
WINDOW = {"inicio": "2000-01-01T00:00:00Z", "fim": "2100-01-01T00:00:00Z"}


# ---- fixtures -------------------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records webhook POSTs; answers each with the next status of ``statuses`` (then 200)."""

    port: int
    posts: queue.Queue[Received] = field(default_factory=queue.Queue)
    statuses: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def next(self, timeout_s: float = 5.0) -> Received:
        return self.posts.get(timeout=timeout_s)

    def nothing_within(self, timeout_s: float) -> bool:
        try:
            self.posts.get(timeout=timeout_s)
        except queue.Empty:
            return True
        return False


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    port = free_port("127.0.0.1")
    state = Receiver(port)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.posts.put(Received(self.path, dict(self.headers.items()), body, time.monotonic()))
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    running = start_sandbox("primary", seed=42, log_path=tmp_path_factory.mktemp("sandbox") / "primary.log")
    yield running
    running.stop()


@pytest.fixture
def api(sandbox: RunningSandbox, receiver: Receiver) -> Iterator[httpx.Client]:
    sandbox.reset()
    receiver.statuses.clear()
    while not receiver.posts.empty():
        receiver.posts.get_nowait()
    with httpx.Client(base_url=sandbox.base_url, timeout=5.0,
                      headers={"Authorization": f"Bearer {sandbox.token()}"}) as client:
        yield client


def cob_body(sandbox: RunningSandbox, valor: str = "110.00") -> dict[str, Any]:
    return {"calendario": {"expiracao": 3600}, "valor": {"original": valor}, "chave": sandbox.pix_key,
            "solicitacaoPagador": "Depósito na Razão"}


def register(api: httpx.Client, sandbox: RunningSandbox, receiver: Receiver) -> None:
    assert api.put(f"/webhook/{sandbox.pix_key}", json={"webhookUrl": receiver.url}).status_code == 200


def poll(check: Any, timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# ---- auth -----------------------------------------------------------------------------------------------------


def test_oauth2_client_credentials(sandbox: RunningSandbox, api: httpx.Client) -> None:
    anonymous = httpx.get(f"{sandbox.base_url}/cob/{TXID}")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert anonymous.json()["type"] == "https://pix.bcb.gov.br/api/v2/error/AcessoNegado"
    wrong = httpx.post(f"{sandbox.base_url}/oauth/token", data={"grant_type": "client_credentials"},
                       auth=(sandbox.client_id, "wrong"))
    assert wrong.status_code == 401
    form = httpx.post(f"{sandbox.base_url}/oauth/token", data={
        "grant_type": "client_credentials", "client_id": sandbox.client_id, "client_secret": sandbox.client_secret})
    assert form.json()["token_type"] == "Bearer" and form.json()["expires_in"] > 0
    assert api.get(f"/cob/{TXID}").status_code == 404  # authenticated: the charge just does not exist


# ---- cob ------------------------------------------------------------------------------------------------------


def test_create_charge_with_put_and_post_and_read_it(sandbox: RunningSandbox, api: httpx.Client) -> None:
    created = api.put(f"/cob/{TXID}", json=cob_body(sandbox))
    assert created.status_code == 201
    cob = created.json()
    assert {"txid", "calendario", "revisao", "loc", "location", "status", "valor", "chave", "pixCopiaECola"} <= set(cob)
    assert (cob["txid"], cob["status"], cob["revisao"], cob["valor"]["original"]) == (TXID, "ATIVA", 0, "110.00")
    fields = brcode.parse_brcode(cob["pixCopiaECola"])  # checks the CRC
    assert cob["location"] in fields["26"] and fields["54"] == "110.00"
    assert api.put(f"/cob/{TXID}", json=cob_body(sandbox)).json() == cob  # PUT again: same charge
    assert api.get(f"/cob/{TXID}").json() == cob

    generated = api.post("/cob", json=cob_body(sandbox, "5.00"))
    assert generated.status_code == 201 and pix.is_valid_txid(generated.json()["txid"])

    sandbox.pay(txid=TXID)
    paid = api.get(f"/cob/{TXID}").json()
    assert paid["status"] == "CONCLUIDA" and len(paid["pix"]) == 1


@pytest.mark.parametrize(
    ("txid", "change", "property_name"),
    [
        ("short", {}, "txid"),
        (TXID, {"chave": "outra@chave.com"}, "cob.chave"),
        (TXID, {"valor": {"original": "110.000"}}, "cob.valor.original"),
        (TXID, {"valor": {"original": "0.00"}}, "cob.valor.original"),
        (TXID, {"calendario": {"expiracao": 0}}, "cob.calendario.expiracao"),
        (TXID, {"devedor": {"cpf": "52998224725", "cnpj": "11222333000181", "nome": "X"}}, "cob.devedor"),
    ],
)
def test_invalid_charges_are_refused_with_violations(sandbox: RunningSandbox, api: httpx.Client, txid: str,
                                                     change: dict[str, Any], property_name: str) -> None:
    refused = api.put(f"/cob/{txid}", json={**cob_body(sandbox), **change})
    assert refused.status_code == 400
    assert property_name in [v["propriedade"] for v in refused.json()["violacoes"]]
    assert api.put(f"/cob/{TXID}", content=b"{not json").status_code == 400


# ---- webhook --------------------------------------------------------------------------------------------------


def test_webhook_registration(sandbox: RunningSandbox, api: httpx.Client, receiver: Receiver) -> None:
    register(api, sandbox, receiver)
    assert api.get(f"/webhook/{sandbox.pix_key}").json()["webhookUrl"] == receiver.url
    assert api.put("/webhook/outra@chave.com", json={"webhookUrl": receiver.url}).status_code == 400
    assert api.put(f"/webhook/{sandbox.pix_key}", json={"webhookUrl": "https://example.com/x"}).status_code == 400
    assert api.delete(f"/webhook/{sandbox.pix_key}").status_code == 204
    assert api.get(f"/webhook/{sandbox.pix_key}").status_code == 404


def test_a_payment_is_notified_signed_to_webhook_url_slash_pix(sandbox: RunningSandbox, api: httpx.Client,
                                                                receiver: Receiver) -> None:
    register(api, sandbox, receiver)
    api.put(f"/cob/{TXID}", json=cob_body(sandbox))
    paid = sandbox.pay(txid=TXID, infoPagador="aporte")
    post = receiver.next()
    assert post.path == "/hooks/pix"  # the spec's callback: {webhookUrl}/pix
    assert post.headers[pix.WEBHOOK_PSP_HEADER] == "primary"
    assert pix.verify_webhook_signature(sandbox.webhook_secret.encode(), post.body,
                                        post.headers[pix.WEBHOOK_SIGNATURE_HEADER])
    received = pix.validate_webhook_body(post.json)
    assert [(p.end_to_end_id, p.txid, p.amount_centavos, p.payer_info) for p in received] == [
        (paid["endToEndId"], TXID, 11_000, "aporte")]
    assert received[0].end_to_end_id[1:9] == "30000003"  # generated by the payer's PSP


def test_pix_without_txid_is_recorded_but_not_notified(sandbox: RunningSandbox, api: httpx.Client,
                                                      receiver: Receiver) -> None:
    register(api, sandbox, receiver)
    paid = sandbox.pay(valor="7.00")
    assert "txid" not in paid
    assert receiver.nothing_within(0.4)
    assert api.get(f"/pix/{paid['endToEndId']}").json() == paid


# ---- received Pix ---------------------------------------------------------------------------------------------


def test_get_pix_and_paginated_list(sandbox: RunningSandbox, api: httpx.Client) -> None:
    paid = [sandbox.pay(txid=f"{n}" * 26, valor=f"{n}.00", force=True) for n in range(1, 6)]
    assert api.get(f"/pix/{paid[0]['endToEndId']}").json() == paid[0]
    assert api.get("/pix/E12345678202009091221abcdef12345").status_code == 404
    seen = []
    for page in range(3):
        body = api.get("/pix", params={**WINDOW, "paginacao.paginaAtual": page,
                                       "paginacao.itensPorPagina": 2}).json()
        assert body["parametros"]["paginacao"]["quantidadeDePaginas"] == 3
        assert body["parametros"]["paginacao"]["quantidadeTotalDeItens"] == 5
        seen += body["pix"]
    assert seen == paid
    assert api.get("/pix", params={**WINDOW, "txid": "3" * 26}).json()["pix"] == [paid[2]]
    bad = api.get("/pix", params={"inicio": WINDOW["fim"], "fim": WINDOW["inicio"]})
    assert bad.status_code == 400 and bad.json()["type"].endswith("/PixConsultaInvalida")


# ---- devolução ------------------------------------------------------------------------------------------------


def test_devolucao_lifecycle_and_its_notification(sandbox: RunningSandbox, api: httpx.Client,
                                                  receiver: Receiver) -> None:
    register(api, sandbox, receiver)
    api.put(f"/cob/{TXID}", json=cob_body(sandbox))
    e2eid = sandbox.pay(txid=TXID)["endToEndId"]
    receiver.next()
    requested = api.put(f"/pix/{e2eid}/devolucao/dev1", json={"valor": "10.00", "descricao": "estorno"})
    assert requested.status_code == 201 and requested.json()["status"] == "EM_PROCESSAMENTO"
    assert requested.json()["rtrId"].startswith("D10000001")
    assert api.put(f"/pix/{e2eid}/devolucao/dev1", json={"valor": "10.00", "descricao": "estorno"}).json() == (
        requested.json())
    done = poll(lambda: api.get(f"/pix/{e2eid}/devolucao/dev1").json()["status"] == "DEVOLVIDO")
    assert done
    notified = pix.validate_webhook_body(receiver.next().json)[0]  # the final status is notified too
    assert notified.end_to_end_id == e2eid
    assert [(r.id, r.status) for r in notified.refunds] == [("dev1", pix.RefundStatus.DEVOLVIDO)]
    over = api.put(f"/pix/{e2eid}/devolucao/dev2", json={"valor": "100.01"})
    assert over.status_code == 400 and over.json()["type"].endswith("/PixDevolucaoInvalida")
    assert api.put(f"/pix/{e2eid}/devolucao/dev1", json={"valor": "9.00"}).status_code == 400
    assert api.get(f"/pix/{e2eid}/devolucao/nope").status_code == 404
    assert api.put("/pix/E12345678202009091221abcdef12345/devolucao/x", json={"valor": "1.00"}).status_code == 404


def test_devolucao_outside_90_days_and_refused(sandbox: RunningSandbox, api: httpx.Client) -> None:
    old = sandbox.pay(txid=TXID, valor="50.00", force=True,
                      horario=pix.format_horario(datetime.now(UTC) - timedelta(days=91)))
    late = api.put(f"/pix/{old['endToEndId']}/devolucao/d1", json={"valor": "1.00"})
    assert late.status_code == 400 and "90 dias" in late.json()["detail"]
    sandbox.configure(refund_reject_rate=1.0, refund_settle_ms=0)
    recent = sandbox.pay(txid=TXID, valor="50.00", force=True)
    api.put(f"/pix/{recent['endToEndId']}/devolucao/d1", json={"valor": "50.00"})
    refused = poll(lambda: api.get(f"/pix/{recent['endToEndId']}/devolucao/d1").json()["status"] == "NAO_REALIZADO")
    assert refused


# ---- payments we send -----------------------------------------------------------------------------------------


def test_payments_by_idempotency_id(sandbox: RunningSandbox, api: httpx.Client) -> None:
    body = {"valor": "25.00", "favorecido": {"chave": "+5511987654321"}, "infoPagador": "saque"}
    created = api.put("/pagamentos/saque1", json=body)
    assert created.status_code == 201
    assert created.json()["status"] == "REALIZADO" and created.json()["endToEndId"].startswith("E10000001")
    again = api.put("/pagamentos/saque1", json=body)
    assert again.status_code == 200 and again.json() == created.json()
    assert api.put("/pagamentos/saque1", json={**body, "valor": "26.00"}).status_code == 409
    assert api.get("/pagamentos/saque1").json() == created.json()
    assert api.get("/pagamentos/nope").status_code == 404
    invalid = api.put("/pagamentos/saque2", json={**body, "favorecido": {"chave": "not a key"}})
    assert invalid.status_code == 400
    assert api.put("/pagamentos/bad-id!", json=body).status_code in (400, 404)

    sandbox.configure(payment_reject_keys=["naoexiste@example.com"], payment_settle_ms=300)
    refused = api.put("/pagamentos/saque3", json={"valor": "1.00", "favorecido": {"chave": "naoexiste@example.com"}})
    assert refused.json()["status"] == "EM_PROCESSAMENTO"
    final = poll(lambda: api.get("/pagamentos/saque3").json()["status"] != "EM_PROCESSAMENTO" and
                 api.get("/pagamentos/saque3").json())
    assert final["status"] == "NAO_REALIZADO" and "DICT" in final["motivo"]


# ---- knobs ----------------------------------------------------------------------------------------------------


def test_latency_applies_to_fault_paths_only(sandbox: RunningSandbox, api: httpx.Client) -> None:
    sandbox.configure(latency_ms=250, fault_paths=["/pagamentos"])
    started = time.monotonic()
    api.get(f"/cob/{TXID}")
    assert time.monotonic() - started < 0.2
    started = time.monotonic()
    api.get("/pagamentos/x")
    assert time.monotonic() - started >= 0.25


def test_errors_before_and_after_processing(sandbox: RunningSandbox, api: httpx.Client) -> None:
    body = {"valor": "1.00", "favorecido": {"chave": "pix@bcb.gov.br"}}
    sandbox.configure(error_rate=1.0, fault_paths=["/pagamentos"])
    assert api.put("/pagamentos/e1", json=body).status_code == 503
    sandbox.configure(error_rate=0.0, error_after_rate=1.0)
    assert api.put("/pagamentos/e2", json=body).status_code == 500
    sandbox.configure(error_after_rate=0.0)
    assert api.get("/pagamentos/e1").status_code == 404  # refused before anything happened
    assert api.get("/pagamentos/e2").json()["status"] == "REALIZADO"  # done, though the answer said 500
    sandbox.configure(fail_next=2, fault_paths=["/"])
    assert [api.get(f"/cob/{TXID}").status_code for _ in range(3)] == [503, 503, 404]
    assert [r["fault"] for r in sandbox.requests()[-3:]] == ["fail_next", "fail_next", None]


def test_hang_past_the_client_timeout_after_doing_the_work(sandbox: RunningSandbox, api: httpx.Client) -> None:
    sandbox.configure(timeout_rate=1.0, hang_ms=1500, fault_paths=["/pagamentos"])
    with pytest.raises(httpx.ReadTimeout):
        api.put("/pagamentos/h1", json={"valor": "1.00", "favorecido": {"chave": "pix@bcb.gov.br"}}, timeout=0.3)
    sandbox.configure(timeout_rate=0.0)
    assert api.get("/pagamentos/h1").json()["status"] == "REALIZADO"


def test_outage_503_everywhere_but_the_admin(sandbox: RunningSandbox, api: httpx.Client) -> None:
    sandbox.configure(outage="503")
    assert api.get(f"/cob/{TXID}").status_code == 503
    assert httpx.post(f"{sandbox.base_url}/oauth/token").status_code == 503
    assert sandbox.state()["charges"] == 0  # the admin port still answers
    sandbox.configure(outage="none")
    assert api.get(f"/cob/{TXID}").status_code == 404


def test_outage_refuse_closes_the_port_and_ends_by_itself(sandbox: RunningSandbox, api: httpx.Client) -> None:
    sandbox.configure(outage="refuse", outage_s=0.6)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sandbox.base_url}/cob/{TXID}", timeout=1.0)
    assert sandbox.state()["charges"] == 0
    back = poll(lambda: _connects(sandbox.base_url), timeout_s=3.0)
    assert back
    assert sandbox.configure()["outage"] == "none"
    assert api.get(f"/cob/{TXID}").status_code == 404  # the client's pool recovers by itself


def _connects(base_url: str) -> bool:
    try:
        httpx.get(f"{base_url}/_sandbox/health", timeout=0.5)
    except httpx.TransportError:
        return False
    return True


def test_duplicate_delivery(sandbox: RunningSandbox, api: httpx.Client, receiver: Receiver) -> None:
    register(api, sandbox, receiver)
    sandbox.configure(webhook_duplicate_rate=1.0)
    sandbox.pay(txid=TXID, valor="1.00", force=True)
    first, second = receiver.next(), receiver.next()
    assert first.body == second.body
    assert first.headers["X-Razao-Delivery"] == second.headers["X-Razao-Delivery"]
    assert [d["duplicate"] for d in sandbox.deliveries() if "delivery_id" in d] == [False, True]


def test_batched_delivery(sandbox: RunningSandbox, api: httpx.Client, receiver: Receiver) -> None:
    register(api, sandbox, receiver)
    sandbox.configure(webhook_batch_window_ms=400)
    paid = [sandbox.pay(txid=f"{n}" * 26, valor="1.00", force=True)["endToEndId"] for n in range(3)]
    post = receiver.next()
    assert [p.end_to_end_id for p in pix.validate_webhook_body(post.json)] == paid
    assert receiver.nothing_within(0.3)


def test_late_delivery(sandbox: RunningSandbox, api: httpx.Client, receiver: Receiver) -> None:
    register(api, sandbox, receiver)
    sandbox.configure(webhook_delay_ms=600)
    started = time.monotonic()
    sandbox.pay(txid=TXID, valor="1.00", force=True)
    assert receiver.next().at - started >= 0.6


def test_retries_until_the_platform_answers_2xx(sandbox: RunningSandbox, api: httpx.Client,
                                                receiver: Receiver) -> None:
    register(api, sandbox, receiver)
    sandbox.configure(webhook_retry_backoff_ms=50)
    receiver.statuses.extend([500, 503])
    sandbox.pay(txid=TXID, valor="1.00", force=True)
    bodies = [receiver.next().body for _ in range(3)]
    assert len(set(bodies)) == 1
    attempts = [(d["attempt"], d["status"]) for d in sandbox.deliveries() if "attempt" in d]
    assert attempts == [(1, 500), (2, 503), (3, 200)]


def test_webhooks_can_be_lost(sandbox: RunningSandbox, api: httpx.Client, receiver: Receiver) -> None:
    register(api, sandbox, receiver)
    sandbox.configure(webhook_enabled=False)
    paid = sandbox.pay(txid=TXID, valor="1.00", force=True)
    assert receiver.nothing_within(0.4)
    assert sandbox.deliveries()[-1] == {**sandbox.deliveries()[-1], "pix": [paid["endToEndId"]],
                                        "skipped": "webhook_disabled"}
    assert api.get("/pix", params=WINDOW).json()["pix"] == [paid]  # reconciliation still finds it


def test_a_seed_replays_the_same_identifiers(sandbox: RunningSandbox, api: httpx.Client) -> None:
    def run() -> list[str]:
        sandbox.reset(seed=7)
        return [sandbox.pay(txid=f"{n}" * 26, valor="1.00", force=True)["endToEndId"][-11:] for n in range(3)]

    assert run() == run()


# ---- starting it ----------------------------------------------------------------------------------------------


def test_flags_and_environment_set_the_knobs(tmp_path: Path) -> None:
    running = start_sandbox("secondary", ispb="20000002", args=["--error-rate", "0.5"],
                            env={"RAZAO_SANDBOX_PSP_LATENCY_MS": "25"}, log_path=tmp_path / "s.log")
    try:
        config = httpx.get(f"{running.admin_url}/_sandbox/config").json()
        assert (config["psp"], config["ispb"]) == ("secondary", "20000002")
        assert (config["knobs"]["error_rate"], config["knobs"]["latency_ms"]) == (0.5, 25)
    finally:
        running.stop()


def test_razao_up_service_specs_start_healthy_sandboxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRIMARY", "SECONDARY"):
        monkeypatch.setenv(f"RAZAO_SANDBOX_PSP_{name}_PORT", str(free_port("127.0.0.1")))
        monkeypatch.setenv(f"RAZAO_SANDBOX_PSP_{name}_ADMIN_PORT", str(free_port("127.0.0.1")))
    specs = sandbox_services.services(Settings("dsn", "redis://x", "k:1", tmp_path))
    processes = [subprocess.Popen(spec.argv, env={**os.environ, **spec.env},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for spec in specs]
    try:
        for spec in specs:
            assert spec.health_url is not None
            healthy = poll(lambda url=spec.health_url: _status(url) == 200, timeout_s=15.0)
            assert healthy, spec.name
        primary, secondary = sandbox_services.profiles()
        for profile in (primary, secondary):
            token = httpx.post(f"{profile.base_url}/oauth/token", data={"grant_type": "client_credentials"},
                               auth=(profile.client_id, profile.client_secret))
            assert token.status_code == 200, profile.name
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=5)


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=0.5).status_code
    except httpx.TransportError:
        return None
