"""Dependencies of the routes, as ``Annotated`` aliases: the context, the caller, read-your-writes, a connection.

Order matters and is the parameters' order in each route: authenticate (and rate-limit) first, then wait for the
requested position, and only then take a database connection, so a waiting read holds no connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from psycopg_pool import ConnectionPool

from projections.api.auth import (
    CUSTOMER_ROLES,
    SEE_ALL_ROLES,
    KeyUnavailable,
    Principal,
    TokenRejected,
    TokenVerifier,
    bearer_token,
)
from projections.api.cursor import Cursors
from projections.api.hub import Hub
from projections.api.problems import Problem
from projections.api.queries import Conn, Queries, Row
from projections.api.ratelimit import RateLimiter
from projections.ledger_identity import is_ledger_mismatch
from projections.limits import (
    MIN_POSITION_WAIT_MS_DEFAULT,
    MIN_POSITION_WAIT_MS_MAX,
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    POSITION_MAX,
)


@dataclass
class QueryContext:
    """Everything the routes need, built once by ``app.create_app``."""

    pool: ConnectionPool[Any]
    queries: Queries
    hub: Hub
    verifier: TokenVerifier
    cursors: Cursors
    limiter: RateLimiter | None


def context(request: Request) -> QueryContext:
    ctx: QueryContext = request.app.state.ctx
    return ctx


Ctx = Annotated[QueryContext, Depends(context)]


def caller(ctx: Ctx, authorization: Annotated[str | None, Header()] = None) -> Principal:
    try:
        principal = ctx.verifier.verify(bearer_token(authorization), time.time())
    except TokenRejected as exc:
        raise Problem("QUERY_UNAUTHENTICATED", str(exc), headers={"WWW-Authenticate": 'Bearer realm="razao"'}) from None
    except KeyUnavailable:
        raise Problem("QUERY_UNAVAILABLE", "tokens cannot be verified yet", headers={"Retry-After": "1"}) from None
    if principal.role not in CUSTOMER_ROLES | SEE_ALL_ROLES:
        raise Problem("QUERY_FORBIDDEN", f"the role {principal.role!r} does not read here")
    retry_after_s = ctx.limiter.hit(principal.sub) if ctx.limiter is not None else None
    if retry_after_s is not None:
        raise Problem("QUERY_RATE_LIMITED", "too many requests; slow down",
                      headers={"Retry-After": str(retry_after_s)})
    return principal


Caller = Annotated[Principal, Depends(caller)]


def auditor(principal: Caller) -> Principal:
    if not principal.sees_all:
        raise Problem("QUERY_FORBIDDEN", "only auditors and operators may use audit routes")
    return principal


Auditor = Annotated[Principal, Depends(auditor)]


async def consistency(
    ctx: Ctx,
    min_position: Annotated[int | None, Query(ge=0, le=POSITION_MAX,
                                               description="answer only once the read models reached this log "
                                                           "position (the `position` a write returned)")] = None,
    wait_ms: Annotated[int, Query(ge=0, le=MIN_POSITION_WAIT_MS_MAX)] = MIN_POSITION_WAIT_MS_DEFAULT,
) -> int:
    if is_ledger_mismatch(ctx.hub.halted_reason):
        # Rows of another ledger are wrong for this one, not merely late: nothing is served until they are replaced.
        raise Problem("QUERY_LEDGER_MISMATCH", str(ctx.hub.halted_reason))
    if min_position is not None and not await ctx.hub.wait_for(min_position, wait_ms / 1000):
        raise Problem("QUERY_PROJECTION_BEHIND",
                      f"the read models are at position {ctx.hub.position}, not yet at {min_position}",
                      extra={"position": ctx.hub.position, "min_position": min_position},
                      headers={"Retry-After": "1"})
    return ctx.hub.position


Consistent = Annotated[int, Depends(consistency)]


def connection(ctx: Ctx) -> Iterator[Conn]:
    with ctx.pool.connection() as conn:
        yield conn


Db = Annotated[Conn, Depends(connection)]

PageSize = Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX, description=f"at most {PAGE_SIZE_MAX}")]
DEFAULT_PAGE = PAGE_SIZE_DEFAULT


def visible_account(ctx: QueryContext, conn: Conn, principal: Principal, account_id: str) -> Row:
    """The account, if the caller may see it; unknown and not-yours are the same 404 (no existence oracle)."""
    row = ctx.queries.account(conn, account_id)
    if row is None or (not principal.sees_all and str(row["owner_id"]) != principal.party_id):
        raise Problem("QUERY_ACCOUNT_NOT_FOUND", f"account {account_id} not found")
    return row


def parse_instant(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` (the whole UTC day; ``end`` makes it exclusive at the next midnight) or RFC 3339 with an
    offset. Raises a 400 problem naming the parameter."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            start = datetime.combine(date.fromisoformat(value), clock.min, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        instant = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        instant = None
    if instant is None or instant.tzinfo is None:
        raise Problem("QUERY_INVALID_REQUEST", f"{name} must be a date (YYYY-MM-DD) or an RFC 3339 time with an "
                      "offset", extra={"violations": [{"field": name, "message": "not a date or time"}]})
    return instant
