"""``GET /models`` and ``GET /models/{name}``: model cards without bulky arrays."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.deps import ContextDep
from service.api.schemas import ModelsResponse, error_responses

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelsResponse, responses=error_responses(401))
async def list_models(context: ContextDep) -> ModelsResponse:
    """The cards of the ready models, and the status or error of the others."""
    registry, settings = context.registry, context.settings
    assert registry is not None
    cards = []
    unavailable = {}
    for name, served in registry.models.items():
        if served.status == "ready":
            cards.append({**served.card.public_view(), "name": name})
        else:
            unavailable[name] = served.status if served.error is None else f"{served.status}: {served.error}"
    default = settings.default_model or (next(iter(registry.models)) if len(registry.models) == 1 else None)
    return ModelsResponse(default_model=default, models=cards, unavailable=unavailable)


@router.get(
    "/models/{name}",
    responses={
        200: {
            "content": {
                "application/json": {"example": {"name": "mnist", "flow_type": "RealNVP", "shape": [1, 28, 28]}}
            }
        },
        **error_responses(401, 404, 503),
    },
)
async def get_model(name: str, request: Request, context: ContextDep) -> dict[str, Any]:
    """One model's card (without `reference_scores`)."""
    served = context.model(request, name)
    return {**served.card.public_view(), "name": served.name}
