"""``POST /admin/reload``: look at ``MODEL_DIR`` now instead of at the next poll (``ADMIN_API_KEY`` only)."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter

from service.api.admin_schemas import ReloadResponse
from service.api.deps import ContextDep
from service.api.schemas import ErrorBody

router = APIRouter(prefix="/admin", tags=["admin"])

RESPONSES = {
    401: {"model": ErrorBody, "description": "No bearer token, or not the admin key."},
    403: {"model": ErrorBody, "description": "ADMIN_API_KEY is unset (admin routes off), or the API key was sent."},
}


@router.post("/reload", response_model=ReloadResponse, responses=RESPONSES)
async def reload_models(context: ContextDep) -> ReloadResponse:
    """Load new and changed model folders (verified and warmed up before they serve), drop removed ones.

    Answers once the look is over. A refused artifact is listed under `failed` and changes nothing that serves
    (the older version keeps answering); `/readyz` and `/models` name it too.
    """
    registry = context.registry
    assert registry is not None, "the lifespan sets the registry before serving"
    report = await registry.reload()
    return ReloadResponse(**dataclasses.asdict(report))
