"""The sandbox PSP's state and rules, without HTTP: charges, received Pix, devoluções, payments, webhook, tokens.

Every operation takes decoded JSON and returns JSON-ready dicts, or raises ``Problem`` (an RFC 7807 body as the
spec's ``Problema``). Time, randomness, timers and notifications are injected, so the rules are testable and a
seeded sandbox is deterministic for a given sequence of requests.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any, Final

from infra.sandbox_psp import brcode
from infra.sandbox_psp.config import Identity, Knobs, webhook_url_problem
from infra.sandbox_psp.formats import (
    CNPJ_PATTERN,
    CPF_PATTERN,
    ID_PATTERN,
    TXID_PATTERN,
    centavos_to_valor,
    format_date_time,
    is_pix_key,
    new_alnum,
    new_end_to_end_id,
    parse_date_time,
    valor_to_centavos,
)

ERROR_TYPE_BASE: Final = "https://pix.bcb.gov.br/api/v2/error/"
#: Per kind of record (charges, Pix, payments): past this, the sandbox asks for a reset instead of growing.
RECORDS_MAX: Final = 100_000
TOKENS_MAX: Final = 10_000
TOKEN_LIFETIME_S: Final = 3_600
REFUND_WINDOW: Final = timedelta(days=90)
PAGE_SIZE_DEFAULT: Final = 100
PAGE_SIZE_MAX: Final = 1_000  # paginacao.itensPorPagina maximum in the spec
TEXT_LENGTH_MAX: Final = 140
SCOPES: Final = "cob.write cob.read pix.write pix.read webhook.write webhook.read pagamento.write pagamento.read"

Json = dict[str, Any]
Scheduler = Callable[[float, Callable[[], None]], None]
Notifier = Callable[[Json], None]


class Problem(Exception):
    """An error answer: HTTP ``status`` and the spec's ``Problema`` body."""

    def __init__(self, status: int, kind: str, title: str, detail: str = "",
                 violations: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{status} {kind}: {detail or title}")
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.violations = violations or []

    def body(self) -> Json:
        body: Json = {"type": ERROR_TYPE_BASE + self.kind, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if self.violations:
            body["violacoes"] = [{"propriedade": prop, "razao": reason} for prop, reason in self.violations]
        return body


def _invalid(kind: str, violations: list[tuple[str, str]]) -> Problem:
    return Problem(400, kind, "Requisição inválida.", violations[0][1], violations)


def _refund_invalid(*violations: tuple[str, str]) -> Problem:
    return _invalid("PixDevolucaoInvalida", list(violations))


@dataclass
class Charge:
    txid: str
    created_at: datetime
    expires_in_s: int
    amount_centavos: int
    modality: int
    key: str
    payer_request: str | None
    debtor: Json | None
    extra_info: list[Json]
    loc_id: int
    location: str
    copia_e_cola: str
    revision: int = 0
    status: str = "ATIVA"
    pix: list[str] = field(default_factory=list)

    def request_fields(self) -> tuple[object, ...]:
        return (self.expires_in_s, self.amount_centavos, self.modality, self.payer_request, self.debtor,
                self.extra_info)

    def to_json(self) -> Json:
        body: Json = {
            "calendario": {"criacao": format_date_time(self.created_at), "expiracao": self.expires_in_s},
            "txid": self.txid,
            "revisao": self.revision,
            "loc": {"id": self.loc_id, "location": self.location, "tipoCob": "cob",
                    "criacao": format_date_time(self.created_at)},
            "location": self.location,
            "status": self.status,
            "valor": {"original": centavos_to_valor(self.amount_centavos), "modalidadeAlteracao": self.modality},
            "chave": self.key,
            "pixCopiaECola": self.copia_e_cola,
        }
        if self.debtor:
            body["devedor"] = self.debtor
        if self.payer_request is not None:
            body["solicitacaoPagador"] = self.payer_request
        if self.extra_info:
            body["infoAdicionais"] = self.extra_info
        return body

    def expired(self, now: datetime) -> bool:
        return now > self.created_at + timedelta(seconds=self.expires_in_s)


@dataclass
class Refund:
    id: str
    rtr_id: str
    amount_centavos: int
    requested_at: datetime
    description: str | None
    status: str = "EM_PROCESSAMENTO"
    settled_at: datetime | None = None
    reason: str | None = None

    def to_json(self) -> Json:
        moments = {"solicitacao": format_date_time(self.requested_at)}
        if self.settled_at is not None:
            moments["liquidacao"] = format_date_time(self.settled_at)
        body: Json = {"id": self.id, "rtrId": self.rtr_id, "valor": centavos_to_valor(self.amount_centavos),
                      "natureza": "ORIGINAL", "horario": moments, "status": self.status}
        if self.description is not None:
            body["descricao"] = self.description
        if self.reason is not None:
            body["motivo"] = self.reason
        return body


@dataclass
class ReceivedPix:
    e2eid: str
    txid: str | None
    amount_centavos: int
    key: str
    at: datetime
    payer_info: str | None
    payer_document: str | None
    refunds: dict[str, Refund] = field(default_factory=dict)

    def committed_refunds_centavos(self) -> int:
        return sum(r.amount_centavos for r in self.refunds.values() if r.status != "NAO_REALIZADO")

    def to_json(self) -> Json:
        body: Json = {"endToEndId": self.e2eid}
        if self.txid is not None:
            body["txid"] = self.txid
        body["valor"] = centavos_to_valor(self.amount_centavos)
        if self.txid is not None:
            body["componentesValor"] = {"original": {"valor": centavos_to_valor(self.amount_centavos)}}
        body["chave"] = self.key
        body["horario"] = format_date_time(self.at)
        if self.payer_info is not None:
            body["infoPagador"] = self.payer_info
        if self.refunds:
            body["devolucoes"] = [refund.to_json() for refund in self.refunds.values()]
        return body


@dataclass
class Payment:
    id: str
    key: str
    amount_centavos: int
    description: str | None
    e2eid: str
    requested_at: datetime
    outcome: str
    outcome_reason: str | None
    status: str = "EM_PROCESSAMENTO"
    settled_at: datetime | None = None

    def request_fields(self) -> tuple[object, ...]:
        return (self.key, self.amount_centavos, self.description)

    def to_json(self) -> Json:
        moments = {"solicitacao": format_date_time(self.requested_at)}
        if self.settled_at is not None:
            moments["liquidacao"] = format_date_time(self.settled_at)
        body: Json = {"idEnvio": self.id, "endToEndId": self.e2eid, "valor": centavos_to_valor(self.amount_centavos),
                      "favorecido": {"chave": self.key}, "horario": moments, "status": self.status}
        if self.description is not None:
            body["infoPagador"] = self.description
        if self.status == "NAO_REALIZADO" and self.outcome_reason:
            body["motivo"] = self.outcome_reason
        return body


def _now() -> datetime:
    return datetime.now(UTC)


class SandboxState:
    """One PSP's records. Not thread-safe: the server runs it on one event loop."""

    def __init__(self, identity: Identity, knobs: Knobs, rng: Random, *, schedule: Scheduler, notify: Notifier,
                 clock: Callable[[], datetime] = _now) -> None:
        self.identity = identity
        self.knobs = knobs
        self.rng = rng
        self.schedule = schedule
        self.notify = notify
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.charges: dict[str, Charge] = {}
        self.pix: dict[str, ReceivedPix] = {}
        self.payments: dict[str, Payment] = {}
        self.webhook: Json | None = None
        self.tokens: OrderedDict[str, datetime] = OrderedDict()
        self.next_loc_id = 1

    def counts(self) -> Json:
        return {"charges": len(self.charges), "pix": len(self.pix), "payments": len(self.payments),
                "refunds": sum(len(p.refunds) for p in self.pix.values()), "webhook": self.webhook is not None}

    # ---- OAuth2 client credentials --------------------------------------------------------------------------

    def issue_token(self, client_id: str | None, client_secret: str | None, grant_type: str | None) -> Json:
        if grant_type != "client_credentials":
            raise Problem(400, "RequisicaoInvalida", "grant_type must be client_credentials")
        if client_id != self.identity.client_id or not secrets.compare_digest(
            (client_secret or "").encode(), self.identity.client_secret.encode()
        ):
            raise Problem(401, "AcessoNegado", "Invalid client credentials.")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.clock() + timedelta(seconds=TOKEN_LIFETIME_S)
        while len(self.tokens) > TOKENS_MAX:
            self.tokens.popitem(last=False)
        return {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_S, "scope": SCOPES}

    def token_valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expires_at = self.tokens.get(authorization[len("Bearer "):])
        return expires_at is not None and self.clock() < expires_at

    # ---- cob ------------------------------------------------------------------------------------------------

    def put_cob(self, txid: str, body: object) -> Json:
        if not TXID_PATTERN.fullmatch(txid):
            raise _invalid("CobOperacaoInvalida", [("txid", "txid must be 26 to 35 letters or digits")])
        fields = self._cob_fields(body)
        existing = self.charges.get(txid)
        if existing is not None:
            if existing.status != "ATIVA":
                raise _invalid("CobOperacaoInvalida", [("cob.status", "a cobrança não está ATIVA: não pode mudar")])
            if existing.request_fields() != fields:
                (existing.expires_in_s, existing.amount_centavos, existing.modality, existing.payer_request,
                 existing.debtor, existing.extra_info) = fields
                existing.revision += 1
            return existing.to_json()
        self._room(self.charges)
        expires_in_s, amount_centavos, modality, payer_request, debtor, extra_info = fields
        now = self.clock()
        loc_id, self.next_loc_id = self.next_loc_id, self.next_loc_id + 1
        location = f"{self.identity.host}:{self.identity.port}/qr/v2/{new_alnum(32, self.rng).lower()}"
        code = brcode.dynamic_brcode(location, self.identity.receiver_name, self.identity.receiver_city,
                                     centavos_to_valor(amount_centavos))
        charge = Charge(txid=txid, created_at=now, expires_in_s=expires_in_s, amount_centavos=amount_centavos,
                        modality=modality, key=self.identity.pix_key, payer_request=payer_request, debtor=debtor,
                        extra_info=extra_info, loc_id=loc_id, location=location, copia_e_cola=code)
        self.charges[txid] = charge
        return charge.to_json()

    def post_cob(self, body: object) -> Json:
        txid = new_alnum(32, self.rng)
        return self.put_cob(txid, body)

    def get_cob(self, txid: str) -> Json:
        charge = self.charges.get(txid)
        if charge is None:
            raise Problem(404, "CobNaoEncontrado", "Cobrança não encontrada para o txid informado.")
        body = charge.to_json()
        if charge.pix:
            body["pix"] = [self.pix[e2eid].to_json() for e2eid in charge.pix]
        return body

    def _cob_fields(self, body: object) -> tuple[int, int, int, str | None, Json | None, list[Json]]:
        violations: list[tuple[str, str]] = []
        if not isinstance(body, dict):
            raise _invalid("CobOperacaoInvalida", [("cob", "o corpo deve ser um objeto JSON")])
        calendar = body.get("calendario", {})
        expires_in_s = calendar.get("expiracao", 86_400) if isinstance(calendar, dict) else None
        if type(expires_in_s) is not int or expires_in_s <= 0:
            violations.append(("cob.calendario.expiracao", "expiracao deve ser um inteiro maior que zero"))
        value = body.get("valor")
        amount = valor_to_centavos(value.get("original")) if isinstance(value, dict) else None
        if amount is None or amount == 0:
            violations.append(("cob.valor.original", "valor.original deve ser como '10.00' e maior que zero"))
        modality = value.get("modalidadeAlteracao", 0) if isinstance(value, dict) else 0
        if modality not in (0, 1) or isinstance(modality, bool):
            violations.append(("cob.valor.modalidadeAlteracao", "modalidadeAlteracao deve ser 0 ou 1"))
        if isinstance(value, dict) and "retirada" in value:
            violations.append(("cob.valor.retirada", "o sandbox não oferece Pix Saque nem Pix Troco"))
        if body.get("chave") != self.identity.pix_key:
            violations.append(("cob.chave", "a chave não pertence a este usuário recebedor"))
        payer_request = body.get("solicitacaoPagador")
        if payer_request is not None and (not isinstance(payer_request, str) or len(payer_request) > TEXT_LENGTH_MAX):
            violations.append(("cob.solicitacaoPagador", "solicitacaoPagador tem no máximo 140 caracteres"))
        debtor = body.get("devedor")
        if debtor is not None and not self._debtor_ok(debtor):
            violations.append(("cob.devedor", "devedor tem cpf (11 dígitos) ou cnpj (14), não ambos, e nome"))
        extra = body.get("infoAdicionais", [])
        if not isinstance(extra, list) or len(extra) > 50 or not all(
            isinstance(item, dict) and isinstance(item.get("nome"), str) and isinstance(item.get("valor"), str)
            and len(item["nome"]) <= 50 and len(item["valor"]) <= 200 for item in extra
        ):
            violations.append(("cob.infoAdicionais", "até 50 itens {nome (50), valor (200)}"))
        if violations:
            raise _invalid("CobOperacaoInvalida", violations)
        assert isinstance(expires_in_s, int) and amount is not None and isinstance(extra, list)
        return expires_in_s, amount, int(modality), payer_request, debtor, list(extra)

    @staticmethod
    def _debtor_ok(debtor: object) -> bool:
        if not isinstance(debtor, dict) or not isinstance(debtor.get("nome"), str) or len(debtor["nome"]) > 200:
            return False
        cpf, cnpj = debtor.get("cpf"), debtor.get("cnpj")
        if (cpf is None) == (cnpj is None):
            return False
        document, pattern = (cpf, CPF_PATTERN) if cpf is not None else (cnpj, CNPJ_PATTERN)
        return isinstance(document, str) and pattern.fullmatch(document) is not None

    # ---- the payer simulator --------------------------------------------------------------------------------

    def pay(self, body: object) -> Json:
        """``POST /_sandbox/pay``: someone pays a charge (or our key). See docs/pix.md for the fields."""
        if not isinstance(body, dict):
            raise Problem(400, "RequisicaoInvalida", "the body must be a JSON object")
        txid, force = body.get("txid"), body.get("force", False) is True
        if txid is not None and (not isinstance(txid, str) or not ID_PATTERN.fullmatch(txid)):
            raise Problem(400, "RequisicaoInvalida", "txid must be 1 to 35 letters or digits")
        charge = self.charges.get(txid) if txid is not None else None
        now = self.clock()
        if charge is None and txid is not None and not force:
            raise Problem(404, "CobNaoEncontrado", "no charge with this txid (send force=true to pay it anyway)")
        if charge is not None and not force and (charge.status != "ATIVA" or charge.expired(now)):
            raise Problem(409, "CobNaoPagavel", f"the charge is {charge.status}"
                          f"{' and expired' if charge.expired(now) else ''} (send force=true to pay it anyway)")
        amount = valor_to_centavos(body["valor"]) if "valor" in body else (
            charge.amount_centavos if charge is not None else None)
        if amount is None or amount == 0:
            raise Problem(400, "RequisicaoInvalida", "valor must be like '10.00' and above zero "
                          "(it may be left out only when paying a charge)")
        at = parse_date_time(body["horario"]) if "horario" in body else now
        if at is None:
            raise Problem(400, "RequisicaoInvalida", "horario must be an RFC 3339 date-time")
        payer_info = body.get("infoPagador")
        if payer_info is not None and (not isinstance(payer_info, str) or len(payer_info) > TEXT_LENGTH_MAX):
            raise Problem(400, "RequisicaoInvalida", "infoPagador has at most 140 characters")
        payer_document = body.get("cpf") or body.get("cnpj")
        if payer_document is not None and not isinstance(payer_document, str):
            raise Problem(400, "RequisicaoInvalida", "cpf and cnpj are strings of digits")
        self._room(self.pix)
        e2eid = new_end_to_end_id("E", self.identity.payer_ispb, at, self.rng)
        while e2eid in self.pix:
            e2eid = new_end_to_end_id("E", self.identity.payer_ispb, at, self.rng)
        received = ReceivedPix(e2eid, txid, amount, self.identity.pix_key, at, payer_info, payer_document)
        self.pix[e2eid] = received
        if charge is not None:
            charge.status = "CONCLUIDA"
            charge.pix.append(e2eid)
        pix_json = received.to_json()
        if txid is not None:  # "Somente Pix associados a um txid serão notificados."
            self.notify(pix_json)
        return pix_json

    # ---- received Pix ---------------------------------------------------------------------------------------

    def get_pix(self, e2eid: str) -> Json:
        received = self.pix.get(e2eid)
        if received is None:
            raise Problem(404, "PixNaoEncontrado", "Pix não encontrado para o e2eid informado.")
        return received.to_json()

    def list_pix(self, query: Mapping[str, str]) -> Json:
        violations: list[tuple[str, str]] = []
        start, end = parse_date_time(query.get("inicio")), parse_date_time(query.get("fim"))
        if start is None:
            violations.append(("inicio", "inicio é obrigatório, RFC 3339"))
        if end is None:
            violations.append(("fim", "fim é obrigatório, RFC 3339"))
        if start is not None and end is not None and end < start:
            violations.append(("fim", "fim é anterior a inicio"))
        if "cpf" in query and "cnpj" in query:
            violations.append(("cpf", "cpf e cnpj não podem ser usados ao mesmo tempo"))
        page = _int_param(query, "paginacao.paginaAtual", default=0, low=0, high=10**9,
                          violations=violations)
        size = _int_param(query, "paginacao.itensPorPagina", default=PAGE_SIZE_DEFAULT, low=1, high=PAGE_SIZE_MAX,
                          violations=violations)
        flags = {name: _bool_param(query, name, violations) for name in ("txIdPresente", "devolucaoPresente")}
        if violations:
            raise _invalid("PixConsultaInvalida", violations)
        assert start is not None and end is not None
        selected = [
            p for p in self.pix.values()
            if start <= p.at <= end
            and ("txid" not in query or p.txid == query["txid"])
            and (flags["txIdPresente"] is None or (p.txid is not None) == flags["txIdPresente"])
            and (flags["devolucaoPresente"] is None or bool(p.refunds) == flags["devolucaoPresente"])
            and (("cpf" not in query and "cnpj" not in query) or p.payer_document == (query.get("cpf") or
                                                                                      query.get("cnpj")))
        ]
        selected.sort(key=lambda p: (p.at, p.e2eid))
        pages = max(1, -(-len(selected) // size))
        parameters: Json = {"inicio": query["inicio"], "fim": query["fim"], "paginacao": {
            "paginaAtual": page, "itensPorPagina": size, "quantidadeDePaginas": pages,
            "quantidadeTotalDeItens": len(selected)}}
        return {"parametros": parameters, "pix": [p.to_json() for p in selected[page * size:(page + 1) * size]]}

    # ---- devolução ------------------------------------------------------------------------------------------

    def put_refund(self, e2eid: str, refund_id: str, body: object) -> Json:
        received = self.pix.get(e2eid)
        if received is None:
            raise Problem(404, "PixNaoEncontrado", "Pix não encontrado para o e2eid informado.")
        if not ID_PATTERN.fullmatch(refund_id):
            raise _refund_invalid(("id", "id tem de 1 a 35 letras ou dígitos"))
        if not isinstance(body, dict):
            raise _refund_invalid(("devolucao", "o corpo deve ser um objeto JSON"))
        amount = valor_to_centavos(body.get("valor"))
        if amount is None or amount == 0:
            raise _refund_invalid(("devolucao.valor", "valor deve ser como '10.00' e maior que zero"))
        description = body.get("descricao")
        if description is not None and (not isinstance(description, str) or len(description) > TEXT_LENGTH_MAX):
            raise _refund_invalid(("devolucao.descricao", "descricao tem no máximo 140 caracteres"))
        if body.get("natureza", "ORIGINAL") != "ORIGINAL":
            raise _refund_invalid(("devolucao.natureza", "o sandbox só devolve Pix comuns (ORIGINAL)"))
        existing = received.refunds.get(refund_id)
        if existing is not None:
            if (existing.amount_centavos, existing.description) != (amount, description):
                raise _refund_invalid(("id", "id já utilizado por outra devolução deste Pix"))
            return existing.to_json()  # the same request again: idempotent
        now = self.clock()
        if now > received.at + REFUND_WINDOW:
            raise _refund_invalid(("devolucao", "fora da janela de 90 dias desde a liquidação"))
        if received.committed_refunds_centavos() + amount > received.amount_centavos:
            raise _invalid("PixDevolucaoInvalida", [
                ("devolucao.valor", "com as devoluções anteriores, excederia o valor do Pix originário")])
        if len(received.refunds) >= 1_000:
            raise _refund_invalid(("id", "devoluções demais para um Pix"))
        refund = Refund(refund_id, new_end_to_end_id("D", self.identity.ispb, now, self.rng), amount, now,
                        description)
        received.refunds[refund_id] = refund
        rejected = self.knobs.refund_reject_rate > 0 and self.rng.random() < self.knobs.refund_reject_rate
        self.schedule(self.knobs.refund_settle_ms / 1000, lambda: self._settle_refund(received, refund, rejected))
        return refund.to_json()

    def _settle_refund(self, received: ReceivedPix, refund: Refund, rejected: bool) -> None:
        if refund.status != "EM_PROCESSAMENTO" or self.pix.get(received.e2eid) is not received:
            return  # reset in between
        if rejected:
            refund.status, refund.reason = "NAO_REALIZADO", "Devolução recusada pelo PSP do pagador (sandbox)"
        else:
            refund.status, refund.settled_at = "DEVOLVIDO", self.clock()
        if received.txid is not None:  # the callback fires when a devolução reaches a final status
            self.notify(received.to_json())

    def get_refund(self, e2eid: str, refund_id: str) -> Json:
        received = self.pix.get(e2eid)
        refund = received.refunds.get(refund_id) if received is not None else None
        if refund is None:
            raise Problem(404, "PixDevolucaoNaoEncontrada", "Devolução não encontrada para o e2eid informado.")
        return refund.to_json()

    # ---- webhook --------------------------------------------------------------------------------------------

    def put_webhook(self, key: str, body: object) -> None:
        if key != self.identity.pix_key:
            raise _invalid("WebhookOperacaoInvalida", [("chave", "a chave não pertence a este usuário recebedor")])
        url = body.get("webhookUrl") if isinstance(body, dict) else None
        problem = webhook_url_problem(url, self.identity.allow_remote_webhooks)
        if problem:
            raise _invalid("WebhookOperacaoInvalida", [("webhookUrl", problem)])
        self.webhook = {"webhookUrl": url, "chave": key, "criacao": format_date_time(self.clock())}

    def get_webhook(self, key: str) -> Json:
        if self.webhook is None or self.webhook["chave"] != key:
            raise Problem(404, "WebhookNaoEncontrado", "Webhook não encontrado para a chave informada.")
        return dict(self.webhook)

    def delete_webhook(self, key: str) -> None:
        self.get_webhook(key)
        self.webhook = None

    # ---- payments we are asked to send ----------------------------------------------------------------------

    def put_payment(self, payment_id: str, body: object) -> tuple[int, Json]:
        """``PUT /pagamentos/{idEnvio}``: 201 when new, 200 for the same request again, 409 for another one."""
        if not ID_PATTERN.fullmatch(payment_id):
            raise _invalid("PagamentoInvalido", [("idEnvio", "idEnvio tem de 1 a 35 letras ou dígitos")])
        fields = self._payment_fields(body)
        existing = self.payments.get(payment_id)
        if existing is not None:
            if existing.request_fields() != fields:
                raise Problem(409, "PagamentoIdEnvioDuplicado", "Conflito",
                              "idEnvio já utilizado por um pagamento com outra chave, valor ou infoPagador")
            return 200, existing.to_json()
        self._room(self.payments)
        key, amount, description = fields
        now = self.clock()
        if key in self.knobs.payment_reject_keys:
            outcome, reason = "NAO_REALIZADO", "Chave Pix não encontrada no DICT (sandbox)"
        elif self.knobs.payment_reject_rate > 0 and self.rng.random() < self.knobs.payment_reject_rate:
            outcome, reason = "NAO_REALIZADO", "Pagamento recusado pelo PSP do recebedor (sandbox)"
        else:
            outcome, reason = "REALIZADO", None
        payment = Payment(payment_id, key, amount, description, new_end_to_end_id("E", self.identity.ispb, now,
                                                                                   self.rng), now, outcome, reason)
        self.payments[payment_id] = payment
        if self.knobs.payment_settle_ms == 0:
            self._settle_payment(payment)
        else:
            self.schedule(self.knobs.payment_settle_ms / 1000, lambda: self._settle_payment(payment))
        return 201, payment.to_json()

    def _settle_payment(self, payment: Payment) -> None:
        if payment.status == "EM_PROCESSAMENTO" and self.payments.get(payment.id) is payment:
            payment.status = payment.outcome
            payment.settled_at = self.clock() if payment.outcome == "REALIZADO" else None

    def get_payment(self, payment_id: str) -> Json:
        payment = self.payments.get(payment_id)
        if payment is None:
            raise Problem(404, "PagamentoNaoEncontrado", "Pagamento não encontrado para o idEnvio informado.")
        return payment.to_json()

    def _payment_fields(self, body: object) -> tuple[str, int, str | None]:
        if not isinstance(body, dict):
            raise _invalid("PagamentoInvalido", [("pagamento", "o corpo deve ser um objeto JSON")])
        violations: list[tuple[str, str]] = []
        amount = valor_to_centavos(body.get("valor"))
        if amount is None or amount == 0:
            violations.append(("valor", "valor deve ser como '10.00' e maior que zero"))
        payee = body.get("favorecido")
        key = payee.get("chave") if isinstance(payee, dict) else None
        if not is_pix_key(key):
            violations.append(("favorecido.chave", "chave Pix em formato DICT (CPF, CNPJ, +telefone, e-mail, EVP)"))
        description = body.get("infoPagador")
        if description is not None and (not isinstance(description, str) or len(description) > TEXT_LENGTH_MAX):
            violations.append(("infoPagador", "infoPagador tem no máximo 140 caracteres"))
        if violations:
            raise _invalid("PagamentoInvalido", violations)
        assert isinstance(key, str) and amount is not None
        return key, amount, description

    # ---- limits ---------------------------------------------------------------------------------------------

    @staticmethod
    def _room(records: Mapping[str, object]) -> None:
        if len(records) >= RECORDS_MAX:
            raise Problem(503, "ServicoIndisponivel", "Sandbox cheio", "POST /_sandbox/reset para recomeçar")


def _int_param(query: Mapping[str, str], name: str, *, default: int, low: int, high: int,
               violations: list[tuple[str, str]]) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        violations.append((name, f"{name} deve ser um inteiro de {low} a {high}"))
        return default
    return value


def _bool_param(query: Mapping[str, str], name: str, violations: list[tuple[str, str]]) -> bool | None:
    if name not in query:
        return None
    if query[name] not in ("true", "false"):
        violations.append((name, f"{name} deve ser true ou false"))
        return None
    return query[name] == "true"
