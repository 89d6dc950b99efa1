"""Auditor routes: the trial balance (Σ debits = Σ credits) and any account's history as of a position or a time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from projections.api.deps import DEFAULT_PAGE, Auditor, Consistent, Ctx, Db, PageSize, parse_instant, visible_account
from projections.api.present import entry_body, respond, valor
from projections.api.queries import signed
from projections.limits import POSITION_MAX

router = APIRouter(prefix="/v1/audit", tags=["audit"])
_DUSK = datetime(9999, 12, 31, tzinfo=UTC)


@router.get("/trial-balance")
def trial_balance(request: Request, *, principal: Auditor, position: Consistent, ctx: Ctx, conn: Db) -> Response:
    """Totals per account code and overall; ``balanced`` is whether Σ debits = Σ credits, posted and pending.

    ``chain_hash`` is the hash-chain head at ``position``, the log position the totals are as of:
    ``razao audit verify-log --upto POSITION --expect-head CHAIN_HASH`` checks them against the raw log."""
    rows = ctx.queries.trial_balance(conn)
    at, head = (int(rows[0]["at_position"]), rows[0]["at_chain_hash"]) if rows else ctx.queries.head(conn)
    totals = {f: sum(int(r[f]) for r in rows) for f in ("debits_pending", "debits_posted", "credits_pending",
                                                          "credits_posted")}
    body = {
        "position": at,
        "chain_hash": head,
        "balanced": totals["debits_posted"] == totals["credits_posted"]
        and totals["debits_pending"] == totals["credits_pending"],
        "totals": {k: valor(v) for k, v in totals.items()},
        "by_code": [{"code": r["code"], "accounts": r["accounts"],
                     **{f: valor(int(r[f])) for f in ("debits_pending", "debits_posted", "credits_pending",
                                                       "credits_posted")}} for r in rows],
    }
    return respond(request, body, position)


@router.get("/accounts/{account_id}/history")
def history(
    account_id: UUID, *, request: Request, principal: Auditor, position: Consistent, ctx: Ctx, conn: Db,
    as_of_position: Annotated[int | None, Query(ge=0, le=POSITION_MAX)] = None,
    as_of_time: Annotated[str | None, Query(description="RFC 3339 with an offset, or YYYY-MM-DD (end of day)")]
    = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: PageSize = DEFAULT_PAGE,
) -> Response:
    """The account's balance as of a log position and/or time, and its entries up to then, newest first."""
    until = parse_instant(as_of_time, "as_of_time", end=True)  # a date means the end of that (UTC) day
    account = visible_account(ctx, conn, principal, str(account_id))
    upto = POSITION_MAX if as_of_position is None else as_of_position
    scope = f"history:{account_id}:{as_of_position}:{as_of_time}"
    before = ctx.cursors.decode(scope, cursor) if cursor else POSITION_MAX
    rows = ctx.queries.history(conn, str(account_id), upto=upto, until=until or _DUSK, before=before,
                               limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    latest = rows[0] if rows and before == POSITION_MAX else None
    if before == POSITION_MAX:
        fields = (latest["debits_pending"], latest["debits_posted"], latest["credits_pending"],
                  latest["credits_posted"]) if latest else (0, 0, 0, 0)
        s = signed(account["debit_normal"], *fields)
        balance = {"posted": valor(s.posted), "pending": valor(s.pending), "available": valor(s.available),
                   "position": latest["position"] if latest else None}
    else:
        balance = None
    opened = account["opened_position"] <= upto and (until is None or account["opened_at"] <= until)
    body = {"account_id": str(account_id), "as_of_position": as_of_position, "as_of_time": as_of_time,
            "existed": opened, "balance": balance,
            "entries": [entry_body(r, account["debit_normal"]) for r in page],
            "next_cursor": ctx.cursors.encode(scope, page[-1]["position"]) if more else None}
    return respond(request, body, position)
