"""Dependencies of the routes, as ``Annotated`` aliases: who calls (token, role, rate limits), the key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from commands.api.auth import Principal, TokenRejected, TokenVerifier, bearer_token
from commands.api.errors import ApiError
from commands.api.gateway import LedgerGateway
from commands.api.limits import IDEMPOTENCY_KEY_LENGTH_MAX
from commands.api.metrics import ApiMetrics
from commands.api.ratelimit import RateLimiter
from commands.api.settings import ApiSettings
from commands.pix_runtime import PixRuntime

#: Visible ASCII only: a key travels in a header and is stored in the ledger's key.
IDEMPOTENCY_KEY_PATTERN: Final = re.compile(rf"\A[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_LENGTH_MAX}}}\Z")

#: Roles that move money and create things here. Customers do so only on their own wallet (checked per route).
WRITERS: Final = ("operator", "service")
#: Roles that may read anything here. Customers read only their own party and wallet.
READERS: Final = ("operator", "service", "auditor")
CUSTOMERS: Final = ("investor", "borrower")


@dataclass
class ApiContext:
    """Everything the routes need, built by ``bootstrap.create_app``; ``ledger`` is set once the writer runs."""

    settings: ApiSettings
    verifier: TokenVerifier
    limiter: RateLimiter
    metrics: ApiMetrics
    ledger: LedgerGateway | None = None
    #: The PIX side (commands.pix_runtime), when enabled; its routes exist only then.
    pix: PixRuntime | None = None


# Every dependency is `async def`: FastAPI runs a plain `def` dependency in its threadpool, a thread hop per
# request that the hot path cannot afford (ADR 0004).


def _context_of(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.api
    return context


async def api_context(request: Request) -> ApiContext:
    return _context_of(request)


async def ledger_gateway(request: Request) -> LedgerGateway:
    gateway = _context_of(request).ledger
    if gateway is None:
        raise ApiError("API_NOT_READY", "the ledger writer is not running yet")
    return gateway


_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT",
                     description="A JWT (EdDSA) with sub, role, aud=razao-api, iss=razao-auth, exp and iat.")


def access(*roles: str, money: bool, action: str) -> object:
    """A dependency: authenticates, counts the request against its rate limits, then checks the role.

    Order matters: a request with a bad token is still counted (per address), and a forbidden role learns
    nothing about the objects it named.
    """
    allowed = frozenset(roles)

    async def dependency(
        request: Request, _doc: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None
    ) -> Principal:
        context = _context_of(request)
        authorization = request.headers.get("authorization")
        principal: Principal | None = None
        rejection = ""
        try:
            principal = context.verifier.verify(bearer_token(authorization))
        except TokenRejected as exc:
            rejection = str(exc)
        address = request.client.host if request.client else "unknown"
        await context.limiter.check(principal, address, money=money)
        if principal is None:
            if not authorization:
                raise ApiError("AUTH_TOKEN_MISSING", "a bearer token is required")
            raise ApiError("AUTH_TOKEN_INVALID", rejection,
                           headers={"WWW-Authenticate": 'Bearer realm="razao-api", error="invalid_token"'})
        if principal.role not in allowed:
            raise ApiError("AUTH_FORBIDDEN", f"the {principal.role} role may not {action}")
        return principal

    return Depends(dependency)


async def _idempotency_key(
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", description="1 to 64 visible ASCII characters, unique per operation: "
               "a retry with the same key and body returns the original response."),
    ] = None,
) -> str:
    if idempotency_key is None:
        raise ApiError("IDEMPOTENCY_KEY_REQUIRED", "this request needs an Idempotency-Key header")
    if not IDEMPOTENCY_KEY_PATTERN.match(idempotency_key):
        raise ApiError("IDEMPOTENCY_KEY_INVALID",
                       f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} visible ASCII characters")
    return idempotency_key


async def _optional_idempotency_key(
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", description="Optional here: the operation is idempotent.")
    ] = None,
) -> str | None:
    if idempotency_key is not None and not IDEMPOTENCY_KEY_PATTERN.match(idempotency_key):
        raise ApiError("IDEMPOTENCY_KEY_INVALID",
                       f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} visible ASCII characters")
    return idempotency_key


async def pix_runtime(request: Request) -> PixRuntime:
    runtime = _context_of(request).pix
    if runtime is None or runtime.ledger is None:
        raise ApiError("API_NOT_READY", "PIX is not running yet")
    return runtime


IdempotencyKey = Annotated[str, Depends(_idempotency_key)]
OptionalIdempotencyKey = Annotated[str | None, Depends(_optional_idempotency_key)]
Ledger = Annotated[LedgerGateway, Depends(ledger_gateway)]
Context = Annotated[ApiContext, Depends(api_context)]
Pix = Annotated[PixRuntime, Depends(pix_runtime)]

# Who may call what (the matrix is in docs/api.md).
Onboarder = Annotated[Principal, access(*WRITERS, money=False, action="onboard parties")]
PartyReader = Annotated[Principal, access(*READERS, *CUSTOMERS, money=False, action="read parties")]
AccountOpener = Annotated[Principal, access(*WRITERS, money=False, action="open platform accounts")]
AccountReader = Annotated[Principal, access(*READERS, *CUSTOMERS, money=False, action="read balances")]
WalletCloser = Annotated[Principal, access(*WRITERS, *CUSTOMERS, money=True, action="close wallets")]
Payer = Annotated[Principal, access(*WRITERS, *CUSTOMERS, money=True, action="move money")]
Mover = Annotated[Principal, access(*WRITERS, money=True, action="move money in batches or holds")]
# PIX: customers deposit to and withdraw from their own wallet; staff act on any wallet and on received Pix.
Depositor = Annotated[Principal, access(*WRITERS, *CUSTOMERS, money=True, action="ask for deposits")]
Withdrawer = Annotated[Principal, access(*WRITERS, *CUSTOMERS, money=True, action="withdraw")]
PixReader = Annotated[Principal, access(*READERS, *CUSTOMERS, money=False, action="read deposits and withdrawals")]
ReceivedReader = Annotated[Principal, access(*READERS, money=False, action="read received Pix")]
Refunder = Annotated[Principal, access(*WRITERS, money=True, action="return received Pix")]
Reconciler = Annotated[Principal, access(*WRITERS, money=False, action="reconcile received Pix")]

__all__ = ["ApiContext", "ApiMetrics", "IdempotencyKey", "Ledger", "Principal"]
