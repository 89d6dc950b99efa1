"""An account: its balance, statement, transfers and open holds (owners see their own; auditors see all)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from projections.api.deps import DEFAULT_PAGE, Caller, Consistent, Ctx, Db, PageSize, parse_instant, visible_account
from projections.api.present import account_body, entry_body, hold_body, respond, transfer_body
from projections.limits import POSITION_MAX

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

#: Filters left open are these bounds (Postgres timestamptz covers them).
_DAWN = datetime(1, 1, 1, tzinfo=UTC)
_DUSK = datetime(9999, 12, 31, tzinfo=UTC)


@router.get("/{account_id}")
def get_account(account_id: UUID, *, request: Request, principal: Caller, position: Consistent, ctx: Ctx,
                conn: Db) -> Response:
    return respond(request, account_body(visible_account(ctx, conn, principal, str(account_id))), position)


@router.get("/{account_id}/balance")
def get_balance(account_id: UUID, *, request: Request, principal: Caller, position: Consistent, ctx: Ctx,
                conn: Db) -> Response:
    body = account_body(visible_account(ctx, conn, principal, str(account_id)))
    return respond(request, {"account_id": body["account_id"], "currency": body["currency"], **body["balance"]},
                   position)


@router.get("/{account_id}/statement")
def get_statement(
    account_id: UUID, *, request: Request, principal: Caller, position: Consistent, ctx: Ctx, conn: Db,
    since: Annotated[str | None, Query(alias="from", description="YYYY-MM-DD or RFC 3339, inclusive")] = None,
    until: Annotated[str | None, Query(alias="to", description="YYYY-MM-DD (inclusive day) or RFC 3339 "
                                                                "(exclusive)")] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: PageSize = DEFAULT_PAGE,
) -> Response:
    """Statement entries, newest first, each with the balance right after it (the running balance)."""
    start, end = parse_instant(since, "from"), parse_instant(until, "to", end=True)
    account = visible_account(ctx, conn, principal, str(account_id))
    scope = f"statement:{account_id}:{since}:{until}"
    before = ctx.cursors.decode(scope, cursor) if cursor else POSITION_MAX
    rows = ctx.queries.statement(conn, str(account_id), since=start or _DAWN, until=end or _DUSK, before=before,
                                 limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    body = {"account_id": str(account_id), "entries": [entry_body(r, account["debit_normal"]) for r in page],
            "next_cursor": ctx.cursors.encode(scope, page[-1]["position"]) if more else None}
    return respond(request, body, position)


@router.get("/{account_id}/transfers")
def get_transfers(account_id: UUID, *, request: Request, principal: Caller, position: Consistent, ctx: Ctx, conn: Db,
                  cursor: Annotated[str | None, Query(max_length=512)] = None,
                  limit: PageSize = DEFAULT_PAGE) -> Response:
    visible_account(ctx, conn, principal, str(account_id))
    scope = f"transfers:{account_id}"
    before = ctx.cursors.decode(scope, cursor) if cursor else POSITION_MAX
    rows = ctx.queries.transfers(conn, str(account_id), before, limit + 1)
    page, more = rows[:limit], len(rows) > limit
    body = {"account_id": str(account_id), "transfers": [transfer_body(r) for r in page],
            "next_cursor": ctx.cursors.encode(scope, page[-1]["position"]) if more else None}
    return respond(request, body, position)


@router.get("/{account_id}/holds")
def get_holds(account_id: UUID, *, request: Request, principal: Caller, position: Consistent, ctx: Ctx, conn: Db,
              limit: PageSize = DEFAULT_PAGE) -> Response:
    """Open holds (pending transfers) on either side of the account, newest first."""
    visible_account(ctx, conn, principal, str(account_id))
    rows = ctx.queries.holds(conn, str(account_id), limit)
    return respond(request, {"account_id": str(account_id), "holds": [hold_body(r) for r in rows]}, position)
