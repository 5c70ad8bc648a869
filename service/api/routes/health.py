"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics``: open even when ``API_KEY`` is set."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import ContextDep
from service.api.schemas import HealthResponse, ReadinessResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "Loading, or some model failed (named)."}},
)
async def readyz(context: ContextDep) -> JSONResponse:
    """200 once every model is loaded, checksum-verified and warmed up; 503 before, or naming what failed."""
    registry = context.registry
    assert registry is not None
    return JSONResponse(registry.readiness(), status_code=200 if registry.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": "realnvp_requests_total{...} 3.0"}}}},
)
async def metrics(context: ContextDep) -> Response:
    """Prometheus metrics."""
    return Response(content=context.metrics.render(), media_type=CONTENT_TYPE_LATEST)
