"""Operations: liveness, readiness and Prometheus metrics (no token; bind the port privately in production)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from commands.api.deps import Context
from commands.api.errors import ApiError
from commands.api.models import Health, Readiness
from commands.api.routers.common import json_response, problems

router = APIRouter(tags=["operations"])

SERVICE_NAME = "razao-command-api"


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response(Health(status="ok", service=SERVICE_NAME), status=200)


@router.get("/readyz", response_model=Readiness, responses=problems(503),
            summary="Readiness: the ledger writer answers")
async def readyz(context: Context) -> Response:
    """Ready when the ledger writer answers a read. Rate limits kept in process (Redis down) still count as
    ready: the API stays protected, and ``rate_limits`` says so."""
    if context.ledger is None or not await context.ledger.ready():
        raise ApiError("API_NOT_READY", "the ledger writer is not running")
    return json_response(Readiness(status="ready", ledger_position=context.ledger.position(),
                                   rate_limits=context.limiter.backend), status=200)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, context: Context) -> Response:
    return Response(generate_latest(context.metrics.registry), media_type=CONTENT_TYPE_LATEST)
