"""The query API end to end: the command API (another process) writes, the relay and the projector (processes)
carry the events through the session's Kafka broker, and the query API (a process) answers — with
read-your-writes through the position each write returns. Tokens are minted with the command API's key.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from readside_support import ReadSide

from infra.settings import Settings, drop_database, ensure_database, with_database

PAGE = 3


def party_body(kind: str, document: str) -> dict[str, str]:
    return {"kind": kind, "name": "Beatriz Lima", "document": document, "email": "bia@example.com.br",
            "phone": "+5511987654321"}


def centavos(valor: str) -> int:
    return int(valor.replace(".", ""))


def cpf(seed: int) -> str:
    base = f"{seed % 10**9:09d}"
    digits = [int(d) for d in base]
    for length in (9, 10):
        total = sum(d * w for d, w in zip(digits, range(length + 1, 1, -1), strict=False))
        digits.append(0 if total % 11 < 2 else 11 - total % 11)
    return "".join(map(str, digits))


class Platform:
    def __init__(self, api: Any, side: ReadSide, query_url: str) -> None:
        self.api, self.side, self.query_url = api, side, query_url
        self.operator = api.client("operator")
        self.settlement = self._post("/v1/accounts", {"code": "pix_settlement", "reference": "test:settlement"})["id"]

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.operator.post(path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    def onboard(self, kind: str = "investor") -> dict[str, Any]:
        return self._post("/v1/parties", party_body(kind, cpf(uuid.uuid4().int)))

    def deposit(self, wallet_id: str, valor: str) -> dict[str, Any]:
        return self._post("/v1/transfers", {"debit_account_id": self.settlement, "credit_account_id": wallet_id,
                                            "valor": valor, "code": 10})

    def move(self, debit: str, credit: str, valor: str) -> dict[str, Any]:
        return self._post("/v1/transfers", {"debit_account_id": debit, "credit_account_id": credit, "valor": valor})

    def reader(self, role: str, sub: str | None = None) -> httpx.Client:
        sub = sub or (str(uuid.uuid4()) if role in ("investor", "borrower") else f"{role}-{uuid.uuid4().hex[:6]}")
        return httpx.Client(base_url=self.query_url, timeout=30,
                            headers={"Authorization": f"Bearer {self.api.token(role, sub)}"})


@pytest.fixture(scope="module")
def platform(api: Any, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    read_dsn = with_database(settings.pg_dsn, f"razao_test_query_{uuid.uuid4().hex[:8]}")
    ensure_database(read_dsn)
    api.token("operator", "warm-up")  # makes sure the development keypair exists
    side = ReadSide(api.dsn, read_dsn, settings.kafka_bootstrap, tmp_path_factory.mktemp("query"),
                    extra_env={"RAZAO_JWT_PUBLIC_KEY_FILE": str(Path(api.state_dir) / "jwt" / "ed25519-public.pem"),
                               "RAZAO_QUERY_RATE_LIMIT_KEY_PREFIX": f"razao-test-{uuid.uuid4().hex[:8]}"})
    try:
        side.start_relay()
        side.start_projector()
        _, url = side.start_query_api()
        yield Platform(api, side, url)
    finally:
        side.stop_all()
        for service in side.services.values():
            assert "Traceback" not in service.log(), f"{service.name} logged an error:\n{service.log()}"
        drop_database(read_dsn)


@pytest.fixture(scope="module")
def ana(platform: Platform) -> dict[str, Any]:
    party = platform.onboard("investor")
    party["deposit"] = platform.deposit(party["wallet_id"], "250.00")
    return party


def test_command_then_query_reads_its_own_write(platform: Platform) -> None:
    party = platform.onboard("investor")
    deposit = platform.deposit(party["wallet_id"], "110.00")
    owner = platform.reader("investor", party["id"])
    started = time.monotonic()
    response = owner.get(f"/v1/accounts/{party['wallet_id']}/balance", params={"min_position": deposit["position"]})
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 5
    body = response.json()
    assert (body["posted"], body["available"], body["pending"], body["currency"]) == ("110.00", "110.00", "0.00",
                                                                                     "BRL")
    assert int(response.headers["Razao-Position"]) >= deposit["position"]
    accounts = owner.get(f"/v1/parties/{party['id']}/accounts").json()
    assert [a["account_id"] for a in accounts["accounts"]] == [party["wallet_id"]]
    transfer = owner.get(f"/v1/transfers/{deposit['id']}").json()
    assert (transfer["valor"], transfer["status"], transfer["code"]) == ("110.00", "posted", 10)


def test_metrics_count_requests_by_route_and_follow_the_projection(platform: Platform, ana: dict[str, Any]) -> None:
    owner = platform.reader("investor", ana["id"])
    for _ in range(3):
        assert owner.get(f"/v1/accounts/{ana['wallet_id']}/balance").status_code == 200
    assert owner.get("/v1/no-such-route").status_code == 404
    response = httpx.get(f"{platform.query_url}/metrics", timeout=10)  # no token, like /health
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in response.text.splitlines() if line and not line.startswith("#")}
    balance = 'razao_query_requests_total{method="GET",route="/v1/accounts/{account_id}/balance",status="200"}'
    assert samples[balance] >= 3
    assert samples['razao_query_requests_total{method="other",route="unmatched",status="404"}'] >= 1
    assert samples["razao_query_projection_position"] >= ana["deposit"]["position"]
    assert samples["razao_query_projection_halted"] == 0


def test_a_position_not_reached_in_time_is_a_503_problem(platform: Platform, ana: dict[str, Any]) -> None:
    owner = platform.reader("investor", ana["id"])
    response = owner.get(f"/v1/accounts/{ana['wallet_id']}/balance", params={"min_position": 10**15, "wait_ms": 200})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["code"] == "QUERY_PROJECTION_BEHIND" and problem["min_position"] == 10**15


def test_owners_see_only_their_own_and_auditors_see_everything(platform: Platform, ana: dict[str, Any]) -> None:
    wallet = f"/v1/accounts/{ana['wallet_id']}"
    at = {"min_position": ana["deposit"]["position"]}
    assert platform.reader("investor", ana["id"]).get(wallet, params=at).status_code == 200
    stranger = platform.reader("investor")
    for path in (wallet, f"{wallet}/statement", f"/v1/transfers/{ana['deposit']['id']}",
                 f"/v1/parties/{ana['id']}/accounts"):
        response = stranger.get(path, params=at)
        assert response.status_code == 404, (path, response.text)  # not 403: no oracle for other people's ids
    for role in ("auditor", "operator"):
        assert platform.reader(role).get(wallet, params=at).status_code == 200
    assert platform.reader("service").get(wallet).json()["code"] == "QUERY_FORBIDDEN"
    anonymous = httpx.get(f"{platform.query_url}{wallet}")
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "QUERY_UNAUTHENTICATED"
    key = (Path(platform.api.state_dir) / "jwt" / "ed25519-private.pem").read_bytes()
    now = int(time.time())
    for claims in ({"aud": "someone-else"}, {"exp": now - 60}, {"iss": "mallory"}):
        token = jwt.encode({"sub": ana["id"], "role": "investor", "aud": "razao-api", "iss": "razao-auth",
                            "iat": now, "exp": now + 60, **claims}, key, algorithm="EdDSA")
        response = httpx.get(f"{platform.query_url}{wallet}", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, claims
    forged = jwt.encode({"sub": ana["id"], "role": "auditor", "aud": "razao-api", "iss": "razao-auth", "iat": now,
                         "exp": now + 60}, "a-guessed-secret-of-32-bytes-long", algorithm="HS256")
    assert httpx.get(f"{platform.query_url}{wallet}",
                     headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_statement_pages_with_running_balances_and_signed_cursors(platform: Platform) -> None:
    party = platform.onboard("investor")
    other = platform.onboard("borrower")
    wallet = party["wallet_id"]
    last = platform.deposit(wallet, "100.00")
    for n in range(1, 6):
        last = platform.move(wallet, other["wallet_id"], f"{n}.00")
    owner = platform.reader("investor", party["id"])
    path = f"/v1/accounts/{wallet}/statement"
    first = owner.get(path, params={"limit": PAGE, "min_position": last["position"]}).json()
    entries, cursor = list(first["entries"]), first["next_cursor"]
    while cursor:
        page = owner.get(path, params={"limit": PAGE, "cursor": cursor})
        assert page.status_code == 200, page.text
        entries += page.json()["entries"]
        cursor = page.json()["next_cursor"]
    assert [e["valor"] for e in entries] == ["5.00", "4.00", "3.00", "2.00", "1.00", "100.00"]
    assert [e["balance_after"]["posted"] for e in entries] == ["85.00", "90.00", "94.00", "97.00", "99.00", "100.00"]
    assert entries[0]["direction"] == "debit" and entries[-1]["direction"] == "credit"
    assert [e["position"] for e in entries] == sorted((e["position"] for e in entries), reverse=True)
    transfers = owner.get(f"/v1/accounts/{wallet}/transfers", params={"limit": 10}).json()["transfers"]
    assert len(transfers) == 6

    # Bad input: always a typed 4xx problem, never a 500.
    cursor = first["next_cursor"]
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    for params, field in ((({"cursor": tampered}), None), ({"cursor": "garbage"}, None), ({"limit": 501}, "limit"),
                          ({"limit": 0}, "limit"), ({"from": "yesterday"}, "from"), ({"to": "2026-13-40"}, "to"),
                          ({"from": "2026-11-29T10:00:00"}, "from"), ({"min_position": -1}, "min_position"),
                          ({"min_position": "x"}, "min_position"), ({"wait_ms": 10**6}, "wait_ms")):
        response = owner.get(path, params=params)
        assert 400 <= response.status_code < 500, (params, response.text)
        problem = response.json()
        assert response.headers["content-type"] == "application/problem+json"
        expected = "QUERY_INVALID_CURSOR" if "cursor" in params else "QUERY_INVALID_REQUEST"
        assert problem["code"] == expected, (params, problem)
        if field:
            assert any(v["field"] == field for v in problem["violations"]), problem
    # A cursor is bound to its listing: another account's (or another filter's) cursor is refused.
    other_page = platform.reader("borrower", other["id"]).get(f"/v1/accounts/{other['wallet_id']}/statement",
                                                               params={"limit": 1}).json()
    assert owner.get(path, params={"cursor": other_page["next_cursor"]}).json()["code"] == "QUERY_INVALID_CURSOR"
    assert owner.get(path, params={"cursor": cursor, "from": "2000-01-01"}).json()["code"] == "QUERY_INVALID_CURSOR"
    # Dates filter; an unknown account or a malformed id is a 4xx too.
    today = owner.get(path, params={"from": time.strftime("%Y-%m-%d", time.gmtime()), "limit": 50}).json()
    assert len(today["entries"]) == 6
    assert owner.get(path, params={"to": "2000-01-01"}).json()["entries"] == []
    assert owner.get(f"/v1/accounts/{uuid.uuid4()}/statement").status_code == 404
    assert owner.get("/v1/accounts/not-a-uuid/statement").json()["code"] == "QUERY_INVALID_REQUEST"
    assert owner.post(path).status_code == 405
    assert owner.get("/v1/nowhere").json()["code"] == "QUERY_NOT_FOUND"


def test_holds_and_their_resolution(platform: Platform, ana: dict[str, Any]) -> None:
    hold = platform._post("/v1/holds", {"debit_account_id": ana["wallet_id"], "credit_account_id":
                                        platform.settlement, "valor": "30.00", "timeout_s": 3600})
    owner = platform.reader("investor", ana["id"])
    holds = owner.get(f"/v1/accounts/{ana['wallet_id']}/holds", params={"min_position": hold["position"]}).json()
    assert [(h["transfer_id"], h["valor"]) for h in holds["holds"]] == [(hold["id"], "30.00")]
    balance = owner.get(f"/v1/accounts/{ana['wallet_id']}/balance").json()
    assert centavos(balance["posted"]) - centavos(balance["available"]) == 3000
    posted = platform._post(f"/v1/holds/{hold['id']}/post", {"valor": "12.00"})
    holds = owner.get(f"/v1/accounts/{ana['wallet_id']}/holds", params={"min_position": posted["position"]}).json()
    assert holds["holds"] == []
    original = owner.get(f"/v1/transfers/{hold['id']}").json()
    assert (original["status"], original["resolved_by"]) == ("posted", posted["id"])


def test_etags_answer_304_until_the_balance_changes(platform: Platform, ana: dict[str, Any]) -> None:
    owner = platform.reader("investor", ana["id"])
    path = f"/v1/accounts/{ana['wallet_id']}/balance"
    first = owner.get(path, params={"min_position": ana["deposit"]["position"]})
    etag = first.headers["ETag"]
    again = owner.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["ETag"] == etag and again.content == b""
    deposit = platform.deposit(ana["wallet_id"], "1.00")
    changed = owner.get(path, params={"min_position": deposit["position"]}, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_auditors_get_a_balanced_trial_balance_and_history_as_of_a_position(platform: Platform, razao: Any) -> None:
    party = platform.onboard("investor")
    first = platform.deposit(party["wallet_id"], "10.00")
    time.sleep(0.05)
    second = platform.deposit(party["wallet_id"], "5.00")
    auditor = platform.reader("auditor")
    trial = auditor.get("/v1/audit/trial-balance", params={"min_position": second["position"]}).json()
    assert trial["balanced"] is True and trial["position"] >= second["position"]
    assert trial["totals"]["debits_posted"] == trial["totals"]["credits_posted"]
    # The chain head the totals are as of: the independent audit of the raw log finds the same one there.
    assert re.fullmatch(r"[0-9a-f]{64}", trial["chain_hash"])
    audited = razao("audit", "verify-log", "--upto", str(trial["position"]), "--expect-head", trial["chain_hash"],
                    env=platform.side.env())
    assert f"chain head: {trial['chain_hash']}" in audited.stdout
    path = f"/v1/audit/accounts/{party['wallet_id']}/history"
    then = auditor.get(path, params={"as_of_position": first["position"]}).json()
    assert then["balance"]["posted"] == "10.00" and len(then["entries"]) == 1
    now = auditor.get(path).json()
    assert now["balance"]["posted"] == "15.00" and len(now["entries"]) == 2
    at_time = auditor.get(path, params={"as_of_time": first["timestamp"]}).json()
    assert at_time["balance"]["posted"] == "10.00"
    before = auditor.get(path, params={"as_of_position": 1}).json()
    assert before["existed"] is False and before["balance"]["posted"] == "0.00"
    assert platform.reader("investor", party["id"]).get("/v1/audit/trial-balance").status_code == 403
    assert auditor.get(path, params={"as_of_time": "soon"}).status_code == 400


def test_the_stream_pushes_each_change_of_the_callers_balances(platform: Platform) -> None:
    party = platform.onboard("investor")
    other = platform.onboard("investor")
    received: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {platform.api.token('investor', party['id'])}"}
        with httpx.stream("GET", f"{platform.query_url}/v1/stream/balances", headers=headers, timeout=30) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
                    if len(received) == 2:
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(10)
    started = time.monotonic()
    platform.deposit(other["wallet_id"], "9.00")  # someone else's: never on this stream
    platform.deposit(party["wallet_id"], "7.00")
    platform.move(party["wallet_id"], other["wallet_id"], "2.00")
    thread.join(15)
    assert [(e["account_id"], e["valor"], e["posted"]) for e in received] == [
        (party["wallet_id"], "7.00", "7.00"), (party["wallet_id"], "2.00", "5.00")]
    assert time.monotonic() - started < 10
    # Resuming after the first event replays what came after it.
    headers = {"Authorization": f"Bearer {platform.api.token('investor', party['id'])}",
               "Last-Event-ID": f"{received[0]['position']}:{party['wallet_id']}"}
    with httpx.stream("GET", f"{platform.query_url}/v1/stream/balances", headers=headers, timeout=10) as stream:
        data = next(line for line in stream.iter_lines() if line.startswith("data: "))
    assert json.loads(data[6:])["position"] == received[1]["position"]


def test_rate_limits_answer_429_with_retry_after(platform: Platform, ana: dict[str, Any]) -> None:
    side = ReadSide(platform.side.ledger_dsn, platform.side.read_dsn, platform.side.bootstrap,
                    platform.side.state_dir / "limited",
                    extra_env={**platform.side.extra_env, "RAZAO_QUERY_RATE_LIMIT_REQUESTS_MAX": "5",
                               "RAZAO_QUERY_RATE_LIMIT_KEY_PREFIX": f"razao-test-{uuid.uuid4().hex[:8]}"})
    try:
        _, url = side.start_query_api()
        headers = {"Authorization": f"Bearer {platform.api.token('investor', ana['id'])}"}
        statuses = [httpx.get(f"{url}/v1/accounts/{ana['wallet_id']}/balance", headers=headers) for _ in range(7)]
        assert [r.status_code for r in statuses[:5]] == [200] * 5
        limited = statuses[-1]
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["code"] == "QUERY_RATE_LIMITED"
    finally:
        side.stop_all()


def test_the_demo_reads_its_writes_back_through_the_query_api_and_rebuilds(platform: Platform, razao: Any) -> None:
    env = {**platform.side.env(), "RAZAO_STATE_DIR": str(platform.api.state_dir), "RAZAO_ENV": "development"}
    env.pop("RAZAO_JWT_PUBLIC_KEY_FILE", None)
    output = razao("demo", "--url", platform.api.url, "--query-url", platform.query_url, env=env).stdout
    read_side = output[output.index("9. The read side"):]
    assert "posted R$ 729.50, available R$ 729.50, the same as the command API says" in read_side  # Ana's wallet
    assert "(read-your-writes)" in read_side and "balanced true" in read_side
    assert "rebuilt demo_audit:" in read_side and "read models VERIFIED" in read_side
    # The auditor's independent check of the raw log agrees with the ledger's chain (docs/events.md's rule).
    independent = read_side[read_side.index("razao audit verify-log"):]
    # It checks the log up to the trial balance's position and finds the head the trial balance named.
    trial = re.search(r"as of log position (\d+) \(chain head ([0-9a-f]{12})…\)", read_side)
    assert trial, read_side
    assert re.search(rf"← verified \d+ events \(up to position {trial[1]}\), the last at position \d+", independent)
    assert re.search(rf"← chain head: {trial[2]}[0-9a-f]{{52}}", independent), independent
