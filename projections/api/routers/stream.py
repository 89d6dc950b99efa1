"""Real time: a Server-Sent Events stream of each change of the caller's balances, as it is projected.

Customers get their own accounts (optionally narrowed with ``account_id``); auditors and operators name the
accounts they follow, or none to follow every account. Each event's id is ``<position>:<account_id>``; a client
that reconnects with ``Last-Event-ID`` (or ``after_position``) first gets what it missed, then live changes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query
from starlette.responses import StreamingResponse

from projections.api.deps import Caller, Ctx, QueryContext
from projections.api.hub import Subscription
from projections.api.problems import Problem
from projections.limits import POSITION_MAX, STREAM_ACCOUNTS_MAX, STREAM_FANOUT_ROWS_MAX, STREAM_KEEPALIVE_S

router = APIRouter(prefix="/v1/stream", tags=["stream"])


@router.get("/balances")
async def stream_balances(
    principal: Caller, ctx: Ctx,
    account_id: Annotated[list[UUID] | None, Query(max_length=STREAM_ACCOUNTS_MAX)] = None,
    after_position: Annotated[int | None, Query(ge=0, le=POSITION_MAX)] = None,
    last_event_id: Annotated[str | None, Header(max_length=128)] = None,
) -> StreamingResponse:
    accounts = frozenset(str(a) for a in account_id) if account_id else None
    resume = _resume_position(after_position, last_event_id)
    subscription = ctx.hub.subscribe(accounts, None if principal.sees_all else principal.party_id)
    backlog, complete = await _backlog(ctx, subscription, resume) if resume is not None else ([], True)
    return StreamingResponse(_events(ctx, subscription, backlog, complete, resume or 0),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _resume_position(after_position: int | None, last_event_id: str | None) -> int | None:
    if last_event_id is None:
        return after_position
    head = last_event_id.partition(":")[0]
    if not head.isdigit() or int(head) > POSITION_MAX:
        raise Problem("QUERY_INVALID_REQUEST", "Last-Event-ID must be an id this stream sent")
    return int(head)


async def _backlog(ctx: QueryContext, subscription: Subscription, after: int) -> tuple[list[dict[str, Any]], bool]:
    """Changes after ``after`` up to now, from the tables (the hub only carries what is new), and whether that
    was all of them (a long absence is served in parts: the stream ends and the client resumes)."""

    def read() -> tuple[list[dict[str, Any]], bool]:
        with ctx.pool.connection() as conn:
            rows = ctx.hub.changes(conn, after, ctx.hub.position)
        return [ctx.hub.entry_to_event(r) for r in rows if subscription.wants(r)], len(rows) < STREAM_FANOUT_ROWS_MAX

    return await asyncio.to_thread(read)


def _frame(event: dict[str, Any]) -> bytes:
    return (f"id: {event['position']}:{event['account_id']}\nevent: balance\n"
            f"data: {json.dumps(event, separators=(',', ':'))}\n\n").encode()


async def _events(ctx: QueryContext, subscription: Subscription, backlog: list[dict[str, Any]], complete: bool,
                  sent_upto: int) -> AsyncIterator[bytes]:
    try:
        yield b": connected\n\n"
        for event in backlog:
            sent_upto = max(sent_upto, event["position"])
            yield _frame(event)
        if not complete:
            subscription.overflowed = True
        while not subscription.overflowed:
            try:
                event = await asyncio.wait_for(subscription.queue.get(), STREAM_KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event is None:
                break
            if event["position"] <= sent_upto and backlog:
                continue  # already sent from the backlog
            yield _frame(event)
        if subscription.overflowed:
            yield b"event: overflow\ndata: {}\n\n"
    finally:
        ctx.hub.unsubscribe(subscription)
