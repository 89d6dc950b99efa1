"""One transfer, seen by the owner of either of its accounts, or by an auditor."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from starlette.responses import Response

from projections.api.deps import Caller, Consistent, Ctx, Db
from projections.api.present import respond, transfer_body
from projections.api.problems import Problem

router = APIRouter(prefix="/v1/transfers", tags=["transfers"])


@router.get("/{transfer_id}")
def get_transfer(transfer_id: UUID, *, request: Request, principal: Caller, position: Consistent, ctx: Ctx,
                 conn: Db) -> Response:
    row = ctx.queries.transfer(conn, str(transfer_id))
    if row is not None and not principal.sees_all:
        owners = {str((ctx.queries.account(conn, str(row[side])) or {}).get("owner_id"))
                  for side in ("debit_account_id", "credit_account_id")}
        if principal.party_id not in owners:
            row = None
    if row is None:
        raise Problem("QUERY_TRANSFER_NOT_FOUND", f"transfer {transfer_id} not found")
    return respond(request, transfer_body(row), position)
