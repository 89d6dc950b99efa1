"""Parties: onboarding investors and borrowers (each with its wallet), and reading them back."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter
from starlette.responses import Response

from commands.api.deps import IdempotencyKey, Ledger, Onboarder, PartyReader
from commands.api.errors import ApiError
from commands.api.models import PartyCreated, PartyIn, PartyOut
from commands.api.routers.common import READ_PROBLEMS, WRITE_PROBLEMS, json_response, ledger_key
from ledger.parties import Party, RegisterParty
from ledger.writer import PartyResult

router = APIRouter(prefix="/v1/parties", tags=["parties"])


def _party_out(party: Party) -> dict[str, object]:
    return {"id": party.id, "kind": party.kind, "name": party.name, "document": party.document,
            "email": party.email, "phone": party.phone, "wallet_id": party.wallet_id}


@router.post("", status_code=201, response_model=PartyCreated, responses=WRITE_PROBLEMS,
             summary="Onboard an investor or borrower (opens their wallet)")
async def register_party(body: PartyIn, principal: Onboarder, key: IdempotencyKey, ledger: Ledger) -> Response:
    """Operators and internal services onboard parties; the party's wallet is opened in the same commit.

    The party id is derived from the Idempotency-Key, so a retry never registers twice. A CPF or CNPJ is
    registered once per kind (409 ``LEDGER_PARTY_EXISTS``).
    """
    command = RegisterParty(ledger_key(principal, key), body.kind, body.name, body.document, body.email, body.phone)
    result: PartyResult = await ledger.execute(command)
    position = await ledger.position_of((result.party.id, result.party.wallet_id), "PartyRegistered",
                                       "AccountOpened")
    out = PartyCreated(**_party_out(result.party), position=position)  # type: ignore[arg-type]
    return json_response(out, status=201, replayed=result.replayed, location=f"/v1/parties/{result.party.id}")


@router.get("/{party_id}", response_model=PartyOut, responses=READ_PROBLEMS, summary="Read a party")
async def read_party(party_id: UUID, principal: PartyReader, ledger: Ledger) -> Response:
    """Staff read any party; a customer reads only itself (any other id answers 404, as if absent)."""
    if principal.is_customer and party_id != principal.party_id:
        raise _party_not_found(party_id)
    found = await ledger.parties(party_id)
    party = found.get(party_id)
    if party is None:
        raise _party_not_found(party_id)
    return json_response(PartyOut(**_party_out(party)), status=200)  # type: ignore[arg-type]


def _party_not_found(party_id: UUID) -> ApiError:
    return ApiError("RESOURCE_NOT_FOUND", f"party {party_id} does not exist", party_id=str(party_id))
