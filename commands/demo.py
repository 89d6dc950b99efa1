"""`razao demo`: a short scripted story told through the running command API, printed as it happens.

Every step is an HTTP call (shown with its status) made with the token of whoever acts in the story: an
operator opens the platform's accounts and onboards Ana and Bruno (investors) and Carla (borrower); PIX deposits
are credited (and one is delivered twice, harmlessly); Ana pays Bruno herself and fails to peek at his wallet;
a linked batch funds Carla's loan with its fee; one hold is posted partially and another voided; Carla's
overdraft is refused; Ana deposits by PIX (a charge paid at the sandbox PSP, whose webhook credits her once the
Pix is confirmed) and withdraws to a Pix key. Then every balance, read back through the API; then the read side:
Ana's balance and statement from the query API (relay → Kafka → projector) with read-your-writes, an auditor's
trial balance, and a rebuild of the read models from the event store alone, verified against the live ones.

`razao up` starts the API; the demo finds it through `<state_dir>/api.json` (or `--url`, or RAZAO_API_URL), and the
query API through `<state_dir>/platform.json` (or `--query-url`).
Tokens are minted with the development key, so the demo runs in development only.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from commands.api.auth import mint_token, signing_key_for
from commands.api.bootstrap import load_api_settings
from commands.services import api_url
from infra.platform import service_base_url
from infra.sandbox_psp.services import profiles
from ledger.pix_state import SETTLEMENT_ACCOUNT_ID

HTTP_TIMEOUT_S = 30.0
#: How long the demo waits for a Pix to be credited or a withdrawal to end.
PIX_WAIT_S = 20.0
#: How long the demo keeps asking the query API while it answers 503 QUERY_PROJECTION_BEHIND (honouring its
#: Retry-After), as a client would: the relay and the projector may still be catching up after a start, e.g. when
#: the broker came back empty and the relay publishes the log again.
READ_SIDE_WAIT_S = 60.0
SETTLEMENT_ACCOUNT_ID_TEXT = str(SETTLEMENT_ACCOUNT_ID)


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run a short scripted scenario through the command API")
    parser.add_argument("--url", help="base URL of the command API (default: the one `razao up` started)")
    parser.add_argument("--query-url", help="base URL of the query API (default: the one `razao up` started)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_api_settings()
    url = args.url or api_url(settings.state_dir)
    try:
        key = signing_key_for(settings)
    except Exception as exc:
        print(f"razao demo: cannot mint tokens: {exc}")
        return 2
    try:
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S) as client:
            Story(client, lambda role, sub: mint_token(key, sub, role, ttl_s=900),
                  args.query_url or service_base_url(settings.state_dir, "query-api")).tell()
    except httpx.TransportError as exc:
        print(f"razao demo: the command API at {url} does not answer ({exc}); is `razao up` running?")
        return 1
    return 0


def valid_cpf() -> str:
    """A random CPF with correct check digits (each run registers new people)."""
    digits = [secrets.randbelow(10) for _ in range(9)]
    for weights_from in (10, 11):
        total = sum(d * w for d, w in zip(digits, range(weights_from, 1, -1), strict=False))
        digits.append(0 if total % 11 < 2 else 11 - total % 11)
    return "".join(map(str, digits))


def format_centavos(amount: int) -> str:
    sign, amount = ("-", -amount) if amount < 0 else ("", amount)
    return f"{sign}{amount // 100}.{amount % 100:02d}"


def centavos(valor: str) -> int:
    sign = -1 if valor.startswith("-") else 1
    whole, cents = valor.lstrip("-").split(".")
    return sign * (int(whole) * 100 + int(cents))


class Story:
    def __init__(self, client: httpx.Client, token: Callable[[str, str], str], query_url: str | None = None) -> None:
        self.client = client
        self.token = token
        self.query_url = query_url
        self.run_id = uuid.uuid4().hex[:8]
        self.keys = iter(f"demo-{self.run_id}-{n}" for n in range(1_000))
        self.names: dict[str, str] = {}
        #: Posted (debits, credits) of shared platform accounts when this run first touched them.
        self.baselines: dict[str, tuple[int, int]] = {}
        self.actors: dict[str, dict[str, str]] = {}

    # ---- telling -------------------------------------------------------------------------------------------
    def call(self, who: str, method: str, path: str, body: Any = None, *, key: str | None = None,
             say: Callable[[dict[str, Any]], str] = lambda _: "done") -> httpx.Response:
        headers = dict(self.actors[who])
        if key is not None:
            headers["Idempotency-Key"] = key
        print(f"  {who:<8} {method} {self._short(path)}" + (f"   (Idempotency-Key: {key})" if key else ""))
        response = self.client.request(method, path, json=body, headers=headers)
        replayed = " · replayed" if response.headers.get("Idempotent-Replayed") == "true" else ""
        payload = response.json()
        words = say(payload) if response.is_success else f"{payload['code']}: {payload['detail']}"
        print(f"  {'':<8} ← {response.status_code} {response.reason_phrase}{replayed}: {words}")
        return response

    def _short(self, path: str) -> str:
        for account_id, name in self.names.items():
            path = path.replace(account_id, f"<{name}>")
        return path

    def chapter(self, title: str) -> None:
        print(f"\n{title}")

    def act_as(self, who: str, role: str, sub: str) -> None:
        self.actors[who] = {"Authorization": f"Bearer {self.token(role, sub)}"}

    # ---- the story -----------------------------------------------------------------------------------------
    def tell(self) -> None:
        print(f"\nRazão demo through the command API at {self.client.base_url} (run {self.run_id})")
        self.act_as("operator", "operator", f"demo-operator-{self.run_id}")
        self.chapter("1. The platform opens its accounts and onboards three people")
        settlement = self.open("PIX settlement", "pix_settlement")
        fees = self.open("fee revenue", "fee_revenue")
        ana = self.onboard("Ana", "investor", valid_cpf())
        bruno = self.onboard("Bruno", "investor", valid_cpf())
        carla = self.onboard("Carla", "borrower", valid_cpf())

        self.chapter("2. PIX deposits arrive (one of them twice)")
        deposit_key = next(self.keys)
        deposit = {"debit_account_id": settlement, "credit_account_id": ana, "valor": "1000.00", "code": 10,
                   "reference": "pix:deposit"}
        self.call("operator", "POST", "/v1/transfers", deposit, key=deposit_key, say=self.moved)
        self.move("operator", settlement, bruno, "250.00", code=10, reference="pix:deposit")
        self.call("operator", "POST", "/v1/transfers", deposit, key=deposit_key,
                  say=lambda t: f"the same deposit again, same key: the original answer, nothing moved twice "
                                f"(log position {t['position']})")

        self.chapter("3. Ana uses the API herself")
        self.call("Ana", "POST", "/v1/transfers", {"debit_account_id": ana, "credit_account_id": bruno,
                                                    "valor": "120.50"}, key=next(self.keys), say=self.moved)
        self.call("Ana", "GET", f"/v1/wallets/{bruno}",
                  say=lambda w: f"Bruno's balance is {w['posted']}")  # refused: 404, as if it did not exist
        print("  " + " " * 8 + "   (another person's wallet answers exactly like one that does not exist)")

        self.chapter("4. A loan is funded: both legs or neither (linked batch)")
        self.call("operator", "POST", "/v1/transfer-batches", {"transfers": [
            {"debit_account_id": bruno, "credit_account_id": carla, "valor": "200.00", "code": 20,
             "reference": "loan:demo"},
            {"debit_account_id": carla, "credit_account_id": fees, "valor": "4.00", "code": 30,
             "reference": "loan:demo fee"},
        ]}, key=next(self.keys), say=lambda b: "Bruno funded Carla R$ 200.00 and the R$ 4.00 fee was taken, "
                                                f"committed together at position {b['position']}")

        self.chapter("5. Holds: reserve, then settle in part or release")
        hold = self.call("operator", "POST", "/v1/holds", {"debit_account_id": ana, "credit_account_id": carla,
                                                            "valor": "300.00", "timeout_s": 3600},
                         key=next(self.keys), say=lambda h: f"R$ {h['valor']} held on Ana's wallet").json()
        self.call("operator", "POST", f"/v1/holds/{hold['id']}/post", {"valor": "180.00"}, key=next(self.keys),
                  say=lambda t: f"R$ {t['valor']} of it moved to Carla, the rest released")
        hold2 = self.call("operator", "POST", "/v1/holds", {"debit_account_id": bruno, "credit_account_id": carla,
                                                             "valor": "50.00"},
                          key=next(self.keys), say=lambda h: f"R$ {h['valor']} held on Bruno's wallet").json()
        self.call("operator", "POST", f"/v1/holds/{hold2['id']}/void", key=next(self.keys),
                  say=lambda t: f"hold voided: R$ {t['valor']} released, nothing moved")

        self.chapter("6. Carla tries to send more than she has, then repays her investors in one bulk request")
        self.call("Carla", "POST", "/v1/transfers", {"debit_account_id": carla, "credit_account_id": ana,
                                                      "valor": "999.99"}, key=next(self.keys), say=self.moved)
        self.call("operator", "POST", "/v1/bulk-transfers", {"transfers": [
            {"debit_account_id": carla, "credit_account_id": ana, "valor": "30.00", "code": 22,
             "reference": "loan:demo repayment"},
            {"debit_account_id": carla, "credit_account_id": bruno, "valor": "30.00", "code": 22,
             "reference": "loan:demo repayment"},
            {"debit_account_id": carla, "credit_account_id": bruno, "valor": "5000.00", "code": 22,
             "reference": "loan:demo repayment"},
        ]}, key=next(self.keys), say=self.bulk_outcome)

        self.chapter("7. Money in and out by PIX, through the sandbox PSP")
        self.pix()

        self.chapter("8. Balances, read back through the API")
        self.print_balances()

        self.chapter("9. The read side: relay → Kafka → projector → query API, and an auditor's rebuild")
        self.read_side(ana)

    def pix(self) -> None:
        """A deposit paid at the sandbox PSP and a withdrawal to a Pix key, when the API runs with PIX."""
        response = self.call("Ana", "POST", "/v1/deposits", {"valor": "500.00"}, key=next(self.keys),
                             say=lambda d: f"a charge of R$ {d['valor']} at the {d['psp']} PSP, txid {d['txid']}; "
                                           f"BR Code {d['pix_copia_e_cola'][:24]}...")
        if response.status_code == 404:
            print("  (this API runs without PIX: start it with `razao up`, or RAZAO_PIX_ENABLED=true)")
            return
        if not response.is_success:
            return
        deposit = response.json()
        profile = next(p for p in profiles() if p.name == deposit["psp"])
        self.await_webhook_registration(profile.admin_url)
        # The platform's settlement account at the PSP outlives this run: the table shows what this run moved.
        self.baselines[SETTLEMENT_ACCOUNT_ID_TEXT] = self.posted(SETTLEMENT_ACCOUNT_ID_TEXT)
        print(f"  payer    POST {profile.admin_url}/_sandbox/pay   (the payer's bank pays the BR Code)")
        try:
            paid = httpx.post(f"{profile.admin_url}/_sandbox/pay", json={"txid": deposit["txid"]}, timeout=10).json()
        except httpx.TransportError:
            print("  (the sandbox PSP does not answer; is `razao up` running?)")
            return
        print(f"  {'':<8} ← Pix {paid['endToEndId']}: the PSP posts its signed webhook; the platform confirms the "
              "Pix with the PSP before crediting")
        self.names[SETTLEMENT_ACCOUNT_ID_TEXT] = "PIX settlement (PSP), this run"
        done = self.wait_for("Ana", f"/v1/deposits/{deposit['id']}", lambda d: d["status"] == "PAID")
        if done is not None:
            print(f"  {'':<8} ← PAID by {done['end_to_end_id']}: R$ {done['valor']} credited to Ana's wallet")
        response = self.call("Ana", "POST", "/v1/withdrawals", {"valor": "200.00", "pix_key": valid_cpf()},
                             key=next(self.keys),
                             say=lambda w: f"R$ {w['valor']} held on Ana's wallet; payment {w['payment_id']} "
                                           f"goes to CPF key {w['pix_key']}")
        if response.is_success:
            withdrawal = response.json()
            done = self.wait_for("Ana", f"/v1/withdrawals/{withdrawal['id']}", lambda w: w["status"] != "PROCESSING")
            if done is not None:
                print(f"  {'':<8} ← {done['status']} at the {done['psp']} PSP (Pix {done['end_to_end_id']}): "
                      "the hold was posted")

    def read_side(self, ana: str) -> None:
        if self.query_url is None:
            print("  (no query API recorded: `razao up` starts it with the relay and the projector)")
            return
        # The write side's position now: the query API answers only once its read models have reached it.
        position = self.client.get(f"/v1/wallets/{ana}", headers=self.actors["Ana"]).json()["position"]
        started = time.monotonic()
        balance = self.query("Ana", f"/v1/accounts/{ana}/balance", {"min_position": position})
        if balance is not None:
            print(f"  {'':<8} ← posted R$ {balance['posted']}, available R$ {balance['available']}, the same as the "
                  f"command API says, visible {1000 * (time.monotonic() - started):.0f} ms after asking for "
                  f"position {position} (read-your-writes)")
        statement = self.query("Ana", f"/v1/accounts/{ana}/statement", {"limit": 3})
        for entry in (statement or {}).get("entries", []):
            sign = "-" if entry["direction"] == "debit" else "+"
            print(f"  {'':<8}   {entry['recorded_at'][11:19]}  {sign}R$ {entry['valor']:>8}  {entry['kind']:<13}"
                  f"balance after R$ {entry['balance_after']['posted']}")
        self.act_as("auditor", "auditor", f"demo-auditor-{self.run_id}")
        trial = self.query("auditor", "/v1/audit/trial-balance", {"min_position": position})
        audit_log = ["audit", "verify-log"]
        if trial is not None and trial.get("chain_hash"):
            totals = trial["totals"]
            print(f"  {'':<8} ← Σ debits R$ {totals['debits_posted']} = Σ credits R$ {totals['credits_posted']} over "
                  f"every account: balanced {str(trial['balanced']).lower()}, as of log position {trial['position']} "
                  f"(chain head {trial['chain_hash'][:12]}…)")
            # The independent audit of the raw log must find that same head at that position.
            audit_log += ["--upto", str(trial["position"]), "--expect-head", trial["chain_hash"]]
        for args, what in ((["projections", "rebuild", "--into", "demo_audit", "--no-progress"],
                            "from the event store, not Kafka"),
                           (["projections", "verify", "--schema", "demo_audit"], "against the live read models"),
                           (audit_log, "the raw log's chain and balances, by code of its own")):
            print(f"  auditor  razao {' '.join(a for a in args if a != '--no-progress')}   ({what})")
            done = subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True,
                                  text=True, check=False)
            lines = (done.stdout or done.stderr).strip().splitlines() or [f"exit {done.returncode}"]
            for line in dict.fromkeys((lines[0], lines[-1])):  # what it did, and its verdict
                print(f"  {'':<8} ← {line.strip()}")

    def query(self, who: str, path: str, params: dict[str, Any]) -> dict[str, Any] | None:
        query = "&".join(f"{name}={value}" for name, value in params.items())
        print(f"  {who:<8} GET {self.query_url}{self._short(path)}?{query}")
        deadline = time.monotonic() + READ_SIDE_WAIT_S
        told = False
        while True:
            try:
                response = httpx.get(f"{self.query_url}{path}", params=params, headers=self.actors[who],
                                     timeout=HTTP_TIMEOUT_S)
            except httpx.TransportError as exc:
                print(f"  {'':<8} (the query API does not answer: {exc})")
                return None
            body: dict[str, Any] = response.json()
            behind = response.status_code == 503 and body.get("code") == "QUERY_PROJECTION_BEHIND"
            if behind and time.monotonic() < deadline:
                if not told:
                    print(f"  {'':<8} ← 503: {body.get('detail')}; asking again as it says (Retry-After)")
                    told = True
                retry_after = response.headers.get("Retry-After", "1")
                time.sleep(min(float(retry_after), 5.0) if retry_after.isdigit() else 1.0)
                continue
            if not response.is_success:
                print(f"  {'':<8} ← {response.status_code}: {body.get('code')}: {body.get('detail')}")
                return None
            return body

    def await_webhook_registration(self, admin_url: str) -> None:
        """`razao up` starts the PSPs after the API, which registers its webhook once they answer; a Pix paid
        before that would only be credited by the periodic reconciliation, so the story waits for it."""
        deadline = time.monotonic() + PIX_WAIT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{admin_url}/_sandbox/state", timeout=2).json().get("webhook"):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        print(f"  {'':<8} (the PSP has no webhook registered yet; the periodic reconciliation will credit the Pix)")

    def posted(self, account_id: str) -> tuple[int, int]:
        a = self.client.get(f"/v1/accounts/{account_id}", headers=self.actors["operator"]).json()
        return centavos(a["debits_posted"]), centavos(a["credits_posted"])

    def wait_for(self, who: str, path: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        deadline = time.monotonic() + PIX_WAIT_S
        while time.monotonic() < deadline:
            found: dict[str, Any] = self.client.get(path, headers=self.actors[who]).json()
            if ready(found):
                return found
            time.sleep(0.1)
        print(f"  {'':<8} (not done within {PIX_WAIT_S:.0f}s; GET {self._short(path)} shows how it stands)")
        return None

    def open(self, name: str, code: str) -> str:
        response = self.call("operator", "POST", "/v1/accounts", {"code": code, "reference": f"demo:{name}"},
                             key=next(self.keys), say=lambda a: f"{name} account opened")
        account_id = str(response.json()["id"])
        self.names[account_id] = name
        return account_id

    def onboard(self, name: str, kind: str, cpf: str) -> str:
        body = {"kind": kind, "name": f"{name} (demo)", "document": cpf, "email": f"{name.lower()}@example.com.br",
                "phone": "+5511987654321"}
        party = self.call("operator", "POST", "/v1/parties", body, key=next(self.keys),
                          say=lambda p: f"{name} registered as {kind} (CPF {cpf}), with a wallet").json()
        self.names[party["wallet_id"]] = name
        self.act_as(name, kind, party["id"])
        return str(party["wallet_id"])

    def move(self, who: str, debit: str, credit: str, valor: str, **extra: Any) -> None:
        self.call(who, "POST", "/v1/transfers", {"debit_account_id": debit, "credit_account_id": credit,
                                                  "valor": valor, **extra}, key=next(self.keys), say=self.moved)

    def bulk_outcome(self, bulk: dict[str, Any]) -> str:
        outcomes = ", ".join(f"R$ {r['transfer']['valor']} committed" if r["transfer"] else r["problem"]["code"]
                             for r in bulk["results"])
        return f"each transfer on its own: {outcomes}"

    def moved(self, transfer: dict[str, Any]) -> str:
        debit = self.names.get(transfer["debit_account_id"], "?")
        credit = self.names.get(transfer["credit_account_id"], "?")
        return f"R$ {transfer['valor']} from {debit} to {credit} (log position {transfer['position']})"

    def print_balances(self) -> None:
        header = f"{'account':<31} {'debits posted':>14} {'credits posted':>15} {'pending':>10} {'balance':>12}"
        print(header)
        print("-" * len(header))
        debits = credits = 0
        for account_id, name in self.names.items():
            a = self.client.get(f"/v1/accounts/{account_id}", headers=self.actors["operator"]).json()
            pending = centavos(a["debits_pending"]) + centavos(a["credits_pending"])
            pending_text = format_centavos(pending)
            before_debits, before_credits = self.baselines.get(account_id, (0, 0))
            account_debits = centavos(a["debits_posted"]) - before_debits
            account_credits = centavos(a["credits_posted"]) - before_credits
            balance = a["posted"] if account_id not in self.baselines else format_centavos(
                account_debits - account_credits)
            print(f"{name:<31} {format_centavos(account_debits):>14} {format_centavos(account_credits):>15} "
                  f"{pending_text:>10} {balance:>12}")
            debits += account_debits
            credits += account_credits
        verdict = "balances" if debits == credits else "DOES NOT BALANCE"
        print(f"\nΣ debits = Σ credits over these accounts: the ledger {verdict}.\n")
