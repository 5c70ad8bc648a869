"""``GET /models`` and ``GET /models/{name}``: model cards without bulky arrays, with the versions loaded."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.deps import ContextDep
from service.api.schemas import ModelsResponse, error_responses
from service.engine.registry import ModelRegistry, ServedModel

router = APIRouter(tags=["models"])


def model_view(registry: ModelRegistry, served: ServedModel) -> dict[str, Any]:
    """The card of ``served`` plus the versions of its model that are loaded and which one is the default.

    ``default_version`` answers requests that name no version (the folder's current contents); every listed
    version can be pinned as ``NAME@VERSION``. ``reload_error`` says why the folder's newest contents were refused.
    """
    current = registry.models[served.name]
    view = {**served.card.public_view(), "name": served.name, "default_version": current.version}
    view["versions"] = [
        {"version": loaded.version, "sha256": loaded.card.sha256, "default": loaded is current}
        for loaded in registry.versions.get(served.name, {}).values()
    ]
    if served.name in registry.reload_errors:
        view["reload_error"] = registry.reload_errors[served.name]
    return view


@router.get("/models", response_model=ModelsResponse, responses=error_responses(401))
async def list_models(context: ContextDep) -> ModelsResponse:
    """The cards of the ready models (with their loaded versions), and the status or error of the others."""
    registry, settings = context.registry, context.settings
    assert registry is not None
    cards = []
    unavailable = {}
    for name, served in registry.models.items():
        if served.status == "ready":
            cards.append(model_view(registry, served))
        else:
            unavailable[name] = served.status if served.error is None else f"{served.status}: {served.error}"
    default = settings.default_model or (next(iter(registry.models)) if len(registry.models) == 1 else None)
    return ModelsResponse(default_model=default, models=cards, unavailable=unavailable)


@router.get(
    "/models/{name}",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "name": "mnist",
                        "version": "1.0.0",
                        "flow_type": "RealNVP",
                        "shape": [1, 28, 28],
                        "default_version": "1.0.0",
                        "versions": [{"version": "1.0.0", "sha256": "9f2c...", "default": True}],
                    }
                }
            }
        },
        **error_responses(401, 404, 503),
    },
)
async def get_model(name: str, request: Request, context: ContextDep) -> dict[str, Any]:
    """One model's card (without `reference_scores`); `NAME@VERSION` gives that loaded version's card."""
    served = context.model(request, name)
    assert context.registry is not None
    return model_view(context.registry, served)
