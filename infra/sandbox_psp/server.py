"""The sandbox PSP's HTTP server (aiohttp): routes, auth, fault injection, webhook delivery, outage control.

aiohttp rather than the FastAPI stack of the command API because the ``refuse`` outage must stop and restart a
listener at run time (``TCPSite.stop()``/``start()``), and webhook delivery wants an async client on the same loop.

Two listeners: ``port`` serves the PSP API and ``/_sandbox/*``; ``admin_port`` (optional) serves ``/_sandbox/*``
only and stays up during a ``refuse`` outage, so tests and ``razao status`` can still reach the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime
from random import Random
from typing import Any, Final

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from infra.sandbox_psp.config import ENV_PREFIX, KNOB_TYPES, Identity, KnobError, Knobs, knob_from_text
from infra.sandbox_psp.formats import format_date_time, new_alnum
from infra.sandbox_psp.state import Json, Problem, SandboxState

log = logging.getLogger("razao.sandbox_psp")

BODY_BYTES_MAX: Final = 64 * 1024
LOG_ENTRIES_MAX: Final = 1_000
QUEUE_DEPTH_MAX: Final = 10_000
#: Webhook POSTs in flight at once (each with its retries); past this, batches wait for a slot.
DELIVERIES_IN_FLIGHT_MAX: Final = 64
WEBHOOK_BACKOFF_S_MAX: Final = 30.0
PROBLEM_JSON: Final = "application/problem+json"
SIGNATURE_HEADER: Final = "X-Razao-Signature"
PSP_HEADER: Final = "X-Psp-Id"
DELIVERY_HEADER: Final = "X-Razao-Delivery"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(problem.body(), status=problem.status, content_type=PROBLEM_JSON, headers=headers)


def _local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if sockname else None


class Sandbox:
    """One sandbox PSP: state, knobs, listeners and the webhook deliverer, on one event loop."""

    def __init__(self, identity: Identity, knobs: Knobs) -> None:
        self.identity = identity
        self.initial_knobs = knobs
        # Deterministic by design (a seed replays a run); nothing secret comes from it (tokens use `secrets`).
        self.rng = Random(identity.seed)  # noqa: S311
        self.state = SandboxState(identity, replace(knobs), self.rng, schedule=self._schedule, notify=self._notify)
        self.requests: deque[Json] = deque(maxlen=LOG_ENTRIES_MAX)
        self.deliveries: deque[Json] = deque(maxlen=LOG_ENTRIES_MAX)
        self.queue: asyncio.Queue[Json] = asyncio.Queue(maxsize=QUEUE_DEPTH_MAX)
        self.runner: web.AppRunner | None = None
        self.main_site: web.TCPSite | None = None
        self.session: ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outage_timer: asyncio.TimerHandle | None = None
        self._generation = 0  # bumped by reset, so timers and deliveries of the old state are dropped
        self._delivery_slots = asyncio.Semaphore(DELIVERIES_IN_FLIGHT_MAX)

    @property
    def knobs(self) -> Knobs:
        return self.state.knobs

    # ---- life cycle -----------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=BODY_BYTES_MAX)
        api = [
            web.post("/oauth/token", self.token),
            web.put("/cob/{txid}", self.put_cob), web.get("/cob/{txid}", self.get_cob), web.post("/cob", self.post_cob),
            web.get("/pix/{e2eid}", self.get_pix), web.get("/pix", self.list_pix),
            web.put("/pix/{e2eid}/devolucao/{id}", self.put_refund),
            web.get("/pix/{e2eid}/devolucao/{id}", self.get_refund),
            web.put("/webhook/{chave}", self.put_webhook), web.get("/webhook/{chave}", self.get_webhook),
            web.delete("/webhook/{chave}", self.delete_webhook),
            web.put("/pagamentos/{idEnvio}", self.put_payment), web.get("/pagamentos/{idEnvio}", self.get_payment),
        ]
        control = [
            web.get("/_sandbox/health", self.health), web.get("/_sandbox/config", self.get_config),
            web.post("/_sandbox/config", self.post_config), web.post("/_sandbox/pay", self.pay),
            web.post("/_sandbox/reset", self.reset), web.get("/_sandbox/requests", self.get_requests),
            web.get("/_sandbox/deliveries", self.get_deliveries), web.get("/_sandbox/state", self.get_state),
        ]
        app.add_routes(api + control)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        self.session = ClientSession()
        if self.identity.admin_port:
            await web.TCPSite(self.runner, self.identity.host, self.identity.admin_port, reuse_address=True).start()
        if self.knobs.outage != "refuse":
            await self._open_main()
        self._spawn(self._deliverer())
        if self.knobs.outage != "none" and self.knobs.outage_s > 0:
            self._arm_outage_timer(self.knobs.outage_s)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox task failed", exc_info=task.exception())

    def _schedule(self, delay_s: float, action: Callable[[], None]) -> None:
        generation = self._generation

        def run() -> None:
            if generation == self._generation:
                action()

        asyncio.get_running_loop().call_later(delay_s, run)

    # ---- the main listener and outages ----------------------------------------------------------------------

    async def _open_main(self) -> None:
        assert self.runner is not None
        if self.main_site is None:
            self.main_site = web.TCPSite(self.runner, self.identity.host, self.identity.port, reuse_address=True)
            await self.main_site.start()

    async def _close_main(self) -> None:
        assert self.runner is not None
        if self.main_site is not None:
            await self.main_site.stop()
            self.main_site = None
        # A closed listener refuses new connections; kept-alive ones must go too, as when a server dies.
        server = self.runner.server
        closing = []
        for connection in server.connections if server is not None else []:
            sockname = connection.transport.get_extra_info("sockname") if connection.transport else None
            if sockname and int(sockname[1]) == self.identity.port:
                closing.append(connection)
                connection.force_close()
        # transport.close() takes effect on a later loop iteration: wait (bounded) until the sockets are really
        # closed, so that whoever asked for the outage sees it in force when the answer arrives.
        for _ in range(100):
            if server is None or not any(connection in server.connections for connection in closing):
                break
            await asyncio.sleep(0.01)

    async def _apply_outage(self, old: Knobs, new: Knobs, delay_s: float = 0.0) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)  # let the answer to the request that asked for it leave first
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None
        if new.outage == "refuse" and old.outage != "refuse":
            await self._close_main()
        elif new.outage != "refuse":
            await self._open_main()
        if new.outage != "none" and new.outage_s > 0:
            self._arm_outage_timer(new.outage_s)

    def _arm_outage_timer(self, outage_s: float) -> None:
        def end() -> None:
            old = self.knobs
            self.state.knobs = old.updated({"outage": "none", "outage_s": 0.0})
            self._spawn(self._apply_outage(old, self.knobs))

        self._outage_timer = asyncio.get_running_loop().call_later(outage_s, end)

    # ---- middleware: auth and faults ------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            return await self._answer(handler, request)
        if self.identity.admin_port and _local_port(request) == self.identity.admin_port:
            return _problem_response(Problem(404, "NaoEncontrado", "The admin port serves /_sandbox/* only."))
        entry: Json = {"at": format_date_time(datetime.now(UTC)), "method": request.method, "path": request.path,
                       "fault": None, "status": None}
        self.requests.append(entry)
        response = await self._faulty(request, handler, entry)
        entry["status"] = response.status
        return response

    async def _faulty(self, request: web.Request, handler: Handler, entry: Json) -> web.StreamResponse:
        knobs = self.knobs
        if knobs.outage == "refuse":  # a request that slipped in on a connection opened before the outage
            entry["fault"] = "refuse"
            if request.protocol is not None:
                request.protocol.force_close()
            return _problem_response(Problem(503, "ServicoIndisponivel", "Service unavailable."))
        if knobs.outage == "503":
            entry["fault"] = "outage"
            return _problem_response(Problem(503, "ServicoIndisponivel", "Serviço indisponível (sandbox outage)."))
        faultable = any(request.path.startswith(prefix) for prefix in knobs.fault_paths)
        if faultable:
            if knobs.fail_next > 0:
                knobs.fail_next -= 1
                entry["fault"] = "fail_next"
                return _problem_response(Problem(503, "ServicoIndisponivel", "Serviço indisponível (fail_next)."))
            delay_ms = knobs.latency_ms + (self.rng.randint(0, knobs.latency_jitter_ms) if knobs.latency_jitter_ms
                                           else 0)
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            if self._chance(knobs.error_rate):
                entry["fault"] = "error"
                return _problem_response(Problem(503, "ServicoIndisponivel", "Serviço indisponível (error_rate)."))
        if request.path != "/oauth/token" and not self.state.token_valid(request.headers.get("Authorization")):
            return _problem_response(Problem(401, "AcessoNegado", "A valid bearer token is required."),
                                     headers={"WWW-Authenticate": 'Bearer realm="sandbox-psp"'})
        response = await self._answer(handler, request)
        if faultable and self._chance(knobs.error_after_rate):
            entry["fault"] = "error_after"
            return _problem_response(Problem(500, "ErroInternoDoServidor", "Erro interno (error_after_rate)."))
        if faultable and self._chance(knobs.timeout_rate):
            entry["fault"] = "hang"
            await asyncio.sleep(knobs.hang_ms / 1000)
        return response

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    @staticmethod
    async def _answer(handler: Handler, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            return _problem_response(problem)

    @staticmethod
    async def _json(request: web.Request) -> object:
        if not request.can_read_body:
            return {}
        try:
            return await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Problem(400, "RequisicaoInvalida", "The body is not valid JSON.") from exc

    # ---- the PSP API ----------------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise Problem(401, "AcessoNegado", "Malformed Basic credentials.") from exc
        grant = form.get("grant_type")
        return web.json_response(self.state.issue_token(
            client_id if isinstance(client_id, str) else None,
            client_secret if isinstance(client_secret, str) else None,
            grant if isinstance(grant, str) else None,
        ))

    async def put_cob(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.put_cob(request.match_info["txid"], await self._json(request)),
                                 status=201)

    async def post_cob(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.post_cob(await self._json(request)), status=201)

    async def get_cob(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.get_cob(request.match_info["txid"]))

    async def get_pix(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.get_pix(request.match_info["e2eid"]))

    async def list_pix(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.list_pix(dict(request.query)))

    async def put_refund(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        refund = self.state.put_refund(request.match_info["e2eid"], request.match_info["id"], body)
        return web.json_response(refund, status=201)

    async def get_refund(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.get_refund(request.match_info["e2eid"], request.match_info["id"]))

    async def put_webhook(self, request: web.Request) -> web.Response:
        self.state.put_webhook(request.match_info["chave"], await self._json(request))
        return web.Response(status=200)

    async def get_webhook(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.get_webhook(request.match_info["chave"]))

    async def delete_webhook(self, request: web.Request) -> web.Response:
        self.state.delete_webhook(request.match_info["chave"])
        return web.Response(status=204)

    async def put_payment(self, request: web.Request) -> web.Response:
        status, body = self.state.put_payment(request.match_info["idEnvio"], await self._json(request))
        return web.json_response(body, status=status)

    async def get_payment(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.get_payment(request.match_info["idEnvio"]))

    # ---- /_sandbox ------------------------------------------------------------------------------------------

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "psp": self.identity.psp_id, "outage": self.knobs.outage,
                                  "port": self.identity.port, "admin_port": self.identity.admin_port})

    async def get_config(self, _request: web.Request) -> web.Response:
        return web.json_response(self._config_json())

    def _config_json(self) -> Json:
        return {"psp": self.identity.psp_id, "ispb": self.identity.ispb, "pix_key": self.identity.pix_key,
                "knobs": self.knobs.to_json()}

    async def post_config(self, request: web.Request) -> web.Response:
        changes = await self._json(request)
        if not isinstance(changes, dict):
            raise Problem(400, "RequisicaoInvalida", "Send a JSON object of knob: value.")
        changes = dict(changes)
        seed = changes.pop("seed", None)
        if seed is not None and type(seed) is not int:
            raise Problem(400, "RequisicaoInvalida", "seed must be an integer")
        old = self.knobs
        try:
            new = old.updated(changes)
        except KnobError as exc:
            raise Problem(400, "RequisicaoInvalida", str(exc)) from exc
        self.state.knobs = new
        if seed is not None:
            self.rng.seed(seed)
        if (old.outage, old.outage_s) != (new.outage, new.outage_s) or "outage" in changes:
            via_admin = bool(self.identity.admin_port) and _local_port(request) == self.identity.admin_port
            if via_admin or new.outage != "refuse":
                await self._apply_outage(old, new)
            else:
                self._spawn(self._apply_outage(old, new, delay_s=0.05))
        return web.json_response(self._config_json())

    async def pay(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.pay(await self._json(request)), status=201)

    async def reset(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        seed = body.get("seed", self.identity.seed) if isinstance(body, dict) else self.identity.seed
        old = self.knobs
        self._generation += 1
        self.state.knobs = replace(self.initial_knobs)
        self.state.reset()
        self.rng.seed(seed)
        self.requests.clear()
        self.deliveries.clear()
        while not self.queue.empty():
            self.queue.get_nowait()
        await self._apply_outage(old, self.knobs)
        return web.json_response(self._config_json())

    async def get_requests(self, _request: web.Request) -> web.Response:
        return web.json_response(list(self.requests))

    async def get_deliveries(self, _request: web.Request) -> web.Response:
        return web.json_response(list(self.deliveries))

    async def get_state(self, _request: web.Request) -> web.Response:
        return web.json_response({**self.state.counts(), "queued_notifications": self.queue.qsize(),
                                  "payments": sorted(self.state.payments)})

    # ---- webhook delivery -----------------------------------------------------------------------------------

    def _notify(self, pix: Json) -> None:
        """Called by the state for each Pix to notify (a payment received, a devolução final)."""
        knobs = self.knobs
        e2eid = pix["endToEndId"]
        if not knobs.webhook_enabled or self.state.webhook is None:
            reason = "webhook_disabled" if not knobs.webhook_enabled else "no_webhook_registered"
            self.deliveries.append({"at": format_date_time(datetime.now(UTC)), "pix": [e2eid], "skipped": reason})
            return
        if knobs.webhook_delay_ms and self._chance(knobs.webhook_delay_rate):
            self._schedule(knobs.webhook_delay_ms / 1000, lambda: self._enqueue(pix))
        else:
            self._enqueue(pix)

    def _enqueue(self, pix: Json) -> None:
        try:
            self.queue.put_nowait(pix)
        except asyncio.QueueFull:
            self.deliveries.append({"at": format_date_time(datetime.now(UTC)), "pix": [pix["endToEndId"]],
                                    "skipped": "queue_full"})

    async def _deliverer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            knobs = self.knobs
            deadline = loop.time() + knobs.webhook_batch_window_ms / 1000
            while len(batch) < knobs.webhook_batch_max:
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        batch.append(self.queue.get_nowait())
                    else:
                        batch.append(await asyncio.wait_for(self.queue.get(), timeout=remaining))
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            await self._delivery_slots.acquire()
            self._spawn(self._deliver(batch, self._generation))

    async def _deliver(self, batch: list[Json], generation: int) -> None:
        try:
            body = json.dumps({"pix": batch}, ensure_ascii=False, separators=(",", ":")).encode()
            delivery_id = new_alnum(20, self.rng)
            delivered = await self._post(body, delivery_id, batch, generation, duplicate=False)
            if delivered and self._chance(self.knobs.webhook_duplicate_rate):
                await self._post(body, delivery_id, batch, generation, duplicate=True)
        finally:
            self._delivery_slots.release()

    async def _post(self, body: bytes, delivery_id: str, batch: list[Json], generation: int, *,
                    duplicate: bool) -> bool:
        assert self.session is not None
        signature = "sha256=" + hmac.new(self.identity.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature, PSP_HEADER: self.identity.psp_id,
                   DELIVERY_HEADER: delivery_id}
        e2eids = [pix["endToEndId"] for pix in batch]
        for attempt in range(1, self.knobs.webhook_attempts_max + 1):
            knobs, webhook = self.knobs, self.state.webhook
            if generation != self._generation or webhook is None:
                return False
            url = str(webhook["webhookUrl"])
            url = url.rstrip("/") + "/pix" if knobs.webhook_append_pix else url
            entry: Json = {"at": format_date_time(datetime.now(UTC)), "delivery_id": delivery_id,
                           "attempt": attempt, "url": url, "pix": e2eids, "duplicate": duplicate,
                           "status": None, "error": None}
            self.deliveries.append(entry)
            try:
                async with self.session.post(url, data=body, headers=headers,
                                             timeout=ClientTimeout(total=knobs.webhook_timeout_s)) as response:
                    entry["status"] = response.status
                    if 200 <= response.status < 300:
                        return True
            except (ClientError, TimeoutError, OSError) as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
            backoff_s = min(knobs.webhook_retry_backoff_ms / 1000 * 2 ** (attempt - 1), WEBHOOK_BACKOFF_S_MAX)
            if attempt < knobs.webhook_attempts_max:
                await asyncio.sleep(backoff_s)
        log.warning("webhook delivery %s gave up after %d attempts", delivery_id, self.knobs.webhook_attempts_max)
        return False


# ---- command line ---------------------------------------------------------------------------------------------


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.sandbox_psp",
        description="A sandbox PSP speaking the BCB API Pix shapes (development and tests only). Every option can "
                    f"also be set as {ENV_PREFIX}<NAME> (e.g. {ENV_PREFIX}LATENCY_MS); the flag wins.",
    )
    defaults = Identity()
    for identity_field in fields(Identity):
        flag = "--" + identity_field.name.replace("_", "-")
        default = getattr(defaults, identity_field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None, help=f"(default {default})")
        else:
            kind = int if identity_field.name in ("port", "admin_port", "seed") else str
            parser.add_argument(flag, type=kind, default=None, help=f"(default {default})")
    knobs = parser.add_argument_group("knobs (also POST /_sandbox/config at run time)")
    for name in KNOB_TYPES:
        knobs.add_argument("--" + name.replace("_", "-"), dest="knob_" + name, default=None, metavar="VALUE",
                           help=f"(default {getattr(Knobs(), name)!r})")
    return parser


def configure(argv: Sequence[str] | None, environ: Mapping[str, str]) -> tuple[Identity, Knobs]:
    """Identity and initial knobs from flags, then the environment, then defaults; raises ``KnobError``."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    defaults = asdict(Identity())
    for name, default in defaults.items():
        flag_value = getattr(args, name)
        if flag_value is not None:
            values[name] = flag_value
        elif environ.get(_env_name(name)):
            text = environ[_env_name(name)]
            values[name] = (text.lower() in ("1", "true", "yes") if isinstance(default, bool)
                            else int(text) if name in ("port", "admin_port", "seed") else text)
    knob_values: dict[str, object] = {}
    for name in KNOB_TYPES:
        knob_text: str | None = getattr(args, "knob_" + name) or environ.get(_env_name(name))
        if knob_text:
            knob_values[name] = knob_from_text(name, knob_text)
    return Identity(**values), Knobs().updated(knob_values)


async def serve(identity: Identity, knobs: Knobs, ready: Callable[[Sandbox], None] | None = None) -> None:
    """Runs a sandbox until SIGINT or SIGTERM."""
    sandbox = Sandbox(identity, knobs)
    await sandbox.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if ready is not None:
        ready(sandbox)
    try:
        await stop.wait()
    finally:
        await sandbox.stop()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        identity, knobs = configure(argv, os.environ)
    except (KnobError, ValueError) as exc:
        print(f"sandbox_psp: {exc}", file=sys.stderr)
        return 2

    def ready(sandbox: Sandbox) -> None:
        admin = f", admin on :{identity.admin_port}" if identity.admin_port else ""
        print(f"sandbox PSP {identity.psp_id} (ISPB {identity.ispb}) on http://{identity.host}:{identity.port}"
              f"{admin}; pix key {identity.pix_key}", flush=True)

    asyncio.run(serve(identity, knobs, ready))
    return 0
