"""A party's accounts (a customer sees only their own party)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from starlette.responses import Response

from projections.api.deps import Caller, Consistent, Ctx, Db
from projections.api.present import account_body, respond
from projections.api.problems import Problem

router = APIRouter(prefix="/v1/parties", tags=["parties"])


@router.get("/{party_id}/accounts")
def get_party_accounts(party_id: UUID, *, request: Request, principal: Caller, position: Consistent, ctx: Ctx,
                       conn: Db) -> Response:
    party = ctx.queries.party(conn, str(party_id))
    if party is None or (not principal.sees_all and principal.party_id != str(party_id)):
        raise Problem("QUERY_PARTY_NOT_FOUND", f"party {party_id} not found")
    accounts = ctx.queries.party_accounts(conn, str(party_id))
    return respond(request, {"party_id": str(party_id), "kind": party["kind"],
                             "accounts": [account_body(a) for a in accounts]}, position)
